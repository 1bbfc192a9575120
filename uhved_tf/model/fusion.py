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
with ``tf.where`` (not multiplied by 0), so their values, even inf or NaN, cannot reach the result.
An all-zero mask gives the prior N(0, I).
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
    precision = tf.where(m, tf.exp(-logvar), 0.0)
    weighted_mean = tf.where(m, mu * precision, 0.0)
    total_precision = 1.0 + tf.reduce_sum(precision, axis=-2)
    loc = tf.reduce_sum(weighted_mean, axis=-2) / total_precision
    return loc, -tf.math.log(total_precision)


def posterior_distribution(loc, logvar) -> tfd.Normal:
    """The fused posterior as a diagonal Gaussian (reparameterised sampling)."""
    return tfd.Normal(loc=loc, scale=tf.exp(0.5 * logvar))


def standard_normal_prior(like) -> tfd.Normal:
    return tfd.Normal(loc=tf.zeros_like(like), scale=tf.ones_like(like))


def kl_to_prior(loc, logvar):
    """Element-wise KL(N(loc, exp(logvar)) || N(0, 1)) via TFP's closed form."""
    q = posterior_distribution(loc, logvar)
    return tfd.kl_divergence(q, standard_normal_prior(loc))
