"""Loss terms against closed forms / reference implementations, and the weighted total."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from uhved_tf.losses import (LossForms, LossWeights, cross_entropy_loss, kl_loss, reconstruction_loss,
                             soft_dice_loss, total_loss)

pytestmark = pytest.mark.filterwarnings("error")  # warnings as errors

K = 4
SHAPE = (2, 4, 5, 3)  # [B, D, H, W]
M = 4


def labels_using_every_class(rng, shape=SHAPE):
    labels = rng.integers(0, K, size=shape)
    labels.flat[:K] = np.arange(K)
    return labels.astype(np.int32)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --- soft Dice ---------------------------------------------------------------------------------

def test_dice_is_zero_for_perfect_huge_logits(rng):
    labels = labels_using_every_class(rng)
    logits = 1e4 * np.eye(K, dtype=np.float32)[labels]
    assert float(soft_dice_loss(logits, labels, K)) == pytest.approx(0.0, abs=1e-6)


def test_dice_is_zero_for_perfect_prediction_even_with_absent_classes(rng):
    labels = rng.integers(0, 2, size=SHAPE).astype(np.int32)       # classes 2, 3 never occur
    logits = 1e4 * np.eye(K, dtype=np.float32)[labels]
    assert float(soft_dice_loss(logits, labels, K)) == pytest.approx(0.0, abs=1e-6)


def test_dice_is_near_one_for_wrong_huge_logits(rng):
    labels = labels_using_every_class(rng)
    wrong = (labels + 1) % K                                        # every class present, never right
    logits = 1e4 * np.eye(K, dtype=np.float32)[wrong]
    assert float(soft_dice_loss(logits, labels, K)) == pytest.approx(1.0, abs=1e-5)


def test_dice_matches_numpy_formula(rng):
    labels = labels_using_every_class(rng)
    logits = rng.standard_normal(SHAPE + (K,)).astype(np.float32)
    p = softmax(logits.astype(np.float64))
    y = np.eye(K)[labels]
    axes = (0, 1, 2, 3)
    ref = 1.0 - np.mean((2 * (p * y).sum(axes) + 1e-5) / (p.sum(axes) + y.sum(axes) + 1e-5))
    assert float(soft_dice_loss(logits, labels, K)) == pytest.approx(ref, rel=1e-5)


# --- cross-entropy -----------------------------------------------------------------------------

def test_cross_entropy_matches_keras_and_manual_formula(rng):
    labels = labels_using_every_class(rng)
    logits = (3 * rng.standard_normal(SHAPE + (K,))).astype(np.float32)
    ours = float(cross_entropy_loss(logits, labels))
    ref_keras = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits))
    log_p = np.log(softmax(logits.astype(np.float64)))
    manual = -np.mean(np.take_along_axis(log_p, labels[..., None], axis=-1))
    assert ours == pytest.approx(manual, rel=1e-5)
    assert ours == pytest.approx(ref_keras, rel=1e-5)


def test_cross_entropy_is_stable_for_huge_logits(rng):
    labels = labels_using_every_class(rng)
    logits = 1e4 * np.eye(K, dtype=np.float32)[labels]
    assert float(cross_entropy_loss(logits, labels)) == pytest.approx(0.0, abs=1e-6)
    wrong = 1e4 * np.eye(K, dtype=np.float32)[(labels + 1) % K]
    assert float(cross_entropy_loss(wrong, labels)) == pytest.approx(1e4, rel=1e-6)


# --- reconstruction ------------------------------------------------------------------------------

def test_reconstruction_averages_over_present_modalities_only(rng):
    image = rng.standard_normal(SHAPE + (M,)).astype(np.float32)
    recon = rng.standard_normal(SHAPE + (M,)).astype(np.float32)
    data_mask = np.array([[1, 0, 1, 1], [0, 1, 0, 0]], np.float32)
    value = float(reconstruction_loss(recon, image, data_mask))
    mse = ((recon.astype(np.float64) - image) ** 2).mean(axis=(1, 2, 3))  # [B, M]
    assert value == pytest.approx(mse[data_mask > 0].mean(), rel=1e-5)
    # Absent modalities' reconstructions (and images) have no effect at all.
    present = data_mask[:, None, None, None, :] > 0
    recon2 = np.where(present, recon, np.float32(1e6))
    image2 = np.where(present, image, np.float32(-1e6))
    assert float(reconstruction_loss(recon2, image2, data_mask)) == value


def test_reconstruction_with_empty_data_mask_is_zero(rng):
    image = rng.standard_normal(SHAPE + (M,)).astype(np.float32)
    assert float(reconstruction_loss(image + 1, image, np.zeros((2, M), np.float32))) == 0.0


# --- KL over scales --------------------------------------------------------------------------------

def test_kl_loss_averages_per_scale_then_over_scales(rng):
    shapes = [(2, 8, 8, 8, 1), (2, 4, 4, 4, 2), (2, 2, 2, 2, 4)]
    locs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    logvars = [rng.uniform(-3, 3, s).astype(np.float32) for s in shapes]
    per_scale = [np.mean(0.5 * (np.exp(lv.astype(np.float64)) + mu.astype(np.float64) ** 2 - 1 - lv))
                 for mu, lv in zip(locs, logvars)]
    value = float(kl_loss(locs, logvars))
    assert value == pytest.approx(np.mean(per_scale), rel=1e-5)
    # ... which is not the mean over all latent elements pooled together (scales differ in size).
    pooled = np.concatenate([np.ravel(0.5 * (np.exp(lv) + mu ** 2 - 1 - lv))
                             for mu, lv in zip(locs, logvars)]).mean()
    assert abs(value - pooled) > 1e-3


def test_kl_loss_of_the_prior_is_zero():
    zeros = [np.zeros((1, 4, 4, 4, 2), np.float32), np.zeros((1, 2, 2, 2, 4), np.float32)]
    assert float(kl_loss(zeros, zeros)) == pytest.approx(0.0, abs=1e-7)


# --- total ---------------------------------------------------------------------------------------

@pytest.fixture
def batch_and_outputs(rng):
    labels = labels_using_every_class(rng)
    batch = {"label": labels, "image": rng.standard_normal(SHAPE + (M,)).astype(np.float32),
             "modality_mask": np.array([[1, 0, 0, 1], [0, 1, 1, 1]], np.float32)}
    outputs = {"seg_logits": rng.standard_normal(SHAPE + (K,)).astype(np.float32),
               "recon": rng.standard_normal(SHAPE + (M,)).astype(np.float32),
               "posterior_loc": [rng.standard_normal((2, 4, 4, 4, 2)).astype(np.float32)],
               "posterior_logvar": [rng.uniform(-1, 1, (2, 4, 4, 4, 2)).astype(np.float32)]}
    return batch, outputs


def test_total_loss_segmentation_only_network(batch_and_outputs):
    batch, outputs = batch_and_outputs
    seg_only = {"seg_logits": outputs["seg_logits"]}
    weights = LossWeights(dice=2.0, ce=0.5, recon=7.0, kl=9.0)
    total, terms = total_loss(seg_only, batch, K, weights)
    assert set(terms) == {"dice", "ce", "total"}
    assert float(total) == pytest.approx(2.0 * float(terms["dice"]) + 0.5 * float(terms["ce"]), rel=1e-6)
    assert float(terms["total"]) == float(total)


def test_total_loss_adds_recon_kl_and_weight_decay_when_present(batch_and_outputs):
    batch, outputs = batch_and_outputs
    weights = LossWeights(dice=1.0, ce=2.0, recon=0.3, kl=0.7)
    reg = [tf.constant(0.25), tf.constant(0.5)]
    total, terms = total_loss(outputs, batch, K, weights, regularization=reg,
                              forms=LossForms(kl="paper", dice="plain", decay_reduction="sum"))
    assert set(terms) == {"dice", "ce", "recon", "kl", "weight_decay", "total"}
    labels = tf.constant(batch["label"])
    assert float(terms["dice"]) == pytest.approx(float(soft_dice_loss(outputs["seg_logits"], labels, K)))
    assert float(terms["ce"]) == pytest.approx(float(cross_entropy_loss(outputs["seg_logits"], labels)))
    # Without a data_mask every modality is reconstructed (not only the drawn input subset).
    assert float(terms["recon"]) == pytest.approx(
        float(reconstruction_loss(outputs["recon"], batch["image"], np.ones((2, M), np.float32))))
    assert float(terms["kl"]) == pytest.approx(
        float(kl_loss(outputs["posterior_loc"], outputs["posterior_logvar"])))
    assert float(terms["weight_decay"]) == pytest.approx(0.75)
    expected = (1.0 * float(terms["dice"]) + 2.0 * float(terms["ce"]) + 0.3 * float(terms["recon"])
                + 0.7 * float(terms["kl"]) + 0.75)
    assert float(total) == pytest.approx(expected, rel=1e-6)


def test_total_loss_uses_data_mask_for_reconstruction(batch_and_outputs):
    batch, outputs = batch_and_outputs
    data_mask = np.array([[1, 1, 0, 1], [1, 0, 1, 1]], np.float32)
    _, terms = total_loss(outputs, {**batch, "data_mask": data_mask}, K, LossWeights())
    assert float(terms["recon"]) == pytest.approx(
        float(reconstruction_loss(outputs["recon"], batch["image"], data_mask)))


def test_paper_default_weights():
    assert LossWeights() == LossWeights(dice=1.0, ce=1.0, recon=0.1, kl=0.1)
