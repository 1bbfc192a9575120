"""Flips, rotation and scaling of windows against the analytic transform of a labelled box.

The reference: with the inverse map ``q = c + F S^-1 R^T (p - c)`` (module docstring of
``uhved_tf.data.augmentation``), the nearest-neighbour label at output voxel p is the box label at
``round(q)``, so the transformed box is known voxel by voxel, and its centroid is
``c + R S F (centroid - c)``.
"""

import logging
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from uhved_tf.data.augmentation import (  # noqa: E402
    augment, augment_crop, random_flip, random_rotation_scaling, rotation_ranges_from_config)

SIZE = 25                       # odd: the centre (12, 12, 12) is a voxel
CENTRE = np.full(3, (SIZE - 1) / 2.0)
BOX = (slice(6, 15), slice(9, 15), slice(10, 14))   # off-centre, anisotropic


def box_volume(channels=2):
    label = np.zeros((SIZE,) * 3, np.int32)
    label[BOX] = 1
    image = np.repeat(label[..., None].astype(np.float32), channels, axis=-1)
    image[..., 1:] *= 2.0       # channels must move together
    return image, label


def rotation(axis, degrees):
    t = math.radians(degrees)
    i, j = (axis + 1) % 3, (axis + 2) % 3
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = math.cos(t), -math.sin(t), math.sin(t), math.cos(t)
    return r


def analytic_label(forward):
    """Nearest-neighbour label of the box under the forward map ``p = c + forward (q - c)``."""
    grid = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij"), -1).reshape(-1, 3)
    q = CENTRE + (grid - CENTRE) @ np.linalg.inv(forward).T
    idx = np.floor(q + 0.5).astype(int)
    inside = np.all((idx >= [s.start for s in BOX]) & (idx < [s.stop for s in BOX]), axis=1)
    return inside.reshape((SIZE,) * 3).astype(np.int32)


def centroid(weights):
    grid = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij"), -1)
    return (grid * weights[..., None]).reshape(-1, 3).sum(0) / weights.sum()


def dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def flip_coins(seed):
    """The flips ``augment`` draws for ``seed``: the first half of the split seed."""
    s = tf.random.experimental.stateless_split(tf.constant(seed, tf.int64), 2)[0]
    return (tf.random.stateless_uniform([3], seed=s) < 0.5).numpy()


def check_against(forward, image, label):
    expected = analytic_label(forward)
    image, label = np.asarray(image), np.asarray(label)
    box_centroid = np.array([(s.start + s.stop - 1) / 2.0 for s in BOX])
    target = CENTRE + forward @ (box_centroid - CENTRE)
    assert set(np.unique(label)) <= {0, 1}
    assert np.mean(label != expected) < 1e-3           # ties at exact half-voxels only
    np.testing.assert_allclose(centroid(label), target, atol=0.5)
    np.testing.assert_allclose(centroid(image[..., 0]), target, atol=0.5)
    np.testing.assert_allclose(image[..., 1], 2.0 * image[..., 0], rtol=1e-5, atol=1e-6)
    assert dice(label > 0, image[..., 0] > 0.5) > 0.9


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_rotation_of_a_box_matches_the_analytic_transform(axis):
    image, label = box_volume()
    angles = [(0.0, 0.0)] * 3
    angles[axis] = (30.0, 30.0)
    out = random_rotation_scaling(image, label, tf.constant([3, 4]), angles_deg=angles,
                                  scaling_percentage=None)
    check_against(rotation(axis, 30.0), *out)


def test_rotation_direction_is_right_handed():
    """About axis 2 by +90 degrees, +axis-0 goes to +axis-1."""
    label = np.zeros((SIZE,) * 3, np.int32)
    label[20, 12, 12] = 1
    image = label[..., None].astype(np.float32)
    out_image, out_label = random_rotation_scaling(image, label, tf.constant([0, 0]),
                                                   angles_deg=((0, 0), (0, 0), (90, 90)),
                                                   scaling_percentage=None)
    assert np.argwhere(out_label.numpy()).tolist() == [[12, 20, 12]]
    assert out_image.numpy()[12, 20, 12, 0] == pytest.approx(1.0, abs=1e-5)


def test_isotropic_scaling_magnifies_about_the_centre():
    image, label = box_volume()
    out = random_rotation_scaling(image, label, tf.constant([1, 2]), angles_deg=None,
                                  scaling_percentage=(15.0, 15.0), isotropic_scaling=True)
    check_against(1.15 * np.eye(3), *out)


@pytest.mark.parametrize("seed", [(0, 1), (5, 9), (7, 3), (11, 2)])
def test_augment_flips_then_rotates_scales(seed):
    """Random flips on all axes, then 25 degrees about axis 1 and 10 % scaling."""
    image, label = box_volume()
    out = augment(image, label, tf.constant(seed), flip_axes=(0, 1, 2),
                  angles_deg=((0, 0), (25, 25), (0, 0)), scaling_percentage=(10, 10))
    flips = np.diag(np.where(flip_coins(seed), -1.0, 1.0))
    check_against(1.1 * rotation(1, 25.0) @ flips, *out)


