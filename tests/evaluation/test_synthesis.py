"""Synthesis scores: ideal values for identical images, monotone in noise, masks respected,
SSIM equal to scikit-image's where it is installed, and the Table-1-style Markdown."""

import itertools
import math

import numpy as np
import pytest

from tests.conftest import MODALITIES
from uhved_tf.subset import subset_indices
from uhved_tf.evaluation.synthesis import (
    mae,
    psnr,
    ssim,
    ssim_map,
    synthesis_scores,
    synthesis_table_markdown,
)

SHAPE = (20, 18, 16)


def smooth_image(rng, shape=SHAPE):
    """A smooth 'anatomy' with structure at a few scales, roughly in [0, 1]."""
    grid = np.indices(shape).astype(float)
    centre = [(s - 1) / 2 for s in shape]
    r2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    img = np.exp(-r2 / (2 * 5.0**2)) + 0.3 * np.sin(grid[0] / 2.0) * np.cos(grid[1] / 3.0)
    return img + 0.05 * rng.standard_normal(shape)


def ball(shape=SHAPE, radius=6.0):
    grid = np.indices(shape).astype(float)
    centre = [(s - 1) / 2 for s in shape]
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


@pytest.mark.parametrize("use_mask", [False, True])
def test_identical_images_give_ideal_values(rng, use_mask):
    img = smooth_image(rng)
    mask = ball() if use_mask else None
    assert psnr(img, img, mask) == math.inf
    assert ssim(img, img, mask) == 1.0
    assert mae(img, img, mask) == 0.0


@pytest.mark.parametrize("use_mask", [False, True])
def test_scores_worsen_monotonically_with_noise(rng, use_mask):
    ref = smooth_image(rng)
    mask = ball() if use_mask else None
    noise = rng.standard_normal(SHAPE)
    levels = (0.02, 0.1, 0.3)
    p = [psnr(ref + s * noise, ref, mask) for s in levels]
    s = [ssim(ref + s * noise, ref, mask) for s in levels]
    m = [mae(ref + s * noise, ref, mask) for s in levels]
    assert p[0] > p[1] > p[2]
    assert 1.0 > s[0] > s[1] > s[2]
    assert m[0] < m[1] < m[2]


def test_psnr_closed_form(rng):
    ref = rng.uniform(0, 1, SHAPE)
    ref.flat[0], ref.flat[1] = 0.0, 2.0  # data range 2
    pred = ref + 0.1  # MSE = 0.01
    assert psnr(pred, ref) == pytest.approx(10 * math.log10(4 / 0.01))
    assert psnr(pred, ref, data_range=1.0) == pytest.approx(20.0)
    assert mae(pred, ref) == pytest.approx(0.1)


def test_values_outside_the_mask_do_not_matter(rng):
    ref = smooth_image(rng)
    pred = ref + 0.1 * rng.standard_normal(SHAPE)
    mask = ball()
    ref2, pred2 = ref.copy(), pred.copy()
    ref2[~mask] = rng.uniform(-100, 100, int((~mask).sum()))
    pred2[~mask] = np.nan
    for score in (psnr, ssim, mae):
        assert score(pred2, ref2, mask) == score(pred, ref, mask), score.__name__
    smap = ssim_map(pred, ref, mask)
    assert np.isnan(smap[~mask]).all() and np.isfinite(smap[mask]).all()
    # and without the mask those values do count
    assert psnr(pred, ref2) != psnr(pred, ref, mask)


def test_errors_are_clear(rng):
    img = smooth_image(rng)
    with pytest.raises(ValueError, match="same shape"):
        psnr(img, img[:-1])
    with pytest.raises(ValueError, match="mask is empty"):
        ssim(img, img, np.zeros(SHAPE, bool))
    with pytest.raises(ValueError, match="data_range"):
        psnr(img, np.ones(SHAPE))


@pytest.mark.parametrize("shape", [(32, 28), (16, 14, 12)])
def test_ssim_matches_scikit_image(rng, shape):
    metrics = pytest.importorskip("skimage.metrics")
    ref = smooth_image(rng, shape)
    pred = ref + 0.1 * rng.standard_normal(shape)
    kwargs = dict(data_range=1.7, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    mssim, full = metrics.structural_similarity(pred, ref, full=True, **kwargs)
    ours = ssim_map(pred, ref, data_range=1.7)
    np.testing.assert_allclose(ours, full, rtol=1e-10, atol=1e-12)
    assert ssim(pred, ref, data_range=1.7) == pytest.approx(float(full.mean()), rel=1e-10)
    pad = 5  # scikit-image's mean drops a border of (11 - 1) / 2 voxels
    inner = tuple(slice(pad, s - pad) for s in shape)
    assert float(ours[inner].mean()) == pytest.approx(mssim, rel=1e-10)


def test_synthesis_scores_keys_and_values(rng):
    ref = np.stack([smooth_image(rng) for _ in MODALITIES], axis=-1)
    synth = ref.copy()
    synth[..., 1] += 0.1 * rng.standard_normal(SHAPE)
    mask = ball()
    scores = synthesis_scores(synth, ref, mask, MODALITIES)
    assert set(scores) == {f"{s}_{m}" for s, m in itertools.product(("psnr", "ssim", "mae"), MODALITIES)}
    assert scores["psnr_T1"] == math.inf and scores["ssim_T1"] == 1.0 and scores["mae_T1"] == 0.0
    assert scores["psnr_T1c"] == pytest.approx(psnr(synth[..., 1], ref[..., 1], mask))
    assert scores["ssim_T1c"] < 1.0
    with pytest.raises(ValueError, match="channels"):
        synthesis_scores(synth[..., :3], ref[..., :3], mask, MODALITIES)


def test_synthesis_table_markdown_layout():
    subsets = [tuple(MODALITIES[i] for i in s) for s in subset_indices(len(MODALITIES))]
    summary = {}
    for i, subset in enumerate(subsets):
        vals = {}
        for j, m in enumerate(MODALITIES):
            vals[f"psnr_{m}"] = 20.0 + i + j
            vals[f"ssim_{m}"] = 0.5 + 0.01 * i
            vals[f"mae_{m}"] = 0.1
        summary["+".join(subset)] = vals
    summary["+".join(subsets[-1])]["psnr_T1"] = math.inf
    table = synthesis_table_markdown(summary, subsets, MODALITIES)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(subsets) + 1
    assert "PSNR T1 (dB)" in lines[0] and "SSIM Flair" in lines[0] and "MAE" not in table
    ncols = len(MODALITIES) * 3
    for line, subset in zip(lines[2:], subsets):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == ncols
        assert cells[: len(MODALITIES)] == ["●" if m in subset else "○" for m in MODALITIES]
        # inputs (reconstructions) in parentheses, missing modalities (synthesis) bare
        for j, m in enumerate(MODALITIES):
            assert cells[len(MODALITIES) + 2 * j].startswith("(") == (m in subset)
    assert "(inf)" in lines[2 + len(subsets) - 1]
    mean = [c.strip() for c in lines[-1].strip("|").split("|")]
    assert mean[0] == "Mean"
    # mean PSNR of T1 over the subsets where T1 is missing
    missing_t1 = [i for i, s in enumerate(subsets) if "T1" not in s]
    assert float(mean[len(MODALITIES)]) == pytest.approx(np.mean([20.0 + i for i in missing_t1]), abs=0.005)
    with pytest.raises(ValueError, match="no subset"):
        synthesis_table_markdown({}, subsets, MODALITIES)
