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


def tfp():
    """TensorFlow Probability, imported on first use (training's KL), not by inference, whose
    start-up it cost ~1 s; without the DeprecationWarning its version check raises on import."""
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "distutils Version classes are deprecated", DeprecationWarning)
        import tensorflow_probability
    return tensorflow_probability


def split_seed(seed, n: int) -> list:
    """``n`` stateless seeds derived from ``seed`` ([2] int32), the same as TFP's
    ``tfp.random.split_seed(seed, n)`` (tests/model/test_fusion.py checks it bit for bit)."""
    seeds = tf.random.stateless_uniform([n, 2], seed=tf.cast(seed, tf.int32), minval=None, maxval=None,
                                        dtype=tf.int32)
    return tf.unstack(seeds)


def sample_posterior(loc, logvar, seed, num_samples: int = 1, axis: int = 0):
    """``num_samples`` reparameterised samples ``loc + exp(logvar / 2) * eps`` from the stateless
    ``seed``, stacked on a new ``axis`` of ``loc``'s shape. ``axis=0`` draws the numbers of TFP's
    ``tfd.Normal(loc, exp(logvar / 2)).sample(num_samples, seed)`` (checked bit for bit in
    tests/model/test_fusion.py), without importing TFP, which costs ~1 s of every inference
    start-up. ``axis=1`` puts each batch row's samples together: row ``b``'s numbers then do not
    depend on how many rows follow it (a padded batch changes nothing for the real rows)."""
    shape = tf.shape(loc)
    shape = tf.concat([shape[:axis], [num_samples], shape[axis:]], axis=0)
    eps = tf.random.stateless_normal(shape, seed=tf.cast(seed, tf.int32), mean=0.0, stddev=1.0, dtype=loc.dtype)
    return eps * tf.expand_dims(tf.exp(0.5 * logvar), axis) + tf.expand_dims(loc, axis)


def kl_to_prior(loc, logvar):
    """Element-wise KL(N(loc, exp(logvar)) || N(0, 1)) via TFP's closed form."""
    tfd = tfp().distributions
    prior = tfd.Normal(loc=tf.zeros_like(loc), scale=tf.ones_like(loc))
    return tfd.kl_divergence(tfd.Normal(loc=loc, scale=tf.exp(0.5 * logvar)), prior)
