"""Python API for notebooks and pipelines: the CLI's inference and training without the CLI.

    from uhved_tf import Predictor, Trainer

    predictor = Predictor.from_model_dir("uhved_demo")          # a zoo name or a model directory
    out = predictor.predict({"t1c": "case_t1ce.nii.gz", "flair": flair_img})   # paths or nibabel images
    out["seg"].to_filename("case_seg.nii.gz")                   # BraTS labels 0/1/2/4, input geometry
    out["synth"]["T2"]                                          # synthesised T2 (nibabel image)
    out["uncertainty"]                                          # predictive entropy (nats)
    both = predictor.predict(images, subsets="T1c,Flair;Flair")   # {"T1c+Flair": {...}, "Flair": {...}}

    Trainer.from_config("config/demo.ini", set_overrides=["TRAINING.max_iter=10"]).fit()

Everything goes through :class:`uhved_tf.application.Application`, so preprocessing, the sliding
window, the encode-once predictor and the undoing of crop / reorientation / resampling are the
ones the CLI uses; outputs are the images ``uhved_tf inference`` would write, in memory.
Importing this module does not import TensorFlow; set ``TF_ENABLE_ONEDNN_OPTS=1`` before the first
prediction for CPU speed (the CLI does it for you).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from uhved_tf.errors import DataError
from uhved_tf.subset import Subset, modality_for

__all__ = ["Predictor", "Trainer"]


def _modality_for(key: str, modalities: Sequence[str]) -> str:
    return modality_for(key, modalities, what="input")


class Predictor:
    """Segmentation and synthesis of single cases from a trained model directory."""

    def __init__(self, cfg):
        from uhved_tf.application import Application

        self.app = Application(cfg)
        self.model = self.app.load_trained_model()
        self.predictor = self.app.predictor(self.model)
        self.modalities = tuple(cfg.modalities)
        self._settings = self.app.preprocess_settings()

    @classmethod
    def from_model_dir(cls, path, set_overrides: Sequence[str] = ()) -> "Predictor":
        """``path``: a model directory (``[SYSTEM] model_dir`` of a finished training) or a zoo
        name; ``set_overrides`` e.g. ``["INFERENCE.samples=0", "INFERENCE.tta=True"]``."""
        from uhved_tf.zoo import config_for_model_dir
        return cls(config_for_model_dir(path, set_overrides=set_overrides))

    def predict(self, images: Mapping, subject_id: str = "case", subsets=None) -> dict:
        """``images``: modality name (case-insensitive; ``t1ce`` = ``T1c``) -> a NIfTI path or a
        nibabel image, any non-empty subset of the model's modalities, all on one grid.

        Returns ``{"seg": image, "synth": {modality: image}, "uncertainty": image, "prob": image}``
        (``synth`` for networks that synthesise, ``prob`` when ``[INFERENCE] output_prob``), every
        image in the geometry of the inputs, plus ``"subset"`` (the modalities used) and
        ``"seconds"``. With ``subsets`` (as the CLI's ``--modalities``: ``"T1c,Flair;T2"``,
        ``"all"``, ``"singles"`` or a list of subsets of the given images), the case is encoded
        once and the result is ``{subset name: that dict}``.
        """
        import nibabel as nib

        from uhved_tf.io.discovery import safe_subject_id
        from uhved_tf.io.nifti import image_like

        if not images:
            raise DataError("predict: no input images; give at least one of " + ", ".join(self.modalities))
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="uhved_tf_api_") as tmp:
            files = {}
            for key, value in images.items():
                m = _modality_for(str(key), self.modalities)
                if m in files:
                    raise DataError(f'input "{key}": modality {m} given twice')
                if isinstance(value, (str, Path)):
                    files[m] = Path(value)
                elif isinstance(value, nib.spatialimages.SpatialImage):
                    files[m] = Path(tmp) / f"{m}.nii.gz"
                    nib.save(value, files[m])      # the same loader as files: one preprocessing path
                else:
                    raise DataError(f'input "{key}": expected a NIfTI path or a nibabel image, '
                                    f"got {type(value).__name__}")
            from uhved_tf.data.cases import load_case
            case = load_case(safe_subject_id(subject_id), files, self._settings, with_label=False)
            if subsets is None:
                chosen = [Subset(files, self.modalities)]
            else:
                chosen = Subset.parse(subsets, self.modalities) if isinstance(subsets, str) else [
                    Subset(s, self.modalities) for s in subsets]
            results = {}
            for subset, result in zip(chosen, self.predictor(case, chosen)):
                out: dict = {"synth": {}}
                for suffix, (array, dtype, order) in self.app.outputs.arrays(case, result).items():
                    img = image_like(array, case.geometry, dtype=dtype, interp_order=order)
                    if suffix.endswith("_synth"):
                        out["synth"][suffix[: -len("_synth")]] = img
                    else:
                        out[suffix] = img
                if not out["synth"]:
                    del out["synth"]
                out["subset"] = tuple(subset)
                out["seconds"] = time.perf_counter() - t0
                results[subset.name] = out
        return results if subsets is not None else results[chosen[0].name]


class Trainer:
    """Training from an INI config, as ``uhved_tf train -c CONFIG``."""

    def __init__(self, cfg):
        from uhved_tf.application import Application
        self.cfg = cfg
        self.app = Application(cfg)

    @classmethod
    def from_config(cls, path, set_overrides: Sequence[str] = ()) -> "Trainer":
        """``set_overrides``: ``SECTION.key=value`` strings, as the CLI's ``--set``."""
        from uhved_tf.config import load_config
        return cls(load_config(path, set_overrides=set_overrides))

    def fit(self, resume: bool = False, overwrite: bool = False, progress: bool = False) -> dict:
        """Train to ``[TRAINING] max_iter``; returns the final loss terms. As the CLI, refuses a
        model_dir with checkpoints unless ``resume`` (continue) or ``overwrite`` (start again)."""
        return self.app.train(resume=resume, overwrite=overwrite, progress=progress)

    @property
    def model_dir(self) -> Path:
        return Path(self.cfg.system.model_dir)
