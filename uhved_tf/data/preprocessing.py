"""Pure preprocessing functions (arrays in, arrays out): foreground masks, crop to the brain,
padding, whitening and label mapping. File I/O lives in :mod:`uhved_tf.io`; wiring in
:mod:`uhved_tf.data.cases`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from uhved_tf.errors import DataError


def foreground_mask(volume: np.ndarray, foreground_type: str = "mean_plus") -> np.ndarray:
    """NiftyNet's foreground definitions for normalisation statistics."""
    v = np.asarray(volume, np.float32)
    if foreground_type == "mean_plus":
        return v > v.mean()
    if foreground_type == "thresh_plus":
        return v > 0
    if foreground_type == "thresh_minus":
        return v < 0
    if foreground_type in ("otsu_plus", "otsu_minus"):
        t = otsu_threshold(v)
        return v > t if foreground_type == "otsu_plus" else v < t
    raise ValueError(f"unknown foreground_type {foreground_type!r}")


def otsu_threshold(v: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(v, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])


def whiten(volume: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(v - mean) / std with the statistics over ``mask`` (all voxels when None); zero std -> 1."""
    v = np.asarray(volume, np.float32)
    sel = v[mask] if mask is not None and mask.any() else v.ravel()
    mean, std = float(sel.mean()), float(sel.std())
    return ((v - mean) / (std if std > 1e-8 else 1.0)).astype(np.float32)


@dataclass(frozen=True)
class CropBox:
    """Where the working array sits in the (reoriented, resampled) volume: ``start``/``stop`` may
    lie outside the volume when the box was padded past its edges."""
    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    volume_shape: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))


def brain_box(mask: np.ndarray, padding=(0, 0, 0), min_shape=(1, 1, 1)) -> CropBox:
    """Bounding box of ``mask`` grown by ``padding`` on each side and, if needed, to ``min_shape``
    (centred), so that a training window always fits. An empty mask keeps the whole volume."""
    shape = mask.shape
    if mask.any():
        idx = np.nonzero(mask)
        start = [int(i.min()) for i in idx]
        stop = [int(i.max()) + 1 for i in idx]
    else:
        start, stop = [0, 0, 0], list(shape)
    start = [a - int(p) for a, p in zip(start, padding)]
    stop = [b + int(p) for b, p in zip(stop, padding)]
    for ax in range(3):
        short = int(min_shape[ax]) - (stop[ax] - start[ax])
        if short > 0:
            start[ax] -= short // 2
            stop[ax] += short - short // 2
    return CropBox(tuple(start), tuple(stop), tuple(shape))


def crop(volume: np.ndarray, box: CropBox, fill=0.0) -> np.ndarray:
    """Cut ``box`` out of ``volume`` (first three axes), filling outside the volume with ``fill``."""
    out = np.full(box.shape + volume.shape[3:], fill, dtype=volume.dtype)
    src = tuple(slice(max(a, 0), min(b, s)) for a, b, s in zip(box.start, box.stop, box.volume_shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, box.start))
    out[dst] = volume[src]
    return out


def uncrop(array: np.ndarray, box: CropBox, fill=0.0) -> np.ndarray:
    """Inverse of :func:`crop`: put ``array`` back into a volume of ``box.volume_shape``, i.e. crop
    ``array`` to the volume's box in the array's coordinates."""
    start = tuple(-a for a in box.start)
    return crop(array, CropBox(start, tuple(a + s for a, s in zip(start, box.volume_shape)), box.shape), fill)


def map_labels(label: np.ndarray, label_values, source: str = "label") -> np.ndarray:
    """File label values (e.g. BraTS 0, 1, 2, 4) -> class indices 0..K-1 (int32)."""
    values = np.asarray(label_values)
    lab = np.asarray(label)
    if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
        raise DataError(f"{source}: label image has non-integer values; expected only {values.tolist()}")
    lab = np.round(lab).astype(np.int64)
    present = np.unique(lab)
    unknown = np.setdiff1d(present, values)
    if unknown.size:
        from uhved_tf.convention import preset_hint
        raise DataError(f"{source}: label values {unknown.tolist()} are not in label_values "
                        f"{values.tolist()} ([MULTIMODAL] label_values){preset_hint(present)}")
    lut = np.zeros(int(max(values.max(), present.max())) + 1, np.int32)
    lut[values] = np.arange(len(values), dtype=np.int32)
    if present.min() < 0:
        raise DataError(f"{source}: negative label values {present[present < 0].tolist()}")
    return lut[lab]


def unmap_labels(classes: np.ndarray, label_values, dtype=np.uint8) -> np.ndarray:
    """Class indices 0..K-1 -> file label values."""
    return np.asarray(label_values, dtype=dtype)[np.asarray(classes, np.int64)]
