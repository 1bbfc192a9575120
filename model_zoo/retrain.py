"""Retrain the model zoo's demo models from scratch, reproducibly, with the current code.

    python model_zoo/retrain.py [--only uhved_demo] [--work DIR]

For each entry: train on the synthetic demo data (``demo_data/`` of the repository, generated from
seed 0 if missing) through the real CLI with the entry's config, evaluate all 15 subsets on the
held-out split, then package a self-describing model directory ``model_zoo/<name>/``:

* ``checkpoints/`` - the final weights only (no optimiser state: a few MB),
* ``config_resolved.ini`` (input paths rewritten relative to the zoo folder), ``metadata.json``,
  ``dataset_split.csv``, the histogram landmarks when the config uses them,
* ``MODEL_CARD.md`` - data, budget, per-subset Dice table, intended use, known failure modes,
* ``golden/`` - the segmentation of the bundled demo case with all four modalities, made by
  ``uhved_tf inference --model`` from the packaged directory (the golden test compares against it).

The bundled demo case (``model_zoo/demo_case/``, one held-out subject's four modalities and
label) is refreshed too. Training is deterministic on CPU for a given seed, TensorFlow version
and oneDNN setting; the budget is the one in each entry's config.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "model_zoo"
sys.path.insert(0, str(REPO))

ENTRIES = {  # name: (config, one-line summary)
    "uhved_demo": ("demo.ini", "U-HVED trained on the synthetic demo data: segmentation and synthesis "
                               "from any subset of T1, T1c, T2, FLAIR (demonstration only)."),
    "u_hemis_demo": ("u_hemis.ini", "U-HeMIS trained on the synthetic demo data: segmentation from any "
                                    "subset of T1, T1c, T2, FLAIR (demonstration only)."),
}
SECTIONS = ("T1", "T1c", "T2", "Flair", "label")
DEMO_CASE = ZOO / "demo_case"
SUFFIX = {"T1": "_t1", "T1c": "_t1ce", "T2": "_t2", "Flair": "_flair", "label": "_seg"}


def cli(*args, log: Path):
    cmd = [sys.executable, "-m", "uhved_tf", *map(str, args)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if proc.returncode:
        sys.exit(f"retrain: `uhved_tf {' '.join(map(str, args[:3]))} ...` failed; see {log}")


def package_weights(work: Path, dest: Path) -> int:
    """The latest checkpoint of ``work`` as a weights-only checkpoint in ``dest/checkpoints``."""
    import tensorflow as tf

    from uhved_tf.application import Application
    from uhved_tf.training.checkpoint import model_checkpoint
    from uhved_tf.zoo import config_for_model_dir

    model = Application(config_for_model_dir(work)).load_trained_model()
    iteration = int(tf.train.latest_checkpoint(str(work / "checkpoints")).rsplit("-", 1)[1])
    manager = tf.train.CheckpointManager(model_checkpoint(model), str(dest / "checkpoints"), max_to_keep=1,
                                         checkpoint_name="ckpt")
    manager.save(checkpoint_number=iteration)
    return iteration


def relative_config(text: str, data: Path, dest: Path) -> str:
    """Input paths relative to the zoo entry (the resolved config's other paths are overridden
    by ``uhved_tf.zoo`` when the directory is used)."""
    rel = os.path.relpath(data, dest)
    return re.sub(r"^(path_to_search = ).*$", lambda m: m.group(1) + rel, text, flags=re.M)


def bundle_demo_case(data: Path, split_csv: Path) -> str:
    """Copy the first Inference subject of the split to model_zoo/demo_case/; returns its id."""
    rows = [line.split(",") for line in split_csv.read_text().split()]
    case_id = sorted(r[0] for r in rows if r[1].strip() == "Inference")[0]
    src = next(p for p in data.glob(f"*/{case_id}") if p.is_dir())
    DEMO_CASE.mkdir(parents=True, exist_ok=True)
    for old in DEMO_CASE.glob("*.nii.gz"):
        old.unlink()
    for suffix in SUFFIX.values():
        shutil.copy2(src / f"{case_id}{suffix}.nii.gz", DEMO_CASE / f"{case_id}{suffix}.nii.gz")
    return case_id


def model_card(name: str, summary: str, cfg_name: str, meta: dict, iteration: int, eval_dir: Path,
               seconds: float, n_train: int, n_eval: int) -> str:
    table = (eval_dir / "table.md").read_text().strip()
    return f"""# {name}

{summary}

