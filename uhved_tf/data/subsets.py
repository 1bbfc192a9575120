"""Modality subsets and the policies that draw them during training (paper, section 2.2 and 3).

Subsets are enumerated once (:func:`uhved_tf.subset.subset_indices`: by size, then
lexicographically, as the original code), and a policy is a probability vector over them:

* ``uniform_size`` (the paper): the subset size k is uniform in 1..n, then a subset of size k
  is uniform among the C(n, k) of that size, so P(pi) = 1 / (n * C(n, |pi|)).
* ``uniform_subset``: every non-empty subset equally likely, P(pi) = 1 / (2^n - 1).
* ``prior``: one probability alpha_pi per subset from the config (the clinical mixture).

When a subject lacks modalities (incomplete training data), the same policy is applied to the
modalities it has: probabilities of subsets that need a missing modality are set to 0 and the
rest renormalised (for ``uniform_size`` the size is drawn uniformly in 1..n_available, as if
the subject had only those modalities). Drawing uses TF's stateless RNG from an explicit seed,
so it is deterministic inside ``tf.data`` and resumable.
"""

from __future__ import annotations

from math import comb

import numpy as np
import tensorflow as tf

from uhved_tf.subset import subset_indices, subset_masks

POLICIES = ("uniform_size", "uniform_subset", "prior")


def policy_probabilities(policy: str, num_modalities: int, prior=None) -> np.ndarray:
    """Probabilities over ``subset_indices(n)`` for a subject that has every modality."""
    subsets = subset_indices(num_modalities)
    if policy == "uniform_size":
        p = np.array([1.0 / (num_modalities * comb(num_modalities, len(s))) for s in subsets])
    elif policy == "uniform_subset":
        p = np.full(len(subsets), 1.0 / len(subsets))
    elif policy == "prior":
        if prior is None or len(prior) != len(subsets):
            raise ValueError(f"policy 'prior' needs {len(subsets)} probabilities, got {prior!r}")
        p = np.asarray(prior, np.float64)
        if np.any(p < 0) or abs(p.sum() - 1.0) > 1e-6:
            raise ValueError(f"subset prior must be non-negative and sum to 1, got sum {p.sum()}")
    else:
        raise ValueError(f"unknown subset policy {policy!r}; expected one of {POLICIES}")
    return p.astype(np.float64)


class SubsetSampler:
    """Draws a modality mask [M] per call from a seed, restricted to the available modalities."""

    def __init__(self, num_modalities: int, policy: str = "uniform_size", prior=None):
        self.num_modalities = num_modalities
        self.policy = policy
        self.masks = tf.constant(subset_masks(num_modalities))
        self.sizes = tf.reduce_sum(self.masks, axis=1)
        self.probs = tf.constant(policy_probabilities(policy, num_modalities, prior), tf.float32)

    def probabilities(self, available):
        """Probabilities over subsets given the availability vector [M] (1 = present)."""
        available = tf.cast(available, tf.float32)
        allowed = tf.cast(tf.reduce_all(self.masks <= available[None, :], axis=1), tf.float32)
        if self.policy == "uniform_size":
            # Size uniform in 1..n_avail, then uniform among the allowed subsets of that size.
            n_avail = tf.reduce_sum(available)
            per_size = tf.math.unsorted_segment_sum(allowed, tf.cast(self.sizes, tf.int32) - 1,
                                                    self.num_modalities)
            count = tf.gather(per_size, tf.cast(self.sizes, tf.int32) - 1)
            p = allowed * tf.math.divide_no_nan(1.0, count * n_avail)
        else:
            p = allowed * self.probs
        return p / tf.maximum(tf.reduce_sum(p), 1e-12)

    def draw(self, seed, available=None):
        """One mask [M] float32 from the stateless ``seed`` (shape [2])."""
        if available is None:
            available = tf.ones([self.num_modalities])
        p = self.probabilities(available)
        index = tf.random.stateless_categorical(tf.math.log(p)[None, :], 1, seed=seed)[0, 0]
        return tf.gather(self.masks, index)
