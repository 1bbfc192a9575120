"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 train a few steps of the real
CLI and end with identical weights (the gradients were all-reduced across workers)."""

from __future__ import annotations

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


def test_two_workers_end_with_identical_weights(tmp_path):
    from uhved_tf.demo.synthetic import make_demo_dataset
    data = tmp_path / "data"
    make_demo_dataset(data, n_subjects=4, shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0), seed=2)
    cfg = tmp_path / "tiny.ini"
    cfg.write_text(FAST_INI.format(data=data, model=tmp_path / "unused"))   # the all-reduce, not the network, is tested
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                                     "task": {"type": "worker", "index": i}}),
                   TF_CPP_MIN_LOG_LEVEL="2")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "uhved_tf", "train", "-c", str(cfg), "--max_iter", "3",
             "--set", "SYSTEM.distribution_strategy=multi_worker",
             "--set", f"SYSTEM.model_dir={tmp_path / f'worker{i}'}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        # Really one training over two workers, not two independent (and identical) runs.
        assert "CollectiveAllReduceStrategy on 2 replica(s)" in err  # MultiWorkerMirroredStrategy, err[-3000:]
    readers = [tf.train.load_checkpoint(str(tmp_path / f"worker{i}" / "checkpoints" / "ckpt-3")) for i in range(2)]
    names = [k for k in readers[0].get_variable_to_shape_map() if k.startswith("model/")]
    assert names
    for k in names:
        np.testing.assert_array_equal(readers[0].get_tensor(k), readers[1].get_tensor(k), err_msg=k)
    # Training did something: the iteration counter reached 3 on both.
    for r in readers:
        assert int(r.get_tensor("iteration/.ATTRIBUTES/VARIABLE_VALUE")) == 3