| | |
|---|---|
| network | `{meta['network']}` (base width {meta['base_width']}, {meta['levels']} levels) |
| inputs | any non-empty subset of {', '.join(meta['modalities'])} (NIfTI, any orientation and spacing) |
| outputs | BraTS labels {', '.join(map(str, meta['label_values']))}{'; synthesis of every modality' if meta['network'] == 'u_hved' else ''}; uncertainty map |
| training data | the synthetic demo data set (`uhved_tf demo-data`, 16 subjects of 64 x 64 x 48 at 3 mm, seed 0): {n_train} training subjects |
| budget | {iteration} iterations of `config/{cfg_name}` (32^3 windows, batch 2), {seconds / 60:.0f} min on a {platform.processor() or 'CPU'} with {os.cpu_count()} cores (TensorFlow {meta['tensorflow_version']}) |
| retrain | `python model_zoo/retrain.py --only {name}` |

## Intended use

Research and demonstration: trying the command line and the Python API in the first minutes,
checking an installation (the golden test), and as a starting point for fine-tuning code paths.
**Not for clinical use, and not a BraTS model**: it has never seen a real MRI.

## Dice on the held-out demo subjects ({n_eval}), per subset of modalities

{table}

## Known failure modes

- Real MRI: the synthetic tumours are ellipsoids with textbook contrasts; on real scans the
  output is meaningless. Train on your data (`config/uhved.ini`, docs/brats.md).
- Scores from one modality alone follow the synthetic contrasts: T1 alone barely sees the
  enhancing rim, FLAIR alone does not separate core from oedema.
- Trained on 3 mm volumes cropped to the brain; very different fields of view or resolutions are
  resampled only if `pixdim` is set in the config.
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=sorted(ENTRIES), action="append", help="retrain only these entries")
    ap.add_argument("--work", default=str(REPO / "zoo_work"), help="training folder (not committed)")
    args = ap.parse_args(argv)
    work_root = Path(args.work).resolve()
    work_root.mkdir(parents=True, exist_ok=True)
    log = work_root / "retrain.log"
    data = REPO / "demo_data"
    from uhved_tf.demo.synthetic import make_demo_dataset
    make_demo_dataset(data, n_subjects=16, seed=0)
    split = work_root / "dataset_split.csv"
    for name in args.only or list(ENTRIES):
        cfg_name, summary = ENTRIES[name]
        work = work_root / name
        sets = [f"{s}.path_to_search={data}" for s in SECTIONS]
        sets += [f"SYSTEM.model_dir={work}", f"SYSTEM.dataset_split_file={split}", "TRAINING.validation_every_n=0"]
        overrides = [a for s in sets for a in ("--set", s)]
        t0 = time.perf_counter()
        print(f"[{name}] training with config/{cfg_name}", flush=True)
        cli("train", "-c", REPO / "config" / cfg_name, "-q", "--resume", *overrides, log=log)
        seconds = time.perf_counter() - t0
        print(f"[{name}] evaluating the 15 subsets", flush=True)
        eval_dir = work / "evaluation_all"
        cli("evaluate", "-c", REPO / "config" / cfg_name, "-q", "--subsets", "all", "-o", eval_dir, *overrides, log=log)

        dest = ZOO / name
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        iteration = package_weights(work, dest)
        (dest / "config_resolved.ini").write_text(relative_config((work / "config_resolved.ini").read_text(), data, dest))
        meta = json.loads((work / "metadata.json").read_text())
        (dest / "metadata.json").write_text(json.dumps(meta, indent=2))
        shutil.copy2(split, dest / "dataset_split.csv")
        landmarks = (meta.get("preprocessing") or {}).get("histogram_ref_file")
        if landmarks:
            shutil.copy2(landmarks, dest / Path(landmarks).name)
        case_id = bundle_demo_case(data, split)
        files = {m: DEMO_CASE / f"{case_id}{SUFFIX[m]}.nii.gz" for m in ("T1", "T1c", "T2", "Flair")}
        cli("inference", "--model", dest, "-q", "--subject-id", case_id, "-o", dest / "golden",
            *[a for m, f in files.items() for a in (f"--{m.lower()}", f)], log=log)
        for extra in (dest / "golden").iterdir():
            if extra.name != f"{case_id}_seg.nii.gz":
                extra.unlink()
        phases = [line.split(",")[1].strip() for line in split.read_text().split()]
        card = model_card(name, summary, cfg_name, meta, iteration, eval_dir, seconds,
                          phases.count("Training"), phases.count("Inference"))
        (dest / "MODEL_CARD.md").write_text(card)
        size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) / 1e6
        print(f"[{name}] packaged in {dest} ({size:.1f} MB; golden case {case_id})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
