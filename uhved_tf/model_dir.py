"""The layout of a model directory: the only code that knows its file names.

::

    <model_dir>/config_resolved.ini        the config as trained (every key, paths resolved)
                metadata.json              modality order, label map, network, window, preprocessing
                dataset_split.csv          the split ([SYSTEM] dataset_split_file, default here)
                histogram_ref_file.txt     Nyul landmarks ([NETWORK] histogram_ref_file, default here)
                checkpoints/ckpt-N.*       rolling checkpoints (the newest that restores is resumed)
                checkpoints/set_aside/<time>/  files of checkpoints after the iteration a run resumed
                                           from (unrestorable ones, or later ones of a starting_iter
                                           run), moved out of the way instead of overwritten
                checkpoints_best/best-N.*  the best validation checkpoint
                logs/train/                TensorBoard events
                metrics.csv                one row per iteration (the source of truth of the losses)
                validation.csv             one row per validation round
                export/<model>/<version>/  SavedModels (``uhved_tf export``)
                <subset>/                  one Single network per subset (``train --all-subsets``)

Training writes through a :class:`ModelDir`; the predictor, ``evaluate``, ``export``, the client
and the zoo read through one. No TensorFlow import here.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from uhved_tf.errors import ConfigError, DataError
from uhved_tf.io.atomic import atomic_write_text

#: Settings that must not change between training and inference / resuming.
MODEL_KEYS = ("network", "modalities", "label_values", "num_classes", "base_width", "levels")


@dataclass(frozen=True)
class ModelDir:
    root: Path
    split_file: Path | None = None       # default <root>/dataset_split.csv
    histogram_file: Path | None = None   # default <root>/histogram_ref_file.txt

    CONFIG = "config_resolved.ini"
    METADATA = "metadata.json"
    SPLIT = "dataset_split.csv"
    HISTOGRAM = "histogram_ref_file.txt"
    ROLLING = "checkpoints"
    BEST = "checkpoints_best"
    SET_ASIDE = "set_aside"
    LOGS = "logs"
    METRICS = "metrics.csv"
    VALIDATION = "validation.csv"
    EXPORT = "export"
    MODEL_CARD = "MODEL_CARD.md"

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def from_config(cls, cfg) -> "ModelDir":
        return cls(Path(cfg.system.model_dir), Path(cfg.system.dataset_split_file),
                   Path(cfg.network.histogram_ref_file))

    # --- paths -------------------------------------------------------------------------------
    def __truediv__(self, name) -> Path:
        return self.root / name

    def __str__(self) -> str:
        return str(self.root)

    def __fspath__(self) -> str:
        return str(self.root)

    config = property(lambda self: self.root / self.CONFIG)
    metadata = property(lambda self: self.root / self.METADATA)
    checkpoints = property(lambda self: self.root / self.ROLLING)
    best_checkpoints = property(lambda self: self.root / self.BEST)
    train_logs = property(lambda self: self.root / self.LOGS / "train")
    metrics_csv = property(lambda self: self.root / self.METRICS)
    validation_csv = property(lambda self: self.root / self.VALIDATION)
    export_dir = property(lambda self: self.root / self.EXPORT)
    split = property(lambda self: Path(self.split_file or self.root / self.SPLIT))
    histogram = property(lambda self: Path(self.histogram_file or self.root / self.HISTOGRAM))

    def subset(self, name: str) -> "ModelDir":
        """The directory of one per-subset network; the split and landmarks stay the parent's."""
        return replace(self, root=self.root / name, split_file=self.split, histogram_file=self.histogram)

    # --- metadata ----------------------------------------------------------------------------
    def has_model(self) -> bool:
        return self.metadata.is_file()

    def read_metadata(self) -> dict | None:
        if not self.metadata.exists():
            return None
        try:
            return json.loads(self.metadata.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.metadata}: unreadable model metadata ({exc})") from None

    def write_metadata(self, meta: dict) -> None:
        # Atomically: resuming reads it first, and a run killed while writing it must stay resumable.
        atomic_write_text(self.metadata, json.dumps(meta, indent=2))

    def check_metadata(self, now: dict) -> dict | None:
        """The saved metadata (None without one); a :class:`ConfigError` when a :data:`MODEL_KEYS`
        value differs from ``now`` (the current config's)."""
        saved = self.read_metadata()
        if saved is None:
            return None
        for key in MODEL_KEYS + (("convention",) if "convention" in saved else ()):   # (older models: none)
            if saved.get(key) != now.get(key):
                raise ConfigError(
                    f"{self.metadata}: the model in {self.root} was trained with {key} = {saved.get(key)!r} but "
                    f"the config says {now.get(key)!r}; use the training config or another model_dir")
        return saved

    def missing_parts(self) -> list[str]:
        """What a finished training leaves and this directory lacks (empty: a usable model)."""
        missing = [n for n in (self.CONFIG, self.METADATA) if not (self.root / n).is_file()]
        return missing + ([] if self.checkpoints.is_dir() else [f"{self.ROLLING}/"])

    def last_logged_iteration(self) -> int | None:
        """The last iteration ``metrics.csv`` has a row of (None: no file or no row)."""
        import csv
        if not self.metrics_csv.is_file():
            return None
        try:
            with open(self.metrics_csv, newline="") as f:
                logged = [r.get("iteration") or "" for r in csv.DictReader(f)]
        except (OSError, ValueError, csv.Error) as exc:
            raise DataError(f"{self.metrics_csv}: unreadable ({exc})") from None
        return max((int(i) for i in logged if i.isdigit()), default=None)

    # --- checkpoints -------------------------------------------------------------------------
    def saved_iterations(self, best: bool = False) -> list[int]:
        """Iterations of the rolling (or best) checkpoints, from the files (``ckpt-N.index``)."""
        folder, prefix = self.checkpoint_prefix(best)
        numbers = (p.name[len(prefix) + 1:-len(".index")] for p in folder.glob(f"{prefix}-*.index"))
        return sorted(int(n) for n in numbers if n.isdigit())

    def latest_iteration(self) -> int | None:
        have = self.saved_iterations()
        return have[-1] if have else None

    def checkpoint_files(self, best: bool = False) -> dict[int, list[Path]]:
        """Every file of the rolling (or best) checkpoints by iteration, complete or not:
        ``ckpt-N.index``, ``ckpt-N.data-*`` and ``ckpt-N_temp/`` (TensorFlow's folder of a save
        that did not finish)."""
        folder, prefix = self.checkpoint_prefix(best)
        pattern = re.compile(rf"{prefix}-(\d+)(\.index|\.data-\d+-of-\d+|_temp)$")
        found: dict[int, list[Path]] = {}
        for p in (folder.iterdir() if folder.is_dir() else ()):
            m = pattern.match(p.name)
            if m:
                found.setdefault(int(m.group(1)), []).append(p)
        return {n: sorted(found[n]) for n in sorted(found)}

    def set_aside_checkpoints_after(self, iteration: int) -> tuple[list[Path], Path | None]:
        """Move the files of every rolling checkpoint after ``iteration`` (complete or not) into
        ``checkpoints/set_aside/<time>/``: a run that goes on from ``iteration`` writes those
        names again and must not clobber files it did not write. Returns the files moved (their
        old paths) and the folder they are in now (None: nothing to move)."""
        stray = [p for n, files in self.checkpoint_files().items() if n > iteration for p in files]
        if not stray:
            return [], None
        base = self.checkpoints / self.SET_ASIDE / time.strftime("%Y%m%d-%H%M%S")
        target, k = base, 1
        while target.exists():
            target, k = base.with_name(f"{base.name}-{k}"), k + 1
        target.mkdir(parents=True)
        for p in stray:
            p.rename(target / p.name)
        return stray, target

    def checkpoint_prefix(self, best: bool = False) -> tuple[Path, str]:
        """The folder and the name prefix of the rolling (or best) checkpoints: ``<folder>/<prefix>-N``."""
        return (self.best_checkpoints, "best") if best else (self.checkpoints, "ckpt")

    def checkpoint_path(self, iteration: int, best: bool = False) -> str:
        folder, prefix = self.checkpoint_prefix(best)
        return str(folder / f"{prefix}-{iteration}")

    def find_checkpoint(self, which: str = "latest") -> tuple[str, int]:
        """The checkpoint prefix and iteration of ``which`` (``latest``, ``best`` or an iteration).
        Raises ``LookupError`` with a sentence naming what is there."""
        have = self.saved_iterations()
        listing = f"checkpoints present: {', '.join(map(str, have)) or 'none'}"
        if which == "best":
            best = self.saved_iterations(best=True)
            if not best:
                raise LookupError(f"no best checkpoint in {self.best_checkpoints}: it is kept only when training "
                                  f"validates ([TRAINING] validation_every_n > 0 and a Validation split); {listing}")
            return self.checkpoint_path(best[-1], best=True), best[-1]
        if which == "latest":
            if not have:
                raise LookupError(f"no checkpoint in {self.checkpoints}; train first")
            return self.checkpoint_path(have[-1]), have[-1]
        iteration = int(which)
        if iteration not in have:
            raise LookupError(f"no checkpoint of iteration {iteration} in {self.checkpoints}; {listing} "
                              "(checkpoint = latest or best also work)")
        return self.checkpoint_path(iteration), iteration

    def clear_training(self) -> None:
        """``train --overwrite``: forget checkpoints, logs, metrics and metadata (not the split,
        landmarks or outputs)."""
        for sub in (self.ROLLING, self.BEST, self.LOGS):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        for f in (self.METRICS, self.VALIDATION, self.METADATA):
            (self.root / f).unlink(missing_ok=True)
