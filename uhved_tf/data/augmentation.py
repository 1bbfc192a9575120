"""Spatial augmentation of training windows as pure TensorFlow ops (usable inside ``Dataset.map``).

Every function takes an explicit stateless seed (int32/int64 tensor of shape [2]) and draws with
``tf.random.stateless_*`` only, so the result is a function of (inputs, seed): deterministic in
``tf.data`` and reproducible on resume. Nothing here uses Python or NumPy randomness. Seeds are
cast to int64 first, so an int32 and an int64 seed of the same value give the same draws.

Conventions (array voxel axes 0, 1, 2 of an image [D, H, W, C] and a label [D, H, W]):

* **Flip** of axis a: ``x[..., i, ...] -> x[..., n_a - 1 - i, ...]``, each listed axis with p = 0.5.
* **Rotation** about axis a by theta (degrees): in the plane of the axes (i, j) = (a+1, a+2) mod 3,
  the content moves by ``e_i -> cos(theta) e_i + sin(theta) e_j`` (right-handed in voxel axes;
  e.g. about axis 2 a point at +axis-0 moves towards +axis-1). The three rotations compose as
  ``R = R_2 @ R_1 @ R_0`` (axis 0 first).
* **Scaling** by s_a = 1 + U(lo, hi) / 100 per axis (one factor if isotropic); s > 1 magnifies the
  content (like ``scipy.ndimage.zoom`` by s, but on the same output grid).
* The forward content map is ``x_out = c_out + R S F (x_in - c_in)`` about the geometric centre
  ``c = (n - 1) / 2`` of the grid (flips F first, then scaling, then rotation). Resampling uses the
  inverse: each output voxel p reads the input at ``c_in + F S^-1 R^T (p - c_out)``.
* Images are interpolated trilinearly and labels by nearest neighbour (labels stay in their label
  set). Samples outside the input volume read 0 for both (0 is the background after whitening):
  for trilinear interpolation the missing corner voxels count as 0.

The resampler is gather based: the inverse-mapped coordinates of all output voxels, then 8 gathers
(trilinear, each of the [N, C] rows) or 1 gather (nearest). It runs a 112^3 x 4-channel window in
about 0.1-0.2 s on a 2-core CPU (32^3 x 4: about 4 ms).

:func:`augment_crop` is the training entry point: it cuts the augmented window straight from the
whole volume around a centre voxel, so the corners of a rotated window are real data wherever the
volume has it and no margin has to be cut first. :func:`augment` does the same on a window.

NiftyNet differences (``layer/rand_rotation.py``, ``rand_spatial_scaling.py``, ``rand_flip.py``):
NiftyNet's ``rotation_angle_x`` rotates in the plane of axes (0, 1) and ``_z`` in (1, 2), composed as
``T_z T_x T_y``, about ``0.5 * shape`` with cubic splines, and its scaling changes the grid size of
the whole volume. Here angle a is the rotation *about* array axis a (x, y, z = axes 0, 1, 2), the
centre is the geometric centre, images are trilinear and the output grid is the input grid.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import tensorflow as tf

log = logging.getLogger(__name__)

Range = tuple[float, float]


def _as_range(value, name: str) -> Range | None:
    """``None`` / ``()`` -> None; ``(lo, hi)`` -> floats with lo <= hi."""
    value = () if value is None else tuple(value)
    if not value:
        return None
    if len(value) != 2:
        raise ValueError(f"{name} must be empty or (min, max), got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if lo > hi:
        raise ValueError(f"{name} must be (min, max) with min <= max, got {value!r}")
    return lo, hi


def rotation_ranges_from_config(rotation_angle=(), rotation_angle_x=(), rotation_angle_y=(),
                                rotation_angle_z=()) -> tuple[Range, Range, Range] | None:
    """Per-axis rotation ranges in degrees from NiftyNet's ``[AUGMENTATION]`` keys.

    ``rotation_angle`` set: the same range for all three axes (``rotation_angle_x/_y/_z`` are
    ignored, with a warning, if also set). Otherwise the per-axis keys, ``(0, 0)`` for an unset
    axis; x, y, z are array axes 0, 1, 2. Returns None when nothing is set (rotation off).
    """
    both = _as_range(rotation_angle, "rotation_angle")
    per_axis = [_as_range(v, f"rotation_angle_{a}")
                for v, a in zip((rotation_angle_x, rotation_angle_y, rotation_angle_z), "xyz")]
    if both is not None:
        if any(r is not None for r in per_axis):
            log.warning("rotation_angle is set, so rotation_angle_x/_y/_z are ignored "
                        "(NiftyNet semantics); unset rotation_angle to use per-axis ranges")
        return (both, both, both)
    if all(r is None for r in per_axis):
        return None
    return tuple(r if r is not None else (0.0, 0.0) for r in per_axis)


def _angle_ranges(angles_deg) -> tuple[Range, Range, Range] | None:
    """None / () / one (lo, hi) pair for every axis / three pairs -> three pairs or None."""
    angles_deg = () if angles_deg is None else tuple(angles_deg)
    if not angles_deg:
        return None
    if len(angles_deg) == 2 and all(isinstance(v, (int, float)) for v in angles_deg):
        r = _as_range(angles_deg, "angles_deg")
        return (r, r, r)
    if len(angles_deg) != 3:
        raise ValueError(f"angles_deg must be None, (min, max) or three (min, max) pairs, got {angles_deg!r}")
    return tuple(_as_range(r, f"angles_deg[{a}]") or (0.0, 0.0) for a, r in enumerate(angles_deg))


def _spatial_params(angles_deg, scaling_percentage):
    """Normalised (angle ranges or None, scaling range or None); all-zero ranges become None."""
    angles = _angle_ranges(angles_deg)
    if angles is not None and all(lo == 0.0 and hi == 0.0 for lo, hi in angles):
        angles = None
    scaling = _as_range(scaling_percentage, "scaling_percentage")
    if scaling is not None:
        if scaling[0] <= -100.0:
            raise ValueError(f"scaling_percentage must be > -100, got {scaling_percentage!r}")
        if scaling == (0.0, 0.0):
            scaling = None
    return angles, scaling


def _normalise_axes(axes) -> tuple[int, ...]:
    axes = tuple(sorted(set(int(a) for a in (axes or ()))))
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"flip axes must be among 0, 1, 2, got {axes!r}")
    return axes


def stateless_seed(seed) -> tf.Tensor:
    """The seed as int64 [2]: int32 and int64 seeds of the same value give the same draws."""
    return tf.cast(tf.convert_to_tensor(seed), tf.int64)


def _split(seed, n: int) -> tf.Tensor:
    return tf.random.experimental.stateless_split(stateless_seed(seed), n)


def _flip_signs(seed, axes: tuple[int, ...]) -> tf.Tensor:
    """[3] float32 of +-1: -1 where axis a is in ``axes`` and its coin (p = 0.5) came up."""
    coins = tf.random.stateless_uniform([3], seed=stateless_seed(seed)) < 0.5
    listed = tf.constant([a in axes for a in range(3)])
    return tf.where(tf.logical_and(coins, listed), -1.0, 1.0)


def _rotation(axis: int, theta) -> tf.Tensor:
    """3x3 rotation about voxel axis ``axis`` by ``theta`` radians (see module docstring)."""
    i, j = (axis + 1) % 3, (axis + 2) % 3
    c, s = tf.cos(theta), tf.sin(theta)
    entries = {(axis, axis): tf.ones_like(c), (i, i): c, (i, j): -s, (j, i): s, (j, j): c}
    zero = tf.zeros_like(c)
    return tf.stack([tf.stack([entries.get((r, k), zero) for k in range(3)]) for r in range(3)])


def _inverse_matrix(seed, angles, scaling, isotropic: bool) -> tf.Tensor:
    """``S^-1 R^T`` [3, 3] float32 for one random rotation/scaling (identity parts when off)."""
    s_angle, s_scale = tf.unstack(_split(seed, 2))
    inverse = tf.eye(3)
    if angles is not None:
        lo = tf.constant([r[0] for r in angles], tf.float32)
        hi = tf.constant([r[1] for r in angles], tf.float32)
        theta = (lo + (hi - lo) * tf.random.stateless_uniform([3], seed=s_angle)) * (math.pi / 180.0)
        rotation = _rotation(2, theta[2]) @ _rotation(1, theta[1]) @ _rotation(0, theta[0])
        inverse = tf.transpose(rotation)
    if scaling is not None:
        u = tf.random.stateless_uniform([1 if isotropic else 3], seed=s_scale)
        factors = 1.0 + (scaling[0] + (scaling[1] - scaling[0]) * u) / 100.0
        factors = tf.broadcast_to(factors, [3])
        inverse = inverse / factors[:, None]        # diag(1/s) @ R^T
    return inverse


def _source_coordinates(matrix, in_centre, out_shape, out_centre):
    """Input coordinates ``in_centre + matrix @ (p - out_centre)`` of every output voxel p.

    Returns three [d, h, w] float32 tensors (one per input axis), built from broadcast 1-D ranges.
    """
    grids = [tf.reshape(tf.cast(tf.range(out_shape[a]), tf.float32) - out_centre[a],
                        [-1 if b == a else 1 for b in range(3)]) for a in range(3)]
    return [in_centre[k] + matrix[k, 0] * grids[0] + matrix[k, 1] * grids[1] + matrix[k, 2] * grids[2]
            for k in range(3)]


def _trilinear(image, coords):
    """Image [D, H, W, C] at float coordinates (three [d, h, w]); outside voxels count as 0."""
    shape = tf.shape(image)
    flat = tf.reshape(image, [-1, shape[3]])
    index, weight = [], []
    for k in range(3):
        n = shape[k]
        base = tf.floor(coords[k])
        t = coords[k] - base
        i0 = tf.cast(base, tf.int32)
        i1 = i0 + 1
        w0 = tf.where((i0 >= 0) & (i0 < n), 1.0 - t, 0.0)
        w1 = tf.where((i1 >= 0) & (i1 < n), t, 0.0)
        index.append((tf.clip_by_value(i0, 0, n - 1), tf.clip_by_value(i1, 0, n - 1)))
        weight.append((w0, w1))
    strides = (shape[1] * shape[2], shape[2])
    result = None
    for b0 in (0, 1):
        row0 = index[0][b0] * strides[0]
        for b1 in (0, 1):
            row1 = row0 + index[1][b1] * strides[1]
            w01 = weight[0][b0] * weight[1][b1]
            for b2 in (0, 1):
                w = tf.cast(w01 * weight[2][b2], image.dtype)
                values = tf.gather(flat, row1 + index[2][b2])
                term = w[..., None] * values
                result = term if result is None else result + term
    return result


def _nearest(volume, coords):
    """Volume [D, H, W, ...] at the nearest voxel of each coordinate; 0 outside the volume."""
    shape = tf.shape(volume)
    inside, linear = None, None
    strides = (shape[1] * shape[2], shape[2], 1)
    for k in range(3):
        i = tf.cast(tf.floor(coords[k] + 0.5), tf.int32)
        ok = (i >= 0) & (i < shape[k])
        inside = ok if inside is None else inside & ok
        term = tf.clip_by_value(i, 0, shape[k] - 1) * strides[k]
        linear = term if linear is None else linear + term
    flat = tf.reshape(volume, tf.concat([[-1], shape[3:]], 0))
    values = tf.gather(flat, linear)
    mask = tf.reshape(inside, tf.concat([tf.shape(inside), tf.ones_like(shape[3:])], 0))
    return tf.where(mask, values, tf.zeros_like(values))


def _resample(image, label, matrix, in_centre, out_shape, out_centre, interpolate: bool = True):
    coords = _source_coordinates(matrix, in_centre, out_shape, out_centre)
    image = _trilinear(image, coords) if interpolate else _nearest(image, coords)
    if label is not None:
        label = _nearest(label, coords)
    return image, label


def _resample_in_place(image, label, matrix):
    """Resample image (and label) about the volume centre onto the same grid, keeping static shapes."""
    shape = tf.shape(image)
    centre = (tf.cast(shape[:3], tf.float32) - 1.0) / 2.0
    out_image, out_label = _resample(image, label, matrix, centre, shape[:3], centre)
    out_image = tf.reshape(out_image, shape)
    out_image.set_shape(image.shape)
    if label is not None:
        out_label.set_shape(label.shape)
    return out_image, out_label


def _plan(seed, flip_axes, angles_deg, scaling_percentage, isotropic_scaling):
    """(flip axes, flip half-seed, ``F S^-1 R^T`` or None when rotation/scaling is off) for :func:`augment`."""
    axes = _normalise_axes(flip_axes)
    angles, scaling = _spatial_params(angles_deg, scaling_percentage)
    s_flip, s_spatial = tf.unstack(_split(seed, 2))
    if angles is None and scaling is None:
        return axes, s_flip, None
    matrix = _inverse_matrix(s_spatial, angles, scaling, isotropic_scaling)
    return axes, s_flip, (_flip_signs(s_flip, axes)[:, None] * matrix if axes else matrix)


def random_flip(image, label, seed, axes: Sequence[int] = (0, 1, 2)):
    """Flip image [D, H, W, C] and label [D, H, W] together along each of ``axes`` with p = 0.5.

    The coin of axis a is ``stateless_uniform([3], seed)[a] < 0.5``; ``label`` may be None.
    """
    axes = _normalise_axes(axes)
    if not axes:
        return image, label
    flips = tf.random.stateless_uniform([3], seed=stateless_seed(seed)) < 0.5
    for a in axes:
        image = tf.cond(flips[a], lambda x=image, a=a: tf.reverse(x, [a]), lambda x=image: x)
        if label is not None:
            label = tf.cond(flips[a], lambda x=label, a=a: tf.reverse(x, [a]), lambda x=label: x)
    return image, label


def random_rotation_scaling(image, label, seed, angles_deg=((-10.0, 10.0),) * 3,
                            scaling_percentage=(-10.0, 10.0), isotropic_scaling: bool = False):
    """One random rotation and scaling about the volume centre; output grid = input grid.

    ``angles_deg``: None, one (min, max) range in degrees for all axes, or three ranges (axes 0, 1,
    2; see :func:`rotation_ranges_from_config`). ``scaling_percentage``: None or (min, max) percent;
    the factor is ``1 + U(min, max) / 100`` per axis, or one factor if ``isotropic_scaling``.
    Images trilinear, labels nearest neighbour, 0 outside the volume. With both off (None or
    all-zero ranges) the inputs are returned unchanged. ``label`` may be None.
    """
    angles, scaling = _spatial_params(angles_deg, scaling_percentage)
    if angles is None and scaling is None:
        return image, label
    matrix = _inverse_matrix(seed, angles, scaling, isotropic_scaling)
    return _resample_in_place(image, label, matrix)


def augment(image, label, seed, flip_axes: Sequence[int] = (), angles_deg=None,
            scaling_percentage=None, isotropic_scaling: bool = False):
    """Random flips, then rotation/scaling, of one window (image [D, H, W, C], label [D, H, W]).

    ``seed`` is split in two: the first half-seed draws the flips (exactly as
    ``random_flip(..., seed=split[0])``), the second the rotation/scaling (as
    ``random_rotation_scaling(..., seed=split[1])``). When rotation/scaling is on, the flips are
    folded into the resampling matrix, so the window is resampled once.
    """
    axes, s_flip, matrix = _plan(seed, flip_axes, angles_deg, scaling_percentage, isotropic_scaling)
    if matrix is None:
        return random_flip(image, label, s_flip, axes)
    return _resample_in_place(image, label, matrix)


def augment_crop(volume_image, volume_label, centre, window: Sequence[int], seed,
                 flip_axes: Sequence[int] = (), angles_deg=None, scaling_percentage=None,
                 isotropic_scaling: bool = False):
    """The augmented training window around voxel ``centre``, resampled from the whole volume.

    ``volume_image`` [D, H, W, C], ``volume_label`` [D, H, W] (or None), ``centre`` [3] int (the
    window's unaugmented corner is ``centre - window // 2``, so without rotation/scaling and flips
    the result is exactly ``volume[corner : corner + window]``). The window's geometric centre
    ``corner + (window - 1) / 2`` is the centre of the flips, rotation and scaling, whose
    coordinates are mapped into the full volume: the rotated window's corners come from real data
    wherever the volume has it and are 0 (image and label) outside it. Draws are those of
    :func:`augment` with the same seed, so this equals ``augment(plain window, seed, ...)`` except
    where the plain window would have read beyond its own border.

    Returns image [w0, w1, w2, C] and label [w0, w1, w2] with static spatial shapes.
    """
    window = tuple(int(w) for w in window)
    axes, s_flip, matrix = _plan(seed, flip_axes, angles_deg, scaling_percentage, isotropic_scaling)
    centre = tf.cast(tf.convert_to_tensor(centre), tf.int32)
    corner = centre - tf.constant([w // 2 for w in window], tf.int32)
    shape = tf.shape(volume_image)
    channels = volume_image.shape[-1]
    out_centre = tf.constant([(w - 1) / 2.0 for w in window], tf.float32)
    in_centre = tf.cast(corner, tf.float32) + out_centre

    if matrix is None:
        def plain():
            img = tf.slice(volume_image, tf.concat([corner, [0]], 0), list(window) + [-1])
            lab = None if volume_label is None else tf.slice(volume_label, corner, list(window))
            return random_flip(img, lab, s_flip, axes)

        def padded():   # the window reaches outside the volume: integer coordinates, nearest is exact
            matrix = tf.linalg.diag(_flip_signs(s_flip, axes)) if axes else tf.eye(3)
            return _resample(volume_image, volume_label, matrix, in_centre, window, out_centre,
                             interpolate=False)

        inside = tf.reduce_all(corner >= 0) & tf.reduce_all(corner + window <= shape[:3])
        image, label = tf.cond(inside, plain, padded)
    else:
        image, label = _resample(volume_image, volume_label, matrix, in_centre, window, out_centre)
    image = tf.ensure_shape(image, window + (channels,))
    if label is not None:
        label = tf.ensure_shape(label, window)
    return image, label
