"""Which of the original code's training differences moves U-HVED against U-HeMIS (issue #15).

    python benchmarks/ablation.py [--iterations N] [--out DIR] [--data DIR] [--subjects N]

Five runs with the same data, split, windows, sampling, normalisation, seeds and budget, through
the real CLI (``python -m uhved_tf``) and ``config/demo.ini`` with ``--set`` overrides:

* U-HVED with each of {``[TRAINING] kl = original | paper``} x {``[TRAINING] dice = squared | plain``};
* U-HeMIS (the original width, ``[NETWORK] name = u_hemis``), with ``dice = squared``.

Every run: ``[NETWORK] decay_reduction = mean`` (the original's), validation every
``--validate-every`` iterations on the validation split (full set and each single modality, the
posterior mean) so that ``validation.csv`` gives Dice against iterations, checkpoints at the same
iterations. Then ``uhved_tf evaluate --subsets all`` of the last checkpoint on the inference split.
The runs go one after another, most informative first (U-HVED as the original trains it, then
U-HeMIS), so that a partial run already answers the main question.

Resumable: re-running the same command continues every training (``--resume``) and skips
finished evaluations; run it in the background (``nohup python benchmarks/ablation.py ... &``).

Writes ``OUT/ablation.md`` (mean Dice over the 15 subsets per run and region, the count of subsets
where each U-HVED run >= U-HeMIS, Dice by number of modalities, the paper's patterns) and
``OUT/ablation_curves.png`` (validation Dice against iterations per run), through
:mod:`uhved_tf.study`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from uhved_tf import study  # noqa: E402

#: (label, extra --set overrides); the first U-HeMIS-free run is the reference of the counts.
RUNS = (
    ("U-HVED kl=original dice=squared", {"TRAINING.kl": "original", "TRAINING.dice": "squared"}),
    ("U-HeMIS", {"NETWORK.name": "u_hemis", "TRAINING.dice": "squared", "INFERENCE.samples": "0"}),
    ("U-HVED kl=paper dice=plain", {"TRAINING.kl": "paper", "TRAINING.dice": "plain"}),
    ("U-HVED kl=paper dice=squared", {"TRAINING.kl": "paper", "TRAINING.dice": "squared"}),
    ("U-HVED kl=original dice=plain", {"TRAINING.kl": "original", "TRAINING.dice": "plain"}),
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=2500, help="training iterations of every run")
    ap.add_argument("--validate-every", type=int, default=250, help="validation (and checkpoint) interval")
    ap.add_argument("--out", default=str(REPO / "ablation_run"), help="output folder")
    ap.add_argument("--data", default=None, help="demo data folder (generated if missing; default OUT/demo_data)")
    ap.add_argument("--subjects", type=int, default=24, help="subjects when generating the demo data")
    ap.add_argument("--only", default=None, help="run only the runs whose label contains this text")
    ap.add_argument("--report-only", action="store_true", help="only write the report of what is finished")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    data = Path(args.data).resolve() if args.data else out / "demo_data"
    base = {
        "TRAINING.max_iter": str(args.iterations),
        "TRAINING.validation_every_n": str(args.validate_every),
        "TRAINING.save_every_n": str(args.validate_every),
        "TRAINING.max_checkpoints": "1000",
        "TRAINING.validation_subsets": "full;singles",
        "TRAINING.exclude_fraction_for_validation": "0.125",
        "TRAINING.exclude_fraction_for_inference": "0.334",
        "NETWORK.decay_reduction": "mean",
    }
    runs = [study.Run(label, REPO / "config" / "demo.ini", {**base, **sets}) for label, sets in RUNS
            if args.only is None or args.only in label]
    s = study.Study(out, data, runs, subjects=args.subjects)
    if not args.report_only:
        s.run()
    s.write_report("ablation", reference="U-HeMIS",
                   title=f"U-HVED loss ablation on the synthetic demo data ({args.iterations} iterations per run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
