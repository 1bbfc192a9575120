"""NiftyNet's training window samplers as TensorFlow ops on one volume (usable inside ``Dataset.map``).

Each sampler draws ``n`` windows of size ``window`` at once from an explicit stateless seed
(int32/int64 tensor of shape [2], cast to int64 so both give the same draws) and returns their
corners (start indices) as [n, 3] int32, every window fully inside the volume (the volume is
assumed at least as large as the window; a smaller axis gives corner 0 there).

* ``uniform``: corners uniform over all positions where the window fits.
* ``balanced`` (NiftyNet ``sampler_balanced_v2``): per window a class uniformly among the classes
  *present* in the volume, then a voxel of that class uniformly; the window is centred on it.
* ``weighted`` (NiftyNet ``sampler_weighted_v2``): the centre voxel drawn with probability
  proportional to a non-negative weight map.

A centre voxel v gives the corner ``v - window // 2`` clamped to ``[0, shape - window]``, so the
window contains v even near the border. NiftyNet instead only draws centres from the region where
the whole window fits (it crops the sampling map by half a window), which never targets a tumour
near the border of a tightly cropped volume; clamping keeps those. The ``*_centres`` functions
return the unclamped centre voxels, for :func:`uhved_tf.data.augmentation.augment_crop`
(``centre = corner + window // 2`` maps a corner back).

Cost on a 240x240x155 label volume (per call, i.e. per volume, not per window): balanced counts
each class per row of the [D*H, W] view (one pass per class), weighted sums the rows once; the
draws then search the cumulative row counts / sums and only the n chosen rows. No per-class
index lists or whole-volume cumulative sums are built (tens of ms on 2 CPU cores).
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from uhved_tf.data.augmentation import stateless_seed
from uhved_tf.errors import did_you_mean

SAMPLERS = ("uniform", "balanced", "weighted")

#: ``corners_for('weighted', ...)`` weights foreground (label > 0) voxels this much more than
#: background ones (NiftyNet reads a separate weight image, which uhved_tf does not load yet).
FOREGROUND_WEIGHT = 10.0


def _window(window: Sequence[int]) -> tf.Tensor:
    window = tuple(int(w) for w in window)
    if len(window) != 3 or any(w < 1 for w in window):
        raise ValueError(f"window must be three positive sizes, got {window!r}")
    return tf.constant(window, tf.int32)


def centres_to_corners(centres, shape, window: Sequence[int]) -> tf.Tensor:
    """[n, 3] centre voxels -> [n, 3] int32 corners ``centre - window // 2`` clamped inside ``shape``."""
    w = _window(window)
    shape = tf.cast(tf.convert_to_tensor(shape)[:3], tf.int32)
    corners = tf.cast(centres, tf.int32) - w // 2
    return tf.clip_by_value(corners, 0, tf.maximum(shape - w, 0)[None, :])


def corners_to_centres(corners, window: Sequence[int]) -> tf.Tensor:
    """[n, 3] corners -> the centre voxels that :func:`augment_crop` expects (``corner + window // 2``)."""
    return tf.cast(corners, tf.int32) + _window(window) // 2


def uniform_corners(label_shape, window: Sequence[int], n: int, seed) -> tf.Tensor:
    """[n, 3] int32 corners uniform over all positions where ``window`` fits in ``label_shape``."""
    shape = tf.cast(tf.convert_to_tensor(label_shape)[:3], tf.int32)
    return _uniform_voxels(tf.maximum(shape - _window(window) + 1, 1), n, seed)


#: The brief's name for :func:`uniform_corners` (it returns corners, like the other samplers).
uniform_centres = uniform_corners


def _uniform_voxels(shape, n: int, seed) -> tf.Tensor:
    """[n, 3] int32 voxels uniform over ``shape``."""
    seeds = tf.random.experimental.stateless_split(stateless_seed(seed), 3)
    return tf.stack([tf.random.stateless_uniform([n], seed=seeds[a], minval=0, maxval=shape[a],
                                                 dtype=tf.int32) for a in range(3)], axis=1)


