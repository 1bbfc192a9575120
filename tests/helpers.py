"""Shared test helpers: the tiny end-to-end config (and a faster variant), and running the real CLI
in a subprocess or, for calls that end early, through its ``main`` in this process.

Test modules import these from here (never from another test module)."""

from __future__ import annotations

import os
import subprocess
import sys

TINY_INI = """
[T1]
path_to_search = {data}
filename_contains = _t1
filename_not_contains = _t1ce
spatial_window_size = 16, 16, 16
axcodes = R, A, S
[T1c]
path_to_search = {data}
filename_contains = _t1ce
spatial_window_size = 16, 16, 16
axcodes = R, A, S
[T2]
path_to_search = {data}
filename_contains = _t2
spatial_window_size = 16, 16, 16
axcodes = R, A, S
[Flair]
path_to_search = {data}
filename_contains = _flair
spatial_window_size = 16, 16, 16
axcodes = R, A, S
[label]
path_to_search = {data}
filename_contains = _seg
interp_order = 0
spatial_window_size = 16, 16, 16
axcodes = R, A, S
[SYSTEM]
model_dir = {model}
seed = 3
[NETWORK]
name = u_hved
activation_function = leakyrelu
batch_size = 2
base_width = 4
levels = 3
whitening = True
normalise_foreground_only = True
foreground_type = mean_plus
volume_padding_size = 2
queue_length = 4
[TRAINING]
lr = 0.001
max_iter = 2
save_every_n = 1
sample_per_volume = 2
exclude_fraction_for_inference = 0.25
random_flipping_axes = 0, 1, 2
[INFERENCE]
spatial_window_size = 16, 16, 16
window_overlap = 0.25
samples = 2
[MULTIMODAL]
image = T1, T1c, T2, Flair
label = label
num_classes = 4
"""


def ini_with(text: str, changes: dict[str, dict[str, str]]) -> str:
    """``text`` (an INI) with ``changes[section][key] = value`` set: existing keys replaced in
    place, missing ones added at the end of their section."""
    out, section, pending = [], None, {k: dict(v) for k, v in changes.items()}

    def flush():
        out.extend(f"{k} = {v}" for k, v in pending.pop(section, {}).items())

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            flush()
            section = stripped[1:-1]
        elif "=" in stripped and section in pending:
            key = stripped.split("=", 1)[0].strip()
            if key in pending[section]:
                line = f"{key} = {pending[section].pop(key)}"
        out.append(line)
    flush()
    return "\n".join(out) + "\n"


# TINY_INI with the cheapest U-HVED that still has two latent scales (levels 2, base width 2). A
# tiny run's time goes to building and tracing the network, not to its steps: levels 3 -> 2 halves
# both. For tests of the pipeline, the CLI and the files it writes, not of the network's depth.
FAST_INI = ini_with(TINY_INI, {"NETWORK": {"base_width": "2", "levels": "2"}})


