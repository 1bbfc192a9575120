"""Subjects and splits, with NiftyNet's semantics.

**Discovery.** Each INI input section (``[T1]``, ``[label]``, ...) becomes an :class:`InputSpec`.
Its files are either listed in ``csv_file`` (``subject_id,path`` rows, NiftyNet's format; used when
the file exists) or found by searching every folder of ``path_to_search`` recursively for
``*.nii`` / ``*.nii.gz`` (hidden files and folders, e.g. macOS ``._*`` files, are skipped). A file
belongs to a section when its name without extension contains *all* ``filename_contains``
substrings and *none* of ``filename_not_contains`` (case-sensitive, as in NiftyNet). Its subject id
is that name with every ``filename_contains`` substring removed, then the
``filename_removefromid`` regex removed, then stripped of leading/trailing ``_ - .`` and spaces,
then made safe by :func:`safe_subject_id`::

    Brats18_TCIA01_131_1_t1.nii.gz   contains "_t1", not "_t1ce"  -> Brats18_TCIA01_131_1
    HGG100_T1.nii.gz                 contains "T1",  not "T1c"    -> HGG100

**Splits.** A NiftyNet split file is a header-less CSV ``subject_id,Training|Validation|Inference``.
:func:`load_or_create_split` reads it when it exists and otherwise creates it from the two
exclusion fractions with a seeded shuffle.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uhved_tf.errors import DataError
from uhved_tf.io.atomic import atomic_write_text, check_folder
from uhved_tf.io.nifti import NIFTI_SUFFIXES

logger = logging.getLogger(__name__)

__all__ = ["PHASES", "InputSpec", "Subject", "find_subjects", "load_or_create_split", "safe_subject_id", "subjects_in"]

PHASES = ("Training", "Validation", "Inference")
_PHASE_BY_LOWER = {p.lower(): p for p in PHASES}
_ID_STRIP = "_-. "
_MAX_ID_BYTES = 200  # ids become file names; leaves room for a suffix within the usual 255-byte limit
_MAX_LISTED = 20


@dataclass(frozen=True)
class InputSpec:
    """What discovery needs from one INI input section (the config module builds these)."""

    name: str
    path_to_search: tuple[Path, ...] = ()
    filename_contains: tuple[str, ...] = ()
    filename_not_contains: tuple[str, ...] = ()
    filename_removefromid: str = ""
    csv_file: str = ""


@dataclass(frozen=True)
class Subject:
    """One subject: its (safe) id and one file per section it has."""

    id: str
    files: dict[str, Path] = field(default_factory=dict)


def listing(ids: Iterable[str]) -> str:
    ids = list(ids)
    shown = ", ".join(ids[:_MAX_LISTED])
    return shown + (f", ... ({len(ids) - _MAX_LISTED} more)" if len(ids) > _MAX_LISTED else "")


def safe_subject_id(raw: str) -> str:
    """Make a subject id safe to use as (the start of) a file name.

    Every character other than letters, digits, ``_``, ``-`` and ``.`` (path separators, ``%``,
    spaces, control characters, ...) becomes ``_``; every run of two or more dots becomes ``_``;
    leading/trailing ``_ - .`` are stripped (no hidden files, nothing that looks like an option).
    The result never contains a path separator or ``..``, so ``Path(out) / f"{id}_seg.nii.gz"``
    stays inside ``out``. Idempotent.

    Raises:
        DataError: the id is empty after sanitising, or longer than 200 bytes.
    """
    text = unicodedata.normalize("NFC", str(raw))
    text = re.sub(r"[^\w.\-]", "_", text, flags=re.UNICODE)
    text = re.sub(r"\.{2,}", "_", text)
    text = text.strip(_ID_STRIP)
    if not text:
        raise DataError(f"subject id {raw!r} is empty once unsafe characters are removed; rename the file")
    if len(text.encode("utf-8")) > _MAX_ID_BYTES:
        raise DataError(f"subject id {text[:40]!r}... is longer than {_MAX_ID_BYTES} bytes; "
                        "use filename_removefromid to shorten it")
    return text


def strip_nifti_suffix(name: str) -> str | None:
    return next((name[: -len(suffix)] for suffix in NIFTI_SUFFIXES if name.lower().endswith(suffix)), None)


def walk_nifti(folder: Path) -> list[Path]:
    """All non-hidden ``*.nii`` / ``*.nii.gz`` files under ``folder``, recursively, sorted.

    Symlinked folders are followed once each (guarded against loops).
    """
    found: list[Path] = []
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and strip_nifti_suffix(name) is not None:
                found.append(Path(root) / name)
    return found


def _describe_filter(spec: InputSpec) -> str:
    parts = []
    if spec.filename_contains:
        parts.append("contains " + " and ".join(repr(c) for c in spec.filename_contains))
    if spec.filename_not_contains:
        parts.append("not " + " nor ".join(repr(c) for c in spec.filename_not_contains))
    return " and ".join(parts) if parts else "is any NIfTI file"


def _matches(spec: InputSpec, stem: str) -> bool:
    contains, not_contains = spec.filename_contains, spec.filename_not_contains
    return all(c in stem for c in contains) and not any(c and c in stem for c in not_contains)


def _id_from_name(spec: InputSpec, stem: str, regex: re.Pattern | None) -> str:
    raw = stem
    for sub in spec.filename_contains:
        raw = raw.replace(sub, "")  # replacing "" is a no-op
    return (regex.sub("", raw) if regex is not None else raw).strip(_ID_STRIP)


def subject_id_for_file(spec: InputSpec, path) -> str:
    """The subject id of a single file given on the command line: the section's
    ``filename_contains`` parts (and ``filename_removefromid``) removed when the name matches the
    section's filters, else the file name without its extension; always sanitised."""
    name = Path(path).name
    stem = strip_nifti_suffix(name) or name
    raw = _id_from_name(spec, stem, re.compile(spec.filename_removefromid) if spec.filename_removefromid
                        else None) if _matches(spec, stem) else stem
    return safe_subject_id(raw or stem)


