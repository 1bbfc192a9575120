"""Trained model directories as self-describing units: the model zoo and ``--model NAME|PATH``.

A model directory (what ``uhved_tf train`` writes) holds ``config_resolved.ini``,
``metadata.json``, ``checkpoints/`` and, with histogram normalisation, the landmarks file. It can be
used without the training config, from wherever it has been copied: :func:`config_for_model_dir`
reads its resolved config and points every path that belongs to the model (``model_dir``, the
landmarks, the split file, the default output folders) at the directory itself.

The zoo is ``model_zoo/`` of the repository: each entry a model directory with a ``MODEL_CARD.md``.
No TensorFlow import here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from uhved_tf.errors import ConfigError, UhvedError
from uhved_tf.model_dir import ModelDir

ZOO_DIR = Path(__file__).resolve().parents[1] / "model_zoo"


def zoo_entries(zoo_dir: Path = ZOO_DIR) -> list[Path]:
    """Model directories in the zoo (folders with a resolved config), sorted by name."""
    if not zoo_dir.is_dir():
        return []
    return sorted(p for p in zoo_dir.iterdir() if ModelDir(p).config.is_file())


def resolve_model(name_or_path: str | Path, zoo_dir: Path = ZOO_DIR) -> Path:
    """A zoo entry's name (``uhved_demo``) or the path of a model directory -> its folder."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        folder = path.resolve()
    elif (zoo_dir / text).is_dir() and "/" not in text and text not in (".", ".."):
        folder = (zoo_dir / text).resolve()
    else:
        names = ", ".join(p.name for p in zoo_entries(zoo_dir)) or "none installed"
        raise ConfigError(f'--model "{text}": no such model directory and no zoo entry of that name '
                          f"(zoo entries: {names}; `uhved_tf zoo list`)")
    missing = ModelDir(folder).missing_parts()
    if missing:
        raise ConfigError(f"{folder}: not a trained model directory ({', '.join(missing)} missing); it must be the "
                          f"model_dir of a finished `uhved_tf train`")
    return folder


def model_overrides(folder: Path) -> list[str]:
    """``SECTION.key=value`` overrides that make a copied model directory refer to itself."""
    md = ModelDir(folder)
    sets = [f"SYSTEM.model_dir={folder}", f"SYSTEM.dataset_split_file={md.split}",
            f"INFERENCE.save_seg_dir={folder / 'output'}", f"EVALUATION.save_csv_dir={folder / 'evaluation'}"]
    try:
        pre = (md.read_metadata() or {}).get("preprocessing") or {}
    except UhvedError:
        pre = {}
    if pre.get("normalisation") and pre.get("histogram_ref_file"):
        landmarks = folder / Path(str(pre["histogram_ref_file"])).name
        if not landmarks.is_file():
            raise ConfigError(f"{folder}: the model was trained with histogram normalisation but its "
                              f"landmarks file {landmarks.name} is not in the model directory")
        sets.append(f"NETWORK.histogram_ref_file={landmarks}")
    return sets


def config_for_model_dir(name_or_path: str | Path, overrides: Sequence[str] = (),
                         set_overrides: Sequence[str] = ()):
    """The validated config of a model directory (zoo name or path); the user's overrides
    (``--key value`` or ``--set``) replace the directory's own paths (:func:`model_overrides`)."""
    from uhved_tf.config import load_config
    from uhved_tf.config.reading import overridden_keys

    folder = resolve_model(name_or_path)
    mine = overridden_keys(overrides, set_overrides)
    defaults = [s for s in model_overrides(folder) if s.partition("=")[0] not in mine]
    return load_config(ModelDir(folder).config, overrides=overrides, set_overrides=[*defaults, *set_overrides])


def describe(folder: Path) -> dict:
    """Name, network, modalities, label convention and the model card's first line of a model directory."""
    info = {"name": folder.name, "path": str(folder), "network": "?", "modalities": [], "convention": "?",
            "summary": ""}
    try:
        meta = ModelDir(folder).read_metadata() or {}
        info["network"] = meta.get("network", "?")
        info["modalities"] = meta.get("modalities", [])
        # (models written before conventions were stored were all BraTS 2018-2021 labelled)
        info["convention"] = meta.get("convention", {}).get("name", "brats2018")
    except UhvedError:
        pass
    card = ModelDir(folder) / ModelDir.MODEL_CARD
    if card.is_file():
        for line in card.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                info["summary"] = line.strip()
                break
    return info
