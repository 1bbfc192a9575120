"""Product-of-Gaussians fusion and the KL term against their closed forms (paper, eq. 4).

The reference is eq. (4) evaluated in float64 NumPy, with the mean written as it should be,
``Sigma * sum_i Sigma_i^-1 mu_i`` (the paper prints ``Sigma^-1``):

    T     = 1 + sum_{i in pi} exp(-logvar_i)        (precision; the 1 is the N(0, I) prior)
    var   = 1 / T
    mean  = var * sum_{i in pi} exp(-logvar_i) * mu_i
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import MODALITIES
from uhved_tf.subset import subset_indices
from uhved_tf.model.fusion import kl_to_prior, product_of_gaussians, sample_posterior, split_seed, tfp

pytestmark = pytest.mark.filterwarnings("error")  # warnings as errors

M = len(MODALITIES)
SUBSETS = subset_indices(M)
#: [B, D, H, W, M, C] of the expert tensors; tiny, with distinct sizes to catch axis mix-ups.
SHAPE = (2, 3, 2, 4, M, 5)


def subset_id(subset):
    return "+".join(MODALITIES[i] for i in subset)


def mask_of(subset, batch=SHAPE[0]):
    m = np.zeros((batch, M), np.float32)
    m[:, list(subset)] = 1.0
    return m


def closed_form(mu, logvar, mask):
    """Eq. (4) in float64 for [B, ..., M, C] experts and a [B, M] mask. Returns (mean, logvar, scale)
    where ``scale`` = var * sum |precision * mu| bounds the float32 cancellation error of the mean."""
    mu = mu.astype(np.float64)
    logvar = logvar.astype(np.float64)
    m = mask.astype(bool).reshape(mask.shape[:1] + (1,) * (mu.ndim - 3) + mask.shape[1:] + (1,))
    m = np.broadcast_to(m, mu.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        precision = np.where(m, np.exp(-logvar), 0.0)
        weighted = np.where(m, precision * mu, 0.0)
    total = 1.0 + precision.sum(axis=-2)
    var = 1.0 / total
    return var * weighted.sum(axis=-2), np.log(var), var * np.abs(weighted).sum(axis=-2)


def random_experts(rng, shape=SHAPE, mu_scale=3.0, logvar_range=(-4.0, 4.0)):
    mu = (mu_scale * rng.standard_normal(shape)).astype(np.float32)
    logvar = rng.uniform(*logvar_range, size=shape).astype(np.float32)
    return mu, logvar


def assert_matches_closed_form(mu, logvar, mask, rtol=2e-5):
    loc, post_logvar = product_of_gaussians(mu, logvar, mask)
    ref_loc, ref_logvar, scale = closed_form(mu, logvar, mask)
    loc, post_logvar = loc.numpy(), post_logvar.numpy()
    assert loc.shape == ref_loc.shape == mu.shape[:-2] + mu.shape[-1:]
    assert loc.dtype == post_logvar.dtype == np.float32
    # Mean: relative to the size of the summed terms (the sum can cancel).
    np.testing.assert_array_less(np.abs(loc - ref_loc), rtol * (np.abs(ref_loc) + scale) + 1e-30)
    np.testing.assert_allclose(post_logvar, ref_logvar, rtol=rtol, atol=1e-6)


# --- eq. (4), every subset ---------------------------------------------------------------------

@pytest.mark.parametrize("subset", SUBSETS, ids=subset_id)
def test_fusion_matches_closed_form_for_every_subset(subset, rng):
    mu, logvar = random_experts(rng)
    assert_matches_closed_form(mu, logvar, mask_of(subset))


@pytest.mark.parametrize("subset", SUBSETS, ids=subset_id)
def test_fusion_matches_closed_form_at_large_magnitudes(subset, rng):
    # Means up to ~1e4 and log-variances over the model's whole clip range [-50, 50] (and beyond:
    # exp(85) is close to the float32 limit), mixed within one tensor.
    mu, _ = random_experts(rng, mu_scale=1e4)
    logvar = rng.choice([-85.0, -50.0, -20.0, 0.0, 20.0, 50.0, 85.0], size=SHAPE)
    logvar = (logvar + rng.uniform(-1, 1, size=SHAPE)).astype(np.float32)
    assert_matches_closed_form(mu, logvar, mask_of(subset))


@pytest.mark.parametrize("subset", SUBSETS, ids=subset_id)
def test_fusion_stays_finite_beyond_float32_precisions(subset, rng):
    """|logvar| > 88 overflows exp() in float32 (precision 1/var = inf); the posterior is still
    well defined (an expert with var -> 0 pins the mean, one with var -> inf is ignored)."""
    mu, _ = random_experts(rng)
    logvar = np.full(SHAPE, 150.0, np.float32)        # every expert: var = e^150, i.e. uninformative
    loc, post_logvar = product_of_gaussians(mu, logvar, mask_of(subset))
    np.testing.assert_allclose(loc.numpy(), 0.0, atol=1e-30)
    np.testing.assert_allclose(post_logvar.numpy(), 0.0, atol=1e-30)
    first = subset[0]
    logvar[..., first, :] = -150.0                    # one expert with var = e^-150: a point mass
    loc, post_logvar = product_of_gaussians(mu, logvar, mask_of(subset))
    np.testing.assert_allclose(loc.numpy(), mu[..., first, :], rtol=1e-6)
    np.testing.assert_allclose(post_logvar.numpy(), -150.0, rtol=1e-6)


def test_batch_mixing_all_subsets_gives_per_sample_closed_forms(rng):
    shape = (len(SUBSETS),) + SHAPE[1:]
    mu, logvar = random_experts(rng, shape)
    masks = np.stack([mask_of(s, 1)[0] for s in SUBSETS])
    loc, post_logvar = product_of_gaussians(mu, logvar, masks)
    for b, subset in enumerate(SUBSETS):
        ref_loc, ref_logvar, _ = closed_form(mu[b:b + 1], logvar[b:b + 1], masks[b:b + 1])
        np.testing.assert_allclose(loc[b:b + 1].numpy(), ref_loc, rtol=2e-5, atol=1e-6,
                                   err_msg=subset_id(subset))
        np.testing.assert_allclose(post_logvar[b:b + 1].numpy(), ref_logvar, rtol=2e-5, atol=1e-6)
    # ... and fusing each sample on its own gives exactly the batched values.
    for b, subset in enumerate(SUBSETS):
        one_loc, one_logvar = product_of_gaussians(mu[b:b + 1], logvar[b:b + 1], masks[b:b + 1])
        np.testing.assert_array_equal(one_loc.numpy(), loc[b:b + 1].numpy())
        np.testing.assert_array_equal(one_logvar.numpy(), post_logvar[b:b + 1].numpy())


def test_fusion_is_invariant_to_modality_order(rng):
    mu, logvar = random_experts(rng)
    mask = np.array([[1, 0, 1, 1], [0, 1, 1, 0]], np.float32)
    perm = rng.permutation(M)
    a = product_of_gaussians(mu, logvar, mask)
    b = product_of_gaussians(mu[..., perm, :], logvar[..., perm, :], mask[:, perm])
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=1e-6)


# --- masked-out experts are removed, whatever they hold ----------------------------------------

BAD_VALUES = (1e30, -1e30, np.inf, -np.inf, np.nan)
MISSING_CASES = [(s, v) for s, v in itertools.product(SUBSETS, BAD_VALUES) if len(s) < M]


@pytest.mark.parametrize("subset,bad", MISSING_CASES,
                         ids=[f"{subset_id(s)}-{v}" for s, v in MISSING_CASES])
def test_masked_out_values_change_nothing(subset, bad, rng):
    mu, logvar = random_experts(rng)
    mask = mask_of(subset)
    missing = [i for i in range(M) if i not in subset]
    clean = product_of_gaussians(mu, logvar, mask)
    mu_bad, logvar_bad = mu.copy(), logvar.copy()
    mu_bad[..., missing, :] = bad
    logvar_bad[..., missing, :] = bad
    dirty = product_of_gaussians(mu_bad, logvar_bad, mask)
    for x, y in zip(clean, dirty):
        assert np.all(np.isfinite(y.numpy()))
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_gradients_stay_finite_with_garbage_in_masked_out_experts(rng):
    """Training back-propagates through the fusion: NaN/inf in a dropped expert must not poison the
    gradients of the present ones (the classic ``tf.where`` pitfall) nor of the dropped one."""
    mu, logvar = random_experts(rng)
    mask = mask_of((0, 2))
    mu[..., 1, :], logvar[..., 1, :] = np.nan, -1e30
    mu[..., 3, :], logvar[..., 3, :] = np.inf, 1e30
    mu_t, logvar_t = tf.constant(mu), tf.constant(logvar)
    with tf.GradientTape() as tape:
        tape.watch([mu_t, logvar_t])
        loc, post_logvar = product_of_gaussians(mu_t, logvar_t, mask)
        objective = tf.reduce_sum(loc ** 2) + tf.reduce_sum(post_logvar)
    g_mu, g_logvar = tape.gradient(objective, [mu_t, logvar_t])
    assert np.all(np.isfinite(g_mu.numpy())) and np.all(np.isfinite(g_logvar.numpy()))
    np.testing.assert_array_equal(g_mu.numpy()[..., [1, 3], :], 0.0)
    np.testing.assert_array_equal(g_logvar.numpy()[..., [1, 3], :], 0.0)
    assert np.all(g_logvar.numpy()[..., [0, 2], :] != 0.0)


def test_all_zero_mask_gives_the_prior(rng):
    mu, logvar = random_experts(rng)
    mu[..., 0, :] = np.nan                             # nothing of the experts may leak through
    loc, post_logvar = product_of_gaussians(mu, logvar, np.zeros((SHAPE[0], M), np.float32))
    np.testing.assert_array_equal(loc.numpy(), 0.0)
    np.testing.assert_array_equal(post_logvar.numpy(), 0.0)


# --- one expert + prior: the analytic posterior --------------------------------------------------

@pytest.mark.parametrize("index", range(M), ids=MODALITIES)
def test_one_expert_gives_analytic_posterior(index, rng):
    mu, logvar = random_experts(rng, logvar_range=(-10.0, 10.0))
    loc, post_logvar = product_of_gaussians(mu, logvar, mask_of((index,)))
    v = np.exp(logvar[..., index, :].astype(np.float64))
    m = mu[..., index, :].astype(np.float64)
    np.testing.assert_allclose(np.exp(post_logvar.numpy()), v / (1.0 + v), rtol=1e-5)
    np.testing.assert_allclose(loc.numpy(), m / (1.0 + v), rtol=1e-5, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(mu=st.floats(-1e4, 1e4, width=32), logvar=st.floats(-60, 60, width=32))
def test_one_expert_posterior_property(mu, logvar):
    loc, post_logvar = product_of_gaussians(np.full((1, 1, 1, 1, 1, 1), mu, np.float32),
                                            np.full((1, 1, 1, 1, 1, 1), logvar, np.float32),
                                            np.ones((1, 1), np.float32))
    v = np.exp(np.float64(np.float32(logvar)))
    m = np.float64(np.float32(mu))
    np.testing.assert_allclose(float(post_logvar.numpy().ravel()[0]), np.log(v / (1 + v)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loc.numpy().ravel()[0]), m / (1 + v), rtol=1e-5, atol=1e-30)


def test_identical_experts_shrink_variance_by_count(rng):
    """k identical experts N(mu, v) with the prior: precision 1 + k/v."""
    mu, logvar = random_experts(rng)
    mu[...] = mu[..., :1, :]
    logvar[...] = logvar[..., :1, :]
    for k in range(1, M + 1):
        loc, post_logvar = product_of_gaussians(mu, logvar, mask_of(tuple(range(k))))
        v = np.exp(logvar[..., 0, :].astype(np.float64))
        np.testing.assert_allclose(np.exp(post_logvar.numpy()), 1.0 / (1.0 + k / v), rtol=1e-5)
        np.testing.assert_allclose(loc.numpy(), mu[..., 0, :] * (k / v) / (1.0 + k / v),
                                   rtol=1e-5, atol=1e-6)


# --- KL(q || N(0, I)) ------------------------------------------------------------------------------

def test_kl_to_prior_matches_closed_form(rng):
    loc = (3.0 * rng.standard_normal((2, 4, 4, 4, 3))).astype(np.float32)
    logvar = rng.uniform(-6, 6, size=loc.shape).astype(np.float32)
    kl = kl_to_prior(loc, logvar).numpy()
    lv = logvar.astype(np.float64)
    ref = 0.5 * (np.exp(lv) + loc.astype(np.float64) ** 2 - 1.0 - lv)
    assert kl.shape == loc.shape
    np.testing.assert_allclose(kl, ref, rtol=1e-5, atol=1e-5)
    assert np.all(kl >= -1e-6)


def test_kl_of_standard_normal_is_zero():
    zeros = np.zeros((1, 4, 4, 4, 2), np.float32)
    np.testing.assert_allclose(kl_to_prior(zeros, zeros).numpy(), 0.0, atol=1e-7)


def test_kl_of_prior_only_posterior_is_zero(rng):
    """An all-missing subset fuses to the prior, whose KL to the prior is 0."""
    mu, logvar = random_experts(rng)
    loc, post_logvar = product_of_gaussians(mu, logvar, np.zeros((SHAPE[0], M), np.float32))
    np.testing.assert_allclose(kl_to_prior(loc, post_logvar).numpy(), 0.0, atol=1e-7)


@pytest.mark.parametrize("seed", [(0, 0), (7, 123456), (-5, 2**31 - 1)])
@pytest.mark.parametrize("num_samples", [None, 1, 3])
def test_sampling_is_tfps_bit_for_bit(rng, seed, num_samples):
    """The sampler (no TFP import at inference) draws exactly TFP's numbers: split_seed as
    tfp.random.split_seed, samples as tfd.Normal(loc, exp(logvar / 2)).sample(n, seed), so
    models trained and predicted before keep their results."""
    tfd = tfp().distributions

    loc = tf.constant(rng.normal(size=(2, 3, 4, 5)), tf.float32)
    logvar = tf.constant(rng.normal(size=(2, 3, 4, 5)), tf.float32)
    seed = tf.constant(seed, tf.int32)
    ours, theirs = split_seed(seed, 4), tfp().random.split_seed(seed, n=4)
    np.testing.assert_array_equal(np.stack(ours), np.stack(theirs))
    q = tfd.Normal(loc=loc, scale=tf.exp(0.5 * logvar))
    if num_samples is None:
        expected, got = q.sample(seed=ours[1]), sample_posterior(loc, logvar, ours[1])[0]
    else:
        expected, got = q.sample(num_samples, seed=ours[1]), sample_posterior(loc, logvar, ours[1], num_samples)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got.numpy(), expected.numpy())
    assert not np.array_equal(sample_posterior(loc, logvar, ours[2])[0].numpy(), got.numpy()[:1][0])


def test_a_rows_samples_do_not_depend_on_the_rows_after_it(rng):
    """axis=1 (inference's window-major samples): padding a batch with more rows leaves the
    numbers of the rows before unchanged."""
    loc = tf.constant(rng.normal(size=(3, 4, 5)), tf.float32)
    logvar = tf.constant(rng.normal(size=(3, 4, 5)), tf.float32)
    seed = tf.constant([3, 9], tf.int32)
    full = sample_posterior(loc, logvar, seed, 6, axis=1)
    assert full.shape == (3, 6, 4, 5)
    for rows in (1, 2):
        np.testing.assert_array_equal(sample_posterior(loc[:rows], logvar[:rows], seed, 6, axis=1).numpy(),
                                      full[:rows].numpy())
