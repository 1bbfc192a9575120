"""Segmentation metrics for BraTS-style evaluation (pure NumPy / SciPy: arrays in, numbers out).

Regions
    BraTS scores nested regions built from the label values, not the labels themselves; which
    values make up each region is the dataset's convention (:mod:`uhved_tf.convention`, passed
    as ``label_values``; the default :data:`REGIONS` is BraTS 2018-2021's).

Conventions for empty masks (every metric is finite, never NaN)
    ============  ==========================  =====================================================
    metric        case                        value
    ============  ==========================  =====================================================
    Dice          both empty                  1.0 (perfect agreement on "no tumour")
    HD95          both empty                  0.0
    HD95          exactly one empty           image diagonal in mm, ``sqrt(sum((shape*spacing)**2))``
                                              (the worst possible distance in that image)
    sensitivity   reference empty             1.0 if the prediction is empty too, else 0.0
    specificity   reference has no negatives  1.0 (there can be no false positive)
    ============  ==========================  =====================================================

HD95 definition (the choice matters: papers disagree by several mm)
    Surface-based, as MedPy ``medpy.metric.binary.hd95`` and the BraTS evaluation toolkit:
    the surface of a mask is the mask minus its binary erosion with the 6-connected (connectivity 1)
    structuring element, voxels outside the image counting as background (so a mask touching the
    image edge has a surface there); for every surface voxel of A the Euclidean distance in mm to the
    nearest surface voxel of B (``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``),
    and vice versa; HD95 is the 95th percentile (NumPy's default linear interpolation) of the union of
    the two directed distance sets. This is *not* the max of the two directed 95th percentiles
    (another common variant, e.g. some versions of the BraTS ``hausdorff95``), and *not* based on
    all mask voxels.

    Speed: both masks are cropped to the bounding box of their union plus a one-voxel margin before
    the erosions and distance transforms. The result is exact: outside that box both masks are
    empty (so the erosion sees the same background), and the distance transform of a crop that
    contains every surface voxel of B gives the same nearest-surface distances for every point of
    the crop, where all surface voxels of A lie.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from uhved_tf.convention import PRESETS
from uhved_tf.errors import did_you_mean

logger = logging.getLogger(__name__)

REGIONS: dict[str, tuple[int, ...]] = PRESETS["brats2018"].region_map
"""Default regions (BraTS 2018-2021); the configured ones come from :mod:`uhved_tf.convention`."""

__all__ = ["REGIONS", "region_mask", "dice", "hd95", "sensitivity", "specificity", "postprocess_enhancing",
           "evaluate_case", "volumes_ml"]


def _as_mask(mask) -> np.ndarray:
    """Boolean view of a mask (non-zero = foreground)."""
    arr = np.asarray(mask)
    return arr if arr.dtype == bool else arr != 0


def _pair(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    pred_b, ref_b = _as_mask(pred), _as_mask(ref)
    if pred_b.shape != ref_b.shape:
        raise ValueError(f"pred and ref must have the same shape; got pred {pred_b.shape} and ref {ref_b.shape}")
    return pred_b, ref_b


def _spacing(spacing, ndim: int) -> np.ndarray:
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.size == 1 and ndim != 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise ValueError(f"spacing must have one value per image axis ({ndim}); got {tuple(spacing)!r}")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing values must be finite and > 0 (mm); got {tuple(sp.tolist())!r}")
    return sp


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: mask minus its 6-connected erosion (outside the array counts as background)."""
    footprint = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=footprint, iterations=1, border_value=0)


def bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the bounding box of ``mask`` (non-empty) grown by ``margin`` and clipped to the array."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def region_mask(
    labels: np.ndarray, region: str, label_values: Mapping[str, Sequence[int]] = REGIONS
) -> np.ndarray:
    """Boolean mask of the voxels whose label belongs to ``region``.

    Args:
        labels: integer label map (BraTS values 0/1/2/4 with the default ``label_values``).
        region: a key of ``label_values`` ("whole", "core" or "enhancing" by default).
        label_values: region name -> label values making up that region.

    Returns:
        bool array, same shape as ``labels``.
    """
    if region not in label_values:
        valid = ", ".join(f'"{k}"' for k in label_values)
        hint = did_you_mean(region, label_values) or "."
        raise ValueError(f'Unknown region "{region}"{hint} Valid regions: {valid}.')
    return np.isin(np.asarray(labels), np.asarray(tuple(label_values[region])))


def dice(pred, ref) -> float:
    """Dice coefficient 2|P∩R| / (|P| + |R|) of two masks (non-zero = foreground); both empty -> 1.0."""
    p, r = _pair(pred, ref)
    denom = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
    return 2.0 * int(np.count_nonzero(p & r)) / denom if denom else 1.0


def sensitivity(pred, ref) -> float:
    """Sensitivity (recall) TP / (TP + FN).

    Reference empty (TP + FN = 0): 1.0 if the prediction is empty as well (nothing to find, nothing
    falsely found), else 0.0 (every predicted voxel is wrong). Never NaN.
    """
    p, r = _pair(pred, ref)
    positives = int(np.count_nonzero(r))
    if positives == 0:
        return 1.0 if not p.any() else 0.0
    return int(np.count_nonzero(p & r)) / positives


def specificity(pred, ref) -> float:
    """Specificity TN / (TN + FP); a reference with no negatives gives 1.0 (no false positive is possible)."""
    p, r = _pair(pred, ref)
    negatives = r.size - int(np.count_nonzero(r))
    return (negatives - int(np.count_nonzero(p & ~r))) / negatives if negatives else 1.0


