"""Dataset layouts: a dataset folder as it is distributed, turned into subjects.

``[DATASET] path = FOLDER`` with ``[DATASET] convention = LAYOUT``, one of :data:`LAYOUTS`:

=============  ==========================================================================================
layout         files
=============  ==========================================================================================
``brats2018``  BraTS 2018-2021, anywhere under FOLDER: ``<id>_t1.nii.gz``, ``<id>_t1ce``, ``<id>_t2``,
               ``<id>_flair``, label ``<id>_seg`` (the last ``_``-separated token names the file's
               role); output ``<id>_seg.nii.gz``
``brats2023``  BraTS 2023-2024 (GLI and the challenges named alike), anywhere under FOLDER:
               ``<id>-t1n.nii.gz``, ``<id>-t1c``, ``<id>-t2w``, ``<id>-t2f``, label ``<id>-seg``
               (last ``-``-separated token); output ``<id>-seg.nii.gz``
``msd``        Medical Segmentation Decathlon task (``Task01_BrainTumour``): ``dataset.json``,
               ``imagesTr/<id>.nii.gz`` (4-D, one channel per modality, named by dataset.json's
               ``modality``), ``labelsTr/<id>.nii.gz``, optional ``imagesTs/``; output ``<id>.nii.gz``
``nnunet``     nnU-Net raw dataset (``DatasetNNN_Name``; v1 ``TaskNNN_Name`` too): ``dataset.json``
               (``channel_names`` or v1 ``modality``, ``labels``, ``file_ending``),
               ``imagesTr/<id>_0000<file_ending>`` ... one 3-D file per channel,
               ``labelsTr/<id><file_ending>``, optional ``imagesTs/``; output ``<id><file_ending>``
=============  ==========================================================================================

The modality files of a subject are keyed by the configured section names (``[MULTIMODAL]
image``, matched through :func:`uhved_tf.subset.canonical_modality`, so ``T1ce``, ``t1gd`` and
``T1c`` are one modality); a channel of a 4-D MSD image is a :class:`uhved_tf.io.nifti.Channel`.
The channel -> modality map of msd / nnunet comes from ``dataset.json``; ``[DATASET] channels``
(``Flair, T1, T1c, T2``: the modality of channel 0, 1, ...) replaces it. Channels that are no
configured modality are not used. Hidden files (macOS ``._*`` files of the MSD archive) are
skipped. Every problem the user can fix is one :class:`~uhved_tf.errors.DataError` /
:class:`~uhved_tf.errors.ConfigError` line naming the folder or file, what was expected and,
when the folder looks like another layout, which one.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from uhved_tf.convention import PALETTE, PRESETS, Convention
from uhved_tf.errors import ConfigError, DataError, did_you_mean
from uhved_tf.io.discovery import Subject, listing, strip_nifti_suffix, walk_nifti, safe_subject_id
from uhved_tf.io.nifti import NIFTI_SUFFIXES, Channel, read_header_only
from uhved_tf.subset import MODALITY_ALIASES, canonical_modality

logger = logging.getLogger(__name__)

__all__ = ["LAYOUTS", "DatasetCases", "find_cases", "msd_convention_check", "nnunet_convention", "output_name",
           "prediction_id", "read_dataset_json"]

LAYOUTS = ("brats2018", "brats2023", "msd", "nnunet")

_SEG = "\0seg"  # the role of a label file (never a modality name)
#: BraTS layouts: separator before the role token, and token -> canonical modality (or _SEG).
_TOKENS = {
    "brats2018": ("_", {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "flair", "seg": _SEG}),
    "brats2023": ("-", {"t1n": "t1", "t1c": "t1c", "t2w": "t2", "t2f": "flair", "seg": _SEG}),
}
_OUTPUT_SUFFIX = {"brats2018": "_seg", "brats2023": "-seg", "msd": "", "nnunet": ""}
_EXPECTED = {
    "brats2018": "BraTS 2018-2021 files named <id>_t1.nii.gz, <id>_t1ce.nii.gz, <id>_t2.nii.gz, <id>_flair.nii.gz "
                 "and labels <id>_seg.nii.gz (e.g. Brats18_TCIA01_131_1_t1.nii.gz)",
    "brats2023": "BraTS 2023 files named <id>-t1n.nii.gz, <id>-t1c.nii.gz, <id>-t2w.nii.gz, <id>-t2f.nii.gz "
                 "and labels <id>-seg.nii.gz (e.g. BraTS-GLI-00000-000-t1n.nii.gz)",
    "msd": "imagesTr/ and dataset.json of an MSD task (Task01_BrainTumour)",
    "nnunet": "imagesTr/ and dataset.json of an nnU-Net raw dataset (DatasetNNN_Name, images CASE_0000.nii.gz)",
}
_LOOKS_LIKE = {
    "brats2018": "a BraTS 2018-2021 dataset",
    "brats2023": "a BraTS 2023 dataset",
    "msd": "an MSD task (Task01_BrainTumour)",
    "nnunet": "an nnU-Net raw dataset",
}
_DECATHLON_PARTS = ("imagesTr", "imagesTs", "labelsTr", "labelsTs")
_NNUNET_IMAGE = re.compile(r"^(.+)_(\d{4})$")
_GUESS_MAX_FILES = 2000  # how many NIfTI files the "this looks like" hint looks at
_REGION_ALIASES = {
    **dict.fromkeys(("whole tumor", "whole tumour", "wt", "whole"), "whole"),
    **dict.fromkeys(("tumor core", "tumour core", "tc", "core"), "core"),
    **dict.fromkeys(("enhancing tumor", "enhancing tumour", "et", "enhancing"), "enhancing"),
}


@dataclass(frozen=True)
class DatasetCases:
    """The subjects of a dataset folder.

    Attributes:
        subjects: sorted by id; ``files`` maps configured section names (modalities, label) to a
            ``Path`` or a :class:`~uhved_tf.io.nifti.Channel`. A subject may lack some modality or
            its label (a warning was logged); the caller keeps the subjects it can use.
        test_ids: the ids found in ``imagesTs/`` (msd, nnunet): no label, inference only.
        dataset_json: the parsed ``dataset.json`` (msd, nnunet), else ``None``.
        file_ending: the dataset's NIfTI file ending (``dataset.json`` ``file_ending`` of nnunet),
            for :func:`output_name`.
    """

    subjects: list[Subject]
    test_ids: frozenset[str] = frozenset()
    dataset_json: dict | None = None
    file_ending: str = ".nii.gz"


# ------------------------------------------------------------------------------------------- names


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"[DATASET] convention = {layout}: no dataset layout of that name"
                          f"{did_you_mean(layout, LAYOUTS)}; expected one of {', '.join(LAYOUTS)}")
    return layout


def _check_ending(file_ending: str, where: str) -> str:
    if not isinstance(file_ending, str) or file_ending.lower() not in NIFTI_SUFFIXES:
        raise DataError(f"{where}: file_ending {file_ending!r} is not supported; expected .nii.gz or .nii")
    return file_ending


def output_name(layout: str, subject_id: str, file_ending: str = ".nii.gz") -> str:
    """The file name of a subject's segmentation in ``layout``'s convention: ``<id>_seg.nii.gz``
    (brats2018), ``<id>-seg.nii.gz`` (brats2023), ``<id><file_ending>`` (msd, nnunet)."""
    _check_layout(layout)
    _check_ending(file_ending, "output file name")
    if safe_subject_id(subject_id) != subject_id:
        raise ValueError(f"subject id {subject_id!r} is not file-name safe (see safe_subject_id)")
    return f"{subject_id}{_OUTPUT_SUFFIX[layout]}{file_ending}"


def prediction_id(layout: str, file_name: str | os.PathLike) -> str | None:
    """The subject id of a segmentation file: the inverse of :func:`output_name`, also accepting
    ``<id>_seg.nii.gz``, ``<id>-seg.nii.gz`` and ``<id>.nii.gz`` in every layout. ``None`` for a
    name that is not NIfTI, hidden (``._x.nii.gz``) or gives no id."""
    _check_layout(layout)
    name = Path(file_name).name
    stem = None if name.startswith(".") else strip_nifti_suffix(name)
    if not stem:
        return None
    for suffix in dict.fromkeys((_OUTPUT_SUFFIX[layout], "_seg", "-seg")):
        if suffix and stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    try:
        return safe_subject_id(stem)
    except DataError:
        return None


# --------------------------------------------------------------------------------------- detection


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {{...}}, got a {type(data).__name__}")
    return data


def _decathlon_kind(data: dict, image_names: Sequence[str]) -> str:
    """``"nnunet"`` or ``"msd"``: which of the two dataset.json layouts a folder holds."""
    if "channel_names" in data or "file_ending" in data:
        return "nnunet"
    stems = [s for s in (strip_nifti_suffix(n) for n in image_names) if s]
    return "nnunet" if stems and all(_NNUNET_IMAGE.match(s) for s in stems) else "msd"


def _some_nifti(folder: Path) -> list[Path]:
    """Up to ``_GUESS_MAX_FILES`` non-hidden NIfTI files under ``folder`` (for hints only)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / n for n in sorted(files) if not n.startswith(".") and strip_nifti_suffix(n))
        if len(found) >= _GUESS_MAX_FILES:
            break
    return found