def test_seeds_cover_both_flip_states():
    coins = np.array([flip_coins(s) for s in [(0, 1), (5, 9), (7, 3), (11, 2)]])
    assert coins.any(axis=0).all() and (~coins).any(axis=0).all()


def test_random_flip_matches_numpy_reverse():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(5, 6, 7, 3)).astype(np.float32)
    label = rng.integers(0, 4, size=(5, 6, 7)).astype(np.int32)
    for seed in [(0, 1), (5, 9), (7, 3), (11, 2)]:
        coins = (tf.random.stateless_uniform([3], seed=tf.constant(seed, tf.int64)) < 0.5).numpy()
        out_image, out_label = random_flip(image, label, tf.constant(seed), axes=(0, 2))
        axes = [a for a in (0, 2) if coins[a]]
        np.testing.assert_array_equal(out_image, np.flip(image, axes) if axes else image)
        np.testing.assert_array_equal(out_label, np.flip(label, axes) if axes else label)


def brats_like(rng, shape=(20, 22, 18)):
    label = rng.choice(np.array([0, 1, 2, 4], np.int32), size=shape)
    image = rng.normal(size=shape + (4,)).astype(np.float32)
    return image, label


def test_labels_stay_in_their_label_set(rng):
    image, label = brats_like(rng)
    _, out = random_rotation_scaling(image, label, tf.constant([2, 3]), angles_deg=(-20, 20),
                                     scaling_percentage=(-15, 15))
    assert set(np.unique(out.numpy())) <= {0, 1, 2, 4}
    assert out.dtype == tf.int32


@pytest.mark.parametrize("angles, scaling", [(None, None), (((0, 0),) * 3, (0, 0)), ((), ())])
def test_identity_parameters_return_the_input(rng, angles, scaling):
    image, label = brats_like(rng)
    out_image, out_label = random_rotation_scaling(image, label, tf.constant([1, 1]), angles, scaling)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_label, label)
    out_image, out_label = augment(image, label, tf.constant([1, 1]), (), angles, scaling)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_label, label)


def test_determinism_per_seed(rng):
    image, label = brats_like(rng)
    kwargs = dict(flip_axes=(0, 1, 2), angles_deg=(-15, 15), scaling_percentage=(-10, 10))
    a = augment(image, label, tf.constant([4, 2]), **kwargs)
    b = augment(image, label, tf.constant([4, 2]), **kwargs)
    c = augment(image, label, tf.constant([4, 3]), **kwargs)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.allclose(a[0], c[0])


def test_int32_and_int64_seeds_draw_the_same(rng):
    image, label = brats_like(rng)
    kwargs = dict(flip_axes=(0, 1, 2), angles_deg=(-15, 15), scaling_percentage=(-10, 10))
    a = augment(image, label, tf.constant([4, 2], tf.int32), **kwargs)
    b = augment(image, label, tf.constant([4, 2], tf.int64), **kwargs)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_augment_equals_flip_then_rotation_scaling(rng):
    image, label = brats_like(rng)
    seed = tf.constant([8, 1], tf.int64)
    kwargs = dict(angles_deg=((-20, 20), (-5, 5), (0, 10)), scaling_percentage=(-10, 10),
                  isotropic_scaling=False)
    s_flip, s_spatial = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    flipped = random_flip(image, label, s_flip, axes=(0, 1, 2))
    expected = random_rotation_scaling(*flipped, s_spatial, **kwargs)
    out = augment(image, label, seed, flip_axes=(0, 1, 2), **kwargs)
    np.testing.assert_allclose(out[0], expected[0], atol=1e-4)
    assert np.mean(out[1].numpy() != expected[1].numpy()) < 1e-3


def test_augment_crop_without_rotation_is_the_plain_crop(rng):
    image, label = brats_like(rng)
    window = (8, 7, 6)
    centre = np.array([9, 10, 5])
    corner = centre - np.array(window) // 2
    crop = tuple(slice(c, c + w) for c, w in zip(corner, window))
    out_image, out_label = augment_crop(image, label, tf.constant(centre), window, tf.constant([1, 2]))
    np.testing.assert_array_equal(out_image, image[crop])
    np.testing.assert_array_equal(out_label, label[crop])
    # zero ranges are the same as no rotation/scaling
    out_image, out_label = augment_crop(image, label, centre, window, tf.constant([1, 2]),
                                        angles_deg=(0, 0), scaling_percentage=(0, 0))
    np.testing.assert_array_equal(out_image, image[crop])
    np.testing.assert_array_equal(out_label, label[crop])