def run_cli(*args, check=True, cwd=None):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run([sys.executable, "-m", "uhved_tf", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"uhved_tf {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def run_cli_here(*args, check=True, cwd=None):
    """``uhved_tf ARGS`` through the CLI's ``main`` in this process: the exit code ``main`` returns
    (``python -m uhved_tf`` exits with it) and everything written to stdout / stderr, at the file
    descriptor level too (so TensorFlow's C++ log lines are caught as in a subprocess).

    For calls where a subprocess would add nothing but its own TensorFlow import (~5 s): an error
    exit, nothing left to do, a report from CSV files, a variant of a command that the same module
    runs in a subprocess. Signals, exit statuses seen by a shell and ``python -m uhved_tf`` itself
    need ``run_cli``. The CLI's logging set-up, the working directory and the environment are
    restored afterwards."""
    import contextlib
    import io
    import logging
    import tempfile

    from uhved_tf.cli import main

    logger = logging.getLogger("uhved_tf")
    saved_logger = (logger.handlers[:], logger.level, logger.propagate)
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryFile() as fd_out, tempfile.TemporaryFile() as fd_err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved_fds = os.dup(1), os.dup(2)
        os.dup2(fd_out.fileno(), 1)
        os.dup2(fd_err.fileno(), 2)
        try:
            if cwd is not None:
                os.chdir(cwd)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main([str(a) for a in args])
                except SystemExit as exc:        # argparse's errors (2) and --help (0)
                    code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
        finally:
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            os.chdir(saved_cwd)
            logger.handlers[:] = saved_logger[0]
            logger.setLevel(saved_logger[1])          # (also clears the loggers' level caches)
            logger.propagate = saved_logger[2]
            os.environ.clear()
            os.environ.update(saved_env)
        fd_out.seek(0)
        fd_err.seek(0)
        stdout = fd_out.read().decode(errors="replace") + out.getvalue()
        stderr = fd_err.read().decode(errors="replace") + err.getvalue()
    proc = subprocess.CompletedProcess(["uhved_tf", *map(str, args)], code or 0, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"uhved_tf {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


# --- the synthetic demo cases in the layouts users hold (issue 17) ----------------------------------
# BraTS 2018 labels (1 necrotic core, 2 oedema, 4 enhancing) -> MSD / nnU-Net's BraTS conversion
# (1 oedema, 2 non-enhancing, 3 enhancing) and BraTS 2023 (1 necrotic core, 2 oedema, 3 enhancing).
TO_DECATHLON = {0: 0, 1: 2, 2: 1, 4: 3}
TO_BRATS2023 = {0: 0, 1: 1, 2: 2, 4: 3}
BRATS2018_SUFFIXES = ("t1", "t1ce", "t2", "flair")
NNUNET_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}


def dataset_in_layout(root, layout: str, n: int = 4, n_test: int = 0, shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0)):
    """The synthetic demo cases (``shape`` voxels of ``spacing`` mm) written in ``layout``: brats2023 (one
    folder per case, ``BraTS-GLI-0000i-000-t1n.nii.gz``...), msd (``Task01_BrainTumour``: 4-D
    images FLAIR, T1w, t1gd, T2w + dataset.json) or nnunet (``Dataset137_BraTS2021``: one file per
    channel, region-based dataset.json). The last ``n_test`` cases go to imagesTs without labels
    (msd, nnunet). Returns the dataset folder."""
    import json
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    from uhved_tf.demo.synthetic import make_demo_dataset

    root = Path(root)
    src = root / "brats2018_source"
    make_demo_dataset(src, n_subjects=n, shape=shape, spacing=spacing, seed=1)
    cases = sorted(p.parent for p in src.rglob("*_seg.nii.gz"))

    def read(case, suffix):
        img = nib.load(str(next(case.glob(f"*_{suffix}.nii.gz"))))
        return np.asarray(img.dataobj), img

    def relabel(data, table):
        out = np.zeros(data.shape, np.uint8)
        for old, new in table.items():
            out[data == old] = new
        return out

    if layout == "brats2023":
        out = root / "BraTS2023"
        for i, case in enumerate(cases):
            sid = f"BraTS-GLI-{i:05d}-000"
            (out / sid).mkdir(parents=True)
            for old, new in zip((*BRATS2018_SUFFIXES, "seg"), ("t1n", "t1c", "t2w", "t2f", "seg")):
                data, img = read(case, old)
                data = relabel(data, TO_BRATS2023) if old == "seg" else data
                nib.save(nib.Nifti1Image(data, img.affine, img.header), str(out / sid / f"{sid}-{new}.nii.gz"))
        return out
    out = root / ("Task01_BrainTumour" if layout == "msd" else "Dataset137_BraTS2021")
    for part in ("imagesTr", "labelsTr", "imagesTs"):
        (out / part).mkdir(parents=True)
    training, test = [], []
    order = ("flair", "t1", "t1ce", "t2") if layout == "msd" else BRATS2018_SUFFIXES
    for i, case in enumerate(cases):
        sid = f"BRATS_{i + 1:03d}"
        images = "imagesTs" if i >= n - n_test else "imagesTr"
        volumes = [read(case, s) for s in order]
        affine = volumes[0][1].affine
        if layout == "msd":
            stacked = np.stack([v for v, _ in volumes], axis=-1).astype(np.float32)
            nib.save(nib.Nifti1Image(stacked, affine), str(out / images / f"{sid}.nii.gz"))
        else:
            for k, (v, img) in enumerate(volumes):
                nib.save(nib.Nifti1Image(v, affine, img.header), str(out / images / f"{sid}_{k:04d}.nii.gz"))
        if images == "imagesTs":
            test.append(f"./imagesTs/{sid}.nii.gz")
            continue
        seg, img = read(case, "seg")
        nib.save(nib.Nifti1Image(relabel(seg, TO_DECATHLON), affine), str(out / "labelsTr" / f"{sid}.nii.gz"))
        training.append({"image": f"./imagesTr/{sid}.nii.gz", "label": f"./labelsTr/{sid}.nii.gz"})
    if layout == "msd":
        meta = {"name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
                "numTraining": len(training), "numTest": len(test), "training": training, "test": test}
    else:
        meta = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}, "labels": NNUNET_LABELS,
                "regions_class_order": [1, 2, 3], "numTraining": len(training), "file_ending": ".nii.gz"}
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    return out


