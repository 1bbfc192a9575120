"""Soak test: train the demo config for a long time and check that memory does not grow.

Generates the synthetic demo data set into a temporary folder, trains ``config/demo.ini`` (its
paths pointed at that folder and a temporary model directory; checkpoints and validation as the
config says, so saving and validating are soaked too) for ``--iterations`` iterations in this
process, and samples the resident set size (``VmRSS`` of ``/proc/self/status``) every ``--every``
iterations. After a warm-up (the first ``--warmup`` fraction of the samples: tracing, tf.data
buffers and the case cache fill up first) it fits a least-squares line to RSS against iteration
and reports its slope in MB per 1000 iterations:

    PASS  slope <= --max-slope (default 10 MB / 1000 iterations)
    MISS  otherwise (exit code 3; ``--quick`` always exits 0: its run is too short for a verdict)

A leak of a single 32^3 x 4 float32 training window per iteration would show as about
500 MB / 1000 iterations; allocator noise on a healthy run is a few MB.

    python benchmarks/soak.py                      # 2000 iterations of the demo config (~25 min, 2 CPU cores)
    python benchmarks/soak.py --iterations 5000 --every 250 --csv soak.csv
    python benchmarks/soak.py --quick              # a tiny network for a minute: a smoke test

Options after ``--set`` override the config (``--set TRAINING.save_every_n=100``, repeatable).
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

SECTIONS = ("T1", "T1c", "T2", "Flair", "label")
EXIT_MISS = 3


def rss_mb() -> float:
    """Current resident set size in MB (VmRSS); the peak (ru_maxrss) where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def slope_per_1000(samples, warmup: float) -> tuple[float, list]:
    """Least-squares slope of RSS (MB) against iteration, per 1000 iterations, over the samples
    after the warm-up fraction (at least two samples are kept)."""
    skip = min(int(len(samples) * warmup), max(0, len(samples) - 2))
    kept = samples[skip:]
    if len(kept) < 2:
        return float("nan"), kept
    x = np.array([s[0] for s in kept], float)
    y = np.array([s[1] for s in kept], float)
    return float(np.polyfit(x, y, 1)[0] * 1000.0), kept


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=2000, help="training iterations (default 2000)")
    p.add_argument("--every", type=int, default=100, help="sample RSS every N iterations (default 100)")
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of samples ignored (default 0.2)")
    p.add_argument("--max-slope", type=float, default=10.0,
                   help="PASS threshold in MB per 1000 iterations (default 10)")
    p.add_argument("--config", default=str(REPO / "config" / "demo.ini"))
    p.add_argument("--subjects", type=int, default=16, help="demo subjects to generate (default 16)")
    p.add_argument("--work", help="folder for the data and the model (default: a temporary folder, deleted)")
    p.add_argument("--csv", help="also write the samples (iteration, rss_mb, seconds) to this CSV file")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.key=value")
    p.add_argument("--quick", action="store_true",
                   help="tiny data and network (16^3 windows, base width 2, 2 levels): a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        if "--iterations" not in (argv if argv is not None else sys.argv):
            args.iterations = 40
        if "--every" not in (argv if argv is not None else sys.argv):
            args.every = 5
        args.subjects = min(args.subjects, 4)
    if args.iterations < 1 or args.every < 1 or not 0 <= args.warmup < 1:
        p.error("--iterations and --every must be positive and --warmup in [0, 1)")
    return args


def build_config(args, data: Path, model: Path):
    from uhved_tf.config import load_config

    sets = [f"{s}.path_to_search={data}" for s in SECTIONS]
    sets += [f"SYSTEM.model_dir={model}", f"TRAINING.max_iter={args.iterations}"]
    if args.quick:
        sets += [f"{s}.spatial_window_size=16,16,16" for s in SECTIONS]
        sets += ["NETWORK.base_width=2", "NETWORK.levels=2", "NETWORK.queue_length=4",
                 "TRAINING.validation_every_n=0", "TRAINING.save_every_n=20", "TRAINING.sample_per_volume=2",
                 "INFERENCE.spatial_window_size=16,16,16"]
    return load_config(args.config, set_overrides=sets + list(args.sets))


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="uhved_soak_"))
    try:
        from uhved_tf.demo.synthetic import make_demo_dataset

        shape, spacing = ((32, 32, 24), (6.0, 6.0, 6.0)) if args.quick else ((64, 64, 48), (3.0, 3.0, 3.0))
        make_demo_dataset(work / "data", n_subjects=args.subjects, shape=shape, spacing=spacing, seed=0)
        model = work / "model"
        if model.exists():
            shutil.rmtree(model)
        cfg = build_config(args, work / "data", model)

        from uhved_tf.application import Application

        samples: list[tuple[int, float, float]] = []
        t0 = time.perf_counter()
        start_rss = rss_mb()

        def on_iteration(it, terms):
            if it % args.every == 0 or it == args.iterations:
                samples.append((it, rss_mb(), time.perf_counter() - t0))
                print(f"  iteration {it:>6}  RSS {samples[-1][1]:8.1f} MB  loss {terms.get('total', float('nan')):.4f}"
                      f"  {samples[-1][2]:7.1f} s", flush=True)

        print(f"soak: {args.iterations} iterations of {cfg.network.name} (base width {cfg.network.base_width}, "
              f"window {cfg.spatial_window_size}), RSS every {args.every}; before training {start_rss:.1f} MB",
              flush=True)
        Application(cfg).train(progress=False, on_iteration=on_iteration)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["iteration", "rss_mb", "seconds"])
            w.writerows(samples)

    slope, kept = slope_per_1000(samples, args.warmup)
    print()
    print(f"{'iteration':>9} {'RSS MB':>9} {'seconds':>9}")
    for it, mb, sec in samples:
        print(f"{it:>9} {mb:>9.1f} {sec:>9.1f}{'   (warm-up)' if (it, mb, sec) not in kept else ''}")
    if kept:
        growth = kept[-1][1] - kept[0][1]
        print(f"after warm-up ({len(kept)} of {len(samples)} samples, iterations {kept[0][0]}..{kept[-1][0]}): "
              f"slope {slope:+.2f} MB / 1000 iterations, change {growth:+.1f} MB, "
              f"peak {max(s[1] for s in samples):.1f} MB")
    verdict = "PASS" if np.isfinite(slope) and slope <= args.max_slope else "MISS"
    print(f"{verdict}: RSS slope {slope:+.2f} MB / 1000 iterations (threshold {args.max_slope:g})")
    if args.quick:
        print("(--quick: a smoke test; a run this short is all warm-up, so its verdict means nothing)")
        return 0
    return 0 if verdict == "PASS" else EXIT_MISS


if __name__ == "__main__":
    sys.exit(main())