def _brats_role(layout: str, stem: str) -> tuple[str, str] | None:
    """``(raw id, canonical modality or _SEG)`` of a BraTS file name, or ``None``."""
    sep, tokens = _TOKENS[layout]
    raw_id, found, token = stem.rpartition(sep)
    role = tokens.get(token.lower()) if found and raw_id else None
    return (raw_id, role) if role else None


def _guess_layout(folder: Path, nifti: Sequence[Path] | None = None) -> str | None:
    json_path, images = folder / "dataset.json", folder / "imagesTr"
    if json_path.is_file() and images.is_dir():
        try:
            data = _read_json(json_path)
        except DataError:
            data = {}
        return _decathlon_kind(data, _image_names(images))
    files = _some_nifti(folder) if nifti is None else nifti
    counts = {layout: sum(1 for p in files if (r := _brats_role(layout, strip_nifti_suffix(p.name) or ""))
                          and r[1] != _SEG) for layout in _TOKENS}
    best = max(counts, key=counts.get)
    return best if counts[best] else None


def _hint(folder: Path, layout: str, nifti: Sequence[Path] | None = None) -> str:
    """``"; this looks like ...: set [DATASET] convention = x"`` (or where the dataset is), or ``""``."""
    if folder.name in _DECATHLON_PARTS and (folder.parent / "dataset.json").is_file():
        return f"; {folder.name}/ is part of the dataset {folder.parent}: set [DATASET] path = {folder.parent}"
    if layout in ("msd", "nnunet"):
        try:
            subs = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
        except OSError:
            subs = []
        holder = next((s for s in subs if (folder / s / "dataset.json").is_file()), None)
        if holder is not None:
            return f"; the subfolder {holder}/ has a dataset.json: set [DATASET] path = {folder / holder}"
    guess = _guess_layout(folder, nifti)
    if guess and guess != layout:
        return f"; this looks like {_LOOKS_LIKE[guess]}: set [DATASET] convention = {guess}"
    return ""


