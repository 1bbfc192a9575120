"""The plug-in examples in ``extensions/``: the fusion's maths, and both networks named by dotted
path in an INI (at two levels, width 2), trained for 2 iterations by the real CLI in a fresh
process (which imports the plug-in from the path) and used for inference through the CLI's
``main`` in this process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import FAST_INI, run_cli_here

REPO = Path(__file__).resolve().parents[1]


def test_mean_fusion_averages_the_available_experts(rng):
    import tensorflow as tf
    from extensions.mean_fusion import mean_of_experts
    mu = rng.normal(size=(2, 3, 3, 3, 4, 5)).astype(np.float32)
    logvar = rng.normal(size=mu.shape).astype(np.float32)
    mask = np.array([[1, 0, 1, 1], [0, 0, 0, 0]], np.float32)
    mu[0, ..., 1, :] = np.nan                          # a masked-out expert has no effect, even NaN
    loc, lv = (t.numpy() for t in mean_of_experts(tf.constant(mu), tf.constant(logvar), tf.constant(mask)))
    sel = [0, 2, 3]
    np.testing.assert_allclose(loc[0], mu[0][..., sel, :].mean(axis=-2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.exp(lv[0]), np.exp(logvar[0][..., sel, :]).mean(axis=-2), rtol=1e-5)
    np.testing.assert_array_equal(loc[1], 0.0)        # no modality: the prior N(0, I)
    np.testing.assert_array_equal(lv[1], 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["extensions.zero_fill_unet.ZeroFillUNet", "extensions.mean_fusion.MeanFusionUHVED"])
def test_extension_network_trains_and_segments(name, tmp_path):
    from uhved_tf.demo.synthetic import make_demo_dataset
    data = tmp_path / "data"
    make_demo_dataset(data, n_subjects=2, shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0), seed=4)
    cfg = tmp_path / "ext.ini"
    text = FAST_INI.format(data=data, model=tmp_path / "model").replace("name = u_hved", f"name = {name}")
    cfg.write_text(text.replace("exclude_fraction_for_inference = 0.25", "exclude_fraction_for_inference = 0.5"))
    run_cli_here("train", "-c", cfg, "-q", cwd=REPO)
    assert (tmp_path / "model" / "checkpoints" / "ckpt-2.index").exists()
    run_cli_here("inference", "-c", cfg, "-q", "--modalities", "T1c,Flair", "-o", tmp_path / "out", cwd=REPO)
    assert len(list((tmp_path / "out").glob("*_seg.nii.gz"))) == 1
