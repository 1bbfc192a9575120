"""NiftyNet-style window samplers: bounds, and draw frequencies against their target distributions."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy.stats import chisquare  # noqa: E402

from uhved_tf.data.window_sampling import (  # noqa: E402
    balanced_centres, balanced_corners, centres_to_corners, corners_for, corners_to_centres,
    uniform_centres, uniform_corners, weighted_centres, weighted_corners)

SHAPE = (20, 18, 16)
WINDOW = (8, 6, 10)
NUM_CLASSES = 5                 # class 4 is absent from the volume


def four_class_label():
    """Classes 0..3 of very different sizes (5760, 216, 8 and 1 voxels); class 4 absent."""
    label = np.zeros(SHAPE, np.int32)
    label[2:8, 3:9, 4:10] = 1
    label[16:18, 14:16, 0:2] = 2            # near the border: windows must be clamped
    label[19, 0, 15] = 3                    # a corner voxel
    return label


def assert_inside(corners, shape, window):
    corners = np.asarray(corners)
    assert corners.dtype == np.int32 and corners.shape[1] == 3
    assert np.all(corners >= 0)
    assert np.all(corners + np.asarray(window) <= np.asarray(shape))


def test_uniform_corners_inside_and_uniform():
    n = 6000
    corners = uniform_corners(tf.constant(SHAPE), WINDOW, n, tf.constant([1, 2])).numpy()
    assert corners.shape == (n, 3)
    assert_inside(corners, SHAPE, WINDOW)
    for a in range(3):
        span = SHAPE[a] - WINDOW[a] + 1
        counts = np.bincount(corners[:, a], minlength=span)
        assert len(counts) == span
        assert chisquare(counts).pvalue > 1e-3
    assert uniform_centres is uniform_corners


def test_uniform_corners_when_the_window_is_the_volume():
    corners = uniform_corners(SHAPE, SHAPE, 10, tf.constant([0, 3])).numpy()
    assert np.all(corners == 0)


def test_balanced_centre_classes_are_uniform_over_present_classes():
    label = four_class_label()
    n = 3000
    centres = balanced_centres(label, n, NUM_CLASSES, tf.constant([7, 1])).numpy()
    classes = label[tuple(centres.T)]
    counts = np.bincount(classes, minlength=NUM_CLASSES)
    assert counts[4] == 0                                   # absent class never targeted
    assert chisquare(counts[:4]).pvalue > 1e-3              # uniform over the 4 present classes
    # within a class the voxel is uniform: every voxel of class 2 is drawn, evenly
    voxels_2 = centres[classes == 2]
    keys = np.ravel_multi_index(tuple(voxels_2.T), SHAPE)
    per_voxel = np.unique(keys, return_counts=True)[1]
    assert len(per_voxel) == 8 and chisquare(per_voxel).pvalue > 1e-3
    assert set(map(tuple, centres[classes == 3])) == {(19, 0, 15)}


def test_balanced_corners_inside_and_contain_the_centre():
    label = four_class_label()
    seed = tf.constant([7, 1])
    centres = balanced_centres(label, 500, NUM_CLASSES, seed).numpy()
    corners = balanced_corners(label, WINDOW, 500, NUM_CLASSES, seed).numpy()
    assert_inside(corners, SHAPE, WINDOW)
    assert np.all((centres >= corners) & (centres < corners + np.asarray(WINDOW)))
    # away from the border the window is centred on the voxel
    free = np.all((centres >= np.asarray(WINDOW) // 2)
                  & (centres - np.asarray(WINDOW) // 2 + np.asarray(WINDOW) <= np.asarray(SHAPE)), axis=1)
    assert free.any()
    np.testing.assert_array_equal(corners_to_centres(corners[free], WINDOW), centres[free])


def test_balanced_with_two_present_classes():
    label = np.zeros((6, 7, 5), np.int32)
    label[1, 2, 3] = 2
    centres = balanced_centres(label, 400, 4, tf.constant([0, 9])).numpy()
    classes = label[tuple(centres.T)]
    counts = np.bincount(classes, minlength=4)
    assert counts[1] == 0 and counts[3] == 0
    assert chisquare(counts[[0, 2]]).pvalue > 1e-3


def test_balanced_without_any_known_class_falls_back_to_uniform():
    label = np.full((6, 7, 5), 9, np.int32)
    corners = balanced_corners(label, (3, 3, 3), 50, 4, tf.constant([0, 1])).numpy()
    assert_inside(corners, label.shape, (3, 3, 3))


def test_weighted_frequencies_are_proportional_to_the_weights():
    weights = np.array([[[0, 1, 2, 0], [3, 0, 1, 4]],
                        [[0, 0, 0, 0], [2, 5, 0, 1]],
                        [[1, 0, 6, 0], [0, 2, 0, 3]]], np.float32)       # [3, 2, 4]
    n = 20000
    centres = weighted_centres(weights, n, tf.constant([5, 5])).numpy()
    keys = np.ravel_multi_index(tuple(centres.T), weights.shape)
    counts = np.bincount(keys, minlength=weights.size)
    flat = weights.ravel()
    assert np.all(counts[flat == 0] == 0)                                   # zero weight: never
    expected = n * flat[flat > 0].astype(np.float64) / flat.sum(dtype=np.float64)
    assert chisquare(counts[flat > 0], expected).pvalue > 1e-3


def test_weighted_corners_inside_and_negative_or_zero_maps():
    rng = np.random.default_rng(3)
    weights = rng.random(SHAPE).astype(np.float32)
    corners = weighted_corners(weights, WINDOW, 300, tf.constant([1, 1])).numpy()
    assert_inside(corners, SHAPE, WINDOW)
    corners = weighted_corners(-np.ones(SHAPE, np.float32), WINDOW, 50, tf.constant([1, 1])).numpy()
    assert_inside(corners, SHAPE, WINDOW)                                   # all-zero -> uniform
    one_hot = np.zeros(SHAPE, np.float32)
    one_hot[3, 17, 2] = 1.0
    centres = weighted_centres(one_hot - 0.5 * (one_hot == 0), 20, tf.constant([2, 2])).numpy()
    assert np.all(centres == [3, 17, 2])


def test_centres_to_corners_clamps():
    corners = centres_to_corners(np.array([[0, 17, 8], [19, 0, 15]]), SHAPE, WINDOW).numpy()
    np.testing.assert_array_equal(corners, [[0, 12, 3], [12, 0, 6]])


@pytest.mark.parametrize("sampling", ["uniform", "balanced", "weighted"])
def test_corners_for_dispatch_deterministic_and_inside(sampling):
    label = four_class_label()
    a = corners_for(sampling, label, WINDOW, 64, NUM_CLASSES, tf.constant([3, 4], tf.int32)).numpy()
    b = corners_for(sampling, label, WINDOW, 64, NUM_CLASSES, tf.constant([3, 4], tf.int64)).numpy()
    c = corners_for(sampling, label, WINDOW, 64, NUM_CLASSES, tf.constant([3, 5])).numpy()
    assert_inside(a, SHAPE, WINDOW)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_corners_for_weighted_prefers_foreground():
    label = four_class_label()                  # 225 foreground voxels of 5760, weight 10 each
    n = 2000
    corners = corners_for("weighted", label, (1, 1, 1), n, NUM_CLASSES, tf.constant([8, 8])).numpy()
    centres_hit = np.count_nonzero(label[tuple(corners.T)] > 0)
    foreground = np.count_nonzero(label > 0)
    p = 10 * foreground / (10 * foreground + label.size - foreground)
    assert abs(centres_hit / n - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_unknown_sampler_suggests_the_closest():
    with pytest.raises(ValueError, match='did you mean "balanced"'):
        corners_for("balance", four_class_label(), WINDOW, 1, NUM_CLASSES, tf.constant([0, 0]))


def test_samplers_inside_tf_data_map():
    label = tf.constant(four_class_label())

    def fn(i):
        seed = tf.stack([tf.constant(11, tf.int64), i])
        return (corners_for("balanced", label, WINDOW, 4, NUM_CLASSES, seed),
                corners_for("weighted", label, WINDOW, 4, NUM_CLASSES, seed),
                corners_for("uniform", label, WINDOW, 4, NUM_CLASSES, seed))

    ds = tf.data.Dataset.range(3).map(fn)
    first = [[t.numpy() for t in x] for x in ds]
    second = [[t.numpy() for t in x] for x in ds]
    for x, y in zip(first, second):
        for a, b in zip(x, y):
            assert_inside(a, SHAPE, WINDOW)
            np.testing.assert_array_equal(a, b)