# -------------------------------------------------------------------------------------- subjects


def _safe_id(raw: str, where) -> str:
    if not raw:
        raise DataError(f"{where}: the file name gives an empty subject id")
    try:
        safe = safe_subject_id(raw)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from exc
    if safe != raw:
        logger.warning("subject id %r of %s made file-name safe as %r", raw, where, safe)
    return safe


class _Table:
    """``{subject id: {section: file}}`` refusing two files for one id and section."""

    def __init__(self):
        self.files: dict[str, dict[str, Path | Channel]] = {}

    def put(self, subject_id: str, section: str, file: Path | Channel) -> None:
        row = self.files.setdefault(subject_id, {})
        if section in row:
            raise DataError(f"{row[section]} and {file} are both [{section}] of subject "
                            f"{subject_id!r}; keep one of them")
        row[section] = file


def _sections(modalities: Sequence[str]) -> dict[str, str]:
    """canonical modality -> configured section name (two sections meaning one modality: error)."""
    modalities = tuple(modalities)
    if not modalities:
        raise ConfigError("[MULTIMODAL] image lists no modality")
    out: dict[str, str] = {}
    for m in modalities:
        key = canonical_modality(m)
        if key in out:
            raise ConfigError(f"[MULTIMODAL] image: {out[key]} and {m} are the same modality")
        out[key] = m
    return out


def _list_nifti(folder: Path, ending: str | None = None) -> dict[str, Path]:
    """``{stem: file}`` of the non-hidden NIfTI files directly in ``folder`` (``ending``: only
    names ending so; the stem is the name without it)."""
    out: dict[str, Path] = {}
    for name in sorted(os.listdir(folder)):
        path = folder / name
        if name.startswith(".") or not path.is_file():
            continue
        stem = (name[: -len(ending)] if name.lower().endswith(ending.lower()) else None) if ending \
            else strip_nifti_suffix(name)
        if not stem:
            continue
        if stem in out:
            raise DataError(f"{out[stem]} and {path} are the same case; keep one of them")
        out[stem] = path
    return out


