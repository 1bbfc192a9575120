"""Loss terms and their weighted total (Dorent et al. 2019, section 3, "Choices of the losses").

    L = w_dice * L_dice + w_ce * L_ce + w_recon * L_2 + w_kl * KL   (+ weight decay)

with the paper's weights 1, 1, 0.1, 0.1. Each term is a pure function of tensors. Three terms
have two forms, chosen in the config (:class:`LossForms`); the original implementation
(ReubenDo/U-HVED, NiftyNet 0.5: ``extensions/u_hved/application.py`` and NiftyNet's
``layer/loss_segmentation.py``) trains with the first of each:

* ``[TRAINING] dice``: ``squared`` is NiftyNet's ``dice`` (Milletari et al. 2016),
  1 - mean_k 2 sum(p_k y_k) / (sum p_k^2 + sum y_k + 1e-5); ``plain`` is
  1 - mean_k (2 sum(p_k y_k) + 1e-5) / (sum p_k + sum y_k + 1e-5). Sums over the batch and every
  voxel, softmax probabilities, background class included.
* ``[TRAINING] kl``: ``original`` is the original code's term, at each scale

      (1/15) sum_S KL(q_S || N(0, I))  +  (1/14) sum_{S != pi} KL(q_pi || q_S)

  over the 15 non-empty subsets S of the modalities (q_S the product of S's experts with the
  prior, pi the subset drawn for this step), averaged over scales; every KL is a mean over
  elements. Every encoder gets a gradient at every step, and each subset's posterior is pulled
  towards the drawn subset's. ``paper`` is the text's KL(q_pi || N(0, I)) alone (mean over
  elements, averaged over scales). A subject lacking some modality *files*
  (``allow_missing_modalities``) uses only the subsets it has, with 1/n and 1/(n-1) instead of
  1/15 and 1/14.
* ``[NETWORK] decay_reduction``: the convolution kernels' penalties ``decay * sum(w^2) / 2`` are
  averaged over the kernels (``mean``, the original's ``reduce_mean`` of the regularisation
  losses) or summed (``sum``, Keras' convention; n_kernels times stronger).

The other terms: ``cross_entropy_loss`` is the mean voxel-wise categorical cross-entropy;
``reconstruction_loss`` the mean squared error of the synthesised images against the input
images over every modality the *data* has (``data_mask``), not only the drawn subset (paper,
section 2.2).

A term is added only when the network produces what it needs (``recon``, ``posterior_*``), so
the same function serves U-HVED and the deterministic baselines.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from uhved_tf.model.fusion import kl_to_prior

KL_FORMS = ("original", "paper")
DICE_FORMS = ("squared", "plain")
DECAY_REDUCTIONS = ("mean", "sum")


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


@dataclass(frozen=True)
class LossForms:
    """Which form of the Dice, KL and weight-decay terms (module docstring)."""
    kl: str = "paper"
    dice: str = "plain"
    decay_reduction: str = "mean"

    def __post_init__(self):
        for name, value, allowed in (("kl", self.kl, KL_FORMS), ("dice", self.dice, DICE_FORMS),
                                     ("decay_reduction", self.decay_reduction, DECAY_REDUCTIONS)):
            if value not in allowed:
                raise ValueError(f"{name} = {value!r}: expected one of {', '.join(allowed)}")

    @classmethod
    def from_settings(cls, training, network) -> "LossForms":
        return cls(kl=training.kl, dice=training.dice, decay_reduction=network.decay_reduction)


def soft_dice_loss(logits, labels, num_classes: int, smooth: float = 1e-5, form: str = "plain"):
    """1 - mean over classes of the soft Dice (``form`` squared or plain, module docstring)."""
    prob = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    onehot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    axes = list(range(len(prob.shape) - 1))
    intersection = tf.reduce_sum(prob * onehot, axis=axes)
    if form == "squared":
        denominator = tf.reduce_sum(tf.square(prob), axis=axes) + tf.reduce_sum(onehot, axis=axes)
        return 1.0 - tf.reduce_mean(2.0 * intersection / (denominator + smooth))
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
    """The paper's form: KL(q_pi || N(0, I)), mean over elements, averaged over scales."""
    terms = [tf.reduce_mean(kl_to_prior(loc, logvar)) for loc, logvar in zip(posterior_loc, posterior_logvar)]
    return tf.add_n(terms) / float(len(terms))


def subset_matrix(num_modalities: int):
    """[2^M - 1, M] float32: row S is the 0/1 mask of the S-th non-empty subset
    (:func:`uhved_tf.subset.subset_masks` as a tensor)."""
    from uhved_tf.subset import subset_masks
    return tf.constant(subset_masks(num_modalities))


def _subset_precisions(expert_loc, expert_logvar):
    """Precision T_S = 1 + sum_{i in S} 1/sigma_i^2 and numerator sum_{i in S} mu_i/sigma_i^2 of every
    non-empty subset: [B, ..., M, C] -> two [B, L, S] (L = the other axes flattened, S = 2^M - 1 in the
    order of :func:`subset_matrix`), by one matrix product with the subsets' 0/1 matrix."""
    mu = tf.linalg.matrix_transpose(tf.cast(expert_loc, tf.float32))          # [B, ..., C, M]
    precision = tf.exp(-tf.linalg.matrix_transpose(tf.cast(expert_logvar, tf.float32)))
    num_modalities = mu.shape[-1]
    a = subset_matrix(num_modalities)
    batch = tf.shape(mu)[0]
    flat = lambda x: tf.reshape(x, [batch, -1, num_modalities])  # noqa: E731
    total = 1.0 + tf.matmul(flat(precision), a, transpose_b=True)
    numerator = tf.matmul(flat(precision * mu), a, transpose_b=True)
    return total, numerator


