"""Shared pieces of the reliability tests: a tiny config, a tiny data set copied per test, file
snapshots ("nothing was written half-way"), and one-line error checks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from tests.helpers import TINY_INI as E2E_TINY_INI
from tests.helpers import ini_with

REPO = Path(__file__).resolve().parents[2]
MODALITY_SUFFIXES = {"T1": "_t1", "T1c": "_t1ce", "T2": "_t2", "Flair": "_flair", "label": "_seg"}
DEMO_SHAPE = (32, 32, 24)
DEMO_SPACING = (6.0, 6.0, 6.0)

# The smallest useful U-HVED: the end-to-end tests' tiny config (16^3 windows) with two levels and
# base width 2 (building and tracing the network is most of a tiny run), one thread, 4 iterations
# without checkpoints and every subject in training.
TINY_INI = ini_with(E2E_TINY_INI, {
    "SYSTEM": {"seed": "7", "num_threads": "1"},
    "NETWORK": {"base_width": "2", "levels": "2", "queue_length": "2"},
    "TRAINING": {"max_iter": "4", "save_every_n": "0", "exclude_fraction_for_inference": "0"},
    "INFERENCE": {"window_overlap": "0", "samples": "1", "save_uncertainty": "False"},
})


def make_tiny_data(folder: Path, n_subjects: int = 2, seed: int = 1) -> list[str]:
    from uhved_tf.demo.synthetic import make_demo_dataset
    return make_demo_dataset(folder, n_subjects=n_subjects, shape=DEMO_SHAPE, spacing=DEMO_SPACING, seed=seed)


def write_config(path: Path, data: Path, model: Path, extra: str = "") -> Path:
    path.write_text(TINY_INI.format(data=data, model=model) + extra)
    return path


def tiny_config(data: Path, model: Path, *overrides: str, set_overrides=()):
    from uhved_tf.config import parse_config_text
    return parse_config_text(TINY_INI.format(data=data, model=model), model.parent, list(overrides),
                             list(set_overrides))


def subject_file(data: Path, subject: str, section: str) -> Path:
    """The file of ``section`` (T1, T1c, T2, Flair, label) of demo subject ``subject``."""
    return next(data.rglob(f"{subject}{MODALITY_SUFFIXES[section]}.nii.gz"))


def rewrite(path: Path, data: np.ndarray | None = None, affine=None, dtype=None) -> Path:
    """Rewrite a NIfTI file in place with new voxels and/or affine (header kept otherwise)."""
    img = nib.load(str(path))
    arr = np.asanyarray(img.dataobj) if data is None else data
    header = img.header.copy()
    if dtype is not None:
        header.set_data_dtype(dtype)
    else:
        header.set_data_dtype(arr.dtype)
    out = nib.Nifti1Image(arr, img.affine if affine is None else affine, header=header)
    nib.save(out, str(path))
    return path


def snapshot(*folders: Path) -> dict[str, str]:
    """{path: sha1} of every file under ``folders`` (missing folders are empty)."""
    out = {}
    for folder in folders:
        if folder.exists():
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    out[str(p)] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def assert_one_line(message: str, *fragments: str) -> None:
    assert "\n" not in message.strip(), f"error message is not one line:\n{message}"
    for f in fragments:
        assert f in message, f"{f!r} not in error message: {message}"


def run_cli(*args, check=False, timeout=600, env_extra=None, cwd=None):
    """``python -m uhved_tf ARGS`` in a subprocess (returns the CompletedProcess)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-m", "uhved_tf", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"uhved_tf {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def error_lines(stderr: str) -> list[str]:
    """The CLI's error lines (``uhved_tf CMD: error: ...``)."""
    return [line for line in stderr.splitlines() if ": error: " in line]