def _image_names(images: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(images) if not n.startswith("."))
    except OSError:
        return []


def _subjects(table: _Table, order: Sequence[str]) -> list[Subject]:
    return [Subject(id=i, files={s: table.files[i][s] for s in order if s in table.files[i]})
            for i in sorted(table.files)]


def _report(subjects: list[Subject], modalities: Sequence[str], label: str | None, test_ids: frozenset[str],
            folder: Path, layout: str) -> None:
    incomplete = [f"{s.id} (no {', '.join(m for m in modalities if m not in s.files)})"
                  for s in subjects if any(m not in s.files for m in modalities)]
    if incomplete:
        logger.warning("%s: %d cases lack a modality (they cannot be used for training): %s",
                       folder, len(incomplete), listing(incomplete))
    if label:
        labelled = [s for s in subjects if s.id not in test_ids]
        missing = [s.id for s in labelled if label not in s.files]
        if labelled and len(missing) == len(labelled):
            logger.info("%s: no label file: the cases can be used for inference only", folder)
        elif missing:
            logger.warning("%s: %d cases have no label file: %s", folder, len(missing), listing(missing))
    logger.info("%s (%s): %d cases%s", folder, layout, len(subjects),
                f", {len(test_ids)} of them in imagesTs/ (no label)" if test_ids else "")


def _find_brats(layout: str, folder: Path, modalities: Sequence[str], label: str | None) -> DatasetCases:
    wanted = _sections(modalities)
    known = [k for k in _TOKENS[layout][1].values() if k != _SEG]
    other = [m for k, m in wanted.items() if k not in known]
    if other:
        raise ConfigError(f"[MULTIMODAL] image: {', '.join(other)} is not a BraTS modality; [DATASET] convention = "
                          f"{layout} has files for T1, T1c, T2 and Flair (any usual spelling)")
    if label:
        wanted[_SEG] = label
    files = walk_nifti(folder)
    table = _Table()
    for path in files:
        role = _brats_role(layout, strip_nifti_suffix(path.name))
        if role is not None and role[1] in wanted:
            table.put(_safe_id(role[0], path), wanted[role[1]], path)
    if not any(m in row for row in table.files.values() for m in modalities):
        raise DataError(f"{folder}: no image of {', '.join(modalities)} among {len(files)} NIfTI files; "
                        f"expected {_EXPECTED[layout]}{_hint(folder, layout, files)}")
    return DatasetCases(_subjects(table, [*modalities, *([label] if label else [])]))


# ------------------------------------------------------------------------------- msd and nnunet


def _int_key(key, where: str, what: str) -> int:
    text = str(key).strip()
    if not text.isdigit():
        raise DataError(f"{where}: {what} key {key!r} is not a channel number 0, 1, ...")
    return int(text)


def _dataset_channels(data: dict, where: str, layout: str) -> dict[int, str] | None:
    """``{index: name}`` of dataset.json's ``channel_names`` (nnunet) or ``modality``."""
    key = next((k for k in (("channel_names", "modality") if layout == "nnunet" else ("modality",)) if k in data),
               None)
    if key is None:
        return None
    raw = data[key]
    if not isinstance(raw, dict) or not raw:
        raise DataError(f'{where}: "{key}" must be an object such as {{"0": "T1", "1": "T1ce"}}, got {raw!r}')
    names = {_int_key(k, where, f'"{key}"'): str(v) for k, v in raw.items()}
    if sorted(names) != list(range(len(names))):
        raise DataError(f'{where}: "{key}" numbers its channels {", ".join(map(str, sorted(names)))}; '
                        f"expected 0 to {len(names) - 1}")
    return dict(sorted(names.items()))


def _parse_channels(channels) -> tuple[str, ...]:
    if isinstance(channels, str):
        channels = channels.split(",")
    out = tuple(str(c).strip() for c in channels or ())
    if out and not all(out):
        raise ConfigError(f"[DATASET] channels = {', '.join(out)}: an empty channel name; give the modality of every "
                          f"channel, channel 0 first (e.g. channels = Flair, T1, T1c, T2)")
    return out