def layout_ini(data, model, convention: str, base: str = FAST_INI) -> str:
    """``base`` (TINY_INI-like) reading ``[DATASET] path = data`` in ``convention``'s layout: the
    input sections keep their processing keys and lose their file keys."""
    lines = [line for line in base.format(data=data, model=model).splitlines()
             if not line.startswith(("path_to_search", "filename_contains", "filename_not_contains"))]
    text = "\n".join(lines) + "\n"
    return ini_with(text, {"MULTIMODAL": {"label_values": "0, 1, 2, 3"}}).replace(
        "[MULTIMODAL]", f"[DATASET]\npath = {data}\nconvention = {convention}\n[MULTIMODAL]")


def write_tiny_subject(folder, sid: str, rng, missing=()) -> None:
    """A 16^3 subject (a brain sphere, a small tumour) in BraTS 2018 naming (``<id>_t1.nii.gz``,
    ``_t1ce``, ``_t2``, ``_flair``, ``_seg``: what TINY_INI finds), without the ``missing``
    modalities (``("T2",)``: an incomplete subject)."""
    import nibabel as nib
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    z, y, x = np.mgrid[:16, :16, :16]
    brain = (z - 8) ** 2 + (y - 8) ** 2 + (x - 8) ** 2 < 36
    label = np.zeros((16, 16, 16), np.uint8)
    label[6:10, 6:10, 6:10] = 2
    label[7:9, 7:9, 7:9] = 4
    for m, suffix in zip(("T1", "T1c", "T2", "Flair"), BRATS2018_SUFFIXES):
        if m not in missing:
            img = np.where(brain, rng.uniform(1, 2, brain.shape), 0).astype(np.float32)
            nib.save(nib.Nifti1Image(img, np.eye(4)), str(folder / f"{sid}_{suffix}.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(folder / f"{sid}_seg.nii.gz"))


def nifti_declaring(path, shape, nifti2: bool = False, dtype="int16"):
    """A small valid NIfTI file (4x4x4 voxels, identity affine) whose header then declares
    ``shape`` (up to 7 dimensions): a damaged header over far too few bytes, e.g. 32767^3 voxels
    or a NIfTI-2 of 10^63. ``.nii.gz`` (gzipped) or ``.nii`` by the name of ``path``."""
    import gzip
    import struct
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    image_class = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    raw = bytearray(image_class(np.zeros((4, 4, 4), dtype), np.eye(4)).to_bytes())
    dims = [len(shape), *shape] + [1] * (7 - len(shape))
    if nifti2:
        struct.pack_into("=8q", raw, 16, *dims)     # NIfTI-2: dim[8] int64 at byte 16
    else:
        struct.pack_into("=8h", raw, 40, *dims)     # NIfTI-1: dim[8] int16 at byte 40
    path = Path(path)
    path.write_bytes(gzip.compress(bytes(raw)) if path.name.endswith(".gz") else bytes(raw))
    return path
