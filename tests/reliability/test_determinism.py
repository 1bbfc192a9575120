"""Determinism (issue #8, item 6): with ``[SYSTEM] seed`` set, two CPU training runs of one config
log identical losses (every term, bit for bit, and the same modality subsets) for the first 20
iterations, and their models write identical inference outputs."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from tests.reliability.conftest import TRAINED_ITERATIONS
from tests.reliability.helpers import tiny_config

pytestmark = pytest.mark.slow   # two trainings and two inferences: ~30 s of CPU

COMPARED = ("iteration", "lr", "total", "dice", "ce", "recon", "kl", "weight_decay", "subsets")


def test_two_seeded_runs_give_identical_losses_and_outputs(trained, tmp_path):
    from uhved_tf.application import Application

    _, data, model_a, cfg_a, rows_a = trained
    model_b = tmp_path / "model_b"
    cfg_b = tiny_config(data, model_b, "--max_iter", str(TRAINED_ITERATIONS))
    Application(cfg_b).train(progress=False)
    rows_b = list(csv.DictReader(open(model_b / "metrics.csv")))

    assert len(rows_a) == len(rows_b) == TRAINED_ITERATIONS
    assert [{k: r[k] for k in COMPARED} for r in rows_a] == [{k: r[k] for k in COMPARED} for r in rows_b]
    assert len({r["total"] for r in rows_a}) > 1            # the losses do move

    outputs = []
    for cfg in (cfg_a, cfg_b):
        app = Application(cfg)
        subject = app.discover(need_label=False)[0]
        out = tmp_path / f"out_{cfg.system.model_dir.name}"
        assert app.run_inference([subject], [tuple(cfg.modalities)], out, progress=False) == {}
        outputs.append({p.name: np.asanyarray(nib.load(str(p)).dataobj) for p in sorted(out.iterdir())})
    assert sorted(outputs[0]) == sorted(outputs[1]) and len(outputs[0]) == 5   # seg + 4 synthesised
    for name in outputs[0]:
        assert np.array_equal(outputs[0][name], outputs[1][name]), name
