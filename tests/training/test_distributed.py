"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 train a few steps of the real
CLI into one shared model_dir and end with identical weights (the gradients were all-reduced
across workers); only the chief (worker 0) writes the model_dir, the other worker's collective
checkpoint saves go to a temporary folder it deletes (the one-step MirroredStrategy check is in
tests/reliability/test_training_safety.py)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import FAST_INI

pytestmark = pytest.mark.slow


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


# The CLI, plus the worker's final weights saved to argv[1] (a non-chief worker keeps no checkpoint).
WORKER = """
import sys
import numpy as np
from uhved_tf.training import trainer
from uhved_tf.training.checkpoint import model_variables
fit = trainer.Trainer.fit
def fit_and_dump(self, *args, **kwargs):
    out = fit(self, *args, **kwargs)
    np.savez(sys.argv[1], **{k: v.numpy() for k, v in model_variables(self.model).items()})
    return out
trainer.Trainer.fit = fit_and_dump
from uhved_tf.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_two_workers_train_one_model_that_only_the_chief_writes(tmp_path):
    from uhved_tf.demo.synthetic import make_demo_dataset
    data = tmp_path / "data"
    make_demo_dataset(data, n_subjects=4, shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0), seed=2)
    model = tmp_path / "model"
    cfg = tmp_path / "tiny.ini"
    cfg.write_text(FAST_INI.format(data=data, model=model))   # the all-reduce, not the network, is tested
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for i in range(2):
        (tmp_path / f"tmp{i}").mkdir()
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                                     "task": {"type": "worker", "index": i}}),
                   TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmp_path / f"tmp{i}"))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / f"weights{i}.npz"), "train", "-c", str(cfg),
             "--max_iter", "3", "--tensorboard_every_n", "1", "--set", "SYSTEM.distribution_strategy=multi_worker",
             # A validation round at 3: the chief's verdict reaches the other worker, both save "best".
             "--set", "TRAINING.validation_every_n=3", "--set", "TRAINING.exclude_fraction_for_validation=0.25"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, "\n---\n".join(e[-3000:] for _, e in outputs)
        # Really one training over two workers, not two independent (and identical) runs.
        assert "CollectiveAllReduceStrategy on 2 replica(s), 2 workers" in err, err[-3000:]
    chief_log, other_log = outputs[0][1], outputs[1][1]
    assert "this one the chief" in chief_log and "not the chief" in other_log
    weights = [np.load(tmp_path / f"weights{i}.npz") for i in range(2)]
    assert weights[0].files
    for k in weights[0].files:
        np.testing.assert_array_equal(weights[0][k], weights[1][k], err_msg=k)
    # The chief's checkpoint is those weights, at iteration 3.
    reader = tf.train.load_checkpoint(str(model / "checkpoints" / "ckpt-3"))
    assert int(reader.get_tensor("iteration/.ATTRIBUTES/VARIABLE_VALUE")) == 3
    for k in weights[0].files:
        escaped = k.replace(".", "..")   # (tf.train.Checkpoint's escaping of a dict key)
        np.testing.assert_array_equal(reader.get_tensor(f"model/{escaped}/.ATTRIBUTES/VARIABLE_VALUE"),
                                      weights[0][k], err_msg=k)
    # One writer: each iteration logged once, one TensorBoard file, one validation row, one best.
    rows = list(csv.DictReader(open(model / "metrics.csv")))
    assert [r["iteration"] for r in rows] == ["1", "2", "3"]
    assert len(list((model / "logs" / "train").glob("events.out.tfevents.*"))) == 1
    assert [r["iteration"] for r in csv.DictReader(open(model / "validation.csv"))] == ["3"]
    assert sorted(p.name for p in (model / "checkpoints_best").glob("best-*.index")) == ["best-3.index"]
    assert "saved checkpoint" in chief_log and "saved checkpoint" not in other_log
    assert "resolved config written" in chief_log and "resolved config written" not in other_log
    # The other worker's temporary checkpoints (and split copy) are gone.
    assert not list((tmp_path / "tmp1").iterdir()), list((tmp_path / "tmp1").iterdir())
