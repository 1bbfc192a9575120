"""Encode once, decode many: cost of segmenting all 15 modality subsets in one pass versus one
subset, versus 15 separate runs; and 10 posterior samples versus the posterior mean.

Prints ratios measured in this one run (absolute times on a shared machine are noise). Each
configuration is traced once and timed over ``--repeats`` runs after a warm-up; the median is
used.

    python benchmarks/inference_subsets.py [--size 64] [--window 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from uhved_tf.data.subsets import subset_masks  # noqa: E402
from uhved_tf.inference.predictor import WindowPredictor, predict_volume  # noqa: E402
from uhved_tf.model.uhved import UHVED  # noqa: E402


def timed(predictor, volume, window, repeats):
    predict_volume(predictor, volume, window, overlap=0.5, batch_size=2)      # trace + warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict_volume(predictor, volume, window, overlap=0.5, batch_size=2)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64, help="cubic volume size (voxels)")
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--base-width", type=int, default=8)
    args = ap.parse_args()
    tf.keras.utils.set_random_seed(0)
    model = UHVED(("T1", "T1c", "T2", "Flair"), 4, base_width=args.base_width, levels=4)
    w = (args.window,) * 3
    model({"image": tf.zeros((1, *w, 4)), "modality_mask": tf.ones((1, 4))})
    volume = np.random.default_rng(0).normal(size=(args.size,) * 3 + (4,)).astype(np.float32)
    masks = subset_masks(4)

    one_mean = timed(WindowPredictor(model, masks[-1:], samples=0), volume, w, args.repeats)
    all_mean = timed(WindowPredictor(model, masks, samples=0), volume, w, args.repeats)
    one_10 = timed(WindowPredictor(model, masks[-1:], samples=10), volume, w, args.repeats)
    all_10 = timed(WindowPredictor(model, masks, samples=10), volume, w, args.repeats)
    print(f"machine: {os.cpu_count()} CPUs, TF_ENABLE_ONEDNN_OPTS={os.environ['TF_ENABLE_ONEDNN_OPTS']}, "
          f"volume {args.size}^3 x 4, window {args.window}^3, overlap 0.5, base width {args.base_width}")
    print(f"one subset, posterior mean:          {one_mean:8.2f} s")
    print(f"15 subsets (encode once), mean:      {all_mean:8.2f} s   ratio to one subset {all_mean / one_mean:5.2f}"
          f"   (15 separate runs would be 15.00)")
    print(f"one subset, 10 samples:              {one_10:8.2f} s   ratio to the mean   {one_10 / one_mean:5.2f}")
    print(f"15 subsets (encode once), 10 samples:{all_10:8.2f} s   ratio to one subset {all_10 / one_10:5.2f}")


if __name__ == "__main__":
    main()
