"""Metrics against closed forms on small synthetic masks, and HD95 against a brute-force reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

from uhved_tf.evaluation.metrics import (
    REGIONS,
    dice,
    evaluate_case,
    hd95,
    postprocess_enhancing,
    region_mask,
    sensitivity,
    specificity,
    volumes_ml,
)

SHAPE = (16, 16, 16)


def box(shape=SHAPE, lo=(4, 4, 4), hi=(10, 10, 10)):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def sphere(shape=SHAPE, centre=(8, 8, 8), radius=5.0):
    grid = np.indices(shape).astype(float)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return d2 <= radius**2


def brute_force_hd95(a, b, spacing):
    """Independent reference: surface = foreground voxels with a 6-neighbour in the background or
    outside the image; all pairwise distances; 95th percentile of the union of both directions."""

    def surface_points(m):
        p = np.pad(m, 1, constant_values=False)
        interior = p[1:-1, 1:-1, 1:-1].copy()
        for axis in range(3):
            for shift in (-1, 1):
                interior &= np.roll(p, shift, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(m & ~interior) * np.asarray(spacing, dtype=float)

    pa, pb = surface_points(a), surface_points(b)
    d = cdist(pa, pb)
    return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95))


# ---------------------------------------------------------------------------------------------
# region masks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("region", "expected"),
    [("whole", [0, 1, 1, 0, 1]), ("core", [0, 1, 0, 0, 1]), ("enhancing", [0, 0, 0, 0, 1])],
)
def test_region_mask_brats_labels(region, expected):
    labels = np.array([0, 1, 2, 3, 4])  # 3 is not a BraTS 2018 label: in no region
    mask = region_mask(labels, region)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, np.array(expected, dtype=bool))


def test_region_mask_custom_label_map():
    labels = np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(
        region_mask(labels, "enhancing", {"enhancing": (3,)}), [False, False, False, True]
    )


def test_region_mask_unknown_region_suggests():
    with pytest.raises(ValueError, match='did you mean "whole"'):
        region_mask(np.zeros(3), "wole")


# ---------------------------------------------------------------------------------------------
# Dice, sensitivity, specificity
# ---------------------------------------------------------------------------------------------
def test_overlap_metrics_hand_computed():
    # pred: 6x6x6 = 216 voxels; ref: shifted by 2 along axis 0 -> overlap 4*6*6 = 144
    pred, ref = box(), box(lo=(6, 4, 4), hi=(12, 10, 10))
    assert dice(pred, ref) == pytest.approx(2 * 144 / (216 + 216))
    assert sensitivity(pred, ref) == pytest.approx(144 / 216)
    negatives = 16**3 - 216
    assert specificity(pred, ref) == pytest.approx((negatives - 72) / negatives)


def test_identical_sphere():
    s = sphere()
    assert dice(s, s) == 1.0
    assert hd95(s, s) == 0.0
    assert sensitivity(s, s) == 1.0
    assert specificity(s, s) == 1.0


def test_disjoint_dice_zero():
    assert dice(box(hi=(6, 6, 6)), box(lo=(10, 10, 10), hi=(12, 12, 12))) == 0.0


def test_integer_masks_nonzero_is_foreground():
    a = box().astype(np.uint8) * 7
    assert dice(a, box()) == 1.0


@pytest.mark.parametrize(
    ("pred_empty", "ref_empty", "d", "sens", "spec"),
    [
        (True, True, 1.0, 1.0, 1.0),
        (False, True, 0.0, 0.0, None),
        (True, False, 0.0, 0.0, 1.0),
    ],
)
def test_empty_mask_rules(pred_empty, ref_empty, d, sens, spec):
    empty, full = np.zeros(SHAPE, bool), box()
    pred = empty if pred_empty else full
    ref = empty if ref_empty else full
    assert dice(pred, ref) == d
    assert sensitivity(pred, ref) == sens
    if spec is not None:
        assert specificity(pred, ref) == spec
    for value in (dice(pred, ref), sensitivity(pred, ref), specificity(pred, ref)):
        assert np.isfinite(value)


def test_specificity_no_negatives():
    full = np.ones((4, 4, 4), bool)
    assert specificity(full, full) == 1.0
    assert specificity(np.zeros_like(full), full) == 1.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="same shape"):
        hd95(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))


# ---------------------------------------------------------------------------------------------
# HD95
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 2.5, 0.7), (2.5, 2.5, 2.5)])
def test_hd95_offset_plates(axis, k, spacing):
    """Two one-voxel-thick plates offset by k voxels: every surface voxel is exactly k·spacing[axis]
    from the other plate, so HD95 = k · spacing[axis] (anisotropic spacing included)."""
    a = np.zeros(SHAPE, bool)
    b = np.zeros(SHAPE, bool)
    plate = [slice(3, 12)] * 3
    plate[axis] = 2
    a[tuple(plate)] = True
    plate[axis] = 2 + k
    b[tuple(plate)] = True
    assert hd95(a, b, spacing) == pytest.approx(k * spacing[axis])
    assert hd95(b, a, spacing) == pytest.approx(k * spacing[axis])


@pytest.mark.parametrize("k", [1, 2, 5])
def test_hd95_single_voxels(k):
    a, b = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    a[2, 3, 4] = True
    b[2, 3 + k, 4 + k] = True
    assert hd95(a, b, (1.0, 2.0, 0.5)) == pytest.approx(np.hypot(2.0 * k, 0.5 * k))


def test_hd95_shifted_cubes_far_apart():
    """Large offset: every distance is between k and the diagonal bound; brute force agrees."""
    a, b = box(hi=(6, 6, 6)), box(lo=(10, 4, 4), hi=(16, 6, 6))
    assert hd95(a, b) == pytest.approx(brute_force_hd95(a, b, (1, 1, 1)))


@pytest.mark.parametrize(
    ("pred_empty", "ref_empty"), [(True, True), (True, False), (False, True)]
)
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.0, 2.5)])
def test_hd95_empty_rules(pred_empty, ref_empty, spacing):
    shape = (8, 10, 12)
    empty, full = np.zeros(shape, bool), box(shape, (2, 2, 2), (5, 5, 5))
    pred = empty if pred_empty else full
    ref = empty if ref_empty else full
    expected = 0.0 if pred_empty and ref_empty else np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))
    assert hd95(pred, ref, spacing) == pytest.approx(expected)


def test_hd95_mask_touching_image_edge():
    """Voxels on the image edge are surface voxels (outside counts as background)."""
    a = np.zeros(SHAPE, bool)
    a[:, :, :5] = True
    b = np.zeros(SHAPE, bool)
    b[:, :, :8] = True
    assert hd95(a, b) == pytest.approx(brute_force_hd95(a, b, (1, 1, 1)))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    spacing=st.tuples(*[st.sampled_from([0.5, 1.0, 2.5])] * 3),
    density=st.floats(0.01, 0.5),
)
def test_hd95_matches_brute_force(seed, spacing, density):
    """The cropped distance-transform implementation equals the O(n²) definition exactly."""
    rng = np.random.default_rng(seed)
    shape = (9, 11, 13)
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    # random masks inside random sub-boxes (so the crop is a strict sub-volume most of the time)
    for m in (a, b):
        lo = rng.integers(0, 5, size=3)
        hi = lo + rng.integers(1, 6, size=3)
        sub = tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))
        m[sub] = rng.random(m[sub].shape) < density
        m[tuple(lo)] = True  # non-empty
    assert hd95(a, b, spacing) == pytest.approx(brute_force_hd95(a, b, spacing), abs=1e-9)


def test_hd95_bad_spacing():
    with pytest.raises(ValueError, match="spacing"):
        hd95(box(), box(), (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hd95(box(), box(), (1.0, 0.0, 1.0))


# ---------------------------------------------------------------------------------------------
# post-processing, evaluate_case, volumes
# ---------------------------------------------------------------------------------------------
def _labels_with_et(n_et, shape=(20, 20, 20)):
    labels = np.full(shape, 2, dtype=np.int16)
    labels.reshape(-1)[:n_et] = 4
    return labels


@pytest.mark.parametrize(("n_et", "relabelled"), [(0, False), (1, True), (499, True), (500, False), (800, False)])
def test_postprocess_enhancing_threshold(n_et, relabelled):
    labels = _labels_with_et(n_et)
    before = labels.copy()
    out = postprocess_enhancing(labels, et_min_voxels=500)
    np.testing.assert_array_equal(labels, before)  # input untouched
    assert out.dtype == labels.dtype
    if relabelled:
        assert not np.any(out == 4)
        assert np.count_nonzero(out == 1) == n_et
    else:
        np.testing.assert_array_equal(out, labels)
    # core and whole are unchanged by construction
    for region in ("whole", "core"):
        np.testing.assert_array_equal(region_mask(out, region), region_mask(labels, region))


def test_evaluate_case_keys_and_values():
    ref = np.zeros(SHAPE, np.int16)
    ref[box()] = 2
    ref[box(lo=(5, 5, 5), hi=(9, 9, 9))] = 1
    ref[box(lo=(6, 6, 6), hi=(8, 8, 8))] = 4
    pred = ref.copy()
    pred[0, 0, 0] = 4  # one stray enhancing voxel: removed by the post-processing
    result = evaluate_case(pred, ref, (1.0, 1.0, 1.0), et_min_voxels=500)
    expected_keys = {f"{m}_{r}" for m in ("dice", "hd95", "sensitivity", "specificity") for r in REGIONS}
    expected_keys |= {"dice_enhancing_pp", "hd95_enhancing_pp"}
    assert set(result) == expected_keys
    assert all(isinstance(v, float) and np.isfinite(v) for v in result.values())
    assert result["dice_enhancing"] == pytest.approx(2 * 8 / (9 + 8))
    # the reference ET has 8 voxels < 500 too, but the post-processing only touches the prediction
    assert result["dice_enhancing_pp"] == 0.0
    assert result["hd95_enhancing_pp"] == pytest.approx(np.sqrt(3 * 16**2))
    assert result["dice_core"] == pytest.approx(2 * 64 / (65 + 64))
    assert result["sensitivity_whole"] == 1.0


def test_evaluate_case_pp_keeps_large_enhancing():
    ref = np.zeros((24, 24, 24), np.int16)
    ref[2:12, 2:12, 2:12] = 4  # 1000 voxels
    result = evaluate_case(ref, ref, (1, 1, 1), et_min_voxels=500)
    assert result["dice_enhancing_pp"] == 1.0 and result["hd95_enhancing_pp"] == 0.0


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 2.0, 2.5)])
def test_volumes_ml(spacing):
    labels = np.zeros((10, 10, 10), np.int16)
    labels.reshape(-1)[:100] = 2
    labels.reshape(-1)[100:130] = 1
    labels.reshape(-1)[130:150] = 4
    voxel_ml = np.prod(spacing) / 1000.0
    vols = volumes_ml(labels, spacing)
    assert vols == pytest.approx({"whole": 150 * voxel_ml, "core": 50 * voxel_ml, "enhancing": 20 * voxel_ml})
