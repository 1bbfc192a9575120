"""benchmarks/pytorch_twin.py: the PyTorch twin of U-HVED used as the same-machine comparison.

It must be the *same* network as ``uhved_tf.model.uhved.UHVED`` (same parameter count, same
outputs given the same weights, same conv FLOPs per training step) for the speed ratio to mean
anything. Skipped where torch is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from uhved_tf.losses.losses import LossWeights, total_loss  # noqa: E402
from uhved_tf.model.uhved import UHVED  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "pytorch_twin.py"
MODALITIES = ["T1", "T1c", "T2", "Flair"]


@pytest.fixture(scope="module")
def twin():
    spec = importlib.util.spec_from_file_location("pytorch_twin", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def keras_model(base_width=2, levels=3, size=8):
    model = UHVED(MODALITIES, 4, base_width=base_width, levels=levels)
    model({"image": tf.zeros([1, size, size, size, 4]), "modality_mask": tf.ones([1, 4])})
    return model


def copy_weights(keras_uhved, twin_model):
    """Keras kernels [kd, kh, kw, Cin, Cout] -> torch [Cout, Cin, kd, kh, kw], layer by layer."""
    def conv(k, t):
        t.weight.copy_(torch.from_numpy(np.transpose(k.kernel.numpy(), (4, 3, 0, 1, 2))))
        t.bias.copy_(torch.from_numpy(k.bias.numpy()))

    def block(k, t):
        for kn, tn in zip(k.norms, t.norms, strict=True):
            tn.weight.copy_(torch.from_numpy(kn.gamma.numpy()))
            tn.bias.copy_(torch.from_numpy(kn.beta.numpy()))
        for kc, tc in zip(k.convs, t.convs, strict=True):
            conv(kc, tc)

    def decoder(k, t):
        for kb, tb in zip(k.blocks, t.blocks, strict=True):
            block(kb, tb)
        conv(k.head, t.head)

    with torch.no_grad():
        for ke, te in zip(keras_uhved.encoder.encoders, twin_model.encoders, strict=True):
            conv(ke.stem, te.stem)
            for kb, tb in zip(ke.blocks, te.blocks, strict=True):
                block(kb, tb)
        decoder(keras_uhved.seg_decoder, twin_model.seg_decoder)
        for kd, td in zip(keras_uhved.image_decoders, twin_model.image_decoders, strict=True):
            decoder(kd, td)


def test_parameter_count_equals_the_keras_model(twin):
    model = keras_model(base_width=2, levels=3)
    torch_params = sum(p.numel() for p in twin.UHVEDTwin(4, 4, base_width=2, levels=3).parameters())
    assert torch_params == model.count_params()


def test_same_weights_give_the_same_outputs_and_losses(twin, rng):
    size = 8
    model = keras_model(base_width=4, levels=3, size=size)
    tm = twin.UHVEDTwin(4, 4, base_width=4, levels=3)
    copy_weights(model, tm)
    image = rng.normal(size=(1, size, size, size, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=(1, size, size, size))
    mask = np.array([[1, 0, 1, 1]], np.float32)

    out = model({"image": tf.constant(image), "modality_mask": tf.constant(mask)}, training=False)
    timg = torch.from_numpy(image).permute(0, 4, 1, 2, 3).contiguous()
    with torch.no_grad():
        seg, recon, locs, logvars = tm(timg, torch.from_numpy(mask).bool(), sample=False)
        t_loss = twin.losses(tm, seg, recon, locs, logvars, timg, torch.from_numpy(labels), 4,
                             weight_decay=0.0)
    np.testing.assert_allclose(seg.permute(0, 2, 3, 4, 1).numpy(), out["seg_logits"].numpy(),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(recon.permute(0, 2, 3, 4, 1).numpy(), out["recon"].numpy(),
                               rtol=1e-4, atol=1e-4)
    for tl, kl in zip(logvars, out["posterior_logvar"], strict=True):
        np.testing.assert_allclose(tl.permute(0, 2, 3, 4, 1).numpy(), kl.numpy(), rtol=1e-4, atol=1e-4)
    k_loss, _ = total_loss(out, {"image": image, "label": labels, "modality_mask": mask}, 4, LossWeights())
    assert float(t_loss) == pytest.approx(float(k_loss), rel=1e-4)


def test_conv_flops_equal_the_keras_training_graph(twin):
    """The twin's analytical count against the Conv3D / backprop ops of a Keras training step,
    counted by benchmarks/performance.py."""
    spec = importlib.util.spec_from_file_location("performance_benchmark_for_twin", REPO / "benchmarks" / "performance.py")
    performance = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = performance                      # its dataclass looks itself up there
    spec.loader.exec_module(performance)
    size = 8
    model = keras_model(base_width=2, levels=3, size=size)

    @tf.function
    def train_step(image, mask):
        with tf.GradientTape() as tape:
            out = model({"image": image, "modality_mask": mask}, training=True)
            loss = tf.reduce_mean(out["seg_logits"]) + tf.reduce_mean(out["recon"]) + tf.add_n(
                [tf.reduce_mean(v) for v in out["posterior_loc"] + out["posterior_logvar"]])
        return tape.gradient(loss, model.trainable_variables)

    graph = train_step.get_concrete_function(tf.TensorSpec((1, size, size, size, 4), tf.float32),
                                             tf.TensorSpec((1, 4), tf.float32)).graph
    keras_flops = sum(performance.conv3d_flops(graph).values())
    assert twin.conv_flops_per_step(twin.UHVEDTwin(4, 4, base_width=2, levels=3), size) == keras_flops


def run_script(base_width):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--size", "16", "--base-width", str(base_width),
                           "--steps", "2", "--threads", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1])


def test_script_prints_one_json_line_and_flops_scale_with_the_width_squared():
    narrow, wide = run_script(2), run_script(4)
    for r in (narrow, wide):
        assert r["size"] == 16 and r["threads"] == 1 and r["torch"] == torch.__version__
        assert r["build_s"] > 0 and r["first_step_s"] > 0 and r["step_s"] > 0
        assert len(r["step_times"]) == 2 and all(t > 0 for t in r["step_times"])
        assert r["peak_rss_bytes"] > 0 and r["params"] > 0 and r["conv_gflop_per_step"] > 0
    assert 3.0 <= wide["conv_gflop_per_step"] / narrow["conv_gflop_per_step"] <= 4.2
    assert wide["params"] > narrow["params"]
