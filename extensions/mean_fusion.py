"""Example fusion: U-HVED with a mixture-style average of the experts instead of their product.

Only :meth:`fuse` changes: the posterior of the available subset is the Gaussian whose mean and
variance are the averages of the available experts' means and variances (no prior term; with no
modality it is the prior N(0, I)). Everything else (encoders, sampling, five decoders, losses,
inference with encode-once, export) is U-HVED's. Compare it with the product of Gaussians by
training both on the same data and running ``uhved_tf evaluate --compare``.
Use it with ``[NETWORK] name = extensions.mean_fusion.MeanFusionUHVED``.
"""

from __future__ import annotations

import tensorflow as tf

from uhved_tf.model.uhved import UHVED


def mean_of_experts(mu, logvar, mask):
    """[B, d, h, w, M, C] experts, [B, M] mask -> (loc, logvar) of the averaged Gaussian."""
    m = tf.cast(mask, tf.float32)[:, None, None, None, :, None]
    count = tf.reduce_sum(m, axis=-2)
    present = count > 0
    safe = tf.maximum(count, 1.0)
    loc = tf.reduce_sum(tf.where(m > 0, tf.cast(mu, tf.float32), 0.0), axis=-2) / safe
    var = tf.reduce_sum(tf.where(m > 0, tf.exp(tf.cast(logvar, tf.float32)), 0.0), axis=-2) / safe
    loc = tf.where(present, loc, 0.0)
    logvar_out = tf.where(present, tf.math.log(tf.maximum(var, 1e-12)), 0.0)
    return loc, logvar_out


class MeanFusionUHVED(UHVED):
    @staticmethod
    def fuse(encodings, modality_mask):
        return [mean_of_experts(mu, logvar, modality_mask) for mu, logvar in encodings]
