"""The two forms of the Dice, KL and weight-decay terms ([TRAINING] dice / kl, [NETWORK]
decay_reduction) against direct NumPy computations on tiny tensors; the original KL enumerates the
15 subsets with itertools, independently of the vectorised implementation."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from uhved_tf.losses import (LossForms, LossWeights, all_subset_posteriors, kl_loss, kl_loss_original,
                             soft_dice_loss, total_loss, weight_decay_loss)

K = 4
M = 4


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_dice(logits, labels, form):
    p = softmax(logits.astype(np.float64)).reshape(-1, K)
    y = np.eye(K)[labels.reshape(-1)]
    inter = (p * y).sum(0)
    if form == "squared":   # NiftyNet layer/loss_segmentation.py dice()
        return 1 - np.mean(2 * inter / ((p ** 2).sum(0) + y.sum(0) + 1e-5))
    return 1 - np.mean((2 * inter + 1e-5) / (p.sum(0) + y.sum(0) + 1e-5))


@pytest.mark.parametrize("form", ["squared", "plain"])
def test_dice_forms_match_numpy(rng, form):
    logits = rng.standard_normal((2, 3, 4, 5, K)).astype(np.float32)
    labels = rng.integers(0, K, (2, 3, 4, 5)).astype(np.int32)
    assert float(soft_dice_loss(logits, labels, K, form=form)) == pytest.approx(np_dice(logits, labels, form),
                                                                               rel=1e-5)


def test_squared_and_plain_dice_differ_on_soft_predictions(rng):
    logits = rng.standard_normal((1, 4, 4, 4, K)).astype(np.float32)
    labels = rng.integers(0, K, (1, 4, 4, 4)).astype(np.int32)
    sq = float(soft_dice_loss(logits, labels, K, form="squared"))
    pl = float(soft_dice_loss(logits, labels, K, form="plain"))
    assert abs(sq - pl) > 1e-2


# --- the original KL ---------------------------------------------------------------------------

def np_product(mu, logvar, subset):
    """Product of the experts in ``subset`` with N(0, 1) (the original's Product_Gaussian)."""
    precision = 1.0 + sum(np.exp(-logvar[..., m, :]) for m in subset)
    loc = sum(mu[..., m, :] * np.exp(-logvar[..., m, :]) for m in subset) / precision
    return loc, -np.log(precision)


def np_kl(mu1, lv1, mu2, lv2):
    """Mean over elements of KL(N(mu1, e^lv1) || N(mu2, e^lv2)) (the original's KL_divergence)."""
    return np.mean(0.5 * (-1 + lv2 - lv1 + (np.exp(lv1) + (mu1 - mu2) ** 2) / np.exp(lv2)))


SUBSETS = [s for n in range(1, M + 1) for s in itertools.combinations(range(M), n)]


def np_original_kl(mus, logvars, pi):
    """(1/15) sum_S KL(q_S || N(0,1)) + (1/14) sum_{S != pi} KL(q_pi || q_S), averaged over scales."""
    assert len(SUBSETS) == 15
    per_scale = []
    for mu, lv in zip(mus, logvars):
        loc_pi, lv_pi = np_product(mu, lv, pi)
        prior = np.mean([np_kl(*np_product(mu, lv, s), 0 * loc_pi, 0 * lv_pi) for s in SUBSETS])
        inter = sum(np_kl(loc_pi, lv_pi, *np_product(mu, lv, s)) for s in SUBSETS if s != pi) / 14
        per_scale.append(prior + inter)
    return np.mean(per_scale)


@pytest.fixture
def experts(rng):
    shapes = [(1, 4, 4, 2, M, 2), (1, 2, 2, 1, M, 4)]
    mus = [rng.standard_normal(s) for s in shapes]
    logvars = [rng.uniform(-2, 2, s) for s in shapes]
    return mus, logvars


def test_all_subset_posteriors_match_the_product_of_each_subset(experts):
    mus, logvars = experts
    loc, logvar = all_subset_posteriors(mus[0].astype(np.float32), logvars[0].astype(np.float32))
    assert loc.shape == mus[0].shape[:-2] + (mus[0].shape[-1], 15)   # [B, ..., C, S]
    # Column s is the s-th subset of uhved_tf.subset.subset_indices (the paper's Table 1 order).
    from uhved_tf.subset import subset_indices
    for s, members in enumerate(subset_indices(M)):
        ref_loc, ref_lv = np_product(mus[0], logvars[0], members)
        np.testing.assert_allclose(loc.numpy()[..., s], ref_loc, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(logvar.numpy()[..., s], ref_lv, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pi", [(1,), (0, 3), (0, 1, 2, 3)])
def test_original_kl_matches_the_enumerated_formula(experts, pi):
    from uhved_tf.model.fusion import product_of_gaussians

    mus, logvars = experts
    mask = np.array([[m in pi for m in range(M)]], np.float32)
    posts = [product_of_gaussians(mu.astype(np.float32), lv.astype(np.float32), mask)
             for mu, lv in zip(mus, logvars)]
    value = kl_loss_original([p[0] for p in posts], [p[1] for p in posts],
                             [mu.astype(np.float32) for mu in mus], [lv.astype(np.float32) for lv in logvars])
    assert float(value) == pytest.approx(np_original_kl(mus, logvars, pi), rel=1e-4)
    # ... and it is not the paper's term.
    paper = float(kl_loss([p[0] for p in posts], [p[1] for p in posts]))
    assert abs(float(value) - paper) > 1e-2


def test_original_kl_uses_only_the_subsets_the_data_has(experts):
    """A subject without T2 files (data_mask) averages over the 7 subsets of {T1, T1c, Flair}."""
    from uhved_tf.model.fusion import product_of_gaussians

    mus, logvars = experts
    pi = (1, 3)
    have = (0, 1, 3)
    subsets = [s for n in range(1, 4) for s in itertools.combinations(have, n)]
    mask = np.array([[m in pi for m in range(M)]], np.float32)
    posts = [product_of_gaussians(mu.astype(np.float32), lv.astype(np.float32), mask)
             for mu, lv in zip(mus, logvars)]
    per_scale = []
    for mu, lv in zip(mus, logvars):
        loc_pi, lv_pi = np_product(mu, lv, pi)
        prior = np.mean([np_kl(*np_product(mu, lv, s), 0 * loc_pi, 0 * lv_pi) for s in subsets])
        inter = sum(np_kl(loc_pi, lv_pi, *np_product(mu, lv, s)) for s in subsets if s != pi) / (len(subsets) - 1)
        per_scale.append(prior + inter)
    value = kl_loss_original([p[0] for p in posts], [p[1] for p in posts],
                             [mu.astype(np.float32) for mu in mus], [lv.astype(np.float32) for lv in logvars],
                             data_mask=np.array([[1, 1, 0, 1]], np.float32))
    assert float(value) == pytest.approx(np.mean(per_scale), rel=1e-4)


def test_original_kl_gives_every_encoder_a_gradient_the_paper_kl_does_not(experts):
    from uhved_tf.model.fusion import product_of_gaussians

    mus, logvars = experts
    mu = tf.Variable(mus[0].astype(np.float32))
    lv = tf.Variable(logvars[0].astype(np.float32))
    mask = np.array([[0, 1, 0, 0]], np.float32)   # drawn subset: T1c alone
    for form in ("original", "paper"):
        with tf.GradientTape() as tape:
            loc, logvar = product_of_gaussians(mu, lv, mask)
            value = (kl_loss_original([loc], [logvar], [mu], [lv]) if form == "original"
                     else kl_loss([loc], [logvar]))
        g = tape.gradient(value, mu).numpy()
        per_modality = np.abs(g).reshape(-1, M, g.shape[-1]).sum(axis=(0, 2))
        if form == "original":
            assert (per_modality > 0).all()
        else:
            assert per_modality[1] > 0 and (per_modality[[0, 2, 3]] == 0).all()


# --- weight decay and the total ---------------------------------------------------------------

def test_weight_decay_mean_and_sum():
    reg = [tf.constant(0.25), tf.constant(0.5), tf.constant(1.5)]
    assert float(weight_decay_loss(reg, "sum")) == pytest.approx(2.25)
    assert float(weight_decay_loss(reg, "mean")) == pytest.approx(0.75)


def test_total_loss_uses_the_chosen_forms(rng):
    from uhved_tf.model.fusion import product_of_gaussians

    shape = (1, 4, 4, 2)
    labels = rng.integers(0, K, shape).astype(np.int32)
    mu = rng.standard_normal((1, 4, 4, 2, M, 2)).astype(np.float32)
    lv = rng.uniform(-1, 1, mu.shape).astype(np.float32)
    mask = np.array([[1, 0, 0, 1]], np.float32)
    loc, logvar = product_of_gaussians(mu, lv, mask)
    outputs = {"seg_logits": rng.standard_normal(shape + (K,)).astype(np.float32),
               "posterior_loc": [loc], "posterior_logvar": [logvar], "expert_loc": [mu], "expert_logvar": [lv]}
    batch = {"label": labels, "modality_mask": mask}
    reg = [tf.constant(1.0), tf.constant(3.0)]
    _, orig = total_loss(outputs, batch, K, LossWeights(), reg,
                         LossForms(kl="original", dice="squared", decay_reduction="mean"))
    _, paper = total_loss(outputs, batch, K, LossWeights(), reg,
                          LossForms(kl="paper", dice="plain", decay_reduction="sum"))
    assert float(orig["dice"]) == pytest.approx(np_dice(outputs["seg_logits"], labels, "squared"), rel=1e-5)
    assert float(paper["dice"]) == pytest.approx(np_dice(outputs["seg_logits"], labels, "plain"), rel=1e-5)
    assert float(orig["kl"]) == pytest.approx(np_original_kl([mu.astype(np.float64)], [lv.astype(np.float64)],
                                                             (0, 3)), rel=1e-4)
    assert float(paper["kl"]) == pytest.approx(float(kl_loss([loc], [logvar])), rel=1e-6)
    assert float(orig["weight_decay"]) == pytest.approx(2.0)
    assert float(paper["weight_decay"]) == pytest.approx(4.0)


def test_loss_forms_refuse_unknown_values():
    with pytest.raises(ValueError, match="kl = 'both'"):
        LossForms(kl="both")
