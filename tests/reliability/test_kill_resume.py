"""kill -9 while a checkpoint is being written (issue #8, item 2).

One model directory goes through four SIGKILLs, each at another point of writing a checkpoint
(see kill_points.py: shards written but not merged, torn index/data files, a half-written
metadata.json, half-deleted old checkpoints), and one ``train --resume`` after each. After every
kill the latest checkpoint named by the state file is complete (every tensor reads back,
checksums verified); the last resume finishes, every iteration is logged exactly once, and the
loss curve is the uninterrupted one (the session's in-process run with the same config and
seed)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.reliability.conftest import TRAINED_ITERATIONS
from tests.reliability.helpers import REPO, write_config

pytestmark = pytest.mark.slow

MAX_ITER = 6
# (kill point, on its n-th occurrence in that run, latest complete checkpoint afterwards)
CHAIN = [
    ("before_merge", 2, 1),   # fresh run: ckpt-1 complete, ckpt-2 still in ckpt-2_temp/
    ("torn_files", 2, 2),     # resumes at 1: ckpt-2 complete, ckpt-3 torn before the state file names it
    ("metadata", 1, 2),       # resumes at 2: killed rewriting metadata.json
    ("during_sweep", 1, 3),   # resumes at 2: ckpt-3 recorded, killed deleting ckpt-1 (max_checkpoints 2)
]
RESUMED_AT = 3


def _train(cfg, *args, kill=None):
    prefix = ["-m", "tests.reliability.kill_points", *map(str, kill)] if kill else ["-m", "uhved_tf"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, *prefix, "train", "-c", str(cfg), "--max_iter", str(MAX_ITER),
                           "--save_every_n", "1", "--max_checkpoints", "2", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def _check_loadable(model_dir, expected_iteration):
    """The state file names a complete checkpoint: every tensor reads back (CRC-checked)."""
    import tensorflow as tf
    from uhved_tf.model_dir import ModelDir

    md = ModelDir(model_dir)
    path = tf.train.latest_checkpoint(str(md.checkpoints))
    assert path == md.checkpoint_path(expected_iteration)
    reader = tf.train.load_checkpoint(path)
    names = reader.get_variable_to_shape_map()
    assert len(names) > 10
    for name in names:
        reader.get_tensor(name)


def test_sigkill_while_checkpointing_then_resume(trained, tmp_path):
    _, data, _, _, reference = trained
    assert MAX_ITER <= TRAINED_ITERATIONS
    model = tmp_path / "model"
    cfg = write_config(tmp_path / "tiny.ini", data, model)
    for i, (point, nth, latest) in enumerate(CHAIN):
        proc = _train(cfg, *(["--resume"] if i else []), kill=(point, nth))
        assert proc.returncode == -signal.SIGKILL, f"{point}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        _check_loadable(model, latest)

    proc = _train(cfg, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and f"(iteration {RESUMED_AT})" in proc.stderr
    _check_loadable(model, MAX_ITER)
    rows = list(csv.DictReader(open(model / "metrics.csv")))
    assert [int(r["iteration"]) for r in rows] == list(range(1, MAX_ITER + 1))
    np.testing.assert_allclose([float(r["total"]) for r in rows],
                               [float(r["total"]) for r in reference[:MAX_ITER]], rtol=1e-5)
    assert [r["subsets"] for r in rows] == [r["subsets"] for r in reference[:MAX_ITER]]
    left = sorted(p.name for p in (model / "checkpoints").iterdir())
    assert not [n for n in left if n.endswith("_temp")], left
    assert {n.split(".")[0] for n in left if n.startswith("ckpt-")} == {f"ckpt-{MAX_ITER - 1}", f"ckpt-{MAX_ITER}"}

    # The model directory serves inference.
    from uhved_tf.application import Application
    from tests.reliability.helpers import tiny_config
    Application(tiny_config(data, model)).load_trained_model()
