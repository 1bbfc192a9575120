"""Sliding-window inference on a whole volume with blended overlapping windows (NumPy only).

Like MONAI ``inferers/utils.py::sliding_window_inference``: it takes any callable predictor and
knows nothing of files, models or TensorFlow. The predictor maps a batch of windows
``[N, d, h, w, C]`` to a dict of outputs ``{name: [N, d, h, w, K_name]}`` (segmentation
probabilities, reconstructed modalities, ...); every output is blended separately as

    out(x) = Σ_windows weight(x - start) · pred(x - start) / Σ_windows weight(x - start)

Geometry, per spatial axis of size ``n``, window ``w`` and border ``b``:

1. The volume is padded by ``b`` voxels on each side (constant ``pad_value``), then, if still
   smaller than the window, symmetrically up to ``w`` (:func:`axis_pads`).
2. Window starts (:func:`window_starts`) tile the padded axis with step
   ``max(1, int((w - 2b) * (1 - overlap)))`` (:func:`window_steps`); the last window is flush with
   the end. With ``cover`` (e.g. the brain's bounding box, :func:`nonzero_box`), an axis on which
   fewer windows cover that box grown by the border than the whole axis is tiled on the box
   (:func:`plan_starts`, :func:`cover_starts`): a box shorter than the window gets one window
   centred on it, so a 140-voxel brain axis in a 148-voxel crop costs one 144-voxel window, not
   two. Voxels outside every window's valid region get 0 in every output.
3. NiftyNet's ``border``: the outer ``b`` voxels on each side of each window's output are
   discarded (weight 0, :func:`blending_weights`). Because of the padding in (1) and because the
   step is computed from the valid width ``w - 2b``, every real voxel lies in the valid (non-border)
   region of at least one window, hence has a positive total weight.
4. The outputs are cropped back to the input's spatial shape.

Memory: the padded input, one float32 accumulator per output ``[D', H', W', K]`` and one float32
weight map ``[D', H', W']``; windows are predicted ``batch_size`` at a time.

The exported SavedModel runs the same geometry as TensorFlow ops
(:func:`uhved_tf.inference.core.sliding_window_graph`): :func:`axis_pads` and :func:`axis_starts`
take an array namespace ``xp`` (NumPy here, TensorFlow ops there), :func:`multiple_pads` takes
integers or tensors, and the blending weights are this module's, as a constant.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Mapping, Sequence
from itertools import product

import numpy as np

logger = logging.getLogger(__name__)

BLEND_MODES = ("gaussian", "constant")
MIN_GAUSSIAN_WEIGHT = 1e-3
"""Floor of the Gaussian weights (relative to their maximum 1) inside a window's valid region, so no
voxel of a window's valid output is ignored and the weighted average is defined everywhere."""

