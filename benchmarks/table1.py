"""The paper's Table 1 on the synthetic demo data: HeMIS, U-HeMIS, U-HVED and Single (one network
per subset) trained with equal budgets, every method scored on all 15 modality subsets.

    python benchmarks/table1.py [--iterations N] [--out DIR]     # full run (default budget below)
    python benchmarks/table1.py --quick --out /tmp/t1             # smoke test: tiny data and networks

Everything goes through the real CLI (subprocesses of ``python -m uhved_tf``) with ``--set``
overrides of the repository's demo configs (config/demo.ini for U-HVED, config/u_hemis.ini,
config/hemis.ini, config/single.ini with ``train --all-subsets``): model directories under
``OUT/models/<method>``, one split file ``OUT/dataset_split.csv`` shared by every method,
``[TRAINING] max_iter = N`` for every network (each of the 15 Single networks gets N iterations,
as in the paper where every network is trained in full), validation off. The demo data
(``demo_data/`` of the repository) is generated with
:func:`uhved_tf.demo.synthetic.make_demo_dataset` if missing.

Outputs in ``OUT``: ``table1.md`` (rows = the 15 subsets with ●/○, per region the Dice (%) of
HeMIS | U-HeMIS | U-HVED | Single, best in bold, ``*`` after U-HVED when the two-sided Wilcoxon
signed-rank test of U-HVED against U-HeMIS (:mod:`uhved_tf.evaluation.compare`) gives p < 0.05),
``table1_dice_by_modalities.png`` (mean Dice against the number of available modalities per
method), ``eval/<method>/`` (per_case.csv, table.md... of ``uhved_tf evaluate``) and
``compare/`` (``uhved_tf evaluate --compare`` of U-HeMIS against U-HVED).

Re-running the same command resumes: finished trainings and evaluations are kept (trainings run
with ``--resume``; an evaluation is redone only if its per_case.csv is missing; ``--force-eval``
redoes them).

Budget: the default ``--iterations 600`` (DEFAULT_ITERATIONS) was chosen from times measured on
a shared 2-core AMD EPYC (AVX-512) CPU, so that the full run fits in 90 minutes. Half of the
subjects are held out for evaluation (``--eval-fraction 0.5``: 8 of the 16 demo subjects, no
validation subjects): with n pairs the smallest exact two-sided Wilcoxon p is 2 / 2^n, 0.125 for
the 4 subjects of the demo split but 0.0078 for 8, so the marks can appear.

``--quick`` (2 iterations, base_width 2, 3 levels, 16^3 windows, 8 small subjects of which 2 are
evaluated) checks the pipeline end to end; on the loaded 2-core CPU it took 193 s from scratch
(18 trainings and 5 CLI evaluate runs, each a TensorFlow start-up) and 26 s when re-run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Measured on a shared 2-core AMD EPYC CPU with the demo configs (32^3 windows, batch 2,
# base_width 8, 4 levels): seconds per training iteration U-HVED 0.79, U-HeMIS 0.38, HeMIS 1.20
# (noisy), Single 0.16 (x 15 networks) -> 4.8 s per iteration of every network; start-up and tracing
# about 25 s per hetero-modal run and 10 s per Single run (225 s); evaluation of the 4 inference
# subjects on 15 subsets 120 s for U-HVED (4 posterior samples), less for the others (~420 s in
# all; ~840 s for the 8 subjects of --eval-fraction 0.5). 600 iterations: 2860 + 225 + 840 s,
# about 65 minutes.
DEFAULT_ITERATIONS = 600

METHODS = (  # (name, config, train as Single for every subset)
    ("HeMIS", "hemis.ini", False),
    ("U-HeMIS", "u_hemis.ini", False),
    ("U-HVED", "demo.ini", False),
    ("Single", "single.ini", True),
)
SECTIONS = ("T1", "T1c", "T2", "Flair", "label")
REGIONS = ("whole", "core", "enhancing")
MODALITIES = ("T1", "T1c", "T2", "Flair")


def run_cli(args, log_file: Path) -> float:
    """``python -m uhved_tf ARGS``; output appended to ``log_file``; returns the wall time."""
    cmd = [sys.executable, "-m", "uhved_tf", *map(str, args)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    with open(log_file, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"table1: `uhved_tf {' '.join(map(str, args[:3]))} ...` failed (exit {proc.returncode}); "
                 f"see {log_file}")
    return took


def overrides(args, data: Path, out: Path, name: str) -> list[str]:
    sets = {f"{s}.path_to_search": str(data) for s in SECTIONS}
    sets.update({
        "SYSTEM.model_dir": str(out / "models" / name),
        "SYSTEM.dataset_split_file": str(out / "dataset_split.csv"),
        "TRAINING.max_iter": str(args.iterations),
        "TRAINING.validation_every_n": "0",
        "TRAINING.save_every_n": str(max(1, args.iterations // 2)),
        "TRAINING.exclude_fraction_for_validation": "0",
        "TRAINING.exclude_fraction_for_inference": str(args.eval_fraction),
    })
    if args.quick:
        sets.update({f"{s}.spatial_window_size": "16,16,16" for s in SECTIONS})
        sets.update({"INFERENCE.spatial_window_size": "16,16,16", "NETWORK.base_width": "2",
                     "NETWORK.levels": "3", "NETWORK.volume_padding_size": "2", "NETWORK.queue_length": "4",
                     "TRAINING.sample_per_volume": "2"})
        if name == "U-HVED":
            sets["INFERENCE.samples"] = "1"
    out_list = []
    for k, v in sets.items():
        out_list += ["--set", f"{k}={v}"]
    return out_list


def load_rows(folder: Path) -> list[dict]:
    from uhved_tf.evaluation.compare import load_per_case
    return load_per_case(folder)


def mean_by_subset(rows) -> dict[str, dict[str, float]]:
    import numpy as np
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["subset"] for r in rows):
        sel = [r for r in rows if r["subset"] == name]
        out[name] = {reg: float(np.nanmean([float(r[f"dice_{reg}"]) for r in sel])) for reg in REGIONS}
        out[name]["n"] = len(sel)
    return out


def table_markdown(means: dict, marks: dict, subsets, header: str) -> str:
    names = [m for m, *_ in METHODS]
    head = list(MODALITIES)
    for reg in REGIONS:
        head += [f"{reg}: {n}" for n in names]
    lines = [header, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(key: str) -> list[str]:
        cells = []
        for reg in REGIONS:
            vals = {n: means[n].get(key, {}).get(reg) for n in names}
            best = max((v for v in vals.values() if v is not None), default=None)
            for n in names:
                v = vals[n]
                if v is None:
                    cells.append("–")
                    continue
                text = f"{100 * v:.1f}"
                if best is not None and v == best:
                    text = f"**{text}**"
                if n == "U-HVED" and marks.get((key, reg)):
                    text += "\\*"
                cells.append(text)
        return cells

    for subset in subsets:
        lines.append("| " + " | ".join(["●" if m in subset else "○" for m in MODALITIES] + row("+".join(subset)))
                     + " |")
    lines.append("| " + " | ".join(["Mean", "", "", ""] + row("Mean")) + " |")
    lines += ["", "Dice (%) per region (whole tumour, tumour core, enhancing tumour) on the inference split. "
              "Bold: best of the four methods; \\*: U-HVED against U-HeMIS, two-sided Wilcoxon signed-rank "
              "test on the paired cases, p < 0.05 (no multiple-comparison correction; see compare/compare.md "
              "for every p-value). Mean: average over the 15 subsets."]
    return "\n".join(lines) + "\n"


def plot(means: dict, subsets, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(REGIONS), figsize=(4 * len(REGIONS), 3.6), sharey=True)
    sizes = sorted({len(s) for s in subsets})
    for ax, reg in zip(axes, REGIONS):
        for name, *_ in METHODS:
            ys = [100 * np.mean([means[name]["+".join(s)][reg] for s in subsets if len(s) == k]) for k in sizes]
            ax.plot(sizes, ys, marker="o", label=name)
        ax.set_title(f"{reg} tumour")
        ax.set_xlabel("available modalities")
        ax.set_xticks(sizes)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean Dice (%)")
    axes[-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=None,
                    help=f"training iterations of every network (default {DEFAULT_ITERATIONS}; --quick: 2)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke test (tiny data, networks and budget)")
    ap.add_argument("--out", default=str(REPO / "table1_run"), help="output folder (default: ./table1_run)")
    ap.add_argument("--data", default=None, help="demo data folder (default: the repository's demo_data, "
                                                 "generated if missing; --quick: OUT/demo_data_quick)")
    ap.add_argument("--subjects", type=int, default=16, help="subjects when generating the demo data")
    ap.add_argument("--eval-fraction", type=float, default=None,
                    help="fraction of the subjects held out for evaluation (default 0.5: 8 of the 16 demo "
                         "subjects, so that the Wilcoxon test can reach p < 0.05; --quick: 0.25); it only applies "
                         "when OUT/dataset_split.csv is created")
    ap.add_argument("--force-eval", action="store_true", help="evaluate again even if per_case.csv exists")
    args = ap.parse_args(argv)
    if args.iterations is None:
        args.iterations = 2 if args.quick else DEFAULT_ITERATIONS
    if args.eval_fraction is None:
        args.eval_fraction = 0.25 if args.quick else 0.5
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log_file = out / "table1.log"

    from uhved_tf.demo.synthetic import make_demo_dataset
    if args.quick:
        data = Path(args.data).resolve() if args.data else out / "demo_data_quick"
        if not (data / "demo_dataset.json").exists():
            make_demo_dataset(data, n_subjects=8, shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0), seed=0)
    else:
        data = Path(args.data).resolve() if args.data else REPO / "demo_data"
        if not (data / "demo_dataset.json").exists():
            print(f"generating the demo data in {data}", flush=True)
            make_demo_dataset(data, n_subjects=args.subjects, seed=0)

    t_start = time.perf_counter()
    times = {}
    for name, ini, all_subsets in METHODS:
        cfg = REPO / "config" / ini
        sets = overrides(args, data, out, name)
        print(f"[{name}] training ({args.iterations} iterations{' x 15 subsets' if all_subsets else ''})",
              flush=True)
        extra = ["--all-subsets"] if all_subsets else []
        t_train = run_cli(["train", "-c", cfg, "-q", "--resume", *extra, *sets], log_file)
        eval_dir = out / "eval" / name
        t_eval = 0.0
        if args.force_eval or not (eval_dir / "per_case.csv").exists():
            print(f"[{name}] evaluating all 15 subsets", flush=True)
            t_eval = run_cli(["evaluate", "-c", cfg, "-q", "--subsets", "all", "-o", eval_dir, *sets], log_file)
        times[name] = (t_train, t_eval)
        print(f"[{name}] train {t_train:.0f} s, evaluate {t_eval:.0f} s", flush=True)

    # U-HeMIS (A) against U-HVED (B) through the CLI (compare/compare.md and compare.csv) ...
    run_cli(["evaluate", "-c", REPO / "config" / "demo.ini", "-q", "--compare", out / "eval" / "U-HeMIS",
             out / "eval" / "U-HVED", "-o", out / "compare", *overrides(args, data, out, "U-HVED")], log_file)
    # ... and the same test in process for the marks of table1.md.
    from uhved_tf.evaluation.compare import compare   # scipy only: no TensorFlow in this process
    rows = {name: load_rows(out / "eval" / name) for name, *_ in METHODS}
    marks = {(e["subset"], e["region"]): bool(e["significant"] and e["better"] == "B")
             for e in compare(rows["U-HeMIS"], rows["U-HVED"], regions=REGIONS)}
    means = {}
    for name in rows:
        by_subset = mean_by_subset(rows[name])
        by_subset["Mean"] = {reg: sum(v[reg] for v in by_subset.values()) / len(by_subset) for reg in REGIONS}
        means[name] = by_subset
    subsets = [s for k in range(1, len(MODALITIES) + 1) for s in itertools.combinations(MODALITIES, k)]
    n_cases = max(v["n"] for v in means["U-HVED"].values() if "n" in v)
    total = time.perf_counter() - t_start
    header = "\n".join([
        f"# Table 1 on the synthetic demo data{' (--quick smoke test)' if args.quick else ''}",
        "",
        f"Budget: {args.iterations} training iterations per network (HeMIS, U-HeMIS, U-HVED; each of the 15 "
        f"Single networks), {n_cases} evaluated subjects; data {data}.",
        f"Machine: {cpu_name()}, {os.cpu_count()} CPU(s), {platform.platform()}, Python {platform.python_version()}.",
        "Wall time (s) train / evaluate: " + "; ".join(f"{n} {t:.0f} / {e:.0f}" for n, (t, e) in times.items())
        + f"; total {total:.0f} s (0 = already done in an earlier run).",
    ])
    (out / "table1.md").write_text(table_markdown(means, marks, subsets, header))
    plot(means, subsets, out / "table1_dice_by_modalities.png")
    print((out / "table1.md").read_text())
    print(f"wrote {out / 'table1.md'} and {out / 'table1_dice_by_modalities.png'} in {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