def all_subset_posteriors(expert_loc, expert_logvar):
    """The product of each non-empty subset's experts with N(0, I), for every subset at once.

    ``expert_*`` [B, ..., M, C] -> ``(loc, logvar)`` [B, ..., C, S] (subset axis last, S = 2^M - 1
    in the order of :func:`subset_matrix`). Precisions are exp(-logvar) of the clipped
    log-variances (|logvar| <= ``logvar_clip``, 50 by default: at most 5e21 each, finite in float32).
    """
    total, numerator = _subset_precisions(expert_loc, expert_logvar)
    shape = tf.concat([tf.shape(expert_loc)[:-2], tf.shape(expert_loc)[-1:], tf.shape(total)[-1:]], axis=0)
    return tf.reshape(numerator / total, shape), tf.reshape(-tf.math.log(total), shape)


def kl_loss_original(posterior_loc, posterior_logvar, expert_loc, expert_logvar, data_mask=None):
    """The original code's KL (module docstring), averaged over scales.

    ``posterior_*`` (lists over scales, [B, ..., C]) are q_pi of the drawn subset; ``expert_*``
    ([B, ..., M, C]) every modality's expert; ``data_mask`` [B, M] the modalities the subject's
    data has (None = all): only subsets inside it count.

    With T_S the subset's precision (variance 1/T_S, log-variance -log T_S) and loc_S its mean:
    KL(q_S || N(0, 1)) = (1/T_S + loc_S^2 - 1 + log T_S) / 2 and
    KL(q_pi || q_S) = (-log T_S - logvar_pi - 1 + (var_pi + (loc_pi - loc_S)^2) T_S) / 2.
    """
    num_modalities = expert_loc[0].shape[-2]
    a = subset_matrix(num_modalities)
    batch = tf.shape(expert_loc[0])[0]
    if data_mask is None:
        valid = tf.ones([batch, a.shape[0]], tf.float32)
    else:
        # S is inside the data's modalities iff it has no modality outside them.
        outside = tf.matmul(a, 1.0 - tf.cast(data_mask, tf.float32), transpose_b=True)   # [S, B]
        valid = tf.cast(tf.transpose(outside) < 0.5, tf.float32)                      # [B, S]
    n = tf.reduce_sum(valid, axis=1)
    terms = []
    for loc_pi, logvar_pi, mu, logvar in zip(posterior_loc, posterior_logvar, expert_loc, expert_logvar):
        total, numerator = _subset_precisions(mu, logvar)                               # [B, L, S]
        loc_s = numerator / total
        log_total = tf.math.log(total)
        loc_pi = tf.reshape(tf.cast(loc_pi, tf.float32), [batch, -1, 1])
        logvar_pi = tf.reshape(tf.cast(logvar_pi, tf.float32), [batch, -1, 1])
        prior = 0.5 * tf.reduce_mean(1.0 / total + tf.square(loc_s) - 1.0 + log_total, axis=1)   # [B, S]
        inter = 0.5 * tf.reduce_mean(-log_total - logvar_pi - 1.0
                                     + (tf.exp(logvar_pi) + tf.square(loc_pi - loc_s)) * total, axis=1)
        per_sample = (tf.reduce_sum(valid * prior, axis=1) / tf.maximum(n, 1.0)
                      + tf.reduce_sum(valid * inter, axis=1) / tf.maximum(n - 1.0, 1.0))
        terms.append(tf.reduce_mean(per_sample))
    return tf.add_n(terms) / float(len(terms))


def weight_decay_loss(regularization, reduction: str = "sum"):
    """The kernels' penalties, summed or averaged over the kernels (module docstring)."""
    total = tf.add_n([tf.cast(r, tf.float32) for r in regularization])
    return total / float(len(regularization)) if reduction == "mean" else total


def total_loss(outputs, batch, num_classes: int, weights: LossWeights, regularization=None,
               forms: LossForms = LossForms()):
    """Returns ``(total, terms)``; ``terms`` maps each term's name to its unweighted value."""
    labels = tf.cast(batch["label"], tf.int32)
    terms = {"dice": soft_dice_loss(outputs["seg_logits"], labels, num_classes, form=forms.dice),
             "ce": cross_entropy_loss(outputs["seg_logits"], labels)}
    total = weights.dice * terms["dice"] + weights.ce * terms["ce"]
    if "recon" in outputs:
        data_mask = batch.get("data_mask", tf.ones_like(batch["modality_mask"]))
        terms["recon"] = reconstruction_loss(outputs["recon"], batch["image"], data_mask)
        total += weights.recon * terms["recon"]
    if "posterior_loc" in outputs:
        if forms.kl == "original" and "expert_loc" in outputs:
            terms["kl"] = kl_loss_original(outputs["posterior_loc"], outputs["posterior_logvar"],
                                           outputs["expert_loc"], outputs["expert_logvar"],
                                           batch.get("data_mask"))
        else:
            terms["kl"] = kl_loss(outputs["posterior_loc"], outputs["posterior_logvar"])
        total += weights.kl * terms["kl"]
    if regularization:
        terms["weight_decay"] = weight_decay_loss(regularization, forms.decay_reduction)
        total += terms["weight_decay"]
    terms["total"] = total
    return total, terms
