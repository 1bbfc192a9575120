"""Nyul histogram standardisation, compatible with NiftyNet's ``histogram_ref_file``.

Re-derived from Nyul, Udupa & Zhang, "New variants of a method of MRI scale standardization",
IEEE TMI 19(2), 2000, and from the behaviour of NiftyNet's
``utilities/histogram_standardisation.py`` / ``layer/histogram_normalisation.py`` (the files the
original U-HVED models were trained with).

**Landmarks.** Every volume is summarised by 13 intensity percentiles inside its mask, always in
this order (NiftyNet's layout, also the layout of the reference file)::

    index      0     1   2   3   4   5   6   7   8   9  10  11   12
    percentile lo    10  20  25  30  40  50  60  70  75  80  90   hi      (lo, hi = cutoff * 100)

``norm_type`` only chooses which of the 13 are used as the knots of the piecewise-linear map
(:func:`landmark_indices`): ``percentile`` -> lo, 10, 20, 30, ..., 90, hi (11 knots);
``quartile`` -> lo, 25, 50, 75, hi; ``median`` -> lo, 50, hi (NiftyNet also has it; the config
schema does not offer it).

**Cutoff.** As in NiftyNet the cutoff is sorted, clipped to [0, 1] and widened so that it lies
outside the first/last inner landmark: ``lo <= 0.09``, ``hi >= 0.91`` (``quartile``: 0.24 / 0.76),
see :func:`standardise_cutoff`. NiftyNet applied this only when *mapping* and used the raw cutoff
when *learning*; here both use it, which is identical for every cutoff inside the limits (the
default (0.01, 0.99), U-HVED's (0.001, 0.999)) and keeps the learned landmarks ordered otherwise.

**Learning** (:func:`learn_landmarks`). Each training volume's landmarks are mapped linearly so
that ``[p_lo, p_hi]`` becomes :data:`STANDARD_RANGE` = (0, 100):
``s1 + (s2 - s1) * (p - p_lo) / (p_hi - p_lo)``; the learned landmarks are the mean of these
over the volumes, so the first is always 0 and the last 100. Volumes with ``p_hi == p_lo``
(constant inside the mask) carry no information and are skipped with a warning (NiftyNet turned
their infinite slope into a huge finite number, which ruins the average).

**Mapping** (:func:`apply_landmarks`). A volume's own knots ``x_0 <= ... <= x_K`` (inside its
mask) are mapped onto the learned knots ``y_0 <= ... <= y_K`` piecewise linearly; below ``x_1``
the first segment and above ``x_{K-1}`` the last segment is extended (so values beyond the
cutoffs are extrapolated with the first/last slope, not clipped). Every voxel is mapped,
including those outside the mask (NiftyNet maps the whole image, too). Ties: a segment of zero
width (repeated percentiles, e.g. a large background at one value, or a constant volume) gets
slope 0 and a value on the tie goes to the upper segment — NiftyNet's ``np.digitize`` rule — so
the map stays finite and non-decreasing for every input. An empty mask falls back to the whole
volume (with a warning).

**File format** (:func:`write_landmarks` / :func:`read_landmarks`): one line per modality, the
name then the 13 learned landmarks, separated by single spaces, e.g. (the original U-HVED
``models/u_hved/hist.txt``)::

    T1 0.0 29.567295 46.963665 51.46228 54.814796 59.724537 63.607014 67.198555 70.844765 72.750015 74.704384 79.08507 100.0

Written numbers use Python's shortest round-trip ``repr`` so write -> read is exact; no comment
lines are written, so NiftyNet can read our files as well.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from uhved_tf.errors import DataError
from uhved_tf.io.atomic import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["STANDARD_RANGE", "NORM_TYPES", "N_LANDMARKS", "standardise_cutoff", "landmark_percentiles",
           "landmark_indices", "percentiles_for", "volume_landmarks", "average_landmarks", "learn_landmarks",
           "apply_landmarks", "write_landmarks", "read_landmarks", "train_landmarks_for_subjects"]

STANDARD_RANGE = (0.0, 100.0)  # NiftyNet's s1, s2

# The 11 inner percentiles of the 13-landmark layout (the outer two are the cutoffs).
_INNER_PERCENTILES = (10.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0, 70.0, 75.0, 80.0, 90.0)
N_LANDMARKS = len(_INNER_PERCENTILES) + 2

# Which of the 13 landmarks each norm_type uses as knots of the piecewise-linear map.
_KNOTS = {
    "percentile": (0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12),
    "quartile": (0, 3, 6, 9, 12),
    "median": (0, 6, 12),
}
NORM_TYPES = tuple(_KNOTS)
# NiftyNet's cutoff limits: the cutoff must lie outside the first/last inner knot.
_CUTOFF_LIMITS = {"percentile": (0.09, 0.91), "quartile": (0.24, 0.76), "median": (0.24, 0.76)}
DEFAULT_CUTOFF = (0.01, 0.99)

_FILE_LAYOUT = "'<modality> <13 numbers>' (landmarks at the cutoffs and the 10,20,25,...,75,80,90th percentiles)"
# Segments narrower than this fraction of the volume's intensity magnitude count as ties.
_TIE_RTOL = 1e-9


def _check_norm_type(norm_type: str) -> str:
    key = str(norm_type).lower()
    if key not in _KNOTS:
        raise ValueError(f"unknown norm_type {norm_type!r}; expected one of {', '.join(NORM_TYPES)}")
    return key


def standardise_cutoff(cutoff=DEFAULT_CUTOFF, norm_type: str = "percentile") -> tuple[float, float]:
    """NiftyNet's cutoff clean-up: sorted, within [0, 1], ``lo`` at most / ``hi`` at least the
    first / last inner knot's limit (0.09 / 0.91 for ``percentile``, 0.24 / 0.76 otherwise)."""
    key = _check_norm_type(norm_type)
    if cutoff is None:
        return DEFAULT_CUTOFF
    values = [float(c) for c in np.ravel(np.asarray(cutoff, dtype=np.float64))]
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return DEFAULT_CUTOFF
    lo, hi = max(0.0, min(values)), min(1.0, max(values))
    lim_lo, lim_hi = _CUTOFF_LIMITS[key]
    return min(lo, lim_lo), max(hi, lim_hi)


