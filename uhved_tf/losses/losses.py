"""Loss terms and their weighted total (Dorent et al. 2019, section 3, "Choices of the losses").

    L = w_dice * L_dice + w_ce * L_ce + w_recon * L_2 + w_kl * KL   (+ weight decay)

with the paper's weights 1, 1, 0.1, 0.1. Each term is a pure function of tensors:

* ``soft_dice_loss``: 1 - mean over classes of 2 sum(p y) / (sum p + sum y), sums over the batch
  and all voxels (NiftyNet's ``Dice`` on softmax probabilities, background included).
* ``cross_entropy_loss``: mean voxel-wise categorical cross-entropy.
* ``reconstruction_loss``: mean squared error of the synthesised images against the input
  images, over every modality the *data* has (``data_mask``), not only the drawn subset; a
  modality missing from a subject's data contributes nothing (paper, section 2.2).
* ``kl_loss``: closed-form KL(q_pi || N(0, I)) (``tfp.distributions.kl_divergence``), averaged
  over latent elements at each scale and then over scales (as the original implementation).

A term is added only when the network produces what it needs (``recon``, ``posterior_*``), so
the same function serves U-HVED and the deterministic baselines.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from uhved_tf.model.fusion import kl_to_prior


@dataclass(frozen=True)
class LossWeights:
    dice: float = 1.0
    ce: float = 1.0
    recon: float = 0.1
    kl: float = 0.1

    @classmethod
    def from_training_settings(cls, training) -> "LossWeights":
        return cls(dice=training.loss_weight_dice, ce=training.loss_weight_ce,
                   recon=training.loss_weight_recon, kl=training.loss_weight_kl)


def soft_dice_loss(logits, labels, num_classes: int, smooth: float = 1e-5):
    prob = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    onehot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    axes = list(range(len(prob.shape) - 1))
    intersection = tf.reduce_sum(prob * onehot, axis=axes)
    denominator = tf.reduce_sum(prob, axis=axes) + tf.reduce_sum(onehot, axis=axes)
    return 1.0 - tf.reduce_mean((2.0 * intersection + smooth) / (denominator + smooth))


def cross_entropy_loss(logits, labels):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=tf.cast(logits, tf.float32)))


def reconstruction_loss(recon, image, data_mask):
    """MSE over voxels, averaged over the (sample, modality) pairs present in ``data_mask`` [B, M]."""
    sq = tf.reduce_mean(tf.square(tf.cast(recon, tf.float32) - tf.cast(image, tf.float32)), axis=[1, 2, 3])
    present = tf.cast(data_mask, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(sq * present), tf.reduce_sum(present))


def kl_loss(posterior_loc, posterior_logvar):
    terms = [tf.reduce_mean(kl_to_prior(loc, logvar)) for loc, logvar in zip(posterior_loc, posterior_logvar)]
    return tf.add_n(terms) / float(len(terms))


def total_loss(outputs, batch, num_classes: int, weights: LossWeights, regularization=None):
    """Returns ``(total, terms)``; ``terms`` maps each term's name to its unweighted value."""
    labels = tf.cast(batch["label"], tf.int32)
    terms = {
        "dice": soft_dice_loss(outputs["seg_logits"], labels, num_classes),
        "ce": cross_entropy_loss(outputs["seg_logits"], labels),
    }
    total = weights.dice * terms["dice"] + weights.ce * terms["ce"]
    if "recon" in outputs:
        data_mask = batch.get("data_mask", tf.ones_like(batch["modality_mask"]))
        terms["recon"] = reconstruction_loss(outputs["recon"], batch["image"], data_mask)
        total += weights.recon * terms["recon"]
    if "posterior_loc" in outputs:
        terms["kl"] = kl_loss(outputs["posterior_loc"], outputs["posterior_logvar"])
        total += weights.kl * terms["kl"]
    if regularization:
        terms["weight_decay"] = tf.add_n([tf.cast(r, tf.float32) for r in regularization])
        total += terms["weight_decay"]
    terms["total"] = total
    return total, terms