def _add(section: str, table: dict[str, Path], subject_id: str, path: Path, hint: str) -> None:
    if subject_id in table:
        raise DataError(f"[{section}]: {table[subject_id]} and {path} give the same subject id {subject_id!r}; {hint}")
    table[subject_id] = path


def _sanitised(section: str, raw: str, where: str) -> str:
    if not raw:
        raise DataError(f"[{section}]: {where} gives an empty subject id; "
                        "adjust filename_contains/filename_removefromid")
    try:
        safe = safe_subject_id(raw)
    except DataError as exc:
        raise DataError(f"[{section}]: {where}: {exc}") from exc
    if safe != raw:
        logger.warning("[%s]: subject id %r from %s made file-name safe as %r", section, raw, where, safe)
    return safe


def _csv_rows(path: Path, cannot_read: str) -> Iterator[tuple[int, list[str]]]:
    """The non-blank rows of a CSV file (cells stripped) with their 1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{cannot_read} {path}: {exc}") from exc
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        row = [cell.strip() for cell in row]
        if any(row):
            yield line_no, row


def _files_from_csv(spec: InputSpec, csv_path: Path) -> dict[str, Path]:
    table: dict[str, Path] = {}
    for line_no, row in _csv_rows(csv_path, f"[{spec.name}]: cannot read csv_file"):
        if len(row) < 2 or not row[0] or not row[1]:
            raise DataError(
                f"[{spec.name}]: {csv_path} line {line_no}: expected 'subject_id,path', got {','.join(row)!r}"
            )
        file_path = Path(row[1]).expanduser()
        if not file_path.is_absolute():
            file_path = csv_path.parent / file_path
        if not file_path.is_file():
            raise DataError(f"[{spec.name}]: {csv_path} line {line_no}: file {file_path} not found")
        subject_id = _sanitised(spec.name, row[0], f"{csv_path} line {line_no}")
        _add(spec.name, table, subject_id, file_path, f"each id must appear once in {csv_path}")
    if not table:
        raise DataError(f"[{spec.name}]: csv_file {csv_path} lists no files")
    logger.info("[%s]: %d files listed in %s", spec.name, len(table), csv_path)
    return table


def _files_from_search(spec: InputSpec, cache: dict[Path, list[Path]], required: bool) -> dict[str, Path]:
    if not spec.path_to_search:
        raise DataError(f"[{spec.name}]: no path_to_search (and no existing csv_file) to find its files")
    regex = None
    if spec.filename_removefromid:
        try:
            regex = re.compile(spec.filename_removefromid)
        except re.error as exc:
            raise DataError(
                f"[{spec.name}]: filename_removefromid {spec.filename_removefromid!r} is not a valid regex: {exc}"
            ) from exc
    candidates: list[Path] = []
    for folder in spec.path_to_search:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise DataError(f"[{spec.name}]: path_to_search folder {folder} does not exist or is not a folder")
        if folder not in cache:
            cache[folder] = walk_nifti(folder)
        candidates.extend(cache[folder])

    table: dict[str, Path] = {}
    for path in candidates:
        stem = strip_nifti_suffix(path.name)
        if not _matches(spec, stem):
            continue
        subject_id = _sanitised(spec.name, _id_from_name(spec, stem, regex), str(path))
        if subject_id in table and table[subject_id].resolve() == path.resolve():
            continue  # the same file reached through two search folders
        _add(spec.name, table, subject_id, path,
             "make filename_contains / filename_not_contains / filename_removefromid more specific")
    if not table:
        folders = ", ".join(str(Path(f).expanduser()) for f in spec.path_to_search)
        message = (f"[{spec.name}]: no file under {folders} whose name {_describe_filter(spec)} "
                   f"(searched {len(candidates)} NIfTI files)")
        if required:
            raise DataError(message)
        logger.warning("%s; the section stays empty", message)
    else:
        logger.info("[%s]: %d files found", spec.name, len(table))
    return table


def find_subjects(specs: Sequence[InputSpec], required: Sequence[str], optional: Sequence[str] = (),
                  incomplete: dict[str, list[str]] | None = None) -> list[Subject]:
    """Find the subjects that have a file in every ``required`` section.

    ``optional`` sections are filled where present. With no ``required`` section (e.g. inference
    from any subset of modalities), every id found in some optional section is a subject. Subjects
    are sorted by id. A subject missing a required section is dropped with a warning; with
    ``incomplete`` (a dict, filled here) ``{id: [required sections without a file]}`` of each
    dropped subject is kept, so a later message (the split's) can say what is missing.

    Raises:
        DataError: a search folder does not exist; a required section matches no file; two files
            of one section give the same id; a csv_file is malformed; no subject has every
            required section.
        ValueError: a name in ``required``/``optional`` has no spec (a programming error).
    """
    by_name: dict[str, InputSpec] = {}
    for spec in specs:
        if spec.name in by_name:
            raise ValueError(f"two input specs are named {spec.name!r}")
        by_name[spec.name] = spec
    wanted = list(dict.fromkeys([*required, *optional]))
    missing = [n for n in wanted if n not in by_name]
    if missing:
        raise ValueError(f"no input spec for sections {missing}; known: {sorted(by_name)}")
    if not wanted:
        raise ValueError("find_subjects needs at least one required or optional section")
    overlap = set(required) & set(optional)
    if overlap:
        raise ValueError(f"sections {sorted(overlap)} are both required and optional")

    cache: dict[Path, list[Path]] = {}
    tables: dict[str, dict[str, Path]] = {}
    for name in wanted:
        spec = by_name[name]
        csv_path = Path(spec.csv_file).expanduser() if spec.csv_file else None
        if csv_path is not None and csv_path.is_file():
            tables[name] = _files_from_csv(spec, csv_path)
        else:
            if csv_path is not None:
                logger.info("[%s]: csv_file %s not found; searching path_to_search", name, csv_path)
            tables[name] = _files_from_search(spec, cache, required=name in required)

    all_ids = set().union(*(set(t) for t in tables.values()))
    if required:
        ids = set.intersection(*(set(tables[n]) for n in required))
        for name in required:
            dropped = sorted(all_ids - set(tables[name]))
            if dropped:
                logger.warning("%d subjects have no %s file: %s", len(dropped), name, listing(dropped))
            for i in dropped if incomplete is not None else ():
                incomplete.setdefault(i, []).append(name)
        if not ids:
            counts = "; ".join(f"[{n}] has {len(tables[n])} ids (e.g. {listing(sorted(tables[n])[:3])})"
                               for n in required)
            raise DataError(f"no subject has a file in every required section {list(required)}: {counts}")
    else:
        ids = all_ids
        if not ids:
            raise DataError(f"no file found in any of the sections {list(optional)}")

    subjects = [Subject(id=i, files={n: tables[n][i] for n in wanted if i in tables[n]}) for i in sorted(ids)]
    per_section = ", ".join(f"{n}: {sum(n in s.files for s in subjects)}" for n in wanted)
    logger.info("found %d subjects (files per section: %s)", len(subjects), per_section)
    return subjects


def _read_split(split_file: Path, subject_ids: list[str], incomplete: Mapping[str, Sequence[str]] | None = None,
                trained_model=None) -> dict[str, str]:
    split: dict[str, str] = {}
    for line_no, row in _csv_rows(split_file, "cannot read split file"):
        phase = _PHASE_BY_LOWER.get(row[1].lower()) if len(row) == 2 else None
        if phase is None or not row[0]:
            raise DataError(
                f"split file {split_file} line {line_no}: expected 'subject_id,Training|Validation|Inference', "
                f"got {','.join(row)!r}"
            )
        if split.get(row[0], phase) != phase:
            raise DataError(
                f"split file {split_file} line {line_no}: subject {row[0]!r} is listed as both "
                f"{split[row[0]]} and {phase}"
            )
        split[row[0]] = phase
    unknown = sorted(set(split) - set(subject_ids))
    if unknown:
        raise DataError(_unknown_subjects_message(split_file, unknown, incomplete or {}, trained_model))
    absent = [i for i in subject_ids if i not in split]
    if absent:
        logger.warning("%d subjects are not in split file %s; using them for Training: %s",
                       len(absent), split_file, listing(absent))
        split.update(dict.fromkeys(absent, "Training"))
    return {i: split[i] for i in sorted(split)}


def _subjects(n: int) -> str:
    return f"{n} subject" + ("" if n == 1 else "s")


def _unknown_subjects_message(split_file: Path, unknown: list[str], incomplete: Mapping[str, Sequence[str]],
                              trained_model) -> str:
    """Subjects of the split that this command cannot use: those found without a file it needs
    (``incomplete``: id -> sections) and those not found at all. The split of a trained model
    must be kept (a new one would move its training subjects into the test sets)."""
    lacking = [i for i in unknown if i in incomplete]
    absent = [i for i in unknown if i not in incomplete]
    parts = []
    if lacking:
        by_section: dict[str, list[str]] = {}
        for i in lacking:
            for section in incomplete[i]:
                by_section.setdefault(section, []).append(i)
        what = "; ".join(f"no [{section}] file for {listing(ids)}" for section, ids in by_section.items())
        parts.append(f"{_subjects(len(lacking))} whose files are missing ({what})")
    if absent:
        parts.append(f"{_subjects(len(absent))} that {'was' if len(absent) == 1 else 'were'} not found: "
                     f"{listing(absent)}")
    restore = "restore the missing files, or point the config's input sections (path_to_search / csv_file) at them"
    if trained_model is not None:
        fix = (f"{restore}; keep the split file: the model in {trained_model} was trained with it, and a new split "
               "would mix its training subjects into the test sets")
    elif lacking:
        fix = restore
    else:
        fix = "fix the file, or delete it to create a new split"
    return f"split file {split_file} lists {' and '.join(parts)}; {fix}"


def _split_counts(n: int, fraction_val: float, fraction_inf: float) -> tuple[int, int]:
    def count(fraction: float) -> int:
        k = int(round(n * fraction))
        return max(k, 1) if fraction > 0 and n >= 2 else k

    n_val, n_inf = count(fraction_val), count(fraction_inf)
    # Keep at least one training subject unless the fractions leave none on purpose.
    limit = n if fraction_val + fraction_inf >= 1 else n - 1
    while n_val + n_inf > limit:  # shrink the larger group; on a tie keep Validation
        n_val, n_inf = (n_val - 1, n_inf) if n_val > n_inf else (n_val, n_inf - 1)
    return n_val, n_inf


def load_or_create_split(
    subject_ids: Sequence[str],
    split_file: str | os.PathLike,
    exclude_fraction_for_validation: float,
    exclude_fraction_for_inference: float,
    seed: int,
    fold: int = 0,
    incomplete: Mapping[str, Sequence[str]] | None = None,
    trained_model: str | os.PathLike | None = None,
) -> dict[str, str]:
    """Return ``{subject_id: "Training" | "Validation" | "Inference"}`` sorted by id.

    If ``split_file`` exists it is read (header-less ``id,phase`` CSV, phase names
    case-insensitive); subjects missing from it are used for Training (with a warning). Otherwise
    the split is drawn: the sorted ids are shuffled with ``numpy.random.default_rng(seed)``; the
    first ``round(n * fraction_for_validation)`` go to Validation, the next
    ``round(n * fraction_for_inference)`` to Inference, the rest to Training. A fraction > 0 gives at
    least one subject when there are at least 2 subjects, and at least one subject stays in
    Training unless the fractions add up to 1. The new file is written atomically. With ``fold``
    (1, 2, 3) the split is :func:`draw_split`'s for that fold, and an existing file must be it.

    For the message when the file lists subjects not in ``subject_ids``: ``incomplete`` (id ->
    sections, :func:`find_subjects`) names the files those subjects lack, and ``trained_model``
    (the folder of the model trained with this split) says the split must be kept.

    Raises:
        DataError: the file is malformed, names subjects that were not found (or lack a file),
            there are no subjects to split, or the split file's folder is a file.
        ValueError: a fraction outside [0, 1] or fractions adding up to more than 1.
    """
    split_file = Path(split_file).expanduser()
    ids = [str(i) for i in subject_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("subject_ids contains duplicates")
    ids.sort()
    if split_file.is_file() and not fold:
        split = _read_split(split_file, ids, incomplete, trained_model)
        logger.info("using split file %s (%s)", split_file, _phase_counts(split))
        return split

    fv, fi = float(exclude_fraction_for_validation), float(exclude_fraction_for_inference)
    for label, value in (("exclude_fraction_for_validation", fv), ("exclude_fraction_for_inference", fi)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{label} must be in [0, 1], got {value}")
    if fv + fi > 1.0 + 1e-9:
        raise ValueError(f"exclude fractions add up to {fv + fi:g} > 1")
    if not ids:
        raise DataError(f"cannot create split file {split_file}: there are no subjects")
    split = draw_split(ids, fv, fi, seed, fold)
    if split_file.is_file():
        listed = [row[0] for _, row in _csv_rows(split_file, "cannot read split file")]
        existing = _read_split(split_file, ids, incomplete, trained_model)
        if {i: existing[i] for i in listed} != draw_split(listed, fv, fi, seed, fold):
            raise DataError(f"split file {split_file} is not the split of fold {fold} (seed {seed}) of the "
                            f"{len(listed)} subjects it lists: this model folder belongs to another fold or data; give each "
                            f"fold its own model_dir (e.g. --set SYSTEM.model_dir=models/fold{fold})")
        logger.info("using split file %s (%s)", split_file, _phase_counts(existing))
        return existing
    check_folder(split_file.parent, f"cannot write split file {split_file}: its folder")
    atomic_write_text(split_file, "".join(f"{i},{p}\n" for i, p in split.items()))
    logger.info("created split file %s (%s, seed %d%s)", split_file, _phase_counts(split), seed,
                f", fold {fold}" if fold else "")
    return split


def draw_split(ids: Sequence[str], fraction_val: float, fraction_inf: float, seed: int, fold: int = 0) -> dict:
    """``{id: phase}`` drawn with a seeded shuffle of the sorted ids (NumPy's PCG64: the same on
    every machine). ``fold`` 0: Validation, then Inference, then Training in shuffled order. Fold
    k (1, 2, 3: the paper's 3-fold protocol): the shuffled ids are a ring; fold k's Inference part
    starts at (k - 1) x its size, so the test parts of the folds do not overlap (while 3 x
    fraction_inf <= 1), and its Validation part follows it."""
    ids = sorted(ids)
    n_val, n_inf = _split_counts(len(ids), fraction_val, fraction_inf)
    order = np.random.default_rng(seed).permutation(len(ids))
    phases = ["Validation"] * n_val + ["Inference"] * n_inf + ["Training"] * (len(ids) - n_val - n_inf)
    if fold:
        phases = ["Inference"] * n_inf + ["Validation"] * n_val + ["Training"] * (len(ids) - n_val - n_inf)
        order = np.roll(order, -(fold - 1) * n_inf)
    by_id = {ids[index]: phases[rank] for rank, index in enumerate(order)}
    return {i: by_id[i] for i in ids}


def _phase_counts(split: dict[str, str]) -> str:
    return ", ".join(f"{p}: {sum(v == p for v in split.values())}" for p in PHASES)


def subjects_in(split: dict[str, str], phase: str) -> list[str]:
    """Sorted ids of the subjects in ``phase`` (case-insensitive ``Training|Validation|Inference``)."""
    canonical = _PHASE_BY_LOWER.get(str(phase).lower())
    if canonical is None:
        raise ValueError(f"unknown phase {phase!r}; expected one of {PHASES}")
    return sorted(i for i, p in split.items() if p == canonical)