def _channel_map(names: dict[int, str], modalities: Sequence[str], source: str, error) -> dict[str, int]:
    """configured section -> channel index; every configured modality must be exactly one channel."""
    shown = "{" + ", ".join(f"{k}: {v}" for k, v in names.items()) + "}"
    problems, out = [], {}
    for m in modalities:
        hits = [k for k, n in names.items() if canonical_modality(n) == canonical_modality(m)]
        if len(hits) == 1:
            out[m] = hits[0]
        elif hits:
            problems.append(f"channels {' and '.join(map(str, hits))} are both {m}")
        else:
            problems.append(f"no channel is {m}")
    unused = [f"{k} ({n})" for k, n in names.items() if k not in out.values()]
    if problems:
        unknown = [f'"{n}"' for n in names.values() if canonical_modality(n) not in MODALITY_ALIASES.values()
                   and canonical_modality(n) not in {canonical_modality(m) for m in modalities}]
        raise error(f"{source}: channels {shown}: {'; '.join(problems)}"
                    + (f" ({', '.join(unknown)} is no known modality name)" if unknown else "")
                    + "; give the modality of every channel, channel 0 first, in [DATASET] channels "
                    f"(e.g. channels = {', '.join(modalities)})")
    if unused:
        logger.warning("%s: channel %s is none of the modalities %s; not used", source, ", ".join(unused),
                       ", ".join(modalities))
    return out


def _resolve_channels(data: dict, json_path: Path, layout: str, modalities: Sequence[str],
                      channels: tuple[str, ...]) -> tuple[dict[str, int], int]:
    """(configured section -> channel index, number of channels)."""
    listed = _dataset_channels(data, str(json_path), layout)
    if channels:
        if listed is not None and len(listed) != len(channels):
            raise ConfigError(f"[DATASET] channels = {', '.join(channels)} names {len(channels)} channels but "
                              f"{json_path} has {len(listed)} ({', '.join(listed.values())})")
        names, source, error = dict(enumerate(channels)), f"[DATASET] channels = {', '.join(channels)}", ConfigError
    elif listed is None:
        key = '"channel_names"' if layout == "nnunet" else '"modality"'
        raise DataError(f"{json_path}: no {key} naming the channels; add it or list the modality of every channel, "
                        f"channel 0 first, in [DATASET] channels (e.g. channels = {', '.join(modalities)})")
    else:
        names, source, error = listed, str(json_path), DataError
    return _channel_map(names, modalities, source, error), len(names)


def _check_numbers(data: dict, json_path: Path, n_train: int) -> None:
    expected = data.get("numTraining")
    if isinstance(expected, int) and not isinstance(expected, bool) and expected != n_train:
        logger.warning("%s: numTraining is %d but imagesTr/ holds %d cases", json_path, expected, n_train)


def _find_decathlon(layout: str, folder: Path, modalities: Sequence[str], label: str | None,
                    channels: tuple[str, ...]) -> DatasetCases:
    _sections(modalities)
    json_path, images = folder / "dataset.json", folder / "imagesTr"
    missing = [n for n, ok in (("dataset.json", json_path.is_file()), ("imagesTr/", images.is_dir())) if not ok]
    if missing:
        raise DataError(f"{folder}: no {' and no '.join(missing)}; expected {_EXPECTED[layout]}"
                        f"{_hint(folder, layout)}")
    data = _read_json(json_path)
    kind = _decathlon_kind(data, _image_names(images))
    if kind != layout:
        raise DataError(f"{folder}: {json_path.name} and imagesTr/ are those of {_LOOKS_LIKE[kind]}, not "
                        f"{_LOOKS_LIKE[layout]}: set [DATASET] convention = {kind}")
    ending = _check_ending(data.get("file_ending", ".nii.gz"), str(json_path)) if layout == "nnunet" else None
    if layout == "msd" and "labels" in data:
        msd_convention_check(data, str(json_path))
    by_section, n_channels = _resolve_channels(data, json_path, layout, modalities, channels)

    table, test_ids = _Table(), set()
    for part in ("imagesTr", "imagesTs"):
        if not (folder / part).is_dir():
            continue
        found = (_add_msd_images if layout == "msd" else _add_nnunet_images)(
            folder / part, table, by_section, n_channels, ending, json_path)
        if part == "imagesTs":
            test_ids |= found
        elif not found:
            example = "BRATS_001.nii.gz (4-D)" if layout == "msd" else f"CASE_0000{ending}"
            raise DataError(f"{images}: no image such as {example}; expected {_EXPECTED[layout]}"
                            f"{_hint(folder, layout)}")
        else:
            _check_numbers(data, json_path, len(found))
    if label and (folder / "labelsTr").is_dir():
        for stem, path in _list_nifti(folder / "labelsTr", ending).items():
            subject_id = _safe_id(stem, path)
            if subject_id in test_ids:
                raise DataError(f"{path}: a label of {subject_id!r}, a case of imagesTs/ (no labels)")
            table.put(subject_id, label, path)
    subjects = _subjects(table, [*modalities, *([label] if label else [])])
    return DatasetCases(subjects, frozenset(test_ids), data, ending or ".nii.gz")