__all__ = ["BLEND_MODES", "axis_pads", "axis_starts", "cover_starts", "plan_starts", "nonzero_box", "multiple_pads",
           "window_steps", "window_starts", "grid_positions", "blending_weights", "pad_to_multiple", "sliding_window_inference"]


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(value, name: str, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _triple(value, name: str, minimum: int) -> tuple[int, int, int]:
    """A scalar (repeated) or a sequence of 3 integers, each >= minimum."""
    values = (value,) * 3 if _is_int(value) else tuple(value) if isinstance(value, Sequence | np.ndarray) else None
    if values is None or len(values) != 3 or not all(_is_int(v) and v >= minimum for v in values):
        raise ValueError(f"{name} must be 3 integers >= {minimum} (or one, repeated); got {value!r}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _window_border(window, name: str, border) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(window3, border3)`` as checked triples, with a valid (non-border) output on every axis."""
    window, border = _triple(window, name, 1), _triple(border, "border", 0)
    for axis, (w, b) in enumerate(zip(window, border)):
        if 2 * b >= w:
            raise ValueError(f"border {border} leaves no valid output in window {window}: axis {axis} needs "
                             f"2 * border < window, got 2 * {b} >= {w}")
    return window, border


def _check_overlap(overlap) -> float:
    if not isinstance(overlap, numbers.Real) or isinstance(overlap, bool) or not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be a number in [0, 1); got {overlap!r}")
    return float(overlap)


def window_starts(size: int, window: int, step: int) -> list[int]:
    """Start indices of windows of length ``window`` that cover ``[0, size)`` with stride ``step``.

    The starts are ``0, step, 2·step, ...`` while the window fits, plus ``size - window`` if needed so
    the last window is flush with the end (so consecutive windows are at most ``step`` apart).
    If ``size <= window`` the only start is 0 (the caller pads the volume up to the window).
    ``step`` must be at most ``window`` (a larger step would leave gaps).
    """
    size, window, step = (_check_int(v, name, 1) for v, name in ((size, "size"), (window, "window"), (step, "step")))
    if step > window:
        raise ValueError(f"step ({step}) must be <= window ({window}), otherwise the windows leave gaps")
    return [int(s) for s in axis_starts(max(size, window), window, step)]


def axis_starts(size, window: int, step: int, xp=np):
    """:func:`window_starts` of an axis at least as long as the window, as an array:
    ``i·step`` clamped to ``size - window``, for ``i`` up to ``ceil((size - window) / step)``."""
    last = size - window
    return xp.minimum(xp.arange((last + step - 1) // step + 1) * step, last)


def axis_pads(size, window: int, border: int, xp=np):
    """``(before, after)`` padding of an axis: ``border`` on each side, then symmetrically up to
    ``window`` (geometry step 1)."""
    extra = xp.maximum(0, window - (size + 2 * border))
    return border + extra // 2, border + extra - extra // 2


def cover_starts(lo, hi, size, window: int, step: int, xp=np):
    """Window starts on an axis of length ``size`` (>= ``window``) that cover ``[lo, hi)``:
    :func:`axis_starts` of the box, or, for a box shorter than the window, one window centred on it
    (kept inside the axis). ``lo = 0, hi = size`` gives :func:`axis_starts`."""
    extra = xp.maximum(0, window - (hi - lo))
    first = xp.minimum(xp.maximum(lo - extra // 2, 0), size - (hi - lo + extra))
    return first + axis_starts(hi - lo + extra, window, step, xp)


def plan_starts(lo, hi, size, window: int, step: int, xp=np):
    """The window starts of one axis: those covering the box ``[lo, hi)`` when they are fewer than
    those tiling the whole axis, else the whole axis's (MONAI's and nnU-Net's positions), so the
    box only ever removes windows. A list of ints with NumPy; with the TensorFlow namespace of
    :mod:`uhved_tf.inference.core` (sizes are tensors) a tensor, chosen by its ``fewer``."""
    box, whole = cover_starts(lo, hi, size, window, step, xp), axis_starts(size, window, step, xp)
    fewer = getattr(xp, "fewer", None)
    if fewer is not None:
        return fewer(box, whole)
    return (box if len(box) < len(whole) else whole).tolist()


def nonzero_box(volume: np.ndarray) -> tuple[tuple[int, int], ...]:
    """``((lo, hi),) * 3``: the bounding box of the voxels of ``volume`` [D, H, W, C] that are
    non-zero in any channel (the brain, in a whitened case), or the whole volume when there is none."""
    inside = np.any(np.asarray(volume) != 0, axis=-1)
    axes = [np.flatnonzero(np.any(inside, axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
    if any(len(a) == 0 for a in axes):
        return tuple((0, n) for n in inside.shape)
    return tuple((int(a[0]), int(a[-1]) + 1) for a in axes)


def multiple_pads(size, multiple):
    """``(before, after)`` symmetric padding of an axis up to the next multiple of ``multiple``
    (integers or integer tensors)."""
    extra = -size % multiple
    return extra // 2, extra - extra // 2


def window_steps(window3, overlap: float, border3) -> tuple[int, ...]:
    """Per-axis step: the windows' valid (non-border) regions overlap by ``overlap``."""
    return tuple(max(1, int((w - 2 * b) * (1.0 - overlap))) for w, b in zip(window3, border3))


def grid_positions(shape3: Sequence[int], window3: Sequence[int], overlap: float,
                   border: Sequence[int] | int = (0, 0, 0)) -> list[tuple[int, int, int]]:
    """Start corners of all windows tiling ``shape3`` (C order: the last axis varies fastest).

    The step per axis is ``max(1, int((window - 2·border) * (1 - overlap)))``, i.e. ``overlap`` is
    the overlap of the windows' valid (non-border) regions; with ``border = 0`` this is
    ``max(1, int(window * (1 - overlap)))`` as in MONAI.
    """
    shape3 = _triple(shape3, "shape3", 1)
    window3, border3 = _window_border(window3, "window3", border)
    steps = window_steps(window3, _check_overlap(overlap), border3)
    per_axis = [window_starts(n, w, step) for n, w, step in zip(shape3, window3, steps)]
    return [tuple(p) for p in product(*per_axis)]  # type: ignore[misc]


def blending_weights(window3: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125,
                     border: Sequence[int] | int = (0, 0, 0)) -> np.ndarray:
    """Per-voxel weight of a window's prediction, float32 array of shape ``window3``.

    * ``"constant"``: 1 in the valid region.
    * ``"gaussian"``: separable Gaussian centred in the window, sigma = ``sigma_scale`` × the valid
      width ``window - 2·border`` per axis (nnU-Net uses 1/8), normalised to a maximum of 1 and
      clipped below at :data:`MIN_GAUSSIAN_WEIGHT` so no valid voxel has weight 0.

    The ``border`` voxels on each side of each axis (NiftyNet's ``border``) get weight 0.
    """
    window3, border3 = _window_border(window3, "window3", border)
    if mode not in BLEND_MODES:
        raise ValueError(f'Unknown blend mode "{mode}"; valid modes: {", ".join(BLEND_MODES)}')
    inner = tuple(w - 2 * b for w, b in zip(window3, border3))
    if mode == "constant":
        core = np.ones(inner, dtype=np.float64)
    else:
        if not isinstance(sigma_scale, numbers.Real) or not np.isfinite(sigma_scale) or sigma_scale <= 0:
            raise ValueError(f"sigma_scale must be a finite number > 0; got {sigma_scale!r}")
        core = np.ones((), dtype=np.float64)
        for n in inner:
            x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
            g = np.exp(-0.5 * (x / (sigma_scale * n)) ** 2)
            core = np.multiply.outer(core, g / g.max())
        core = np.maximum(core / core.max(), MIN_GAUSSIAN_WEIGHT)
    weights = np.zeros(window3, dtype=np.float32)
    weights[tuple(slice(b, w - b) for w, b in zip(window3, border3))] = core
    return weights


def pad_to_multiple(volume: np.ndarray, multiple: int | Sequence[int],
                    pad_value: float = 0.0) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Pad the leading axes of ``volume`` symmetrically (constant) up to multiples of ``multiple``.

    Args:
        volume: array; with a scalar ``multiple`` its first ``min(3, ndim)`` axes are padded, with a
            sequence its first ``len(multiple)`` axes (trailing axes, e.g. channels, are untouched).
        multiple: positive integer(s).
        pad_value: constant fill value.

    Returns:
        ``(padded, crop_slices)`` with ``padded[crop_slices]`` equal to ``volume``.
    """
    volume = np.asarray(volume)
    multiples = (int(multiple),) * min(3, volume.ndim) if _is_int(multiple) else tuple(multiple)
    if len(multiples) > volume.ndim or not all(_is_int(m) and m >= 1 for m in multiples):
        raise ValueError(f"multiple must be integer(s) >= 1, at most one per axis of the volume "
                         f"(shape {volume.shape}); got {multiple!r}")
    pads = [multiple_pads(n, m) for n, m in zip(volume.shape, multiples)] + [(0, 0)] * (volume.ndim - len(multiples))
    crop = tuple(slice(before, before + n) for (before, _), n in zip(pads, volume.shape))
    if not any(before or after for before, after in pads):
        return volume, crop
    return np.pad(volume, pads, mode="constant", constant_values=pad_value), crop


def _check_outputs(outputs, n: int, window: tuple[int, int, int], channels: dict[str, int] | None) -> dict:
    if not isinstance(outputs, Mapping) or not outputs:
        raise ValueError(f"predictor must return a non-empty dict {{name: array [N, d, h, w, K]}}; "
                         f"got {type(outputs).__name__}")
    if channels is not None and set(outputs) != set(channels):
        raise ValueError(f"predictor returned keys {sorted(outputs)} for this batch but {sorted(channels)} "
                         f"for the first one")
    arrays = {}
    expected = (n, *window)
    shown = ", ".join(map(str, expected))
    for key, value in outputs.items():
        arr = np.asarray(value)
        if arr.ndim != 5 or arr.shape[:4] != expected:
            raise ValueError(f'predictor output "{key}" has shape {arr.shape}; expected ({shown}, K) '
                             f"for an input batch of shape ({shown}, C)")
        if channels is not None and arr.shape[4] != channels[key]:
            raise ValueError(f'predictor output "{key}" has {arr.shape[4]} channels for this batch but '
                             f"{channels[key]} for the first one")
        arrays[key] = arr
    return arrays


def sliding_window_inference(volume: np.ndarray, window: Sequence[int] | int,
                             predictor: Callable[[np.ndarray], Mapping[str, np.ndarray]], overlap: float = 0.5,
                             blend_mode: str = "gaussian", border: Sequence[int] | int = (0, 0, 0),
                             batch_size: int = 1, pad_value: float = 0.0,
                             progress: Callable[[int, int], None] | None = None,
                             sigma_scale: float = 0.125,
                             cover: Sequence[tuple[int, int]] | None = None) -> dict[str, np.ndarray]:
    """Predict a whole volume window by window and blend the overlapping window outputs.

    Args:
        volume: ``[D, H, W, C]`` input (cast to float32).
        window: spatial window size ``(d, h, w)`` fed to the predictor.
        predictor: ``[N, d, h, w, C]`` float32 -> ``{name: [N, d, h, w, K_name]}``; must accept any
            ``N`` from 1 to ``batch_size``.
        overlap: fraction in [0, 1) of overlap between the valid regions of neighbouring windows.
        blend_mode: "gaussian" (centre-weighted, nnU-Net) or "constant" (plain average).
        border: voxels discarded on each side of each window's output (NiftyNet ``border``).
        batch_size: windows per predictor call (the last call may get fewer).
        pad_value: constant used to pad the volume (border margin and volumes smaller than the window).
        progress: called as ``progress(done_windows, total_windows)`` after each batch.
        sigma_scale: Gaussian sigma relative to the valid window width (see :func:`blending_weights`).
        cover: ``((lo, hi),) * 3``, the box of the volume the windows must cover (e.g.
            :func:`nonzero_box`); outside it, outputs are 0 where no window reaches. None: all.

    Returns:
        ``{name: [D, H, W, K_name]}`` float32, one entry per predictor output.

    Raises:
        ValueError: bad arguments, or a predictor output with the wrong shape (named in the message).
    """
    vol = np.asarray(volume)
    if vol.ndim != 4:
        raise ValueError(f"volume must be [D, H, W, C] (4 dimensions); got shape {vol.shape}")
    if 0 in vol.shape:
        raise ValueError(f"volume must not be empty; got shape {vol.shape}")
    window3, border3 = _window_border(window, "window", border)
    overlap = _check_overlap(overlap)
    batch_size = _check_int(batch_size, "batch_size", 1)
    if not callable(predictor):
        raise ValueError(f"predictor must be callable; got {type(predictor).__name__}")
    weights = blending_weights(window3, blend_mode, sigma_scale, border3)

    # 1. pad: border margin on each side, then (symmetrically) up to the window
    spatial = vol.shape[:3]
    pads = [tuple(int(p) for p in axis_pads(n, w, b)) for n, w, b in zip(spatial, window3, border3)]
    padded = np.pad(vol.astype(np.float32, copy=False), pads + [(0, 0)], mode="constant", constant_values=pad_value)
    padded_shape = padded.shape[:3]
    crop = tuple(slice(before, before + n) for (before, _), n in zip(pads, spatial))

    # 2. grid (over the cover box grown by the border, in padded coordinates) and total weight per voxel
    cover = [(0, n) for n in spatial] if cover is None else [(int(lo), int(hi)) for lo, hi in cover]
    if len(cover) != 3 or not all(0 <= lo < hi <= n for (lo, hi), n in zip(cover, spatial)):
        raise ValueError(f"cover must be 3 (lo, hi) ranges inside the volume {spatial}; got {cover!r}")
    steps = window_steps(window3, overlap, border3)
    per_axis = [plan_starts(lo + before - b, hi + before + b, n, w, step)
                for (lo, hi), (before, _), b, n, w, step in zip(cover, pads, border3, padded_shape, window3, steps)]
    positions = [tuple(p) for p in product(*per_axis)]
    total = len(positions)
    logger.debug("sliding window: volume %s padded to %s, window %s, border %s, overlap %.3f -> %d windows",
                 spatial, padded_shape, window3, border3, overlap, total)

    def window_slices(start: tuple[int, int, int]) -> tuple[slice, slice, slice]:
        return tuple(slice(s, s + w) for s, w in zip(start, window3))  # type: ignore[return-value]

    weight_sum = np.zeros(padded_shape, dtype=np.float32)
    for start in positions:
        weight_sum[window_slices(start)] += weights
    weight_crop = weight_sum[crop]
    covered = weight_crop[tuple(slice(lo, hi) for lo, hi in cover)]
    if not np.all(covered > 0):  # guaranteed by the padding and the step; a failure here is a bug
        raise RuntimeError(f"internal error: {int(np.sum(covered <= 0))} voxels not covered by any window's "
                           f"valid region")

    # 3. predict and accumulate
    accumulators: dict[str, np.ndarray] = {}
    channels: dict[str, int] | None = None
    weights_c = weights[..., None]
    for first in range(0, total, batch_size):
        batch_positions = positions[first : first + batch_size]
        batch = np.stack([padded[window_slices(start)] for start in batch_positions])
        outputs = _check_outputs(predictor(batch), len(batch_positions), window3, channels)
        if channels is None:
            channels = {key: arr.shape[4] for key, arr in outputs.items()}
            accumulators = {key: np.zeros((*padded_shape, k), dtype=np.float32) for key, k in channels.items()}
        for key, arr in outputs.items():
            for i, start in enumerate(batch_positions):
                accumulators[key][window_slices(start)] += arr[i].astype(np.float32, copy=False) * weights_c
        if progress is not None:
            progress(first + len(batch_positions), total)

    # 4. normalise and crop back
    weight_crop = weight_crop[..., None]
    return {key: np.divide(acc[crop], weight_crop, out=np.zeros(acc[crop].shape, np.float32), where=weight_crop > 0)
            for key, acc in accumulators.items()}
