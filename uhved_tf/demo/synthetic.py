"""Synthetic BraTS-like data set for demos, smoke tests and CI.

:func:`make_demo_dataset` writes a small data set in the **BraTS 2018 layout**::

    out_dir/
      demo_dataset.json                      parameters + subject ids (lets a re-run be a no-op)
      HGG/Brats18_Demo_HGG_001/Brats18_Demo_HGG_001_{t1,t1ce,t2,flair,seg}.nii.gz
      ...
      LGG/Brats18_Demo_LGG_001/...           cases without enhancing tumour (about 25 %)

Each subject is a skull-stripped brain (background exactly 0) built from a randomly deformed
ellipsoid: white matter with an irregular boundary, a grey-matter cortex ribbon with a few sulci,
deep grey nuclei, CSF (lateral ventricles, interhemispheric fissure, a thin outer layer) and one
tumour in one hemisphere (oedema 2 around a core of necrosis 1 inside an enhancing rim 4; LGG
cases have a non-enhancing core 1 and no 4). The four images have modality-specific contrast
(:data:`TISSUE_INTENSITY`), per-modality global scale/offset, a smooth multiplicative bias field,
partial-volume blur and Rician noise; images are int16 and the segmentation uint8, as in BraTS.

Geometry: voxel grids are generated in RAS voxel order and written with a non-identity affine
(``spacing`` on the diagonal, non-zero origin), cycling through the orientations ``LPS`` (as in the
BraTS release), ``RAS`` and ``LAS``, so a loader's reorientation is exercised. The anatomy is
consistent in world coordinates whatever the orientation.

Everything is deterministic: subject ``<grade>_<k>`` depends only on ``(seed, grade, k, shape,
spacing)`` (see :func:`synthesize_subject`), so the same call gives bit-identical arrays.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
from scipy import ndimage

from uhved_tf.errors import ConfigError, DataError
from uhved_tf.io.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["MODALITIES", "GRADES", "MANIFEST_NAME", "GENERATOR_VERSION", "TISSUE_NAMES", "TISSUE_INTENSITY",
           "SyntheticSubject", "subject_ids", "synthesize_subject", "make_demo_dataset"]

#: Modality suffixes of the BraTS 2018 file names, in the order used throughout uhved_tf.
MODALITIES: Tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
GRADES: Tuple[str, ...] = ("HGG", "LGG")
MANIFEST_NAME = "demo_dataset.json"
#: Bumped whenever the generated data change, so an old folder is not mistaken for a new one.
GENERATOR_VERSION = 1
_MANIFEST_FORMAT = "uhved_tf synthetic BraTS-like demo data set"
_LGG_FRACTION = 0.25
_ORIENTATIONS: Tuple[str, ...] = ("LPS", "RAS", "LAS")
_MIN_COMPARTMENT_VOXELS = 12  # (necrosis: twice that)

# Tissue classes of the internal tissue map (``SyntheticSubject.tissue``).
BACKGROUND, CSF, GM, WM, OEDEMA, NECROSIS, ENHANCING, NON_ENHANCING = range(8)
TISSUE_NAMES: Tuple[str, ...] = (
    "background", "csf", "grey_matter", "white_matter", "oedema", "necrosis", "enhancing", "non_enhancing")
#: BraTS label of each tissue class.
_TISSUE_TO_LABEL = np.array([0, 0, 0, 0, 2, 1, 4, 1], dtype=np.uint8)

#: Mean intensity (arbitrary units, roughly BraTS-like) of each tissue class per modality, indexed
#: by the tissue constants above. T1: WM > GM > CSF, tumour slightly hypo-intense, necrosis dark,
#: rim iso to the core; T1c: as T1 with a very bright enhancing rim; T2: CSF and lesions bright,
#: WM < GM; FLAIR: CSF suppressed, oedema very bright, necrosis moderately bright.
TISSUE_INTENSITY: Dict[str, Tuple[float, ...]] = {
    #          bg   CSF    GM     WM   oed   necr   enh  non-enh
    "t1": (0.0, 260.0, 560.0, 760.0, 665.0, 440.0, 480.0, 500.0),
    "t1ce": (0.0, 290.0, 610.0, 810.0, 715.0, 300.0, 1550.0, 520.0),
    "t2": (0.0, 1850.0, 1000.0, 680.0, 1500.0, 1700.0, 1200.0, 1400.0),
    "flair": (0.0, 140.0, 640.0, 500.0, 1250.0, 820.0, 980.0, 1050.0),
}
# Relative within-tissue texture amplitude (healthy tissue is smooth, tumour heterogeneous).
_TEXTURE = np.array([0.0, 0.03, 0.03, 0.025, 0.06, 0.08, 0.08, 0.07])


@dataclass(frozen=True)
class SyntheticSubject:
    """One generated case, with arrays in the voxel order written to disk.

    ``images`` maps each of :data:`MODALITIES` to an int16 volume (0 outside the brain), ``seg``
    is the uint8 BraTS label map (0/1/2/4), ``tissue`` the int8 tissue-class map (indices into
    :data:`TISSUE_NAMES`; for tests and demos), ``affine`` the 4x4 voxel-to-world (RAS mm) matrix
    of all five files, ``orientation`` its axis codes (e.g. ``"LPS"``) and ``hemisphere`` the
    world side of the tumour (``"L"`` or ``"R"``).
    """

    subject_id: str
    grade: str
    images: Dict[str, np.ndarray]
    seg: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray
    orientation: str
    hemisphere: str


def _check_params(
    n_subjects, shape, spacing, seed, who: str = "make_demo_dataset"
) -> Tuple[int, Tuple[int, int, int], Tuple[float, float, float], int]:
    def bad(name, value, expected):
        return ConfigError(f"{who}: {name}={value!r} is invalid; expected {expected}")

    if isinstance(n_subjects, bool) or not isinstance(n_subjects, (int, np.integer)) or n_subjects < 1:
        raise bad("n_subjects", n_subjects, "a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise bad("seed", seed, "a non-negative integer")
    try:
        shape_t = tuple(int(s) for s in shape)
        ok = len(shape_t) == 3 and all(s >= 16 and s == float(v) for s, v in zip(shape_t, shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise bad("shape", shape, "three integers >= 16, e.g. (64, 64, 48)")
    try:
        spacing_t = tuple(float(s) for s in spacing)
        ok = len(spacing_t) == 3 and all(np.isfinite(s) and s > 0 for s in spacing_t)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise bad("spacing", spacing, "three positive numbers (mm), e.g. (3.0, 3.0, 3.0)")
    return int(n_subjects), shape_t, spacing_t, int(seed)  # type: ignore[return-value]


def _grade_counts(n_subjects: int) -> Tuple[int, int]:
    n_lgg = int(n_subjects * _LGG_FRACTION + 0.5)
    return n_subjects - n_lgg, n_lgg


def _subject_id(grade: str, number: int) -> str:
    return f"Brats18_Demo_{grade}_{number:03d}"


def subject_ids(n_subjects: int) -> List[str]:
    """Ids that :func:`make_demo_dataset` produces for ``n_subjects`` (HGG first, then LGG)."""
    return [_subject_id(g, k) for g, n in zip(GRADES, _grade_counts(int(n_subjects))) for k in range(1, n + 1)]


def _grade_of(subject_id: str) -> str:
    return subject_id.split("_")[2]


def _bspline_weights(n: int, c: int) -> np.ndarray:
    """(n, c) cubic B-spline weights sampling ``n`` points evenly inside a ``c``-knot grid."""
    x = np.linspace(1.0, c - 2.0, n)[:, None] - np.arange(c)[None, :]
    t = np.abs(x)
    return np.where(t < 1.0, 2.0 / 3.0 - t**2 + 0.5 * t**3, np.where(t < 2.0, (2.0 - t) ** 3 / 6.0, 0.0))


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], cells: int) -> np.ndarray:
    """Smooth random field of unit standard deviation with about ``cells`` blobs along the longest axis.

    A coarse Gaussian grid smoothed by a separable cubic B-spline (three small matrix products).
    """
    coarse = tuple(max(2, int(round(cells * s / max(shape)))) + 2 for s in shape)
    field = rng.standard_normal(coarse)
    for axis, (n, c) in enumerate(zip(shape, coarse)):
        field = np.moveaxis(np.tensordot(_bspline_weights(n, c), field, axes=([1], [axis])), 0, axis)
    field = field - field.mean()
    std = field.std()
    return field / std if std > 0 else field


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _brain_radius(p0, p1, p2, axes) -> np.ndarray:
    """Normalised ellipsoidal radius of an egg-shaped brain (narrower frontally, flatter below)."""
    a0 = axes[0] * (1.0 - 0.07 * p1)  # anterior (+p1) narrower than posterior
    a2 = np.where(p2 < 0, axes[2] * 0.88, axes[2])
    return np.sqrt((p0 / a0) ** 2 + (p1 / axes[1]) ** 2 + (p2 / a2) ** 2)


def _generate_canonical(
    rng: np.random.Generator,
    shape: Tuple[int, int, int],
    spacing: Tuple[float, float, float],
    hgg: bool,
) -> Tuple[np.ndarray, int]:
    """Tissue map in RAS voxel order and the tumour side (+1 right, -1 left)."""
    # Normalised coordinates in [-1, 1] per axis (0: L->R, 1: P->A, 2: I->S).
    u = [((np.arange(n, dtype=np.float64) - (n - 1) / 2.0) / (n / 2.0)) for n in shape]
    u0, u1, u2 = np.meshgrid(*u, indexing="ij", sparse=True)
    # The brain fills the field of view; the tumour is round in millimetres: its coordinates are
    # the normalised ones scaled by the relative physical extent of each axis.
    fov = np.asarray(shape, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)
    scale = fov / fov.mean()

    # --- tumour parameters (drawn first so the mass effect can be applied to the anatomy) ----
    side = 1 if rng.random() < 0.5 else -1
    axes = np.array([0.76, 0.88, 0.82]) * rng.uniform(0.95, 1.03, size=3)
    for _ in range(100):
        c = np.array([side * rng.uniform(0.22, 0.45), rng.uniform(-0.45, 0.45), rng.uniform(-0.2, 0.4)])
        if _brain_radius(c[0], c[1], c[2], axes) < 0.7:
            break
    small = rng.random() < 0.3
    rho_core = rng.uniform(0.07, 0.11) if small else rng.uniform(0.11, 0.22)
    rho_oed = rho_core * rng.uniform(1.6, 2.5)
    rho_nec = rho_core * rng.uniform(0.5, 0.75)
    rot = _rotation(rng)
    aniso = rng.uniform(0.8, 1.25, size=3)
    aniso /= np.prod(aniso) ** (1.0 / 3.0)

    # --- smooth deformation of the healthy anatomy + mass effect ------------------------------
    disp = [0.05 * _smooth_noise(rng, shape, 3) for _ in range(3)]
    q0, q1, q2 = u0 - c[0], u1 - c[1], u2 - c[2]
    dq2 = (q0 * scale[0]) ** 2 + (q1 * scale[1]) ** 2 + (q2 * scale[2]) ** 2
    push = 0.5 * rho_core * np.exp(-dq2 / (2.0 * (1.5 * rho_core) ** 2))
    p0 = u0 + disp[0] - push * q0
    p1 = u1 + disp[1] - push * q1
    p2 = u2 + disp[2] - push * q2

    r = _brain_radius(p0, p1, p2, axes) + 0.025 * _smooth_noise(rng, shape, 7)
    brain = r < 1.0
    wm_edge = 0.79 + 0.05 * _smooth_noise(rng, shape, 6)
    tissue = np.full(shape, GM, dtype=np.int8)
    tissue[r < wm_edge] = WM
    # deep grey nuclei (thalamus / basal ganglia) lateral to the ventricles
    for sx in (-1.0, 1.0):
        d = ((p0 - sx * 0.2) / 0.09) ** 2 + ((p1 + 0.02) / 0.2) ** 2 + ((p2 + 0.02) / 0.12) ** 2
        tissue[d < 1.0] = GM
    # sulci: thin CSF cracks in the cortex ribbon
    sulc = _smooth_noise(rng, shape, 12)
    tissue[(np.abs(sulc) < 0.12) & (r > wm_edge + 0.06)] = CSF
    # interhemispheric fissure (upper part of the brain)
    tissue[(np.abs(p0 + 0.01 * sulc) < 0.025) & (r > 0.45) & (p2 > -0.15)] = CSF
    # thin outer CSF layer
    tissue[r > 0.95] = CSF
    # lateral ventricles: two ellipsoids next to the midline, slightly asymmetric
    vsize = rng.uniform(0.85, 1.2, size=2)
    for sx, vs in zip((-1.0, 1.0), vsize):
        d = (
            ((p0 - sx * 0.1) / (0.085 * vs)) ** 2
            + ((p1 + 0.05) / (0.33 * vs)) ** 2
            + ((p2 - 0.13 + 0.25 * p1**2) / (0.13 * vs)) ** 2  # arched along the AP axis
        )
        tissue[d < 1.0] = CSF

    # --- tumour ------------------------------------------------------------------------------
    q = (q0 * scale[0], q1 * scale[1], q2 * scale[2])
    dist2 = 0.0
    for row, a in zip(rot, aniso):
        v = (row[0] * q[0] + row[1] * q[1] + row[2] * q[2]) / a
        dist2 = dist2 + v * v
    dist = np.sqrt(dist2)
    d_core = dist * (1.0 + 0.2 * _smooth_noise(rng, shape, 6))
    d_oed = dist * (1.0 + 0.3 * _smooth_noise(rng, shape, 8))
    d_nec = dist * (1.0 + 0.25 * _smooth_noise(rng, shape, 7))

    healthy = tissue.copy()
    for _ in range(8):
        core = brain & (d_core < rho_core)
        oedema = brain & ~core & (d_oed < rho_oed) & (healthy != CSF)
        # oedema spreads along white matter; in grey matter it stays close to the core
        oedema &= (healthy == WM) | (d_oed < 0.5 * (rho_core + rho_oed))
        necrosis = core & (d_nec < rho_nec)
        # every compartment must be big enough to survive partial volume (grown if not)
        if hgg:
            counts = (necrosis.sum() / 2, (core & ~necrosis).sum(), oedema.sum())
        else:
            counts = (core.sum(), oedema.sum())
        if min(counts) >= _MIN_COMPARTMENT_VOXELS:
            break
        rho_core, rho_oed, rho_nec = 1.3 * rho_core, 1.3 * rho_oed, 1.3 * rho_nec
    tissue = healthy
    tissue[oedema] = OEDEMA
    if hgg:
        tissue[core] = ENHANCING
        tissue[necrosis] = NECROSIS
    else:
        tissue[core] = NON_ENHANCING
    tissue[~brain] = BACKGROUND
    return tissue, side


def _render(rng: np.random.Generator, tissue: np.ndarray) -> Dict[str, np.ndarray]:
    """Modality images (float64, canonical order) from a tissue map."""
    shape = tissue.shape
    brain = tissue != BACKGROUND
    texture = _TEXTURE[tissue] * _smooth_noise(rng, shape, 12)
    images = {}
    for mod in MODALITIES:
        table = np.asarray(TISSUE_INTENSITY[mod])
        wm = table[WM]
        img = table[tissue] * (1.0 + texture)
        img = ndimage.gaussian_filter(img, sigma=0.5, mode="constant")  # partial volume
        bias = _smooth_noise(rng, shape, 2)
        bias = 1.0 + 0.15 * bias / max(np.abs(bias).max(), 1e-6)
        gain = rng.uniform(0.8, 1.2)
        offset = rng.uniform(-0.1, 0.1) * wm
        img = (img * bias) * gain + offset
        sigma = rng.uniform(0.02, 0.045) * wm * gain
        n1 = rng.standard_normal(shape)
        n2 = rng.standard_normal(shape)
        img = np.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)  # Rician magnitude
        img = np.clip(np.rint(img), 1, np.iinfo(np.int16).max)
        img[~brain] = 0
        images[mod] = img
    return images


def _orientation_affine(
    orientation: str, shape: Tuple[int, int, int], spacing: Tuple[float, float, float], shift: np.ndarray
) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """Affine for ``orientation`` (axis codes of the voxel axes) and the voxel axes to flip."""
    n = np.asarray(shape, dtype=np.float64)
    s = np.asarray(spacing, dtype=np.float64)
    origin = -(n - 1) / 2.0 * s + shift  # world position of RAS voxel (0, 0, 0)
    flips = tuple(a for a in range(3) if orientation[a] != "RAS"[a])
    affine = np.eye(4)
    for a in range(3):
        affine[a, a] = -s[a] if a in flips else s[a]
        affine[a, 3] = origin[a] + (n[a] - 1) * s[a] if a in flips else origin[a]
    # NIfTI stores the affine as float32: keep it exactly representable so the matrix read back
    # from any of the files equals this one.
    return affine.astype(np.float32).astype(np.float64), flips


def synthesize_subject(
    grade: str,
    number: int,
    shape: Sequence[int] = (64, 64, 48),
    spacing: Sequence[float] = (3.0, 3.0, 3.0),
    seed: int = 0,
) -> SyntheticSubject:
    """Generate one case in memory (what :func:`make_demo_dataset` writes for that id).

    ``grade`` is ``"HGG"`` (necrosis + enhancing rim) or ``"LGG"`` (non-enhancing core only),
    ``number`` the 1-based index within the grade. The result depends only on the arguments.
    """
    if grade not in GRADES:
        raise ConfigError(f"synthesize_subject: grade={grade!r} is invalid; expected one of {GRADES}")
    if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or number < 1:
        raise ConfigError(f"synthesize_subject: number={number!r} is invalid; expected an integer >= 1")
    _, shape_t, spacing_t, seed = _check_params(1, shape, spacing, seed, who="synthesize_subject")
    number = int(number)
    rng = np.random.default_rng([seed, GRADES.index(grade), number, GENERATOR_VERSION])
    tissue, side = _generate_canonical(rng, shape_t, spacing_t, hgg=grade == "HGG")
    images = _render(rng, tissue)
    shift = rng.uniform(-10.0, 10.0, size=3)
    orientation = _ORIENTATIONS[(number - 1 + GRADES.index(grade)) % len(_ORIENTATIONS)]
    affine, flips = _orientation_affine(orientation, shape_t, spacing_t, shift)

    def out(a: np.ndarray, dtype) -> np.ndarray:
        if flips:
            a = np.flip(a, axis=flips)
        return np.ascontiguousarray(a, dtype=dtype)

    return SyntheticSubject(
        subject_id=_subject_id(grade, number),
        grade=grade,
        images={m: out(images[m], np.int16) for m in MODALITIES},
        seg=out(_TISSUE_TO_LABEL[tissue], np.uint8),
        tissue=out(tissue, np.int8),
        affine=affine,
        orientation=orientation,
        hemisphere="R" if side > 0 else "L",
    )


def _manifest(n_subjects, shape, spacing, seed, complete: bool) -> dict:
    return {"format": _MANIFEST_FORMAT, "generator_version": GENERATOR_VERSION,
            "parameters": {"n_subjects": n_subjects, "shape": list(shape), "spacing": list(spacing), "seed": seed},
            "subjects": subject_ids(n_subjects), "complete": complete}


def _read_manifest(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _subject_files(out: Path, subject_id: str) -> List[Path]:
    d = out / _grade_of(subject_id) / subject_id
    return [d / f"{subject_id}_{suffix}.nii.gz" for suffix in MODALITIES + ("seg",)]


def _first_nifti(folder: Path) -> Optional[Path]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.endswith((".nii", ".nii.gz")) and not name.startswith("."):
                return Path(root) / name
    return None


def _save_nifti(array: np.ndarray, affine: np.ndarray, spacing, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    hdr = img.header
    hdr.set_data_dtype(array.dtype)
    hdr.set_zooms(tuple(float(s) for s in spacing))
    hdr.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    hdr["descrip"] = b"uhved_tf synthetic demo"
    # The temporary name keeps the .nii.gz extension (nibabel picks the format from it) and does
    # not match the BraTS patterns, so a crash never leaves a half-written file under a real name.
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def make_demo_dataset(
    out_dir,
    n_subjects: int = 16,
    shape: Sequence[int] = (64, 64, 48),
    spacing: Sequence[float] = (3.0, 3.0, 3.0),
    seed: int = 0,
    overwrite: bool = False,
) -> List[str]:
    """Write a synthetic BraTS-2018-layout data set to ``out_dir`` and return the subject ids.

    About 25 % of the ``n_subjects`` cases are LGG (no enhancing tumour, under ``out_dir/LGG``),
    the rest HGG (under ``out_dir/HGG``). Ids are returned HGG first, then LGG.

    If ``out_dir`` already holds exactly this data set (same parameters, recorded in
    ``demo_dataset.json``, all files present) nothing is written. Otherwise, if it contains any
    NIfTI file, :class:`~uhved_tf.errors.DataError` is raised unless ``overwrite=True``, in which
    case the existing ``Brats18_Demo_*`` subject folders are replaced (other files are left alone).
    A folder left incomplete by an interrupted call with the same parameters is completed.
    """
    n_subjects, shape_t, spacing_t, seed = _check_params(n_subjects, shape, spacing, seed)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: demo data set output path exists and is not a folder")
    ids = subject_ids(n_subjects)
    expected = _manifest(n_subjects, shape_t, spacing_t, seed, complete=True)
    manifest_path = out / MANIFEST_NAME
    existing = _read_manifest(manifest_path) if manifest_path.is_file() else None

    if existing == expected and all(p.is_file() for s in ids for p in _subject_files(out, s)):
        logger.info("Demo data set already present in %s (%d subjects); not rewritten", out, n_subjects)
        return ids

    if out.is_dir() and not overwrite:
        # our own folder for these parameters, interrupted or with files deleted: regenerate
        resumable = existing in (expected, dict(expected, complete=False))
        found = _first_nifti(out)
        if found is not None and not resumable:
            raise DataError(f"{out}: folder already contains NIfTI files (e.g. {found.relative_to(out)}) that are "
                            "not the demo data set requested; use an empty folder or overwrite=True")

    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        pattern = re.compile(r"^Brats18_Demo_(HGG|LGG)_\d+$")
        for grade in GRADES:
            gdir = out / grade
            if gdir.is_dir():
                for child in sorted(gdir.iterdir()):
                    if child.is_dir() and pattern.match(child.name):
                        shutil.rmtree(child)
        foreign = _first_nifti(out)
        if foreign is not None:
            logger.warning("%s: overwrite=True keeps NIfTI files that are not demo subjects (e.g. %s)",
                           out, foreign.relative_to(out))
    incomplete = _manifest(n_subjects, shape_t, spacing_t, seed, complete=False)
    atomic_write_text(manifest_path, json.dumps(incomplete, indent=2))

    t0 = time.perf_counter()
    for sid in ids:
        grade = _grade_of(sid)
        subject = synthesize_subject(grade, int(sid.rsplit("_", 1)[1]), shape_t, spacing_t, seed)
        arrays = [subject.images[m] for m in MODALITIES] + [subject.seg]
        for array, path in zip(arrays, _subject_files(out, sid)):  # atomic_path creates the folders
            _save_nifti(array, subject.affine, spacing_t, path)
        logger.debug("Wrote %s (%s, orientation %s)", sid, grade, subject.orientation)
    atomic_write_text(manifest_path, json.dumps(expected, indent=2))
    logger.info("Wrote synthetic demo data set to %s: %d subjects, shape %s, spacing %s mm, seed %d (%.1f s)",
                out, n_subjects, shape_t, spacing_t, seed, time.perf_counter() - t0)
    return ids
