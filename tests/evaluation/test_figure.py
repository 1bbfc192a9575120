"""Fig. 3 helpers: overlay colours, the default slice, and a PNG of the expected size for a synthetic case."""

import numpy as np
import pytest

from tests.conftest import MODALITIES
from uhved_tf.evaluation.figure import figure3, figure_size_pixels, overlay, tumour_slice

SHAPE = (32, 32, 32)


def synthetic_case(rng):
    """A bright ball 'brain' with a tumour (oedema shell, core, enhancing rim) centred on slice 20."""
    grid = np.indices(SHAPE).astype(float)
    d = np.sqrt((grid[0] - 16) ** 2 + (grid[1] - 16) ** 2 + (grid[2] - 20) ** 2)
    brain = np.sqrt((grid[0] - 16) ** 2 + (grid[1] - 16) ** 2 + (grid[2] - 16) ** 2) < 14
    seg = np.zeros(SHAPE, np.int32)
    seg[d < 7.1] = 2
    seg[d < 4] = 4
    seg[d < 2.5] = 1
    seg[~brain] = 0
    inputs = {m: brain * (1.0 + 0.2 * i) + 0.5 * (seg > 0) + 0.05 * rng.standard_normal(SHAPE)
              for i, m in enumerate(MODALITIES)}
    synth = np.stack([inputs[m] + 0.1 * rng.standard_normal(SHAPE) for m in MODALITIES], axis=-1)
    return inputs, synth, seg


def test_overlay_colours_are_dominant():
    gray = np.linspace(0, 1, 16).reshape(4, 4)
    seg = np.zeros((4, 4), np.int32)
    seg[1, 1], seg[2, 2], seg[3, 3] = 2, 1, 4
    rgb = overlay(gray, seg, alpha=0.5, window=(0.0, 1.0))
    assert rgb.shape == (4, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
    for (i, j), channel in (((1, 1), 1), ((2, 2), 0), ((3, 3), 2)):  # green, red, blue
        others = [c for c in range(3) if c != channel]
        assert all(rgb[i, j, channel] > rgb[i, j, c] + 0.4 for c in others), (i, j, rgb[i, j])
    # unlabelled pixels stay grey with the normalised intensity
    np.testing.assert_allclose(rgb[0, 0], [0, 0, 0])
    np.testing.assert_allclose(rgb[0, 3], [gray[0, 3]] * 3)
    with pytest.raises(ValueError, match="same shape|one shape"):
        overlay(gray, seg[:3])


def test_tumour_slice_picks_the_largest_axial_section(rng):
    _, _, seg = synthetic_case(rng)
    assert tumour_slice(seg) == 20
    assert tumour_slice(np.zeros((4, 4, 6))) == 3


def test_figure3_writes_png_of_expected_size(rng, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    inputs, synth, seg = synthetic_case(rng)
    subsets = [("Flair",), ("T1c", "T2"), tuple(MODALITIES)]
    rows = [(s, {"synth": synth, "seg": seg}) for s in subsets]
    out = figure3(inputs, rows, MODALITIES, tmp_path / "fig" / "fig3.png", panel_inches=1.0, dpi=50)
    assert out.is_file()
    img = imread(out)
    n_cols = len(MODALITIES) + 2 + 1
    assert img.shape[:2] == figure_size_pixels(3, n_cols, 1.0, 50) == (150, 350)
    # the segmentation panel of the first row shows some green, red and blue
    seg_panel = img[:50, -50:, :3]
    for channel in range(3):
        others = [c for c in range(3) if c != channel]
        dominant = np.all([seg_panel[..., channel] > seg_panel[..., c] + 0.2 for c in others], axis=0)
        assert dominant.any(), channel


def test_figure3_rejects_bad_input(rng, tmp_path):
    pytest.importorskip("matplotlib")
    inputs, synth, seg = synthetic_case(rng)
    rows = [(("Flair",), {"synth": synth, "seg": seg})]
    with pytest.raises(ValueError, match='did you mean "Flair"'):
        figure3(inputs, rows, MODALITIES, tmp_path / "x.png", show=("Fliar",))
    with pytest.raises(ValueError, match='inputs has no "Flair"'):
        figure3({"T1": inputs["T1"]}, rows, MODALITIES, tmp_path / "x.png")
    with pytest.raises(ValueError, match="slice_index"):
        figure3(inputs, rows, MODALITIES, tmp_path / "x.png", slice_index=32)
