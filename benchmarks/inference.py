"""Whole-case inference: ours against the same network in PyTorch through MONAI's sliding window.

One BraTS-size case (a synthetic brain written by :mod:`uhved_tf.demo.synthetic` at 240x240x155,
1 mm, in the BraTS 2018 layout) is segmented, synthesised and given an uncertainty map, all four
modalities present, by two implementations of one trained network (the weights of a model
directory, by default the committed zoo model ``model_zoo/uhved_demo``):

* **ours**, end to end as ``uhved_tf inference`` runs it: the NIfTI files read and preprocessed
  (:meth:`Application.load_case`), the sliding window (:class:`CasePredictor`), every output
  written back in the input's geometry (:class:`Outputs`);
* **MONAI twin**: the same weights copied into the plain PyTorch network of
  ``benchmarks/pytorch_twin.py`` (``load_keras_weights``), run by MONAI's
  ``sliding_window_inference`` with the same window, overlap, Gaussian blending (sigma 1/8 of the
  window), posterior samples (decoded in one batched call) and outputs; its pre- and
  post-processing is the straightforward NumPy/nibabel a MONAI user writes (reorient to RAS,
  crop to the non-zero voxels with the same margin, z-score each modality over the same
  foreground, write each output back in the file's orientation), so both networks see the same
  input and write the same files.

Each implementation runs in its own worker process (TensorFlow and PyTorch never share one, and
each reports its own peak RSS); the workers are warmed up (trace, first run), then run
alternately ``--repeats`` times and the medians are compared. Printed: per-stage times (load +
preprocess, network, blending, resampling back, writing; ours splits the network into encoders
and fusion + decoders by the ratio of their per-window times), computed voxels / voxels of the
brain's bounding box, peak RSS, the Dice of both on the case's label (and the voxels where the two
segmentations agree), and the time to first prediction of a CLI call (imports + model + trace +
first window) on a 64^3 case with one 64^3 window. The last line reads::

    inference: ours X s, monai twin Y s, ratio R

torch and monai are optional (``pip install -r benchmarks/requirements-twin.txt``, CPU build);
they are never CI dependencies: give the interpreter that has them with ``--twin-python``.

    python benchmarks/inference.py [--twin-python /path/to/python] [--repeats 3] [--shape 240,240,155]
        [--window 144] [--overlap 0.5] [--samples 10] [--model model_zoo/uhved_demo] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_T0 = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
MARK = "@@bench "
MODALITIES = ("T1", "T1c", "T2", "Flair")
SUFFIXES = {"T1": "_t1", "T1c": "_t1ce", "T2": "_t2", "Flair": "_flair"}
LABEL_VALUES = (0, 1, 2, 4)
REGIONS = {"whole": (1, 2, 4), "core": (1, 4), "enhancing": (4,)}


def emit(**record):
    print(MARK + json.dumps(record), flush=True)


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def case_files(data: Path, case_id: str) -> dict:
    folder = next(data.rglob(case_id))
    return {m: folder / f"{case_id}{s}.nii.gz" for m, s in SUFFIXES.items()}


# --- worker: ours ---------------------------------------------------------------------------------
def worker_ours(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    sys.path.insert(0, str(REPO))
    import numpy as np
    import tensorflow as tf

    import uhved_tf.io.nifti as nifti
    from uhved_tf.application import Application
    from uhved_tf.inference.predictor import WindowPredictor
    from uhved_tf.inference.sliding_window import nonzero_box
    from uhved_tf.subset import Subset
    from uhved_tf.zoo import config_for_model_dir

    w = args.window
    cfg = config_for_model_dir(args.model, set_overrides=[
        f"INFERENCE.spatial_window_size={w},{w},{w}", f"INFERENCE.window_overlap={args.overlap}",
        f"INFERENCE.samples={args.samples}", "INFERENCE.blend_mode=gaussian", "INFERENCE.border=0,0,0",
        "INFERENCE.tta=False", "INFERENCE.save_uncertainty=True", "NETWORK.batch_size=1",
        *args.set])
    app = Application(cfg)
    model = app.load_trained_model()
    predict = app.predictor(model)
    settings = app.preprocess_settings()
    files = case_files(Path(args.data), args.case)
    subset = Subset(MODALITIES, cfg.modalities)
    np.savez(args.weights, **{v.path.split("/", 1)[1]: v.numpy() for v in model.weights})

    clock = {"network": 0.0, "resample": 0.0, "windows": 0}
    call, image_like = WindowPredictor.__call__, nifti.image_like

    def timed_call(self, windows):
        t = time.perf_counter()
        out = call(self, windows)
        clock["network"] += time.perf_counter() - t
        clock["windows"] += len(windows)
        return out

    def timed_image_like(*a, **k):
        t = time.perf_counter()
        out = image_like(*a, **k)
        clock["resample"] += time.perf_counter() - t
        return out

    WindowPredictor.__call__, nifti.image_like = timed_call, timed_image_like

    # Per window (batch 1): the four encoders (E) and the fusion + five decoders with the samples (D).
    x = tf.random.normal((1, w, w, w, len(cfg.modalities)), seed=3)
    mask = tf.ones((1, len(cfg.modalities)))
    encode = tf.function(model.encode)
    decode = tf.function(lambda e: model.predict_from_posteriors(model.fuse(e, mask), args.samples,
                                                                 tf.constant([0, 1], tf.int32)))

    def seconds(fn, *a):
        fn(*a)
        times = []
        for _ in range(2):
            t = time.perf_counter()
            tf.nest.map_structure(lambda v: v.numpy(), fn(*a))
            times.append(time.perf_counter() - t)
        return min(times)

    encodings = encode(x)
    e, d = seconds(encode, x), seconds(decode, encodings)

    for line in sys.stdin:
        command = json.loads(line)
        if command["do"] == "stop":
            break
        out = Path(command["out"])
        clock.update(network=0.0, resample=0.0, windows=0)
        t0 = time.perf_counter()
        case = app.load_case(type("S", (), {"id": args.case, "files": files})(), settings, with_label=False)
        t1 = time.perf_counter()
        result = predict(case, [subset], samples=command.get("samples", args.samples))[0]
        t2 = time.perf_counter()
        app.outputs.write(case, result, out, overwrite=True)
        t3 = time.perf_counter()
        box = [hi - lo for lo, hi in nonzero_box(case.image)]     # the brain's bounding box
        emit(total=t3 - t0, load=t1 - t0, network=clock["network"], encoders=clock["network"] * e / (e + d),
             decoders=clock["network"] * d / (e + d), blending=(t2 - t1) - clock["network"],
             resample=clock["resample"], write=(t3 - t2) - clock["resample"], windows=clock["windows"],
             computed=clock["windows"] * w ** 3, bbox=int(np.prod(box)), box=box, working=list(case.image.shape[:3]),
             e_ms=e * 1000, d_ms=d * 1000, rss=peak_rss_bytes())
    emit(done=True, rss=peak_rss_bytes())


# --- worker: MONAI twin -----------------------------------------------------------------------------
def worker_twin(args):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import nibabel as nib
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from pytorch_twin import UHVEDTwin, load_keras_weights

    torch.set_num_threads(os.cpu_count())
    arrays = dict(np.load(args.weights))
    base = arrays["encoders/encoder_0/conv_0/kernel"].shape[-1]
    levels = sum(1 for k in arrays if k.startswith("encoders/encoder_0/block_") and k.endswith("in_0/gamma"))
    classes = arrays["decoder_seg/final_conv/kernel"].shape[-1]
    model = UHVEDTwin(len(MODALITIES), classes, base, levels)
    load_keras_weights(model, arrays, MODALITIES)
    model = model.eval().to(memory_format=torch.channels_last_3d)
    files = case_files(Path(args.data), args.case)
    margin = 4                                  # [NETWORK] volume_padding_size of the model's config
    generator = torch.Generator().manual_seed(0)
    clock = {"network": 0.0, "windows": 0}

    def network(windows):
        t = time.perf_counter()
        windows = windows.contiguous(memory_format=torch.channels_last_3d)
        mask = torch.ones(windows.shape[0], len(MODALITIES), dtype=torch.bool)
        prob, synth, entropy = model.predict(windows, mask, clock["samples"], generator)
        clock["network"] += time.perf_counter() - t
        clock["windows"] += windows.shape[0]
        return prob, synth, entropy

    for line in sys.stdin:
        command = json.loads(line)
        if command["do"] == "stop":
            break
        out = Path(command["out"])
        out.mkdir(parents=True, exist_ok=True)
        clock.update(network=0.0, windows=0, samples=command.get("samples", args.samples))
        t0 = time.perf_counter()
        images = [nib.load(files[m]) for m in MODALITIES]
        ras = [nib.as_closest_canonical(img) for img in images]
        vols = [np.asarray(img.dataobj, dtype=np.float32) for img in ras]
        brain = np.zeros(vols[0].shape, bool)
        for v in vols:
            brain |= v != 0
        idx = np.nonzero(brain)
        lo = [max(int(i.min()) - margin, 0) for i in idx]
        hi = [min(int(i.max()) + 1 + margin, n) for i, n in zip(idx, brain.shape)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        x = np.zeros((len(vols), *[b - a for a, b in zip(lo, hi)]), np.float32)
        for c, v in enumerate(vols):
            fg = v > v.mean()                   # NiftyNet's mean_plus foreground, as the model's config
            x[c] = ((v - v[fg].mean()) / v[fg].std())[box]
        x[:, ~brain[box]] = 0.0
        t1 = time.perf_counter()
        with torch.no_grad():
            prob, synth, entropy = sliding_window_inference(
                torch.from_numpy(x)[None], roi_size=(args.window,) * 3, sw_batch_size=1, predictor=network,
                overlap=args.overlap, mode="gaussian", sigma_scale=0.125, padding_mode="constant", cval=0.0)
        t2 = time.perf_counter()
        seg = np.asarray(LABEL_VALUES, np.uint8)[prob[0].argmax(0).numpy()]
        outputs = {"seg": (seg, np.uint8, 0), "uncertainty": (entropy[0, 0].numpy(), np.float32, 0.0)}
        outputs.update({f"{m}_synth": (synth[0, i].numpy(), np.float32, 0.0) for i, m in enumerate(MODALITIES)})
        to_file = nib.orientations.ornt_transform(nib.orientations.io_orientation(ras[0].affine),
                                                  nib.orientations.io_orientation(images[0].affine))
        resample = 0.0
        for name, (array, dtype, fill) in outputs.items():
            t = time.perf_counter()
            full = np.full(brain.shape, fill, dtype)
            full[box] = array
            full = nib.orientations.apply_orientation(full, to_file)
            resample += time.perf_counter() - t
            nib.save(nib.Nifti1Image(full, images[0].affine), out / f"{args.case}_{name}.nii.gz")
        t3 = time.perf_counter()
        emit(total=t3 - t0, load=t1 - t0, network=clock["network"], blending=(t2 - t1) - clock["network"],
             resample=resample, write=(t3 - t2) - resample, windows=clock["windows"],
             computed=clock["windows"] * args.window ** 3, rss=peak_rss_bytes())
    emit(done=True, rss=peak_rss_bytes())


# --- the driver -----------------------------------------------------------------------------------
class Worker:
    def __init__(self, python, kind, args, weights, log):
        cmd = [python, __file__, "--worker", kind, "--data", str(args.data), "--case", args.case,
               "--weights", str(weights), "--model", str(args.model), "--window", str(args.window),
               "--overlap", str(args.overlap), "--samples", str(args.samples)]
        cmd += [a for s in args.set for a in ("--set", s)]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.kind = kind

    def run(self, out, **options) -> dict:
        self.proc.stdin.write(json.dumps({"do": "run", "out": str(out), **options}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        raise RuntimeError(f"the {self.kind} worker stopped (its log: {self.log.name})")

    def stop(self) -> dict:
        self.proc.stdin.write(json.dumps({"do": "stop"}) + "\n")
        self.proc.stdin.flush()
        last = self._read()
        self.proc.wait(60)
        return last


def dice(pred, truth):
    denominator = pred.sum() + truth.sum()
    return float(2.0 * (pred & truth).sum() / denominator) if denominator else 1.0


def case_dice(seg_path, label_path) -> dict:
    import nibabel as nib
    import numpy as np
    seg = np.asarray(nib.load(seg_path).dataobj)
    truth = np.asarray(nib.load(label_path).dataobj)
    return {r: dice(np.isin(seg, v), np.isin(truth, v)) for r, v in REGIONS.items()}


def agreement(a_path, b_path) -> float:
    import nibabel as nib
    import numpy as np
    return float(np.mean(np.asarray(nib.load(a_path).dataobj) == np.asarray(nib.load(b_path).dataobj)))


def time_to_first_prediction(args, tmp) -> dict:
    """A fresh ``uhved_tf inference`` process on a 64^3 case with one 64^3 window: its own report
    of imports, model and trace + first window, and the wall time from launch to that line."""
    from uhved_tf.demo.synthetic import make_demo_dataset
    data = tmp / "small"
    make_demo_dataset(data, n_subjects=1, shape=(64, 64, 64), spacing=(3.0, 3.0, 3.0), seed=1)
    files = case_files(data, "Brats18_Demo_HGG_001")
    script = Path(sys.executable).with_name("uhved_tf")      # the console script, as a user runs it
    cmd = [*([str(script)] if script.exists() else [sys.executable, "-m", "uhved_tf"]), "inference",
           "--model", str(args.model), "-o", str(tmp / "first"), "--overwrite",
           "--set", "INFERENCE.spatial_window_size=64,64,64", "--set", f"INFERENCE.samples={args.samples}",
           *(a for m, f in files.items() for a in (f"--{m.lower()}", str(f)))]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    line = next((line for line in proc.stderr.splitlines() if "time to first prediction" in line), "")
    return {"wall": wall, "report": line.split("time to first prediction", 1)[1].strip() if line else "not printed"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=("ours", "twin"), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--case", default="Brats18_Demo_HGG_001", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=str(REPO / "model_zoo" / "uhved_demo"),
                    help="trained model directory whose weights both implementations run (default: the zoo's)")
    ap.add_argument("--twin-python", default=sys.executable,
                    help="a Python with torch and monai installed (default: this one)")
    ap.add_argument("--shape", default="240,240,155", help="case shape (voxels of 1 mm; default BraTS 240,240,155)")
    ap.add_argument("--window", type=int, default=144)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.key=value",
                    help="extra config override for ours (e.g. to measure a change)")
    ap.add_argument("--quick", action="store_true", help="a 96^3 case, 48^3 windows, one repeat (smoke test)")
    ap.add_argument("--no-first", action="store_true", help="skip the time-to-first-prediction CLI run")
    args = ap.parse_args(argv)
    if args.worker:
        return (worker_ours if args.worker == "ours" else worker_twin)(args)
    if args.quick:
        args.shape, args.window, args.repeats = "96,96,72", 48, 1
    missing = twin_missing(args.twin_python)
    if missing:
        print(f"benchmarks/inference.py: the MONAI twin needs torch and monai in --twin-python {args.twin_python} "
              f"({missing}); install them in a separate environment with `pip install -r "
              f"benchmarks/requirements-twin.txt` and pass its python", file=sys.stderr)
        return 2

    sys.path.insert(0, str(REPO))
    from uhved_tf.demo.synthetic import make_demo_dataset

    tmp = Path(tempfile.mkdtemp(prefix="uhved_inference_bench_"))
    args.data = tmp / "data"
    shape = tuple(int(v) for v in args.shape.split(","))
    make_demo_dataset(args.data, n_subjects=1, shape=shape, spacing=(1.0, 1.0, 1.0), seed=0)
    weights = tmp / "weights.npz"
    ours = Worker(sys.executable, "ours", args, weights, tmp / "ours.log")
    ours.run(tmp / "ours_warmup")                             # trace + the weights file
    twin = Worker(args.twin_python, "twin", args, weights, tmp / "twin.log")
    twin.run(tmp / "twin_warmup")
    runs = {"ours": [], "twin": []}
    for r in range(args.repeats):
        runs["ours"].append(ours.run(tmp / "ours"))
        runs["twin"].append(twin.run(tmp / "twin"))
    # The posterior mean (no sampling: no random numbers that differ between TensorFlow and PyTorch)
    # separates the two implementations' differences from the Monte Carlo noise of the samples.
    ours.run(tmp / "ours_mean", samples=0)
    twin.run(tmp / "twin_mean", samples=0)
    rss = {"ours": ours.stop()["rss"], "twin": twin.stop()["rss"]}
    first_call = None if args.no_first else time_to_first_prediction(args, tmp)

    def med(kind, key):
        return statistics.median(r[key] for r in runs[kind])

    label = case_files(args.data, args.case)["T1"].with_name(f"{args.case}_seg.nii.gz")
    dices = {}
    for run in ("", "_mean"):
        seg = {k: tmp / f"{k}{run}" / f"{args.case}_seg.nii.gz" for k in ("ours", "twin")}
        dices[run] = ({k: case_dice(p, label) for k, p in seg.items()}, agreement(seg["ours"], seg["twin"]))

    o = runs["ours"][-1]
    print(f"machine: {os.cpu_count()} CPUs ({cpu_name()}), oneDNN on; case {'x'.join(map(str, shape))} (1 mm, "
          f"synthetic brain), working grid {'x'.join(map(str, o['working']))}, brain box "
          f"{'x'.join(map(str, o['box']))}; window {args.window}^3, overlap {args.overlap}, "
          f"Gaussian blending, {args.samples} samples, all outputs; weights of {args.model}; "
          f"medians of {args.repeats} alternated runs")
    print(f"{'stage (s)':34s}{'ours':>10s}{'monai twin':>12s}")
    for key, name in (("load", "load + preprocess"), ("network", "network"), ("encoders", "  encoders (by E:D)"),
                      ("decoders", "  fusion + decoders (by E:D)"), ("blending", "blending"),
                      ("resample", "resampling back"), ("write", "writing"), ("total", "total")):
        twin_value = f"{med('twin', key):12.2f}" if key in runs["twin"][0] else f"{'':12s}"
        print(f"{name:34s}{med('ours', key):10.2f}{twin_value}")
    print(f"{'windows':34s}{o['windows']:10d}{runs['twin'][-1]['windows']:12d}")
    print(f"computed voxels / brain-box voxels: ours {o['computed'] / o['bbox']:.2f}, twin "
          f"{runs['twin'][-1]['computed'] / o['bbox']:.2f} (box {o['bbox']} voxels)")
    print(f"per window: encoders E {o['e_ms']:.0f} ms, fusion + decoders with {args.samples} samples D "
          f"{o['d_ms']:.0f} ms")
    print(f"peak RSS: ours {rss['ours'] / 2**30:.2f} GB, twin {rss['twin'] / 2**30:.2f} GB")
    for run, what in (("", f"{args.samples} samples"), ("_mean", "posterior mean")):
        (d, agree) = dices[run]
        print(f"Dice on the case's label, {what} (whole/core/enhancing): ours "
              + "/".join(f"{100 * v:.2f}" for v in d["ours"].values()) + ", twin "
              + "/".join(f"{100 * v:.2f}" for v in d["twin"].values())
              + f"; largest difference {100 * max(abs(d['ours'][r] - d['twin'][r]) for r in REGIONS):.2f} points; "
              f"the segmentations agree on {100 * agree:.3f} % of the voxels")
    if first_call:
        print(f"time to first prediction (CLI, 64^3 case, one 64^3 window): {first_call['wall']:.1f} s wall from "
              f"launch to exit; the process's own line: {first_call['report']}")
    ours_s, twin_s = med("ours", "total"), med("twin", "total")
    print(f"inference: ours {ours_s:.1f} s, monai twin {twin_s:.1f} s, ratio {twin_s / ours_s:.2f}")  # twin / ours


def twin_missing(python) -> str:
    """Why ``python`` cannot run the twin (torch or monai not importable), or "" when it can."""
    try:
        proc = subprocess.run([python, "-c", "import torch, monai"], capture_output=True, text=True, timeout=120)
    except OSError as exc:
        return f"cannot run it: {exc.strerror or exc}"
    if proc.returncode:
        return (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return ""


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        return name + (", AVX-512" if "avx512f" in info else ", AVX2" if "avx2" in info else "")
    except (OSError, StopIteration):
        return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