def landmark_percentiles(cutoff=DEFAULT_CUTOFF, norm_type: str = "percentile") -> np.ndarray:
    """The 13 percentiles (0-100) of the landmark layout, with the standardised cutoff at both ends."""
    lo, hi = standardise_cutoff(cutoff, norm_type)
    return np.array([100.0 * lo, *_INNER_PERCENTILES, 100.0 * hi])


def landmark_indices(norm_type: str = "percentile") -> np.ndarray:
    """Positions, in the 13-landmark layout, of the knots ``norm_type`` uses."""
    return np.array(_KNOTS[_check_norm_type(norm_type)])


def percentiles_for(norm_type: str, cutoff=DEFAULT_CUTOFF) -> np.ndarray:
    """The percentiles (0-100) used as knots by ``norm_type``: ``percentile`` -> [lo, 10, 20, ...,
    90, hi] (11 values), ``quartile`` -> [lo, 25, 50, 75, hi], ``median`` -> [lo, 50, hi]."""
    return landmark_percentiles(cutoff, norm_type)[landmark_indices(norm_type)]


def _masked_values(volume: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    v = np.asarray(volume)
    if v.size == 0:
        raise ValueError("empty volume")
    if mask is None:
        sel = v.ravel()
    else:
        m = np.asarray(mask, dtype=bool)
        if m.shape != v.shape:
            raise ValueError(f"mask shape {m.shape} differs from volume shape {v.shape}")
        if m.any():
            sel = v[m]
        else:
            log.warning("empty foreground mask: histogram landmarks computed over the whole volume")
            sel = v.ravel()
    sel = sel.astype(np.float64, copy=False)
    if not np.all(np.isfinite(sel)):
        raise ValueError("volume has non-finite (NaN/Inf) values")
    return sel


def volume_landmarks(volume: np.ndarray, mask: np.ndarray | None = None, cutoff=DEFAULT_CUTOFF,
                     norm_type: str = "percentile") -> np.ndarray:
    """The 13 intensity landmarks (module docstring) of one volume over ``mask`` (all voxels when
    None or empty), float64. ``norm_type`` only affects how ``cutoff`` is standardised."""
    return np.percentile(_masked_values(volume, mask), landmark_percentiles(cutoff, norm_type))


def average_landmarks(per_volume: Iterable[np.ndarray]) -> np.ndarray:
    """Nyul training from per-volume landmarks: map each row's [first, last] linearly onto
    :data:`STANDARD_RANGE` and average the mapped rows. Rows with first == last are skipped.

    Raises:
        DataError: no row has a non-degenerate range.
    """
    s1, s2 = STANDARD_RANGE
    total, n_used, n_skipped = None, 0, 0
    for row in per_volume:
        p = np.asarray(row, dtype=np.float64)
        width = p[-1] - p[0]
        if not width > 0:
            n_skipped += 1
            continue
        mapped = s1 + (s2 - s1) * (p - p[0]) / width
        total = mapped if total is None else total + mapped
        n_used += 1
    if n_skipped:
        log.warning("histogram landmarks: skipped %d volume(s) with a constant intensity between the cutoffs",
                    n_skipped)
    if total is None:
        raise DataError("histogram standardisation: no training volume has distinct intensities between the "
                        "cutoff percentiles; cannot learn landmarks")
    out = total / n_used
    out[0], out[-1] = s1, s2  # exact by construction; remove rounding
    return out


def learn_landmarks(volumes_and_masks: Iterable[tuple[np.ndarray, np.ndarray | None]],
                    cutoff=DEFAULT_CUTOFF, norm_type: str = "percentile") -> np.ndarray:
    """Nyul training: the 13 standard-scale landmarks averaged over ``(volume, mask)`` pairs.

    The iterable is consumed lazily (a generator keeps one volume in memory at a time).
    """
    return average_landmarks(volume_landmarks(v, m, cutoff, norm_type) for v, m in volumes_and_masks)


def apply_landmarks(volume: np.ndarray, landmarks: np.ndarray, cutoff=DEFAULT_CUTOFF,
                    mask: np.ndarray | None = None, norm_type: str = "percentile") -> np.ndarray:
    """Map ``volume`` onto the standard scale given the 13 learned ``landmarks`` (float32 out).

    The volume's own knots are its percentiles over ``mask`` (whole volume when None or empty);
    every voxel, inside the mask or not, goes through the same non-decreasing piecewise-linear
    map, extended linearly beyond the first/last inner knot. Zero-width segments (ties) get
    slope 0, so constant or heavily tied volumes give finite output.

    Raises:
        DataError: the knots of ``landmarks`` used by ``norm_type`` are decreasing (a reference
            file learned with another cutoff / norm_type, or edited by hand).
    """
    key = _check_norm_type(norm_type)
    lm = np.asarray(landmarks, dtype=np.float64).ravel()
    if lm.size != N_LANDMARKS:
        raise ValueError(f"expected {N_LANDMARKS} landmarks, got {lm.size}")
    knots = landmark_indices(key)
    dst = lm[knots]
    if not np.all(np.isfinite(dst)) or np.any(np.diff(dst) < 0):
        raise DataError(f"histogram landmarks {np.round(dst, 4).tolist()} are not non-decreasing for "
                        f"norm_type = {key}; relearn them (delete the histogram_ref_file)")
    v = np.asarray(volume)
    src = np.percentile(_masked_values(v, mask), landmark_percentiles(cutoff, key)[knots])
    src = np.maximum.accumulate(src)  # guard against rounding in the percentile interpolation

    width = np.diff(src)
    tol = _TIE_RTOL * max(abs(src[0]), abs(src[-1]))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        raw = np.diff(dst) / np.where(width > 0, width, 1.0)
    # Tied knots, and intervals so narrow (subnormal intensities) that the slope overflows: flat.
    tied = (width <= tol) | ~np.isfinite(raw)
    if tied.all():
        log.warning("histogram standardisation: volume is constant inside its mask (%g); mapped to landmarks",
                    src[0])
    slope = np.where(tied, 0.0, raw)

    x = v.astype(np.float64, copy=False).ravel()
    if not np.all(np.isfinite(x)):
        raise ValueError("volume has non-finite (NaN/Inf) values")
    # Segment of each voxel = number of inner knots <= x (np.digitize's rule: a tie goes up);
    # a few vectorised comparisons are much faster than a binary search per voxel.
    seg = np.zeros(x.shape, dtype=np.uint8)  # at most 11 knots
    above = np.empty(x.shape, dtype=bool)
    for knot in src[1:-1]:
        np.greater_equal(x, knot, out=above)
        seg += above.view(np.uint8)
    del above
    out = dst[seg] + slope[seg] * (x - src[seg])
    # Keep each inner segment within its target interval so rounding can never break monotonicity
    # at a knot; the first / last segments extrapolate downwards / upwards.
    n_seg = len(dst) - 1
    lower = np.concatenate([[-np.inf], dst[1:n_seg]])
    upper = np.concatenate([dst[1:n_seg], [np.inf]])
    out = np.clip(out, lower[seg], upper[seg])
    f32 = float(np.finfo(np.float32).max)
    np.clip(out, -f32, f32, out=out)
    return out.astype(np.float32).reshape(v.shape)


def write_landmarks(path, landmarks_by_modality: dict[str, np.ndarray]) -> None:
    """Write NiftyNet's reference file atomically (:func:`uhved_tf.io.atomic.atomic_write_text`).

    One line per modality in dict order: ``<name> <13 numbers>``.
    """
    path = Path(path)
    lines = []
    for name, values in landmarks_by_modality.items():
        name = str(name)
        if not name or any(c.isspace() for c in name) or name.startswith("#"):
            raise ValueError(f"modality name {name!r} cannot be written to a landmarks file")
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size != N_LANDMARKS or not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: expected {N_LANDMARKS} finite landmarks, got {arr.tolist()}")
        lines.append(" ".join([name, *(repr(float(x)) for x in arr)]) + "\n")
    atomic_write_text(path, "".join(lines), fsync=True)
    log.info("wrote histogram landmarks of %s to %s", ", ".join(map(str, landmarks_by_modality)), path)


def _parse_values(path: Path, lineno: int, name: str, tokens: Sequence[str]) -> np.ndarray:
    where = f"{path}, line {lineno}"
    values = []
    for tok in tokens:
        try:
            values.append(float(tok))
        except ValueError:
            raise DataError(f"{where}: {tok!r} is not a number; expected {_FILE_LAYOUT}") from None
    if len(values) != N_LANDMARKS:
        raise DataError(f"{where}: {name} has {len(values)} numbers, expected {N_LANDMARKS}: {_FILE_LAYOUT}")
    arr = np.array(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{where}: {name} has a non-finite landmark (nan/inf); expected {_FILE_LAYOUT}")
    # The inner landmarks are ordered percentiles, and so are the quartile knots, for any cutoff.
    if np.any(np.diff(arr[1:-1]) < 0) or np.any(np.diff(arr[list(_KNOTS["quartile"])]) < 0):
        raise DataError(f"{where}: {name} landmarks are not increasing; expected {_FILE_LAYOUT}")
    return arr


def read_landmarks(path, modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """Read a NiftyNet histogram reference file; returns ``{modality: 13 landmarks}`` keyed by the
    names in ``modalities``.

    Names are matched case-insensitively; lines of other names (e.g. a ``foreground`` line or
    modalities not used by this model), blank lines and ``#`` comments are ignored, without
    validation. Only the lines of the requested modalities are parsed.

    Raises:
        DataError: missing / unreadable file; a requested modality absent or given twice; its
            line with a non-number, a wrong count, a non-finite or an unordered landmark (the
            message names the file and line).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: histogram reference file not found; expected a Nyul landmarks file with lines "
                        f"{_FILE_LAYOUT} (training writes it when [NETWORK] normalisation = True)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file; expected a Nyul landmarks file with lines {_FILE_LAYOUT}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the histogram reference file ({exc.strerror or exc})") from None

    wanted = {str(m).lower(): str(m) for m in modalities}
    found: dict[str, tuple[int, np.ndarray]] = {}
    names_present: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        name = tokens[0]
        names_present.append(name)
        key = name.lower()
        if key not in wanted:
            continue
        if key in found:
            raise DataError(f"{path}, line {lineno}: landmarks of {name} already given on line {found[key][0]}")
        found[key] = (lineno, _parse_values(path, lineno, name, tokens[1:]))

    missing = [wanted[k] for k in wanted if k not in found]
    if missing:
        present = ", ".join(names_present) if names_present else "no modality lines"
        raise DataError(f"{path}: no landmarks for modality {', '.join(missing)} (the file has: {present}); "
                        f"delete it to relearn the landmarks from the training subjects")
    return {wanted[k]: found[k][1] for k in wanted}


def train_landmarks_for_subjects(subjects, modality_inputs, net, path) -> dict[str, np.ndarray]:
    """Learn the landmarks of every modality (input sections ``modality_inputs``, [NETWORK]
    settings ``net``) on ``subjects`` and write them to ``path``.

    Each file is read with its input section's ``axcodes`` / ``pixdim`` / ``interp_order`` (the
    grid the network sees); the mask is ``[NETWORK] foreground_type``'s foreground when
    ``normalise_foreground_only`` is set, else all voxels. Subjects without the modality's file
    are skipped; only one volume is held in memory at a time.

    Raises:
        DataError: unreadable files (from the NIfTI reader); a modality with no usable volume.
    """
    from uhved_tf.data.preprocessing import foreground_mask
    from uhved_tf.io.nifti import load_volume

    cutoff, norm_type = tuple(net.cutoff), net.norm_type
    subjects = list(subjects)
    result: dict[str, np.ndarray] = {}
    for inp in modality_inputs:
        name, axcodes, pixdim = inp.name, tuple(inp.axcodes) or None, tuple(inp.pixdim) or None
        files = [(s.id, s.files[name]) for s in subjects if s.files.get(name) is not None]
        if not files:
            raise DataError(f"histogram standardisation: no training subject has a {name} file")
        log.info("learning histogram landmarks of %s on %d subjects (norm_type %s, cutoff %s)",
                 name, len(files), norm_type, cutoff)
        every = max(1, len(files) // 10)
        rows = []
        for i, (sid, f) in enumerate(files, start=1):
            vol, _ = load_volume(f, axcodes=axcodes, pixdim=pixdim, interp_order=inp.interp_order)
            mask = foreground_mask(vol, net.foreground_type) if net.normalise_foreground_only else None
            row = volume_landmarks(vol, mask, cutoff, norm_type)
            if not row[-1] > row[0]:
                log.warning("%s (subject %s): constant intensity between the cutoffs; not used for the %s landmarks",
                            f, sid, name)
            else:
                rows.append(row)
            if i % every == 0 or i == len(files):
                log.info("  %s: %d/%d volumes", name, i, len(files))
        if not rows:
            raise DataError(f"histogram standardisation: every {name} file is constant between the cutoffs; "
                            f"cannot learn landmarks")
        result[name] = average_landmarks(rows)
    write_landmarks(path, result)
    return result
