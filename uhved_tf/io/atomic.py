"""Atomic writes: the one way this package replaces a file.

Everything is first written to a hidden temporary sibling (same folder, so ``os.replace`` is an
atomic rename on the same file system) and moved over the target only when complete: an
interrupted run, a full disk or a crash never leaves a half-written file under a real name, and an
earlier version stays intact until the new one is whole. The temporary name keeps the target's
suffix (``.nii.gz``, ``.csv``), so format detection by extension (nibabel) still works, and starts
with a dot, so it matches no input pattern.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path


def full_suffix(path: Path) -> str:
    """``.nii.gz`` for a gzipped NIfTI, else the last suffix."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix


def temporary_sibling(path, tag: str = "tmp") -> Path:
    """A fresh hidden name next to ``path`` with the same suffix: ``.<stem>.<random>.<tag><suffix>``."""
    path = Path(path)
    suffix = full_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.parent / f".{stem}.{uuid.uuid4().hex[:12]}.{tag}{suffix}"


def check_folder(path, what: str) -> Path:
    """``path`` as a folder to write into: one already, or one that can be created (no file in the
    way). Else a one-line :class:`~uhved_tf.errors.DataError` naming ``what`` (``-o``, ``[SYSTEM]
    model_dir``) and the file in the way. Nothing is created."""
    from uhved_tf.errors import DataError

    path = Path(path)
    for existing in (path, *path.parents):
        if existing.is_dir():
            return path
        if existing.exists() or existing.is_symlink():
            kind = "a file" if existing.exists() else "a broken link"
            if existing == path:
                raise DataError(f"{what} {path} is {kind}, not a folder; give a folder (it is created if missing)")
            raise DataError(f"{what} {path} cannot be created: {existing} is {kind}, not a folder")
    return path


@contextmanager
def atomic_path(path, fsync: bool = False):
    """Yield a temporary path to write; on success it replaces ``path`` atomically, on any error it
    is removed and ``path`` is left as it was. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if fsync and tmp.exists():
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_text(path, text: str, encoding: str = "utf-8", fsync: bool = False) -> Path:
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "w", encoding=encoding, newline="\n") as f:
            f.write(text)
    return Path(path)


def atomic_write_csv(path, header, rows) -> Path:
    """``header`` then ``rows`` (sequences) as CSV, atomically."""
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    return atomic_write_text(path, buf.getvalue())