def _add_msd_images(images: Path, table: _Table, by_section: dict[str, int], n_channels: int, ending,
                    json_path: Path) -> set[str]:
    found = _list_nifti(images)
    if found:  # one header (cheap): the 4-D files must have the channels dataset.json lists
        first = next(iter(found.values()))
        try:
            read_header_only(Channel(first, n_channels - 1))
        except DataError as exc:
            raise DataError(f"{exc}; {json_path} lists {n_channels} channels") from exc
    ids = set()
    for stem, path in found.items():
        subject_id = _safe_id(stem, path)
        for section, index in by_section.items():
            table.put(subject_id, section, Channel(path, index))
        ids.add(subject_id)
    return ids


def _add_nnunet_images(images: Path, table: _Table, by_section: dict[str, int], n_channels: int, ending: str,
                       json_path: Path) -> set[str]:
    section_of = {index: section for section, index in by_section.items()}
    ids, odd = set(), []
    for stem, path in _list_nifti(images, ending).items():
        match = _NNUNET_IMAGE.match(stem)
        if match is None:
            odd.append(path.name)
            continue
        index = int(match.group(2))
        if index >= n_channels:
            raise DataError(f"{path}: channel {match.group(2)} but {json_path} lists {n_channels} channels "
                            f"(_0000 to _{n_channels - 1:04d})")
        subject_id = _safe_id(match.group(1), path)
        ids.add(subject_id)
        if index in section_of:
            table.put(subject_id, section_of[index], path)
    if odd:
        logger.warning("%s: %d files not named CASE_XXXX%s are not used: %s", images, len(odd), ending, listing(odd))
    return ids


# -------------------------------------------------------------------------------------- public


def find_cases(layout: str, folder: str | os.PathLike, modalities: Sequence[str], label: str | None,
               channels: Sequence[str] | str = ()) -> DatasetCases:
    """The subjects of the dataset folder ``folder`` in ``layout`` (one of :data:`LAYOUTS`).

    Args:
        layout: ``brats2018``, ``brats2023``, ``msd`` or ``nnunet`` (module docstring).
        folder: ``[DATASET] path``.
        modalities: the configured modality section names, channel order (``[MULTIMODAL] image``).
        label: the label section name, or ``None`` (label files are then not looked for).
        channels: ``[DATASET] channels``: the modality of channel 0, 1, ... (msd, nnunet), replacing
            dataset.json's names (a list, or one comma-separated string); empty: dataset.json's.

    Returns:
        :class:`DatasetCases`; every subject found (some may lack a modality or their label: logged).
        For msd, dataset.json's labels are checked (:func:`msd_convention_check`).

    Raises:
        DataError: the folder is missing or matches no file of the layout (the message says what
            was expected and, when it looks like another layout, which); dataset.json is unreadable
            or its channels do not give every configured modality; two files give one subject id
            and section.
        ConfigError: unknown layout; ``channels`` given for a BraTS layout, or not naming every
            configured modality once; two configured modalities are one modality.
    """
    _check_layout(layout)
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"[DATASET] path {folder} does not exist or is not a folder")
    modalities = tuple(modalities)
    channels = _parse_channels(channels)
    if layout in _TOKENS:
        if channels:
            raise ConfigError(f"[DATASET] channels = {', '.join(channels)}: only for convention msd or nnunet (one "
                              f"file holding several channels); {layout} names each modality's file")
        cases = _find_brats(layout, folder, modalities, label)
    else:
        cases = _find_decathlon(layout, folder, modalities, label, channels)
    _report(cases.subjects, modalities, label, cases.test_ids, folder, layout)
    return cases


def _label_entries(data: dict, where: str) -> dict:
    labels = data.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataError(f'{where}: no "labels" object (e.g. {{"background": 0, "edema": 1}})')
    return labels