def test_augment_crop_flips_are_those_of_augment(rng):
    image, label = brats_like(rng)
    window = (8, 7, 6)
    centre = np.array([9, 10, 5])
    crop = tuple(slice(c - w // 2, c - w // 2 + w) for c, w in zip(centre, window))
    for seed in [(0, 1), (5, 9), (7, 3)]:
        expected = augment(image[crop], label[crop], tf.constant(seed), flip_axes=(0, 1, 2))
        out = augment_crop(image, label, centre, window, tf.constant(seed), flip_axes=(0, 1, 2))
        np.testing.assert_array_equal(out[0], expected[0])
        np.testing.assert_array_equal(out[1], expected[1])


def test_augment_crop_outside_the_volume_reads_zeros(rng):
    image, label = brats_like(rng)
    window = (8, 8, 8)
    out_image, out_label = augment_crop(image, label, tf.constant([1, 21, 9]), window, tf.constant([1, 2]))
    # corner (-3, 17, 5): rows 0..2 and columns 5.. of axis 1 are outside
    np.testing.assert_array_equal(out_image[3:, :5, :], image[0:5, 17:22, 5:13])
    np.testing.assert_array_equal(out_label[3:, :5, :], label[0:5, 17:22, 5:13])
    assert not np.any(out_image[:3]) and not np.any(out_label[:3])
    assert not np.any(out_image[:, 5:]) and not np.any(out_label[:, 5:])


def test_augment_crop_of_the_whole_volume_equals_augment(rng):
    image, label = brats_like(rng, shape=(17, 19, 15))   # odd: the centre is a voxel
    kwargs = dict(flip_axes=(0, 1), angles_deg=(-30, 30), scaling_percentage=(-10, 20))
    seed = tf.constant([3, 14])
    expected = augment(image, label, seed, **kwargs)
    out = augment_crop(image, label, tf.constant([8, 9, 7]), image.shape[:3], seed, **kwargs)
    np.testing.assert_allclose(out[0], expected[0], atol=1e-5)
    assert np.mean(out[1].numpy() != expected[1].numpy()) < 1e-3


def test_augment_crop_fills_rotated_corners_from_the_volume():
    """A window rotated inside a constant volume has no zero corners (a rotated window would)."""
    image = np.ones((40, 40, 40, 2), np.float32)
    label = np.full((40, 40, 40), 2, np.int32)
    window = (16, 16, 16)
    out_image, out_label = augment_crop(image, label, [20, 20, 20], window, tf.constant([0, 5]),
                                        angles_deg=(30, 30))
    np.testing.assert_allclose(out_image, 1.0, atol=1e-5)
    assert np.all(out_label.numpy() == 2)
    win_image, win_label = augment(image[12:28, 12:28, 12:28], label[12:28, 12:28, 12:28],
                                   tf.constant([0, 5]), angles_deg=(30, 30))
    assert np.any(win_label.numpy() == 0) and win_image.numpy().min() < 0.5


def test_inside_tf_data_map(rng):
    image, label = brats_like(rng)
    window = (8, 8, 8)

    def fn(i):
        seed = tf.stack([tf.constant(7, tf.int64), i])
        return augment_crop(image, label, tf.constant([10, 11, 9]), window, seed, flip_axes=(0, 1, 2),
                            angles_deg=(-10, 10), scaling_percentage=(-10, 10))

    ds = tf.data.Dataset.range(3).map(fn)
    assert ds.element_spec[0].shape == (8, 8, 8, 4) and ds.element_spec[1].shape == (8, 8, 8)
    first = [tuple(t.numpy() for t in x) for x in ds]
    second = [tuple(t.numpy() for t in x) for x in ds]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(first[0][0], first[1][0])


@pytest.mark.parametrize("args, expected", [
    (((), (), (), ()), None),
    (((-10, 10), (), (), ()), ((-10.0, 10.0),) * 3),
    (((), (-5, 5), (), (1, 2)), ((-5.0, 5.0), (0.0, 0.0), (1.0, 2.0))),
    ((None, None, (0, 3), None), ((0.0, 0.0), (0.0, 3.0), (0.0, 0.0))),
])
def test_rotation_ranges_from_config(args, expected):
    assert rotation_ranges_from_config(*args) == expected


def test_rotation_angle_overrides_per_axis_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="uhved_tf.data.augmentation"):
        assert rotation_ranges_from_config((-10, 10), (-5, 5), (), ()) == ((-10.0, 10.0),) * 3
    assert "ignored" in caplog.text


def test_invalid_ranges_are_rejected():
    with pytest.raises(ValueError, match="min <= max"):
        rotation_ranges_from_config((10, -10), (), (), ())
    with pytest.raises(ValueError, match="> -100"):
        random_rotation_scaling(np.zeros((4, 4, 4, 1), np.float32), None, tf.constant([0, 0]),
                                angles_deg=None, scaling_percentage=(-100, 0))