def hd95(pred, ref, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th percentile symmetric surface Hausdorff distance in mm (MedPy / BraTS definition).

    See the module docstring for the exact definition and the empty-mask rules: both empty -> 0.0,
    exactly one empty -> the image diagonal ``sqrt(sum((shape * spacing)**2))``.

    Args:
        pred, ref: masks of the same shape (non-zero = foreground), any number of dimensions.
        spacing: voxel size in mm per axis (a scalar is repeated).
    """
    p, r = _pair(pred, ref)
    sp = _spacing(spacing, p.ndim)
    p_any, r_any = bool(p.any()), bool(r.any())
    if not p_any and not r_any:
        return 0.0
    if p_any != r_any:
        return float(np.sqrt(np.sum((np.asarray(p.shape, dtype=np.float64) * sp) ** 2)))

    box = bounding_box(p | r, margin=1)
    p, r = p[box], r[box]
    p_surf, r_surf = _surface(p), _surface(r)
    # distance (mm) from every voxel of the crop to the nearest surface voxel of the other mask
    dist_to_r = ndimage.distance_transform_edt(~r_surf, sampling=sp)
    dist_to_p = ndimage.distance_transform_edt(~p_surf, sampling=sp)
    distances = np.concatenate([dist_to_r[p_surf], dist_to_p[r_surf]])
    return float(np.percentile(distances, 95))


def postprocess_enhancing(
    labels: np.ndarray, et_min_voxels: int = 500, core_value: int = PRESETS["brats2018"].core,
    et_value: int = PRESETS["brats2018"].enhancing
) -> np.ndarray:
    """The usual BraTS post-processing of a predicted label map.

    Small predicted enhancing-tumour components are mostly false positives in cases with no
    enhancing tumour, which the BraTS Dice punishes with 0. If the prediction has fewer than
    ``et_min_voxels`` voxels labelled ``et_value`` (in total, not per component), those voxels are
    relabelled ``core_value`` (necrosis / non-enhancing core), so the tumour core and whole tumour
    are unchanged. ``et_min_voxels = 0`` disables it.

    Returns:
        a new array (the input is not modified), same shape and dtype.
    """
    if int(et_min_voxels) < 0:
        raise ValueError(f"et_min_voxels must be >= 0; got {et_min_voxels}")
    out = np.array(labels, copy=True)
    et = out == et_value
    n_et = int(np.count_nonzero(et))
    if 0 < n_et < et_min_voxels:
        logger.debug("postprocess_enhancing: %d enhancing voxels < %d; relabelled %d", n_et, et_min_voxels, core_value)
        out[et] = core_value
    return out


def evaluate_case(
    pred_labels: np.ndarray,
    ref_labels: np.ndarray,
    spacing: Sequence[float],
    et_min_voxels: int = 500,
    *,
    label_values: Mapping[str, Sequence[int]] = REGIONS,
    core_value: int = PRESETS["brats2018"].core,
    et_value: int | None = PRESETS["brats2018"].enhancing,
) -> dict[str, float]:
    """All per-region metrics of one case.

    Args:
        pred_labels, ref_labels: label maps of the same shape (BraTS values with the defaults).
        spacing: voxel size in mm per axis.
        et_min_voxels: threshold of :func:`postprocess_enhancing` for the ``*_pp`` keys.
        label_values: region name -> label values (default :data:`REGIONS`).
        core_value, et_value: labels used by the post-processing (``et_value`` None: no ``*_pp`` keys).

    Returns:
        ``{"dice_<region>", "hd95_<region>", "sensitivity_<region>", "specificity_<region>"}`` for
        every region of ``label_values``, plus ``"dice_enhancing_pp"`` and ``"hd95_enhancing_pp"``
        (the prediction post-processed by :func:`postprocess_enhancing`) when "enhancing" is a region.
    """
    pred_labels = np.asarray(pred_labels)
    ref_labels = np.asarray(ref_labels)
    if pred_labels.shape != ref_labels.shape:
        raise ValueError(f"pred_labels and ref_labels must have the same shape; "
                         f"got {pred_labels.shape} and {ref_labels.shape}")
    sp = _spacing(spacing, pred_labels.ndim)
    result: dict[str, float] = {}
    for region in label_values:
        p = region_mask(pred_labels, region, label_values)
        r = region_mask(ref_labels, region, label_values)
        result[f"dice_{region}"] = dice(p, r)
        result[f"hd95_{region}"] = hd95(p, r, sp)
        result[f"sensitivity_{region}"] = sensitivity(p, r)
        result[f"specificity_{region}"] = specificity(p, r)
    if "enhancing" in label_values and et_value is not None:
        pp = postprocess_enhancing(pred_labels, et_min_voxels, core_value=core_value, et_value=et_value)
        p = region_mask(pp, "enhancing", label_values)
        r = region_mask(ref_labels, "enhancing", label_values)
        result["dice_enhancing_pp"] = dice(p, r)
        result["hd95_enhancing_pp"] = hd95(p, r, sp)
    return result


def volumes_ml(
    labels: np.ndarray, spacing: Sequence[float], *, label_values: Mapping[str, Sequence[int]] = REGIONS
) -> dict[str, float]:
    """Volume of every region in millilitres: voxel count × voxel volume (mm³) / 1000."""
    labels = np.asarray(labels)
    voxel_ml = float(np.prod(_spacing(spacing, labels.ndim))) / 1000.0
    return {region: int(np.count_nonzero(region_mask(labels, region, label_values))) * voxel_ml
            for region in label_values}
