"""A figure like the paper's Fig. 3: inputs, completed FLAIR and T1, and the segmentation, per subset.

Orientation
    Volumes are RAS arrays (axis 0 = Right, 1 = Anterior, 2 = Superior, as
    :mod:`uhved_tf.io.nifti` loads them), so an *axial* slice is ``volume[:, :, k]`` (the last axis).
    It is drawn with the subject's right on the right of the panel and anterior at the top
    (neurological convention): ``imshow(slice.T, origin="lower")``.

Colours (the paper's): green = oedema (label 2), red = non-enhancing / necrotic core (label 1),
blue = enhancing tumour (label 4); :data:`LABEL_COLOURS`.

:func:`overlay` is pure NumPy. :func:`figure3` needs matplotlib (an optional dependency, imported
when called); it uses the Agg canvas directly, so it neither needs a display nor changes pyplot's
global backend. The PNG is exactly ``(n_cols * panel_inches * dpi) x (n_rows * panel_inches * dpi)``
pixels (no tight bounding box), see :func:`figure_size_pixels`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from uhved_tf.convention import PRESETS
from uhved_tf.errors import did_you_mean

logger = logging.getLogger(__name__)

LABEL_COLOURS: dict[int, tuple[float, float, float]] = {
    label: tuple(c / 255.0 for c in rgb) for label, rgb in PRESETS["brats2018"].colours}
"""BraTS 2018-2021 label -> RGB colour of the overlay (paper's Fig. 3: oedema green, core red,
enhancing blue); other conventions give theirs (:attr:`uhved_tf.convention.Convention.colours`)."""

MISSING_GREY = 0.5
"""Grey level of the panel of a missing input."""

__all__ = ["LABEL_COLOURS", "MISSING_GREY", "normalise", "overlay", "tumour_slice", "figure_size_pixels", "figure3"]


def normalise(slice_gray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Intensities mapped linearly to [0, 1] (clipped) over ``window`` = (low, high).

    Default window: the 0.5th and 99.5th percentiles of the slice (robust to a few bright voxels).
    A flat window gives zeros. NaNs become 0.
    """
    arr = np.nan_to_num(np.asarray(slice_gray, dtype=np.float64), nan=0.0)
    if window is None:
        lo, hi = (float(v) for v in np.percentile(arr, (0.5, 99.5))) if arr.size else (0.0, 0.0)
    else:
        lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def overlay(
    slice_gray,
    seg_slice,
    alpha: float = 0.5,
    *,
    colours: Mapping[int, Sequence[float]] = LABEL_COLOURS,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """A grey image with the tumour labels blended in colour.

    Args:
        slice_gray: [H, W] intensities (normalised by :func:`normalise` with ``window``).
        seg_slice: [H, W] BraTS labels; labels not in ``colours`` (0, or any other) stay grey.
        alpha: opacity of the colour, ``rgb = (1 - alpha) * grey + alpha * colour`` at labelled pixels.
        colours: label -> RGB in [0, 1] (default :data:`LABEL_COLOURS`: 2 green, 1 red, 4 blue).

    Returns:
        [H, W, 3] float64 RGB in [0, 1].
    """
    gray = normalise(slice_gray, window)
    seg = np.asarray(seg_slice)
    if gray.shape != seg.shape or gray.ndim != 2:
        raise ValueError(f"slice_gray and seg_slice must be 2-D of one shape; got {gray.shape} and {seg.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}")
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    for label, colour in colours.items():
        where = seg == label
        if where.any():
            rgb[where] = (1.0 - alpha) * rgb[where] + alpha * np.asarray(colour, dtype=np.float64)
    return rgb


def tumour_slice(seg) -> int:
    """Index along the last axis of the axial slice with the most tumour (non-zero) voxels; the middle if none."""
    seg = np.asarray(seg)
    counts = np.count_nonzero(seg.reshape(-1, seg.shape[-1]), axis=0)
    if counts.max(initial=0) == 0:
        logger.info("no tumour in the segmentation; showing the middle axial slice")
        return seg.shape[-1] // 2
    return int(np.argmax(counts))


def figure_size_pixels(n_rows: int, n_cols: int, panel_inches: float = 2.0, dpi: int = 100) -> tuple[int, int]:
    """(height, width) in pixels of a :func:`figure3` PNG with that many rows and columns."""
    return int(round(n_rows * panel_inches * dpi)), int(round(n_cols * panel_inches * dpi))


def _check_name(name: str, valid: Sequence[str], what: str) -> None:
    if name not in valid:
        hint = did_you_mean(name, valid) or "."
        raise ValueError(f'Unknown {what} "{name}"{hint} Valid: {", ".join(valid)}.')


def figure3(
    inputs: Mapping[str, np.ndarray],
    rows: Sequence[tuple[Sequence[str], Mapping[str, np.ndarray]]],
    modalities: Sequence[str],
    out_png,
    slice_index: int | None = None,
    show: Sequence[str] = ("Flair", "T1"),
    *,
    alpha: float = 0.5,
    panel_inches: float = 2.0,
    dpi: int = 100,
    colours: Mapping[int, Sequence[float]] = LABEL_COLOURS,
) -> Path:
    """Draw the Fig. 3 grid for one case and save it as a PNG.

    Columns: every modality of ``modalities`` as given to the network (a missing one is a grey panel
    reading "missing"), then the synthesised ``show`` modalities, then the predicted segmentation over
    the first available input (in ``modalities`` order). One row per subset, labelled with its name.

    Args:
        inputs: modality -> [D, H, W] acquired image (RAS; every modality used by some row's subset).
        rows: (subset, outputs) per row; subset is a tuple of modality names, outputs has "synth"
            [D, H, W, M] (channel i = ``modalities[i]``) and "seg" [D, H, W] BraTS labels.
        modalities: the M modality names, in channel order.
        out_png: where to write the PNG (parent folders are created).
        slice_index: axial slice (index along the last axis); default :func:`tumour_slice` of the
            first row's "seg".
        show: synthesised modalities to show, each in ``modalities``.
        alpha: overlay opacity; panel_inches / dpi: size of a panel (see :func:`figure_size_pixels`).

    Returns:
        the path of the PNG.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # optional dependency
        raise ImportError("figure3 needs matplotlib: pip install matplotlib") from err

    modalities, show = list(modalities), list(show)
    if not rows:
        raise ValueError("rows is empty: give at least one (subset, outputs) row")
    for name in show:
        _check_name(name, modalities, "modality in show")
    shape = None
    for subset, outputs in rows:
        if not subset:
            raise ValueError("a row has an empty subset")
        for m in subset:
            _check_name(m, modalities, "modality in a row's subset")
            if m not in inputs:
                raise ValueError(f'inputs has no "{m}", which subset {"+".join(subset)} uses; it has {sorted(inputs)}')
        for key in ("synth", "seg"):
            if key not in outputs:
                raise ValueError(f'row {"+".join(subset)} has no "{key}"; it has {sorted(outputs)}')
        synth, seg = np.asarray(outputs["synth"]), np.asarray(outputs["seg"])
        if synth.ndim != 4 or synth.shape[-1] != len(modalities) or synth.shape[:-1] != seg.shape:
            raise ValueError(
                f'row {"+".join(subset)}: "synth" must be [D, H, W, {len(modalities)}] and "seg" [D, H, W]; '
                f"got {synth.shape} and {seg.shape}"
            )
        shape = shape or seg.shape
        if seg.shape != shape:
            raise ValueError(f"all rows must have one image shape; got {shape} and {seg.shape}")
    for m, vol in inputs.items():
        if np.shape(vol) != shape:
            raise ValueError(f'inputs["{m}"] has shape {np.shape(vol)}; the outputs have {shape}')

    k = tumour_slice(rows[0][1]["seg"]) if slice_index is None else int(slice_index)
    if not 0 <= k < shape[-1]:
        raise ValueError(f"slice_index must be in [0, {shape[-1]}); got {slice_index}")
    logger.debug("figure3: axial slice %d of %d", k, shape[-1])

    # one intensity window per modality (from the acquired slice when there is one), shared by all rows
    windows = {}
    for i, m in enumerate(modalities):
        source = inputs[m][..., k] if m in inputs else np.asarray(rows[0][1]["synth"])[..., k, i]
        windows[m] = tuple(float(v) for v in np.percentile(np.asarray(source, dtype=np.float64), (0.5, 99.5)))

    n_rows, n_cols = len(rows), len(modalities) + len(show) + 1
    height, width = figure_size_pixels(n_rows, n_cols, panel_inches, dpi)
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    fig.subplots_adjust(left=0.04, right=0.995, bottom=0.01, top=1.0 - 0.3 / (n_rows * panel_inches),
                        wspace=0.03, hspace=0.03)

    def draw(ax, rgb_or_gray, cmap=None):
        img = np.asarray(rgb_or_gray)
        img = img.T if img.ndim == 2 else np.transpose(img, (1, 0, 2))
        ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0, origin="lower", interpolation="nearest")

    titles = list(modalities) + [f"synth. {m}" for m in show] + ["segmentation"]
    for r, (subset, outputs) in enumerate(rows):
        synth, seg = np.asarray(outputs["synth"]), np.asarray(outputs["seg"])
        for c, m in enumerate(modalities):
            ax = axes[r, c]
            if m in subset:
                draw(ax, normalise(inputs[m][..., k], windows[m]), cmap="gray")
            else:
                draw(ax, np.full(shape[:2], MISSING_GREY), cmap="gray")
                ax.text(0.5, 0.5, "missing", transform=ax.transAxes, ha="center", va="center",
                        color="white", fontsize=9)
        for j, m in enumerate(show):
            draw(axes[r, len(modalities) + j], normalise(synth[..., k, modalities.index(m)], windows[m]), cmap="gray")
        first = next(m for m in modalities if m in subset)
        draw(axes[r, -1], overlay(inputs[first][..., k], seg[..., k], alpha, window=windows[first], colours=colours))
        axes[r, 0].set_ylabel("+".join(m for m in modalities if m in subset), fontsize=8)
    for c, title in enumerate(titles):
        axes[0, c].set_title(title, fontsize=9)
    for ax in axes.ravel():
        ax.set(xticks=[], yticks=[])

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    logger.info("wrote %s (%d x %d px, axial slice %d)", out, width, height, k)
    return out
