"""Synthesis (modality completion) quality: PSNR, SSIM and MAE inside a brain mask (pure NumPy / SciPy).

The paper only showed pictures of the completed modalities (Fig. 3); these numbers make the
completion measurable. Every function takes arrays and returns numbers or text; nothing is read or
written here.

Conventions
    ===========  ===========================================================================
    mask         boolean (non-zero = inside), same shape as the images; ``None`` = every voxel.
                 Voxels outside the mask never change a score, whatever their values (NaN too).
    data_range   ``L`` in PSNR and in the SSIM constants; default ``ref[mask].max() -
                 ref[mask].min()`` (the *reference's* range inside the mask, so a prediction that
                 overshoots does not flatter itself). Pass it explicitly to compare runs on a
                 common scale. A range that is not finite and > 0 (a constant reference) raises
                 ``ValueError``: PSNR and SSIM are undefined there.
    identical    PSNR = ``math.inf`` (MSE = 0; reports write it as ``inf``), SSIM = 1.0, MAE = 0.0.
    ===========  ===========================================================================

SSIM definition
    Wang, Bovik, Sheikh & Simoncelli (2004), IEEE TIP 13(4): local means, variances and covariance
    from a Gaussian window (``sigma`` = 1.5 voxels, truncated at 3.5 sigma, i.e. 11 taps, the
    window scikit-image uses with ``gaussian_weights=True``), population (not sample) variances,
    ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2`` with ``K1 = 0.01``, ``K2 = 0.03``::

        SSIM(p) = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))

    in 3-D (any number of dimensions, in fact), averaged over the voxels of the mask.

    Masked windows (normalised convolution): the local statistics use only voxels inside the mask,
    ``mu_x = G*(m x) / G*(m)``, ``E[x^2] = G*(m x^2) / G*(m)``, ... where ``G*`` is the Gaussian
    filter and ``m`` the mask. Background voxels therefore neither enter nor dilute the statistics
    near the brain edge. With no mask, ``G*(1) = 1`` and this is exactly the usual SSIM.

    Array edges are handled by mirror reflection (``scipy.ndimage`` mode "reflect"), as in
    scikit-image. Unlike ``skimage.metrics.structural_similarity``, whose mean drops a border of
    5 voxels, :func:`ssim` averages the whole SSIM map inside the mask; :func:`ssim_map` equals
    scikit-image's full map (``full=True, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False``) when no mask is given.

    Speed: all filtering happens in the bounding box of the mask grown by the window radius (exact,
    for the reason given for HD95 in :mod:`uhved_tf.evaluation.metrics`: every voxel a window
    centred in the mask reads lies inside that box).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from uhved_tf.evaluation.metrics import bounding_box
from uhved_tf.subset import Subset

logger = logging.getLogger(__name__)

K1 = 0.01
"""SSIM luminance constant factor (Wang et al. 2004)."""
K2 = 0.03
"""SSIM contrast constant factor (Wang et al. 2004)."""
TRUNCATE = 3.5
"""Gaussian window truncation in standard deviations (scikit-image's SSIM value: 11 taps at sigma 1.5)."""

SCORES = ("psnr", "ssim", "mae")
"""Score names; :func:`synthesis_scores` keys are ``f"{score}_{modality}"``."""

__all__ = ["K1", "K2", "TRUNCATE", "SCORES", "psnr", "ssim", "ssim_map", "mae", "synthesis_scores",
           "synthesis_table_markdown"]


def _prepare(pred, ref, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The images as arrays (dtype unchanged: convert after cropping / masking, which is cheaper) and a
    boolean mask (all True for ``None``), all of one shape; the mask is not empty."""
    p, r = np.asarray(pred), np.asarray(ref)
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape; got pred {p.shape} and ref {r.shape}")
    if mask is None:
        m = np.ones(r.shape, dtype=bool)
    else:
        m = np.asarray(mask)
        m = m if m.dtype == bool else m != 0
        if m.shape != r.shape:
            raise ValueError(f"mask must have the image shape {r.shape}; got {m.shape}")
    if not m.any():
        raise ValueError("mask is empty: there is no voxel to score")
    return p, r, m


def _inside(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float64 values of ``image`` at the voxels of ``mask``."""
    return image[mask].astype(np.float64, copy=False)


def _data_range(ref: np.ndarray, mask: np.ndarray, data_range) -> float:
    if data_range is None:
        inside = _inside(ref, mask)
        value = float(inside.max() - inside.min())
        source = "ref[mask].max() - ref[mask].min()"
    else:
        value = float(data_range)
        source = "data_range"
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{source} must be finite and > 0; got {value!r} (a constant reference inside the mask has no "
            "intensity range: pass data_range explicitly, e.g. the range of the training intensities)"
        )
    return value


def mae(pred, ref, mask=None) -> float:
    """Mean absolute error ``mean(|pred - ref|)`` over the voxels of ``mask`` (all voxels if ``None``)."""
    p, r, m = _prepare(pred, ref, mask)
    return float(np.mean(np.abs(_inside(p, m) - _inside(r, m))))


def psnr(pred, ref, mask=None, data_range=None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(L^2 / MSE)``, MSE over the voxels of ``mask``.

    Args:
        pred, ref: images of the same shape (any number of dimensions).
        mask: boolean mask of the voxels to score (``None`` = all).
        data_range: ``L``; default ``ref[mask].max() - ref[mask].min()``.

    Returns:
        PSNR in dB; ``math.inf`` when the images are identical inside the mask (MSE = 0).

    Raises:
        ValueError: shapes differ, the mask is empty, or the data range is not finite and > 0.
    """
    p, r, m = _prepare(pred, ref, mask)
    peak = _data_range(r, m, data_range)
    mse = float(np.mean((_inside(p, m) - _inside(r, m)) ** 2))
    if mse == 0.0:
        return math.inf
    return float(10.0 * np.log10(peak * peak / mse))


def _ssim_inside(pred, ref, mask, data_range, sigma) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """(box, mask in the box, local SSIM at the mask voxels of the box, in C order)."""
    p, r, m = _prepare(pred, ref, mask)
    peak = _data_range(r, m, data_range)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (voxels); got {sigma!r}")
    c1, c2 = (K1 * peak) ** 2, (K2 * peak) ** 2
    radius = int(TRUNCATE * float(sigma) + 0.5)

    box = bounding_box(m, radius)
    mb = m[box]
    # zero (not multiply: 0 * NaN = NaN) outside the mask, so those voxels cannot matter
    x = np.where(mb, p[box], 0).astype(np.float64, copy=False)
    y = np.where(mb, r[box], 0).astype(np.float64, copy=False)

    def smooth(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma=float(sigma), mode="reflect", truncate=TRUNCATE)

    if mask is None:
        norm = 1.0  # G*(1) = 1: the usual, unnormalised SSIM (bit for bit like scikit-image)
        mu_x, mu_y = smooth(x), smooth(y)
        exx, eyy, exy = smooth(x * x), smooth(y * y), smooth(x * y)
    else:
        norm = smooth(mb.astype(np.float64))[mb]
        mu_x, mu_y = smooth(x)[mb] / norm, smooth(y)[mb] / norm
        exx, eyy, exy = smooth(x * x)[mb] / norm, smooth(y * y)[mb] / norm, smooth(x * y)[mb] / norm
    var_x, var_y, cov = exx - mu_x * mu_x, eyy - mu_y * mu_y, exy - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return box, mb, (num / den).reshape(-1)


def ssim_map(pred, ref, mask=None, data_range=None, sigma: float = 1.5) -> np.ndarray:
    """The local SSIM of every voxel (module docstring): float64 array of the image shape, NaN outside ``mask``.

    Args:
        pred, ref: images of the same shape (any number of dimensions).
        mask: boolean mask; the local statistics use only voxels inside it (``None`` = all).
        data_range: ``L``; default ``ref[mask].max() - ref[mask].min()``.
        sigma: standard deviation of the Gaussian window in voxels (truncated at :data:`TRUNCATE` sigma).
    """
    box, mb, values = _ssim_inside(pred, ref, mask, data_range, sigma)
    out = np.full(np.shape(ref), np.nan, dtype=np.float64)
    inner = np.full(mb.shape, np.nan, dtype=np.float64)
    inner[mb] = values
    out[box] = inner
    return out


def ssim(pred, ref, mask=None, data_range=None, sigma: float = 1.5) -> float:
    """Structural similarity: the mean of :func:`ssim_map` over the voxels of ``mask``.

    3-D (N-D) SSIM with a Gaussian window and the Wang et al. (2004) constants; see the module
    docstring for the masked-window rule and how this differs from scikit-image's mean. Identical
    images give exactly 1.0.

    Raises:
        ValueError: shapes differ, the mask is empty, the data range is not finite and > 0, or sigma <= 0.
    """
    _, _, values = _ssim_inside(pred, ref, mask, data_range, sigma)
    return float(np.mean(values))


def synthesis_scores(
    synth: np.ndarray,
    ref: np.ndarray,
    brain_mask: np.ndarray,
    modalities: Sequence[str],
    *,
    data_range: Mapping[str, float] | None = None,
    sigma: float = 1.5,
) -> dict[str, float]:
    """PSNR, SSIM and MAE of every synthesised modality of one case, inside the brain mask.

    Args:
        synth: [D, H, W, M] synthesised (or reconstructed) images, channel i = ``modalities[i]``.
        ref: [D, H, W, M] the acquired images, same intensity scale as ``synth``.
        brain_mask: [D, H, W] boolean brain mask (non-zero = brain).
        modalities: the M channel names, e.g. ``("T1", "T1c", "T2", "Flair")``.
        data_range: optional modality -> ``L``; by default each reference's range inside the mask.
        sigma: SSIM Gaussian window width in voxels.

    Returns:
        ``{"psnr_<m>", "ssim_<m>", "mae_<m>"}`` for every modality (PSNR may be ``math.inf``).
        Every channel is scored; which ones were inputs (reconstruction) and which were missing
        (true synthesis) is the subset's business, see :func:`synthesis_table_markdown`.
    """
    synth, ref = np.asarray(synth), np.asarray(ref)
    modalities = list(modalities)
    if synth.shape != ref.shape:
        raise ValueError(f"synth and ref must have the same shape; got synth {synth.shape} and ref {ref.shape}")
    if synth.ndim < 2 or synth.shape[-1] != len(modalities):
        raise ValueError(f"synth and ref must be [..., M] with M = {len(modalities)} channels "
                         f"({', '.join(modalities)}); got shape {synth.shape}")
    mask = np.asarray(brain_mask)
    if mask.shape != synth.shape[:-1]:
        raise ValueError(f"brain_mask must have the image shape {synth.shape[:-1]}; got {mask.shape}")
    ranges = dict(data_range or {})
    unknown = sorted(set(ranges) - set(modalities))
    if unknown:
        raise ValueError(f"data_range has unknown modalities {unknown}; modalities are {modalities}")
    scores: dict[str, float] = {}
    for i, name in enumerate(modalities):
        s, r = synth[..., i], ref[..., i]
        rng = ranges.get(name)
        scores[f"psnr_{name}"] = psnr(s, r, mask, data_range=rng)
        scores[f"ssim_{name}"] = ssim(s, r, mask, data_range=rng, sigma=sigma)
        scores[f"mae_{name}"] = mae(s, r, mask)
    logger.debug("synthesis scores: %s", scores)
    return scores


def _fmt(value: float, digits: int) -> str:
    value = float(value)
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def synthesis_table_markdown(
    summary: Mapping[str, Mapping[str, float]],
    subsets: Sequence[Sequence[str]],
    modalities: Sequence[str],
) -> str:
    """The synthesis table in the layout of the paper's Table 1 (MAE stays in the CSV).

    Rows = subsets, ●/○ per modality (present / missing); columns = PSNR (dB) and SSIM of every
    modality. A cell of a modality that was an *input* of that subset is a reconstruction, not a
    synthesis, and is shown in parentheses. The Mean row averages, per column, only the subsets in
    which that modality was missing (true synthesis); "–" when it was never missing. A score that is
    NaN or absent (no case of that subset had the modality's file: incomplete subjects) is "–" and
    left out of the Mean row.

    Args:
        summary: subset name (``Subset.name``) -> mean scores with ``psnr_<m>`` and ``ssim_<m>``
            keys (e.g. :func:`uhved_tf.evaluation.report.summarise` of :func:`synthesis_scores` rows).
        subsets: tuples of modality names, one table row each, in order.
        modalities: all modality names (the ●/○ and score columns).
    """
    modalities = list(modalities)
    head = ["| " + " | ".join(modalities)] + [f"PSNR {m} (dB) | SSIM {m}" for m in modalities]
    lines = [" | ".join(head) + " |", "|" + "---|" * (len(modalities) * 3)]
    synthesised: dict[str, list[tuple[float, float]]] = {m: [] for m in modalities}
    for subset in subsets:
        name = Subset(subset, modalities).name
        if name not in summary:
            raise ValueError(f'summary has no subset "{name}"; it has {sorted(summary)}')
        vals = summary[name]
        marks = ["●" if m in subset else "○" for m in modalities]
        cells = []
        for m in modalities:
            # NaN / absent: no case of the subset had the modality's file (incomplete subjects)
            p_val, s_val = float(vals.get(f"psnr_{m}", math.nan)), float(vals.get(f"ssim_{m}", math.nan))
            p_txt, s_txt = _fmt(p_val, 2), _fmt(s_val, 3)
            if m in subset:
                cells += [f"({p_txt})", f"({s_txt})"]
            else:
                cells += [p_txt, s_txt]
                if not (math.isnan(p_val) or math.isnan(s_val)):
                    synthesised[m].append((p_val, s_val))
        lines.append("| " + " | ".join(marks + cells) + " |")
    if len(subsets) > 1:
        cells = []
        for m in modalities:
            pairs = synthesised[m]
            if pairs:
                cells += [_fmt(np.mean([p for p, _ in pairs]), 2), _fmt(np.mean([s for _, s in pairs]), 3)]
            else:
                cells += ["–", "–"]
        lines.append("| " + " | ".join(["Mean"] + [""] * (len(modalities) - 1) + cells) + " |")
    return "\n".join(lines) + "\n"
