"""Encode once, decode many: all subsets in one pass equal separate per-subset runs; TTA."""

import numpy as np
import pytest
import tensorflow as tf

from uhved_tf.data.subsets import subset_masks
from uhved_tf.inference.core import TTA_FLIPS
from uhved_tf.inference.predictor import WindowPredictor, predict_volume
from uhved_tf.model.uhved import UHVED


@pytest.fixture(scope="module")
def model():
    tf.keras.utils.set_random_seed(1)
    m = UHVED(("T1", "T1c", "T2", "Flair"), 4, base_width=2, levels=2)
    m({"image": tf.zeros((1, 8, 8, 8, 4)), "modality_mask": tf.ones((1, 4))})
    return m


@pytest.fixture(scope="module")
def volume():
    return np.random.default_rng(3).normal(size=(12, 10, 9, 4)).astype(np.float32)


def test_all_subsets_at_once_equal_separate_runs(model, volume):
    masks = subset_masks(4)
    together = predict_volume(WindowPredictor(model, masks, samples=3, seed=5), volume, (8, 8, 8), overlap=0.5)
    for s in (0, 3, 5, 10, 14):   # singles, pairs, triples, all four (each run traces anew: keep it short)
        mask = masks[s]
        alone = predict_volume(WindowPredictor(model, mask[None], samples=3, seed=5), volume, (8, 8, 8),
                               overlap=0.5)[0]
        for key in ("seg_prob", "synth", "uncertainty"):
            np.testing.assert_allclose(together[s][key], alone[key], rtol=1e-5, atol=1e-6, err_msg=f"{s} {key}")


def test_samples_change_the_segmentation_and_seed_is_reproducible(model, volume):
    mask = subset_masks(4)[-1:]
    a = predict_volume(WindowPredictor(model, mask, samples=4, seed=1), volume, (8, 8, 8))[0]["seg_prob"]
    b = predict_volume(WindowPredictor(model, mask, samples=4, seed=1), volume, (8, 8, 8))[0]["seg_prob"]
    c = predict_volume(WindowPredictor(model, mask, samples=0, seed=1), volume, (8, 8, 8))[0]["seg_prob"]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-5)


def test_tta_averages_the_mirrored_predictions(model):
    vol = np.random.default_rng(4).normal(size=(8, 8, 8, 4)).astype(np.float32)   # one window
    mask = subset_masks(4)[[4, 14]]
    tta = predict_volume(WindowPredictor(model, mask, samples=0, tta=True), vol, (8, 8, 8))
    plain = WindowPredictor(model, mask, samples=0)
    expected = [np.zeros_like(r["seg_prob"]) for r in tta]
    for flip in TTA_FLIPS:
        flipped = np.flip(vol, axis=flip) if flip else vol
        for s, r in enumerate(predict_volume(plain, flipped, (8, 8, 8))):
            expected[s] += (np.flip(r["seg_prob"], axis=flip) if flip else r["seg_prob"]) / len(TTA_FLIPS)
    for s in range(2):
        np.testing.assert_allclose(tta[s]["seg_prob"], expected[s], rtol=1e-5, atol=1e-6)


def test_a_static_batch_with_a_padded_last_batch_gives_the_dynamic_batch_outputs(model, volume, samples=2):
    """batch_size fixes the traced batch (fused instance norms); the last, shorter batch is padded
    (with samples too: a window's samples do not depend on the windows after it)."""
    mask = subset_masks(4)[[2, 14]]
    dynamic = predict_volume(WindowPredictor(model, mask, samples=samples, seed=3), volume, (8, 8, 8),
                             batch_size=3)
    static_predictor = WindowPredictor(model, mask, samples=samples, seed=3, batch_size=3)
    static = predict_volume(static_predictor, volume, (8, 8, 8), batch_size=3)
    assert static_predictor.calls == 3                           # 8 windows: 3 + 3 + 2 (padded)
    assert set(static_predictor.traced_batches) == {3}
    for s in range(2):
        for key in ("seg_prob", "synth", "uncertainty"):
            np.testing.assert_allclose(static[s][key], dynamic[s][key], rtol=1e-4, atol=2e-5)
    with pytest.raises(ValueError, match="at most 3"):
        static_predictor(np.zeros((4, 8, 8, 8, 4), np.float32))


def test_a_case_with_fewer_windows_than_the_batch_computes_only_its_windows(model, volume):
    """A batch size larger than the case's window count traces the count (no padded work); later
    cases with more windows trace the full batch, and the result of a case does not depend on
    which batch sizes were traced before it."""
    mask = subset_masks(4)[-1:]
    small, four = volume[:8, :8, :8], volume[:, :, :8]          # one 8^3 window; 2 x 2 x 1 windows
    predictor = WindowPredictor(model, mask, samples=2, seed=3, batch_size=3)
    one = predict_volume(predictor, small, (8, 8, 8), batch_size=3)[0]
    assert set(predictor.traced_batches) == {1}
    first = predict_volume(predictor, four, (8, 8, 8), batch_size=3)[0]     # 3, then 1 (traced: not padded)
    assert set(predictor.traced_batches) == {1, 3} and predictor.calls == 3
    fresh = WindowPredictor(model, mask, samples=2, seed=3, batch_size=3)
    fresh.calls = 1                                              # the same call indices (sampling seeds)
    again = predict_volume(fresh, four, (8, 8, 8), batch_size=3)[0]          # 3, then 1 padded to 3
    assert set(fresh.traced_batches) == {3}
    for key in ("seg_prob", "synth", "uncertainty"):
        np.testing.assert_allclose(first[key], again[key], rtol=1e-4, atol=2e-5)
    assert one["seg_prob"].shape == (8, 8, 8, first["seg_prob"].shape[-1])


def test_outputs_not_asked_for_are_not_computed(model, volume):
    mask = subset_masks(4)[-1:]
    full = predict_volume(WindowPredictor(model, mask, samples=0), volume, (8, 8, 8))[0]
    seg_only = predict_volume(WindowPredictor(model, mask, samples=0, outputs=()), volume, (8, 8, 8))[0]
    assert set(full) == {"seg_prob", "synth", "uncertainty"} and set(seg_only) == {"seg_prob"}
    np.testing.assert_allclose(seg_only["seg_prob"], full["seg_prob"], rtol=1e-6, atol=1e-7)


def test_voxels_outside_the_brain_box_are_background(model):
    vol = np.zeros((30, 12, 12, 4), np.float32)
    vol[2:10, 2:10, 2:10] = np.random.default_rng(5).normal(size=(8, 8, 8, 4))
    predictor = WindowPredictor(model, subset_masks(4)[-1:], samples=0)
    res = predict_volume(predictor, vol, (8, 8, 8), overlap=0.5)[0]
    assert predictor.calls == 1                                  # one window on the 8^3 brain, not 7 on 30x12x12
    outside = np.ones(vol.shape[:3], bool)
    outside[:10] = False
    np.testing.assert_array_equal(res["seg_prob"][outside], [[1.0, 0, 0, 0]] * int(outside.sum()))
    assert not res["synth"][outside].any() and not res["uncertainty"][outside].any()
    np.testing.assert_allclose(res["seg_prob"][:8].sum(-1), 1.0, rtol=1e-5)
