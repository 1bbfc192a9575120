"""NIfTI at the edges: read a volume onto a working grid, and put results back onto the file's grid.

A volume goes through at most two steps on the way in, and :func:`to_original_grid` undoes both
on the way out:

1. **Reorientation** (when ``axcodes`` is given): an exact permutation / flip of the array axes
   (``nibabel.orientations``), so that the array axes point as close as possible to ``axcodes``
   (e.g. ``("R", "A", "S")``). No interpolation: the round trip is bit-exact. An oblique image
   stays oblique; only the axis order and directions change.
2. **Resampling** (when ``pixdim`` is given and differs from the reoriented voxel size by more
   than 1e-3 relative on some axis). Convention — *centre-aligned grids*: along each axis with old
   size ``n``, old spacing ``a`` and new spacing ``b``, the new size is ``m = max(1, round(n*a/b))``
   and the new voxel ``j`` sits at the old continuous voxel coordinate

       ``i(j) = s*j + t``,  with ``s = b/a`` and ``t = (n-1)/2 - s*(m-1)/2``,

   i.e. the new grid has exactly the spacing ``pixdim`` and the same centre (in world space) as
   the old one. When ``n*a`` is a multiple of ``b`` the outer voxel *edges* coincide too
   (``i(-1/2) = -1/2``), like ``scipy.ndimage.zoom(..., grid_mode=True)``. The working affine is
   ``reoriented_affine @ [[diag(s), t], [0, 1]]``, so world coordinates stay correct.
   :func:`to_original_grid` samples the working array at ``j(i) = (i - t)/s`` for every original
   voxel centre ``i`` — the exact inverse map — with ``scipy.ndimage.affine_transform``
   (``mode="nearest"`` at the borders). For an integer factor (1 mm -> 2 mm) the order-0 round trip
   of labels that are constant on aligned 2x2x2 blocks is exact: old voxels ``2k`` and ``2k+1`` map
   to ``k -/+ 1/4``, never to a rounding tie.

**Channels of 4-D files.** Some datasets store all modalities of a case in one 4-D file
``[X, Y, Z, C]`` (the Medical Segmentation Decathlon's ``Task01_BrainTumour``). A
:class:`Channel` ``(path, index)`` names one of them; :func:`load_volume` and
:func:`read_header_only` accept it wherever they accept a path, and treat volume ``[..., index]``
exactly like a 3-D file (the geometry's header is made 3-D, so :func:`save_like` writes a 3-D
file on the input's grid). The decompressed bytes of the last 4-D ``.nii.gz`` read through a
:class:`Channel` are kept (one file, keyed by path, size and modification time), so loading the
four channels of a case one after the other decompresses it once.

**Declared size.** Before any voxel is read, the size the header declares (shape x bytes per
voxel, from ``vox_offset``) is checked: at most :data:`MAX_DECLARED_VOXELS` voxels (all channels
of a 4-D file together), and, for ``.nii``, not beyond the end of the file (for ``.nii.gz``:
the decompressed length; a ``.nii.gz`` is decompressed only after its header passed the limit).
A damaged header (a NIfTI-1 of 32767^3 voxels, a NIfTI-2 declaring 10^63) is one error line
instead of an attempt to allocate terabytes.

Only ``.nii`` and ``.nii.gz`` files are read or written. Every problem a user can fix (missing,
truncated or corrupt file, absurd declared size, not 3-D, non-finite voxels, singular affine,
output already present) raises :class:`uhved_tf.errors.DataError` with one line naming the file.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations as nio
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError
from scipy import ndimage

from uhved_tf.errors import DataError
from uhved_tf.io.atomic import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["NIFTI_SUFFIXES", "Channel", "VolumeGeometry", "clear_channel_cache", "is_nifti_path", "load_volume",
           "read_header_only", "save_like", "to_original_grid"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_RESAMPLE_RTOL = 1e-3
# A resampled grid larger than this (4 GiB of float32) comes from a wrong voxel size, not from an image.
_MAX_RESAMPLED_VOXELS = 1024**3
#: The most voxels a file may declare (all channels of a 4-D file together; 8 GiB as float32). A
#: brain volume has ~10^7; a header declaring more is damaged, and reading it would exhaust the memory.
MAX_DECLARED_VOXELS = 2**31
_IDENTITY_ORNT = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
# What nibabel / gzip / zlib raise on a file that is not NIfTI, truncated or corrupt.
_READ_ERRORS = (
    ImageFileError, HeaderDataError, WrapStructError, OSError, EOFError, ValueError, zlib.error, struct.error,
    OverflowError,  # e.g. nibabel's header check on vox_offset = inf
)
_UNREADABLE = "cannot read as NIfTI (not a NIfTI file, truncated or corrupt?)"


@dataclass(frozen=True)
class Channel:
    """Channel ``index`` (0-based) of the 4-D NIfTI file ``path`` (shape ``[X, Y, Z, C]``).

    It is ``os.PathLike`` (``os.fspath`` gives the file), so code that only needs the file (does
    it exist, its name) keeps working; ``Path(channel)`` drops the channel, so pass the
    ``Channel`` itself to :func:`load_volume` / :func:`read_header_only`. ``str()`` is
    ``"/x/BRATS_001.nii.gz (channel 2)"``, the form used in messages.
    """

    path: Path
    index: int

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        if isinstance(self.index, bool) or not isinstance(self.index, (int, np.integer)) or self.index < 0:
            raise ValueError(f"a channel index is an integer >= 0, got {self.index!r}")
        object.__setattr__(self, "index", int(self.index))

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return f"{self.path} (channel {self.index})"


class _LastDecompressed:
    """The decompressed bytes of the last ``.nii.gz`` read through a :class:`Channel` (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._raw: bytes | None = None

    def get(self, path: Path) -> bytes:
        stat = path.stat()
        key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if self._key == key:
                return self._raw
        raw = gzip.decompress(path.read_bytes())
        with self._lock:
            self._key, self._raw = key, raw
        return raw

    def clear(self) -> None:
        with self._lock:
            self._key, self._raw = None, None


_CHANNEL_CACHE = _LastDecompressed()


def clear_channel_cache() -> None:
    """Forget the decompressed 4-D file kept for :class:`Channel` reads (frees its memory)."""
    _CHANNEL_CACHE.clear()


@dataclass(frozen=True, eq=False)
class VolumeGeometry:
    """Everything needed to put an array computed on the working grid back onto the file's grid.

    Attributes:
        path: the file that was read.
        original_shape: the file's 3-D shape (trailing singleton dimensions dropped).
        original_affine: the file's 4x4 voxel-to-world affine (``img.affine``).
        header: a copy of the file's NIfTI header, so outputs keep units and qform/sform codes.
        orientation: the ``nibabel`` orientation transform (3x2) applied to the file's array to get
            the working axes; the identity ``[[0, 1], [1, 1], [2, 1]]`` when no ``axcodes`` were given.
        working_spacing: voxel size of the working grid (after reorientation and resampling), in
            the header's spatial unit (normally mm).
        working_shape: 3-D shape of the working grid.
        working_affine: voxel-to-world affine of the working grid.
        resampled: whether step 2 (resampling) happened.
        channel: the channel read from a 4-D file (:class:`Channel`), else ``None``; ``path`` is
            the file and ``original_shape`` / ``header`` describe the 3-D channel.

    Arrays are read-only; equality is identity (NumPy arrays make field-wise ``==`` ambiguous).
    """

    path: str
    original_shape: tuple[int, int, int]
    original_affine: np.ndarray
    header: Any
    orientation: np.ndarray
    working_spacing: tuple[float, float, float]
    working_shape: tuple[int, int, int]
    working_affine: np.ndarray
    resampled: bool
    channel: int | None = None

    @property
    def reoriented_shape(self) -> tuple[int, int, int]:
        """Shape after reorientation, before resampling."""
        return tuple(int(self.original_shape[int(ax)]) for ax in _inverse_ornt(self.orientation)[:, 0])

    @property
    def reoriented_affine(self) -> np.ndarray:
        """Affine after reorientation, before resampling."""
        return self.original_affine @ nio.inv_ornt_aff(self.orientation, self.original_shape)

    def resample_map(self) -> tuple[np.ndarray, np.ndarray]:
        """``(s, t)`` of the centre-aligned map ``reoriented_index = s * working_index + t`` (per axis)."""
        spacing = nib.affines.voxel_sizes(self.reoriented_affine)
        return _resample_map(self.reoriented_shape, self.working_shape, spacing, self.working_spacing)


def is_nifti_path(path: str | os.PathLike) -> bool:
    """Whether the file name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    return os.fspath(path).lower().endswith(NIFTI_SUFFIXES)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not is_nifti_path(path):
        raise DataError(f"{path}: expected a NIfTI file ending in .nii or .nii.gz")
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: expected a NIfTI file, found a directory or special file")
    return path


def _check_class(path: Path, img: Any) -> Any:
    if not isinstance(img, nib.Nifti1Image):  # Nifti2Image subclasses Nifti1Image
        raise DataError(f"{path}: expected a NIfTI-1/2 image, nibabel read it as {type(img).__name__}")
    return img


def _check_declared_size(path: Path, img: Any, available: int | None, what: str = "file") -> None:
    """Refuse, before reading voxels, a header declaring more than :data:`MAX_DECLARED_VOXELS`
    voxels, or (``available``: the file's or the decompressed length, ``what`` names it) voxel
    data ending beyond ``available`` bytes."""
    try:
        proxy = img.dataobj
        shape = tuple(int(d) for d in getattr(proxy, "shape", img.shape))
        dtype = np.dtype(proxy.dtype if hasattr(proxy, "dtype") else img.get_data_dtype())
        offset = int(getattr(proxy, "offset", 0))
    except (*_READ_ERRORS, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: {_UNREADABLE}: {_one_line(exc)}") from exc
    voxels = math.prod(shape)
    if voxels > MAX_DECLARED_VOXELS:
        count = f"{float(voxels):.3g}" if voxels < 1e300 else f"10^{len(str(voxels)) - 1}"
        raise DataError(f"{path}: the header declares shape {shape} ({count} voxels of {dtype}); more than 2^31 "
                        f"voxels is no brain image (a damaged header?), so the file is not read")
    needed = offset + voxels * dtype.itemsize
    if available is not None and needed > available:
        raise DataError(f"{path}: the header declares shape {shape} of {dtype} ({voxels * dtype.itemsize} bytes of "
                        f"voxels from byte {offset}) but the {what} has only {available} bytes (truncated file or "
                        f"damaged header)")


def _open_nifti(path: str | os.PathLike) -> tuple[Path, Any]:
    """Open the header of a NIfTI file (lazy data), with every failure as a one-line DataError;
    the declared size is checked (:func:`_check_declared_size`; for ``.nii``, against the file's size)."""
    path = _check_path(path)
    try:
        img = _check_class(path, nib.load(str(path)))
        gz = path.name.lower().endswith(".gz")
        _check_declared_size(path, img, None if gz else path.stat().st_size)
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: {_UNREADABLE}: {_one_line(exc)}") from exc
    return path, img


def _read_nifti(path: str | os.PathLike, cached: bool = False) -> tuple[Path, Any]:
    """Read a whole NIfTI file into memory, verifying gzip integrity (CRC and length).

    nibabel alone stops decompressing once it has the voxels it needs, so a damaged ``.nii.gz``
    can load as silently wrong data; decompressing the whole member first makes gzip check it.
    ``cached``: reuse / keep the decompressed bytes in the one-file cache of :class:`Channel` reads.
    The declared size is checked before any voxel is read (:func:`_check_declared_size`): a
    ``.nii.gz`` is decompressed only when the header read from its start declares at most
    :data:`MAX_DECLARED_VOXELS` voxels, and then the decompressed length must hold them.
    """
    path = _check_path(path)
    try:
        if not path.name.lower().endswith(".gz"):
            img = _check_class(path, nib.load(str(path), mmap=False))
            _check_declared_size(path, img, path.stat().st_size)
            return path, img
        try:
            head = nib.load(str(path))          # the header only, from the start of the gzip stream
        except _READ_ERRORS:
            head = None                         # (decompressing reports why it is unreadable)
        if head is not None:
            _check_declared_size(path, head, None)
        try:
            raw = _CHANNEL_CACHE.get(path) if cached else gzip.decompress(path.read_bytes())
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: cannot decompress (truncated or corrupt gzip file?): {_one_line(exc)}") from exc
        sizeof_hdr = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
        img = _check_class(path, (nib.Nifti2Image if 540 in sizeof_hdr else nib.Nifti1Image).from_bytes(raw))
        _check_declared_size(path, img, len(raw), "decompressed file")
        return path, img
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: {_UNREADABLE}: {_one_line(exc)}") from exc


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Drop trailing singleton dimensions beyond the third; insist on exactly three left."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) != 3:
        raise DataError(f"{path}: expected a 3-D image, got shape {tuple(int(d) for d in shape)}")
    return tuple(int(d) for d in dims)


def _channel_shape(path: Path, shape: tuple[int, ...], index: int) -> tuple[int, int, int]:
    """The spatial shape of a 4-D ``[X, Y, Z, C]`` file (trailing singletons beyond the fourth
    dimension dropped) that has a channel ``index``."""
    dims = list(shape)
    while len(dims) > 4 and dims[-1] == 1:
        dims.pop()
    shown = tuple(int(d) for d in shape)
    if len(dims) != 4:
        raise DataError(f"{path}: channel {index} asked for, but the file is not a 4-D image [X, Y, Z, C]: "
                        f"shape {shown}")
    if index >= dims[3]:
        raise DataError(f"{path}: channel {index} asked for, but the file has {dims[3]} channels "
                        f"(shape {shown}; channels are numbered from 0)")
    return tuple(int(d) for d in dims[:3])


def _shape_of(path: Path, shape: tuple[int, ...], channel: int | None) -> tuple[int, int, int]:
    return _spatial_shape(path, shape) if channel is None else _channel_shape(path, shape, channel)


def _check_affine(path: Path, affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise DataError(f"{path}: the affine (qform/sform) contains non-finite values")
    linear = affine[:3, :3]
    scale = float(np.max(np.abs(linear)))
    if scale == 0.0 or abs(np.linalg.det(linear)) <= 1e-12 * scale**3:
        raise DataError(f"{path}: the affine (qform/sform) is not invertible: {np.round(affine, 4).tolist()}")
    return affine


def read_header_only(path: str | os.PathLike) -> tuple[tuple[int, int, int], np.ndarray, tuple[float, float, float]]:
    """Cheap check of a NIfTI file (or :class:`Channel` of a 4-D file) without reading its voxels.

    Returns ``(shape, affine, zooms)``: the 3-D shape (trailing singleton dimensions dropped), the
    4x4 affine and the header's three spatial voxel sizes. Raises :class:`DataError` when the file
    is missing, not NIfTI, declares more than :data:`MAX_DECLARED_VOXELS` voxels (or, ``.nii``,
    more voxel bytes than the file holds), is not 3-D (for a :class:`Channel`: not 4-D or without
    that channel) or has a non-invertible affine. A ``.nii.gz`` truncated in its voxel data passes
    this check; :func:`load_volume` catches that.
    """
    channel = path.index if isinstance(path, Channel) else None
    path, img = _open_nifti(path)
    shape, affine = _shape_of(path, img.shape, channel), _check_affine(path, img.affine)
    return shape, affine, tuple(float(z) for z in img.header.get_zooms()[:3])


def _inverse_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform undoing ``ornt`` (``apply_orientation`` semantics)."""
    ornt = np.asarray(ornt, dtype=float)
    inv = np.empty_like(ornt)
    for in_axis, (out_axis, flip) in enumerate(ornt):
        inv[int(out_axis)] = (in_axis, flip)
    return inv


def _resample_map(old_shape, new_shape, old_spacing, new_spacing) -> tuple[np.ndarray, np.ndarray]:
    old_shape, new_shape, old_spacing, new_spacing = (
        np.asarray(v, dtype=np.float64) for v in (old_shape, new_shape, old_spacing, new_spacing))
    s = new_spacing / old_spacing
    return s, (old_shape - 1.0) / 2.0 - s * (new_shape - 1.0) / 2.0


def _affine_resample(array: np.ndarray, scale: np.ndarray, offset: np.ndarray, out_shape, order: int) -> np.ndarray:
    """out[j] = array[scale * j + offset] on the first three axes, per trailing channel."""
    if array.dtype == np.bool_:
        return _affine_resample(array.astype(np.uint8), scale, offset, out_shape, order).astype(np.bool_)
    out_shape = tuple(int(v) for v in out_shape)

    def one(vol: np.ndarray) -> np.ndarray:
        return ndimage.affine_transform(vol, scale, offset=offset, output_shape=out_shape, order=order, mode="nearest")

    if array.ndim == 3:
        return one(array)
    channels = array.reshape(array.shape[:3] + (-1,))
    out = np.stack([one(channels[..., c]) for c in range(channels.shape[-1])], axis=-1)
    return out.reshape(out_shape + array.shape[3:])


def _check_order(order: int) -> int:
    if int(order) != order or not 0 <= order <= 5:
        raise ValueError(f"interpolation order must be an integer in 0..5, got {order!r}")
    return int(order)


def _cast(array: np.ndarray, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer) and np.issubdtype(array.dtype, np.floating):
        array = np.rint(array)
    return array.astype(dtype, copy=False)


def load_volume(
    path: str | os.PathLike,
    axcodes: Sequence[str] | None = None,
    pixdim: Sequence[float] | None = None,
    interp_order: int = 1,
    dtype=np.float32,
    nan_policy: str = "error",
) -> tuple[np.ndarray, VolumeGeometry]:
    """Read a 3-D NIfTI volume onto the working grid.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file, or a :class:`Channel` of a 4-D one (read like a 3-D
            file; the geometry's ``path`` is the file, ``channel`` the index).
        axcodes: target axis codes, e.g. ``("R", "A", "S")``; ``None`` keeps the file's axes.
        pixdim: target voxel size (3 values, header units); ``None`` keeps the file's voxel size.
            Resampling happens only when some axis differs by more than 1e-3 relative (see the
            module docstring for the centre-aligned convention).
        interp_order: spline order used for resampling (0 for labels, 1 for images).
        dtype: dtype of the returned array (scl_slope/scl_inter already applied; float -> integer
            casts round to nearest).
        nan_policy: ``"error"`` raises on NaN/Inf voxels; ``"zero"`` replaces them with 0 and logs
            a warning.

    Returns:
        ``(array, geometry)``: the array on the working grid (3-D) and what is needed to undo it.

    Raises:
        DataError: missing / unreadable / truncated file, a header declaring more than
            :data:`MAX_DECLARED_VOXELS` voxels or more than the file holds (checked before reading),
            not 3-D (a :class:`Channel`: not 4-D or no such channel), RGB or complex voxels,
            non-finite voxels under ``nan_policy="error"``, non-invertible affine, a resampled
            grid of more than 1024^3 voxels (a wrong voxel size in the header).
    """
    if nan_policy not in ("error", "zero"):
        raise ValueError(f"nan_policy must be 'error' or 'zero', got {nan_policy!r}")
    order = _check_order(interp_order)
    channel = path.index if isinstance(path, Channel) else None
    path, img = _read_nifti(path, cached=channel is not None)
    where = path if channel is None else Channel(path, channel)  # names the volume in messages
    shape = _shape_of(path, img.shape, channel)
    affine = _check_affine(path, img.affine)
    try:
        data = np.asanyarray(img.dataobj if channel is None else img.dataobj[:, :, :, channel])
    except _READ_ERRORS as exc:
        raise DataError(f"{where}: cannot read the voxel data (truncated or corrupt file?): {_one_line(exc)}") from exc
    data = np.asarray(data).reshape(shape)
    if data.dtype.fields is not None or not (np.issubdtype(data.dtype, np.integer)
                                             or np.issubdtype(data.dtype, np.floating) or data.dtype == np.bool_):
        raise DataError(f"{where}: voxels of type {data.dtype} (NIfTI datatype {int(img.header['datatype'])}); "
                        "expected a grey-level image of real numbers (not RGB or complex)")

    if np.issubdtype(data.dtype, np.inexact):
        bad = ~np.isfinite(data)
        n_bad = int(np.count_nonzero(bad))
        if n_bad:
            if nan_policy == "error":
                raise DataError(f"{where}: contains {n_bad} non-finite voxels (NaN/Inf); "
                                "fix the file or use nan_policy='zero'")
            logger.warning("%s: replaced %d non-finite voxels (NaN/Inf) with 0", where, n_bad)
            data = np.where(bad, 0, data)
    data = _cast(data, dtype)

    # 1. reorientation: exact permutation / flips
    if axcodes is None:
        ornt = _IDENTITY_ORNT.copy()
    else:
        codes = tuple(axcodes)
        if len(codes) != 3:
            raise ValueError(f"axcodes must have 3 letters, got {codes!r}")
        ornt = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(codes))
    if not np.array_equal(ornt, _IDENTITY_ORNT):
        data = nio.apply_orientation(data, ornt)
    reoriented_affine = affine @ nio.inv_ornt_aff(ornt, shape)
    reoriented_shape = tuple(int(v) for v in data.shape)
    spacing = tuple(float(v) for v in nib.affines.voxel_sizes(reoriented_affine))

    # 2. resampling: centre-aligned grids (module docstring)
    resampled = False
    working_affine = reoriented_affine
    if pixdim is not None:
        target = tuple(float(v) for v in pixdim)
        if len(target) != 3 or not all(np.isfinite(v) and v > 0 for v in target):
            raise ValueError(f"pixdim must be 3 positive numbers, got {tuple(pixdim)!r}")
        if any(abs(o - n) > _RESAMPLE_RTOL * n for o, n in zip(spacing, target)):
            new_shape = tuple(max(1, int(round(n * o / p))) for n, o, p in zip(reoriented_shape, spacing, target))
            if math.prod(new_shape) > _MAX_RESAMPLED_VOXELS:
                raise DataError(
                    f"{where}: resampling voxel size {tuple(round(v, 6) for v in spacing)} to pixdim {target} would "
                    f"make a grid of {new_shape} voxels (more than {_MAX_RESAMPLED_VOXELS}); check the file's "
                    f"voxel size (header pixdim / affine) and the configured pixdim")
            s, t = _resample_map(reoriented_shape, new_shape, spacing, target)
            data = _affine_resample(data, s, t, new_shape, order)
            working_affine = reoriented_affine @ nib.affines.from_matvec(np.diag(s), t)
            spacing = target
            resampled = True
            logger.debug("%s: resampled %s -> %s voxels", where, reoriented_shape, new_shape)

    original_affine, working_affine = affine.copy(), np.array(working_affine, dtype=np.float64)
    for arr in (original_affine, ornt, working_affine):
        arr.setflags(write=False)
    header = img.header.copy()
    if channel is not None:  # the geometry of one 3-D channel: outputs are 3-D files
        header.set_data_shape(shape)
        header.set_intent("none")
    geom = VolumeGeometry(path=str(path), original_shape=shape, original_affine=original_affine,
                          header=header, orientation=ornt, working_spacing=spacing,
                          working_shape=tuple(int(v) for v in data.shape[:3]), working_affine=working_affine,
                          resampled=resampled, channel=channel)
    return np.ascontiguousarray(data), geom


def to_original_grid(array: np.ndarray, geom: VolumeGeometry, interp_order: int = 0) -> np.ndarray:
    """Map an array on the working grid back onto the file's voxel grid.

    ``array`` is 3-D (``geom.working_shape``) or has extra trailing (channel) axes. The inverse
    resampling samples the working array at the exact pre-image of every original voxel centre
    (module docstring) with spline order ``interp_order`` (0 for labels); then the reorientation is
    undone exactly. Without resampling the round trip ``load_volume -> to_original_grid`` is the
    identity, bit for bit. The dtype is kept.
    """
    order = _check_order(interp_order)
    array = np.asarray(array)
    if array.ndim < 3 or tuple(array.shape[:3]) != tuple(geom.working_shape):
        raise ValueError(f"array of shape {array.shape} is not on the working grid {geom.working_shape} of {geom.path}")
    if geom.resampled:
        s, t = geom.resample_map()
        array = _affine_resample(array, 1.0 / s, -t / s, geom.reoriented_shape, order)
    if not np.array_equal(geom.orientation, _IDENTITY_ORNT):
        array = nio.apply_orientation(array, _inverse_ornt(geom.orientation))
    return np.ascontiguousarray(array)


def image_like(array: np.ndarray, geom: VolumeGeometry, dtype=None, interp_order: int = 0):
    """An array computed on the working grid as an in-memory NIfTI image aligned with the original
    file: :func:`to_original_grid` (order ``interp_order``), cast to ``dtype`` (default: the
    array's; float -> integer rounds to nearest, out-of-range values raise ``ValueError``), the
    original affine and a copy of the original header (qform/sform codes, units, zooms kept;
    scl_slope/scl_inter reset so the stored values are the values)."""
    data = to_original_grid(array, geom, interp_order=interp_order)
    out_dtype = np.dtype(dtype) if dtype is not None else data.dtype
    if out_dtype == np.bool_:
        out_dtype = np.dtype(np.uint8)
    if np.issubdtype(out_dtype, np.integer) and data.size:
        info = np.iinfo(out_dtype)
        lo, hi = float(np.min(data)), float(np.max(data))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < info.min or hi > info.max:
            raise ValueError(f"values in [{lo}, {hi}] do not fit {out_dtype} (grid of {geom.path})")
    data = _cast(data, out_dtype)

    header = geom.header.copy()
    header.set_data_dtype(out_dtype)
    header.set_slope_inter(np.nan, np.nan)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = image_class(data, np.asarray(geom.original_affine), header=header)
    img.set_data_dtype(out_dtype)
    return img


def save_like(
    array: np.ndarray,
    geom: VolumeGeometry,
    path: str | os.PathLike,
    dtype=None,
    interp_order: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write an array computed on the working grid as a NIfTI aligned with the original file
    (:func:`image_like`).

    The file is written to a temporary name in the destination folder and moved into place with
    ``os.replace``, so a failure never leaves a half-written output. Parent folders are created.

    Raises:
        DataError: ``path`` exists and ``overwrite`` is false, or ``path`` does not end in
            ``.nii`` / ``.nii.gz``.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise DataError(f"{path}: output file name must end in .nii or .nii.gz")
    if path.exists() and not overwrite:
        raise DataError(f"{path}: output already exists; pass --overwrite to replace it")
    img = image_like(array, geom, dtype=dtype, interp_order=interp_order)

    # A hidden sibling with the same suffix (nibabel picks gzip from it); created by nib.save so it
    # gets the usual umask permissions (mkstemp would make it 0600).
    with atomic_path(path) as tmp_name:
        nib.save(img, tmp_name)
    logger.debug("wrote %s", path)
    return path
