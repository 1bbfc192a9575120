"""benchmarks/performance.py: its Conv3D FLOP count against the hand formula (fast), and its
``--quick`` run end to end printing every figure with its target (slow).

The numbers themselves are not checked: speed targets live in the benchmark's output, never in
timed unit tests.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import tensorflow as tf

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "performance.py"


@pytest.fixture(scope="module")
def performance():
    spec = importlib.util.spec_from_file_location("performance_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                        # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def forward_graph(model, shape):
    return tf.function(lambda x: model(x)).get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph


def test_flops_of_one_conv3d_are_the_hand_formula(performance):
    model = keras.Sequential([keras.Input((6, 8, 10, 3)), keras.layers.Conv3D(5, 3, padding="same")])
    flops = performance.conv3d_flops(forward_graph(model, (2, 6, 8, 10, 3)))
    assert flops == {"forward": 2 * 3**3 * 3 * 5 * (2 * 6 * 8 * 10), "backward": 0}


def test_flops_count_the_output_voxels_of_an_anisotropic_valid_conv(performance):
    model = keras.Sequential([keras.Input((6, 8, 10, 3)), keras.layers.Conv3D(4, (3, 1, 2), padding="valid")])
    flops = performance.conv3d_flops(forward_graph(model, (1, 6, 8, 10, 3)))
    assert flops["forward"] == 2 * (3 * 1 * 2) * 3 * 4 * (4 * 8 * 9)


def test_backward_flops_skip_the_unused_gradient_of_the_input(performance):
    first = keras.layers.Conv3D(4, 3, padding="same")
    second = keras.layers.Conv3D(6, 3, padding="same")
    model = keras.Sequential([keras.Input((8, 8, 8, 2)), first, second])

    @tf.function
    def train_step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x))
        return tape.gradient(loss, model.trainable_variables)

    graph = train_step.get_concrete_function(tf.TensorSpec((1, 8, 8, 8, 2), tf.float32)).graph
    f1, f2 = 2 * 27 * 2 * 4 * 8**3, 2 * 27 * 4 * 6 * 8**3
    # Both kernels' gradients, the second conv's input gradient; not the input image's gradient.
    assert performance.conv3d_flops(graph) == {"forward": f1 + f2, "backward": f1 + 2 * f2}


@pytest.mark.slow
def test_quick_run_prints_every_figure_with_its_target():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1800)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for label in ("TF_ENABLE_ONEDNN_OPTS=", "training efficiency at", "pipeline overhead", "time to first step at",
                  "peak RSS at", "peak RSS, one training step at", "15 subsets / one subset",
                  "10 samples / posterior mean", "seconds per case"):
        assert out.count(label) >= 1, (label, out)
    summary = out[out.index("\nsummary"):].splitlines()[1:]
    figures = [line for line in summary if line.startswith("   ")]
    # The PyTorch twin's figure is there when torch is installed, and said to be skipped otherwise.
    with_torch = importlib.util.find_spec("torch") is not None
    assert ("PyTorch twin step / ours" if with_torch else "PyTorch twin: skipped") in out, out
    assert len(figures) == 8 + with_torch, out
    assert all(line.endswith(("PASS", "MISS", "(no target)")) for line in figures), out
