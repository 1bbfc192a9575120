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
