"""Fixtures of the reliability tests: one tiny demo data set made once per session (each test
copies it before damaging it) and one tiny model trained once, in-process, for the inference
fault tests and the determinism test."""

from __future__ import annotations

import shutil

import pytest

TRAINED_ITERATIONS = 20

from tests.reliability.helpers import make_tiny_data, tiny_config


@pytest.fixture(scope="session")
def pristine_data(tmp_path_factory):
    """Two demo subjects, 32x32x24 voxels of 6 mm (never modified: copy it with ``data``)."""
    folder = tmp_path_factory.mktemp("pristine") / "data"
    ids = make_tiny_data(folder, n_subjects=2)
    return folder, ids


@pytest.fixture
def data(pristine_data, tmp_path):
    """A private copy of the pristine data set: ``(folder, subject ids)``."""
    folder, ids = pristine_data
    copy = tmp_path / "data"
    shutil.copytree(folder, copy)
    return copy, ids


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny U-HVED trained for 20 iterations in this process (seed 7) on 3 subjects.

    Returns ``(root, data folder, model dir, config, metrics rows)``; tests must not modify the
    model dir (copy it)."""
    import csv

    from uhved_tf.application import Application

    root = tmp_path_factory.mktemp("trained")
    data = root / "data"
    make_tiny_data(data, n_subjects=3, seed=2)
    model = root / "model_a"
    cfg = tiny_config(data, model, "--max_iter", str(TRAINED_ITERATIONS))
    Application(cfg).train(progress=False)
    rows = list(csv.DictReader(open(model / "metrics.csv")))
    return root, data, model, cfg, rows
