"""Subset enumeration, policy probabilities, and the empirical distribution of SubsetSampler draws.

Draws use fixed stateless seeds, so each chi-square test is deterministic (not flaky): the p-value
threshold guards against a wrong distribution, not against bad luck on a given run.
"""

import itertools
from math import comb

import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import chisquare

from uhved_tf.data.subsets import POLICIES, SubsetSampler, policy_probabilities
from uhved_tf.subset import Subset, subset_indices, subset_masks

pytestmark = pytest.mark.filterwarnings("error")  # warnings as errors

M = 4
SUBSETS = subset_indices(M)
N_DRAWS = 4000
AVAILABILITY = {
    "complete": (1, 1, 1, 1),
    "no_T1c": (1, 0, 1, 1),
    "T1c+T2_only": (0, 1, 1, 0),
    "Flair_only": (0, 0, 0, 1),
}
PRIOR = np.random.default_rng(2019).dirichlet(np.full(len(SUBSETS), 4.0))


# --- enumeration -----------------------------------------------------------------------------------

def test_all_subsets_enumerates_the_15_non_empty_subsets_by_size():
    assert len(SUBSETS) == 2**M - 1 == len(set(SUBSETS))
    assert [len(s) for s in SUBSETS] == sorted(len(s) for s in SUBSETS)
    assert SUBSETS[:M] == [(0,), (1,), (2,), (3,)] and SUBSETS[-1] == (0, 1, 2, 3)
    assert set(SUBSETS) == {s for k in range(1, M + 1) for s in itertools.combinations(range(M), k)}


def test_subset_masks_match_subsets():
    masks = subset_masks(M)
    assert masks.shape == (15, M) and masks.dtype == np.float32
    for row, subset in zip(masks, SUBSETS):
        assert tuple(np.flatnonzero(row)) == subset
    assert Subset.from_mask(masks[5], ("T1", "T1c", "T2", "Flair")).name == "T1+T2"


# --- policies ------------------------------------------------------------------------------------

def size_probabilities(p, subsets=SUBSETS):
    sizes = np.array([len(s) for s in subsets])
    return np.array([p[sizes == k].sum() for k in range(1, M + 1)])


def test_uniform_size_policy():
    p = policy_probabilities("uniform_size", M)
    assert p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(size_probabilities(p), 0.25)
    for s, ps in zip(SUBSETS, p):                      # uniform within a size
        assert ps == pytest.approx(1.0 / (M * comb(M, len(s))))


def test_uniform_subset_policy():
    np.testing.assert_allclose(policy_probabilities("uniform_subset", M), 1.0 / 15)


def test_prior_policy_returns_the_prior():
    np.testing.assert_allclose(policy_probabilities("prior", M, PRIOR), PRIOR)


@pytest.mark.parametrize("prior", [np.full(15, 0.1), np.full(15, 1.0 / 16), -PRIOR,
                                   np.r_[PRIOR[:-2], PRIOR[-2] + 2 * PRIOR[-1], -PRIOR[-1]],
                                   PRIOR[:-1], None], ids=["sum1.5", "sum0.94", "negative",
                                                           "one_negative", "length14", "missing"])
def test_invalid_prior_raises(prior):
    with pytest.raises(ValueError):
        policy_probabilities("prior", M, prior)


def test_unknown_policy_raises():
    with pytest.raises(ValueError, match="uniform_size"):
        policy_probabilities("uniform", M)
    with pytest.raises(ValueError):
        SubsetSampler(M, "prior", prior=np.full(15, 0.1))


# --- empirical draws -----------------------------------------------------------------------------

def expected_probabilities(policy, available):
    """Independent NumPy reference: the policy applied to the available modalities only."""
    avail = {i for i, a in enumerate(available) if a}
    n = len(avail)
    allowed = np.array([set(s) <= avail for s in SUBSETS])
    if policy == "uniform_size":
        p = np.array([1.0 / (n * comb(n, len(s))) if len(s) <= n else 0.0 for s in SUBSETS])
    elif policy == "uniform_subset":
        p = np.full(len(SUBSETS), 1.0 / (2**n - 1))
    else:
        p = PRIOR / PRIOR[allowed].sum()
    return np.where(allowed, p, 0.0)


_DRAWERS = {}


def draw_many(policy, available, n=N_DRAWS):
    """``n`` draws with seeds (i, 1234), vectorised in one traced call per policy."""
    if policy not in _DRAWERS:
        sampler = SubsetSampler(M, policy, prior=PRIOR if policy == "prior" else None)

        @tf.function
        def fn(seeds, avail):
            return tf.vectorized_map(lambda s: sampler.draw(s, avail), seeds)

        _DRAWERS[policy] = (sampler, fn)
    sampler, fn = _DRAWERS[policy]
    seeds = tf.stack([tf.range(n), tf.fill([n], 1234)], axis=1)
    masks = fn(seeds, tf.constant(available, tf.float32)).numpy()
    return sampler, masks


def subset_index(masks):
    codes = {sum(1 << i for i in s): j for j, s in enumerate(SUBSETS)}
    return np.array([codes[int(c)] for c in masks.astype(int) @ (1 << np.arange(M))])


CASES = list(itertools.product(POLICIES, AVAILABILITY))


@pytest.mark.parametrize("policy,availability", CASES, ids=[f"{p}-{a}" for p, a in CASES])
def test_draws_follow_the_policy(policy, availability):
    available = np.array(AVAILABILITY[availability], np.float32)
    sampler, masks = draw_many(policy, available)
    expected = expected_probabilities(policy, available)
    np.testing.assert_allclose(sampler.probabilities(available).numpy(), expected, rtol=1e-5, atol=1e-7)

    assert masks.shape == (N_DRAWS, M)
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert np.all(masks.sum(1) >= 1)                               # never an empty subset
    assert not np.any(masks[:, available == 0])                    # never a missing modality

    counts = np.bincount(subset_index(masks), minlength=len(SUBSETS))
    assert np.all(counts[expected == 0] == 0)
    support = expected > 0
    if support.sum() > 1:
        assert chisquare(counts[support], N_DRAWS * expected[support]).pvalue > 1e-3
    else:
        assert counts[support].item() == N_DRAWS


@pytest.mark.parametrize("availability", AVAILABILITY)
def test_uniform_size_draws_have_uniform_size_over_available(availability):
    available = np.array(AVAILABILITY[availability], np.float32)
    n_avail = int(available.sum())
    _, masks = draw_many("uniform_size", available)
    sizes = masks.sum(1).astype(int)
    assert sizes.min() >= 1 and sizes.max() <= n_avail
    counts = np.bincount(sizes, minlength=n_avail + 1)[1:]
    if n_avail > 1:
        assert chisquare(counts, np.full(n_avail, N_DRAWS / n_avail)).pvalue > 1e-3
    # Every size in 1..n_available actually occurs.
    assert np.all(counts > 0)


def test_draw_is_deterministic_per_seed_and_defaults_to_complete_data():
    sampler = SubsetSampler(M, "uniform_subset")
    a = sampler.draw(tf.constant([5, 6]))
    b = sampler.draw(tf.constant([5, 6]), tf.ones([M]))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    draws = {tuple(sampler.draw(tf.constant([i, 6])).numpy()) for i in range(40)}
    assert len(draws) > 5
