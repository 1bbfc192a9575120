"""HeMIS fusion: first and second moments of feature maps across the available modalities.

The one implementation, used by U-HeMIS (at every scale of its U-Net) and HeMIS (once, at full
resolution). Havaei et al., "HeMIS: Hetero-Modal Image Segmentation", MICCAI 2016, section 2
("abstraction layer"); Dorent et al. 2019, section 4 (U-HeMIS). For the modalities pi available
in a sample (n = |pi|):

    mean     = 1/n * sum_{i in pi} f_i
    variance = 1/n * sum_{i in pi} (f_i - mean)^2        (population variance, divide by n)

The population variance is what HeMIS uses (its moments are those of the empirical distribution
of the modality features; the original U-HeMIS code called ``tf.nn.moments``, which divides by
n); with one available modality the variance is 0, as the HeMIS paper prescribes.

Shapes: ``features`` [B, ..., M, C] (modalities stacked on axis -2, the layout of
:class:`~uhved_tf.model.encoders.MultiModalEncoder`), ``mask`` [B, M] with 1 for an available
modality; the outputs are [B, ..., C]. Masked-out modalities are removed with ``tf.where`` before
any arithmetic (never multiplied by 0), so their values, even inf or NaN, reach neither the
moments nor their gradients. An all-zero mask (no modality: not a valid input) gives zeros for
both moments rather than NaN.
"""

from __future__ import annotations

import tensorflow as tf


def moments_over_available(features, mask):
    """``(mean, variance)`` [B, ..., C] of ``features`` [B, ..., M, C] over the modalities in
    ``mask`` [B, M]. Computed in float32, returned in ``features``' dtype."""
    dtype = features.dtype
    x = tf.cast(features, tf.float32)
    available = tf.cast(mask, tf.bool)
    rank = x.shape.rank
    # [B, M] -> [B, 1, ..., 1, M, 1] to broadcast over the spatial axes and channels.
    shape = tf.concat([tf.shape(available)[:1], tf.ones([rank - 3], tf.int32), tf.shape(available)[1:], [1]],
                      axis=0)
    m = tf.broadcast_to(tf.reshape(available, shape), tf.shape(x))
    # Zero the dropped modalities first: every later op (and its gradient) sees finite values only.
    x = tf.where(m, x, 0.0)
    count = tf.reduce_sum(tf.cast(tf.reshape(available, shape), tf.float32), axis=-2)  # [B, 1.., 1]
    count = tf.maximum(count, 1.0)  # all-zero mask: sums are 0, so both moments are 0
    mean = tf.reduce_sum(x, axis=-2) / count
    centred = tf.where(m, x - mean[..., None, :], 0.0)
    variance = tf.reduce_sum(tf.square(centred), axis=-2) / count
    return tf.cast(mean, dtype), tf.cast(variance, dtype)


def hemis_abstraction(features, mask):
    """HeMIS's abstraction layer: ``concat(mean, variance)`` over the available modalities,
    [B, ..., M, C] -> [B, ..., 2C]."""
    mean, variance = moments_over_available(features, mask)
    return tf.concat([mean, variance], axis=-1)
