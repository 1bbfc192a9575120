"""Product-of-Gaussians fusion of modality-specific posteriors: the one implementation.

Dorent et al. 2019, eq. (4) (after Cao & Fleet 2014, Wu & Goodman 2018): with the prior
p(z) = N(0, I) and modality experts q_i(z | x_i) = N(mu_i, diag(sigma_i^2)), the product over the
available subset pi is Gaussian with

    precision  T   = 1 + sum_{i in pi} 1 / sigma_i^2                 (the 1 is the prior's)
    covariance Sig = 1 / T
    mean       mu  = Sig * sum_{i in pi} mu_i / sigma_i^2

(The paper prints ``Sigma^{-1}`` in front of the sum for the mean; the product of Gaussians has
``Sigma``, which is also what the original code computed.)

Shapes: ``mu`` and ``logvar`` are [B, D, H, W, M, C] (experts stacked on axis -2, M = number of
modalities), ``mask`` is [B, M] with 1 for an available modality. Masked-out experts are removed
with ``tf.where`` (not multiplied by 0), so their values, even inf or NaN, reach neither the result
nor its gradient. An all-zero mask gives the prior N(0, I).
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


def product_of_gaussians(mu, logvar, mask):
    """Fuse experts with the N(0, I) prior. Returns ``(loc, logvar)`` of the posterior, float32."""
    mu = tf.cast(mu, tf.float32)
    logvar = tf.cast(logvar, tf.float32)
    mask = tf.cast(mask, tf.bool)
    rank = mu.shape.rank
    # [B, M] -> [B, 1, ..., 1, M, 1] to broadcast over the spatial axes and channels.
    m = tf.reshape(mask, tf.concat([tf.shape(mask)[:1], tf.ones([rank - 3], tf.int32),
                                    tf.shape(mask)[1:], [1]], axis=0))
    m = tf.broadcast_to(m, tf.shape(mu))
    # In log space, shifted by the largest log-precision (the prior's is 0), so that exp(-logvar)
    # cannot overflow float32 (|logvar| > 88) and a dropped expert's -inf log-precision has a zero
    # gradient. ``scaled`` = precision / e^shift is in [0, 1], ``total`` = T / e^shift in [1, M + 1].
    log_precision = tf.where(m, -logvar, float("-inf"))
    shift = tf.stop_gradient(tf.maximum(tf.reduce_max(log_precision, axis=-2), 0.0))
    scaled = tf.exp(log_precision - shift[..., None, :])
    total = tf.exp(-shift) + tf.reduce_sum(scaled, axis=-2)
    loc = tf.reduce_sum(scaled * tf.where(m, mu, 0.0), axis=-2) / total
    return loc, -(shift + tf.math.log(total))


def posterior_distribution(loc, logvar) -> tfd.Normal:
    """The fused posterior as a diagonal Gaussian (reparameterised sampling)."""
    return tfd.Normal(loc=loc, scale=tf.exp(0.5 * logvar))


def kl_to_prior(loc, logvar):
    """Element-wise KL(N(loc, exp(logvar)) || N(0, 1)) via TFP's closed form."""
    prior = tfd.Normal(loc=tf.zeros_like(loc), scale=tf.ones_like(loc))
    return tfd.kl_divergence(posterior_distribution(loc, logvar), prior)
