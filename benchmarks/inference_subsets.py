"""Encode once, decode many: what segmenting all 15 modality subsets costs against one subset
and against 15 separate runs; and 10 posterior samples against the posterior mean.

Prints ratios measured in this one run (absolute times on a shared machine are noise). Every
configuration is traced once and timed over ``--repeats`` runs after a warm-up; the median is
used. Three views:

1. **Network only** (a random volume, the sliding window over it): one subset, 15 subsets in one
   encode-once pass, and the cost split per window batch into encoding (E, the four encoders) and
   per-subset work (D, fusion + the five decoders). 15 separate runs cost 15 (E + D); encode-once
   costs E + 15 D, so its ratio to one subset cannot go below (E + 15 D) / (E + D): the printed
   bound says how much of the remaining cost is the decoders, which no sharing can remove.
2. **Per case, as a user runs it** (``--case``, on by default): a demo case (generated into a
   temporary folder) loaded, preprocessed, predicted and written as NIfTI through
   :class:`uhved_tf.application.Application` with the demo config: 15 separate runs (for each
   subset: load + preprocess, a new predictor (its own trace, as a new run has), predict, write)
   against one run for all 15 subsets (load once, one predictor, write 15 output sets).
3. **Posterior samples**: 10 samples decoded in one batched call against the posterior mean.

    python benchmarks/inference_subsets.py [--size 64] [--window 32] [--repeats 3] [--no-case]
                                           [--base-width 8] [--levels 4] [--case-shape 64,64,48]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from uhved_tf.subset import subset_masks  # noqa: E402
from uhved_tf.inference.predictor import WindowPredictor, predict_volume  # noqa: E402
from uhved_tf.model.uhved import UHVED  # noqa: E402


def median_time(fn, repeats):
    fn()                                                    # trace + warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def network_costs(model, window, batch, repeats):
    """Seconds per window batch: (E) encoders, (D) fusion + five decoders of one subset."""
    x = tf.random.normal((batch, *window, 4), seed=1)
    mask = tf.ones((batch, 4))
    encode = tf.function(model.encode)
    encodings = encode(x)

    @tf.function
    def decode(encodings):
        return model.predict_from_posteriors(model.fuse(encodings, mask), 0)

    e = median_time(lambda: encode(x), repeats * 3)
    d = median_time(lambda: decode(encodings), repeats * 3)
    return e, d


def per_case(window, base_width, n, case_shape, levels=4):
    """(n separate runs, one run for n subsets) in seconds for one demo case, end to end."""
    from uhved_tf.application import Application
    from uhved_tf.config import load_config
    from uhved_tf.demo.synthetic import make_demo_dataset

    tmp = Path(tempfile.mkdtemp(prefix="uhved_bench_"))
    data = tmp / "data"
    make_demo_dataset(data, n_subjects=1, shape=case_shape, seed=0)
    sets = [f"{s}.path_to_search={data}" for s in ("T1", "T1c", "T2", "Flair", "label")]
    sets += [f"SYSTEM.model_dir={tmp / 'model'}", f"INFERENCE.spatial_window_size={','.join(map(str, window))}",
             "INFERENCE.samples=0", f"SYSTEM.dataset_split_file={tmp / 'split.csv'}",
             f"NETWORK.base_width={base_width}", f"NETWORK.levels={levels}"]
    app = Application(load_config(REPO / "config" / "demo.ini", set_overrides=sets))
    subject = app.discover(need_label=False)[0]
    model = app.build_model()
    settings = app.preprocess_settings()
    modalities = app.cfg.modalities
    subsets = [tuple(m for m, on in zip(modalities, row) if on) for row in subset_masks(4)[-n:]]

    def run(group, out):
        case = app.load_case(subject, settings, with_label=False)
        results = app.predictor(model)(case, group)       # a new run traces its own predictor
        for subset, res in zip(group, results):
            app.outputs.write(case, res, out / "+".join(subset), overwrite=True)

    t0 = time.perf_counter()
    for s in subsets:
        run([s], tmp / "separate")
    separate = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(subsets, tmp / "together")
    together = time.perf_counter() - t0
    shape = app.load_case(subject, settings, with_label=False).image.shape[:3]
    return separate, together, shape


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64, help="cubic volume size (voxels)")
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--base-width", type=int, default=8)
    ap.add_argument("--levels", type=int, default=4,
                    help="latent scales of the network (default 4; the smoke test uses 2: cheaper to build and trace)")
    ap.add_argument("--subsets", type=int, default=15, choices=range(2, 16), metavar="2..15",
                    help="number of subsets compared with one (default all 15; the smoke test uses fewer)")
    ap.add_argument("--no-case", action="store_true", help="skip the end-to-end per-case comparison")
    ap.add_argument("--case-shape", default="64,64,48", help="shape of the generated demo case (default 64,64,48)")
    args = ap.parse_args()
    tf.keras.utils.set_random_seed(0)
    model = UHVED(("T1", "T1c", "T2", "Flair"), 4, base_width=args.base_width, levels=args.levels)
    w = (args.window,) * 3
    model({"image": tf.zeros((1, *w, 4)), "modality_mask": tf.ones((1, 4))})
    volume = np.random.default_rng(0).normal(size=(args.size,) * 3 + (4,)).astype(np.float32)
    masks = subset_masks(4)[-args.subsets:]                 # the full set last: the first masks[-1:]

    def timed(predictor):
        return median_time(lambda: predict_volume(predictor, volume, w, overlap=0.5, batch_size=2), args.repeats)

    one_mean = timed(WindowPredictor(model, masks[-1:], samples=0, batch_size=2))
    all_mean = timed(WindowPredictor(model, masks, samples=0, batch_size=2))
    one_10 = timed(WindowPredictor(model, masks[-1:], samples=10, batch_size=2))
    all_10 = timed(WindowPredictor(model, masks, samples=10, batch_size=2))
    e, d = network_costs(model, w, 2, args.repeats)
    n = len(masks)
    bound = (e + n * d) / (e + d)

    print(f"machine: {os.cpu_count()} CPUs, TF_ENABLE_ONEDNN_OPTS={os.environ['TF_ENABLE_ONEDNN_OPTS']}, "
          f"volume {args.size}^3 x 4, window {args.window}^3, overlap 0.5, base width {args.base_width}, "
          f"{args.levels} levels")
    print(f"1. network only ({n} separate runs = {n:.2f} x one subset)")
    print(f"   one subset, posterior mean:           {one_mean:8.2f} s")
    print(f"   {n:2d} subsets, encode once:              {all_mean:8.2f} s   ratio {all_mean / one_mean:5.2f}"
          f"   = {all_mean / (n * one_mean):4.0%} of {n} separate runs")
    print(f"   per window batch: encoders E {e * 1000:.0f} ms, fusion + 5 decoders D {d * 1000:.0f} ms per subset"
          f" -> lowest possible ratio (E + {n} D) / (E + D) = {bound:5.2f}")
    print("3. posterior samples")
    print(f"   one subset, 10 samples:               {one_10:8.2f} s   ratio to the mean {one_10 / one_mean:5.2f}")
    print(f"   {n:2d} subsets, 10 samples, encode once:  {all_10:8.2f} s   ratio to one subset {all_10 / one_10:5.2f}")
    if not args.no_case:
        separate, together, shape = per_case(w, args.base_width, n, tuple(int(v) for v in args.case_shape.split(",")),
                                             args.levels)
        print(f"2. per case, end to end (demo case {'x'.join(map(str, shape))} after cropping, window "
              f"{args.window}^3, load + preprocess + predict + write NIfTI)")
        print(f"   {n:2d} separate runs:                     {separate:8.2f} s")
        print(f"   one run for the {n:2d} subsets:           {together:8.2f} s   = {together / separate:4.0%} "
              f"of {n} separate runs ({separate / together:.1f}x faster)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