def msd_convention_check(dataset_json: dict, where: str) -> None:
    """A :class:`DataError` naming ``where`` when the ``labels`` of an MSD dataset.json
    (``{"0": "background", "1": "edema", ...}``) are not the values of the msd convention."""
    labels = _label_entries(dataset_json, where)
    try:
        values = sorted(int(str(k).strip()) for k in labels)
    except ValueError:
        raise DataError(f'{where}: "labels" keys {", ".join(map(str, labels))} are not label values 0, 1, '
                        "...") from None
    expected = PRESETS["msd"].label_values
    if tuple(values) != expected:
        shown = ", ".join(f"{k}: {v}" for k, v in labels.items())
        raise DataError(f'{where}: "labels" {{{shown}}} but [DATASET] convention = msd has label values '
                        f"{', '.join(map(str, expected))} (1 oedema, 2 non-enhancing tumour, 3 enhancing tumour); "
                        "use convention = custom with the dataset's values")


def _region_name(name: str) -> str:
    key = " ".join(re.sub(r"[_\-]+", " ", str(name).lower()).split())
    return _REGION_ALIASES.get(key) or re.sub(r"\W+", "_", key).strip("_")


def _label_ints(value, where: str, name: str) -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in items):
        raise DataError(f'{where}: label "{name}": {value!r} is not a label value >= 0 or a list of them')
    return tuple(sorted(set(items)))


def nnunet_convention(dataset_json: dict, where: str) -> Convention:
    """The label convention of an nnU-Net dataset.json (``where`` names it in errors).

    ``labels`` is v2 (``{"background": 0, "edema": 1, ...}``, region-based when some value is a
    list: ``{"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}``)
    or v1 (``{"0": "background", "1": "edema"}``). Label values: the distinct values (0 needed).
    Regions: every non-background entry (region-based), else every non-background label alone;
    whole / core / enhancing tumour (and wt, tc, et) are named ``whole``, ``core``, ``enhancing``,
    other names lower case with ``_``. ``enhancing`` is the single label of the enhancing region and
    ``core`` the one label of the core region besides it; when either is not that obvious both are
    ``None`` (no enhancing-tumour post-processing). ``regions_class_order`` is not needed: the
    network predicts label values.
    """
    labels = _label_entries(dataset_json, where)
    if all(str(k).strip().isdigit() and isinstance(v, str) for k, v in labels.items()):  # v1
        entries = [(v, (int(str(k).strip()),)) for k, v in labels.items()]
    else:
        entries = [(str(k), _label_ints(v, where, k)) for k, v in labels.items()]
    values = tuple(sorted({v for _, vs in entries for v in vs}))
    if 0 not in values:
        raise DataError(f'{where}: "labels" has no background 0 (values {", ".join(map(str, values))})')
    region_based = any(len(vs) > 1 for _, vs in entries)
    raw = [(n, vs) for n, vs in entries if vs != (0,)] if region_based else \
        [(n, vs) for n, vs in entries if vs[0] != 0]
    if any(0 in vs for _, vs in raw):
        raise DataError(f'{where}: "labels": only the background may hold 0')
    regions, seen = [], {}
    for name, vs in raw:
        canonical = _region_name(name) or f"label_{'_'.join(map(str, vs))}"
        if canonical in seen:
            raise DataError(f'{where}: labels "{seen[canonical]}" and "{name}" are both the region {canonical}')
        seen[canonical] = name
        regions.append((canonical, vs))
    region_map = dict(regions)
    enhancing = region_map["enhancing"][0] if len(region_map.get("enhancing", ())) == 1 else None
    rest = [v for v in region_map.get("core", ()) if v != enhancing]
    core = rest[0] if enhancing in region_map.get("core", ()) and len(rest) == 1 else None
    if enhancing is not None and core is None:
        logger.info("%s: no tumour core label besides the enhancing label %d; no enhancing-tumour post-processing",
                    where, enhancing)
        enhancing = None
    colours = tuple(zip(values[1:], PALETTE))
    return Convention("nnunet", values, tuple(regions), enhancing, core, colours)


def read_dataset_json(folder: str | os.PathLike) -> tuple[dict, Path]:
    """``(dataset.json of the msd / nnunet dataset folder, its path)``."""
    path = Path(folder).expanduser() / "dataset.json"
    if not path.is_file():
        raise DataError(f"[DATASET] path {path.parent}: no dataset.json (expected {_EXPECTED['nnunet']})")
    return _read_json(path), path