def _voxel_index(row, col, shape) -> tf.Tensor:
    """Row r of the [D*H, W] view and column c -> [n, 3] int32 voxel (d, h, w)."""
    return tf.stack([row // shape[1], row % shape[1], col], axis=1)


def balanced_centres(label, n: int, num_classes: int, seed) -> tf.Tensor:
    """[n, 3] int32 centre voxels: class uniform among the present ones, then a voxel of it uniformly.

    Labels outside ``0..num_classes-1`` are never targeted. With no class present at all the centres
    are uniform over the volume. The voxel of rank r (in C order) of class c is found in two steps
    on the [D*H, W] view of the label: the row from the cumulative per-row counts of c, then the
    column within that row; exact integer arithmetic throughout.
    """
    label = tf.convert_to_tensor(label)
    shape = tf.shape(label, out_type=tf.int32)
    rows = tf.reshape(label, [-1, shape[2]])                                    # [R, W]
    s_class, s_voxel, s_fallback = tf.unstack(tf.random.experimental.stateless_split(stateless_seed(seed), 3))
    row_counts = tf.stack([tf.reduce_sum(tf.cast(tf.equal(rows, tf.cast(c, rows.dtype)), tf.int32), axis=1)
                           for c in range(num_classes)])                        # [K, R]
    cumulative = tf.cumsum(row_counts, axis=1)                                  # [K, R]
    counts = cumulative[:, -1]                                                  # [K]
    present = counts > 0

    def draw():
        logits = tf.where(present, 0.0, float("-inf"))[None, :]
        cls = tf.random.stateless_categorical(logits, n, seed=s_class, dtype=tf.int32)[0]
        u = tf.random.stateless_uniform([n], seed=s_voxel, dtype=tf.float64)
        count = tf.gather(counts, cls)
        rank = tf.minimum(tf.cast(tf.floor(u * tf.cast(count, tf.float64)), tf.int32), count - 1)
        cum = tf.gather(cumulative, cls)                                        # [n, R]
        row = tf.searchsorted(cum, rank[:, None], side="right", out_type=tf.int32)[:, 0]
        before = tf.gather(cum, row, batch_dims=1) - tf.gather(tf.gather(row_counts, cls), row, batch_dims=1)
        hits = tf.cumsum(tf.cast(tf.equal(tf.gather(rows, row), tf.cast(cls, rows.dtype)[:, None]),
                                 tf.int32), axis=1)                             # [n, W]
        col = tf.searchsorted(hits, (rank - before)[:, None], side="right", out_type=tf.int32)[:, 0]
        return _voxel_index(row, col, shape)

    return tf.cond(tf.reduce_any(present), draw, lambda: _uniform_voxels(shape, n, s_fallback))


def balanced_corners(label, window: Sequence[int], n: int, num_classes: int, seed) -> tf.Tensor:
    """[n, 3] int32 corners of windows centred (then clamped) on :func:`balanced_centres`."""
    return centres_to_corners(balanced_centres(label, n, num_classes, seed), tf.shape(label), window)


def weighted_centres(weight_map, n: int, seed) -> tf.Tensor:
    """[n, 3] int32 centre voxels drawn with probability proportional to ``weight_map`` [D, H, W].

    Negative weights count as 0; an all-zero map falls back to uniform voxels. Two-step inverse-CDF
    draw on the [D*H, W] view: a row from the float64 cumulative row sums, then a column from the
    cumulative weights of that row only (no cumulative sum over the whole volume). Zero-weight
    voxels are never chosen.
    """
    weight_map = tf.convert_to_tensor(weight_map)
    shape = tf.shape(weight_map, out_type=tf.int32)
    rows = tf.maximum(tf.reshape(tf.cast(weight_map, tf.float32), [-1, shape[2]]), 0.0)   # [R, W]
    cumulative = tf.cumsum(tf.cast(tf.reduce_sum(rows, axis=1), tf.float64))              # [R]
    total = cumulative[-1]
    s_row, s_col, s_fallback = tf.unstack(tf.random.experimental.stateless_split(stateless_seed(seed), 3))

    def draw():
        u = tf.random.stateless_uniform([n], seed=s_row, dtype=tf.float64) * total
        # First index whose cumulative weight exceeds u: empty rows / zero voxels are skipped.
        row = tf.searchsorted(cumulative[None, :], u[None, :], side="right", out_type=tf.int32)[0]
        row = tf.minimum(row, tf.shape(rows)[0] - 1)
        cum = tf.cumsum(tf.cast(tf.gather(rows, row), tf.float64), axis=1)           # [n, W]
        v = tf.random.stateless_uniform([n], seed=s_col, dtype=tf.float64) * cum[:, -1]
        col = tf.searchsorted(cum, v[:, None], side="right", out_type=tf.int32)[:, 0]
        return _voxel_index(row, tf.minimum(col, shape[2] - 1), shape)

    return tf.cond(total > 0, draw, lambda: _uniform_voxels(shape, n, s_fallback))


def weighted_corners(weight_map, window: Sequence[int], n: int, seed) -> tf.Tensor:
    """[n, 3] int32 corners of windows centred (then clamped) on :func:`weighted_centres`."""
    return centres_to_corners(weighted_centres(weight_map, n, seed), tf.shape(weight_map), window)


def foreground_weights(label, foreground_weight: float = FOREGROUND_WEIGHT) -> tf.Tensor:
    """The weight map of ``corners_for('weighted')``: 1 where label == 0, ``foreground_weight`` else."""
    return 1.0 + (foreground_weight - 1.0) * tf.cast(tf.convert_to_tensor(label) > 0, tf.float32)


def check_sampler(sampling: str) -> str:
    """``sampling`` if known, else a ValueError that suggests the closest name and lists them all."""
    if sampling in SAMPLERS:
        return sampling
    hint = did_you_mean(sampling, SAMPLERS)
    raise ValueError(f'Unknown window sampler "{sampling}"{hint} Expected one of {", ".join(SAMPLERS)}.')


def corners_for(sampling: str, label, window: Sequence[int], n: int, num_classes: int, seed) -> tf.Tensor:
    """[n, 3] int32 corners from the sampler named ``sampling`` ('uniform' | 'balanced' | 'weighted').

    'weighted' uses the weight map ``1 + 9 * (label > 0)`` (:func:`foreground_weights`): a foreground
    voxel is ten times as likely a centre as a background one. NiftyNet reads the weights from a
    separate image ([SEGMENTATION] sampler); uhved_tf derives them from the label until it loads one.
    """
    check_sampler(sampling)
    if sampling == "uniform":
        return uniform_corners(tf.shape(label), window, n, seed)
    if sampling == "balanced":
        return balanced_corners(label, window, n, num_classes, seed)
    return weighted_corners(foreground_weights(label), window, n, seed)
