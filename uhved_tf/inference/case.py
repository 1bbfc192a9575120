"""One preprocessed case in, its outputs out: :class:`CasePredictor` (segmentation, syntheses
and uncertainty of any modality subsets, on the case's working grid) and :class:`Outputs` (the
arrays in the input's geometry and the NIfTI files, written all or nothing).

The local step of ``inference``, ``evaluate`` and validation; the serving client reuses
:class:`Outputs` for what the server returns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uhved_tf.data import preprocessing as pp
from uhved_tf.errors import DataError
from uhved_tf.io.atomic import temporary_sibling
from uhved_tf.subset import Subset


class CasePredictor:
    """``predictor(case, subsets)`` -> one result dict per subset (see
    :func:`uhved_tf.inference.predictor.predict_volume`). A missing file is a missing modality.
    The traced window function is kept per (subsets, samples) and reused across cases."""

    def __init__(self, model, modalities, inference, *, seed: int, batch_size: int):
        self.model = model
        self.modalities = tuple(modalities)
        self.inference = inference            # the [INFERENCE] settings
        self.seed = int(seed)
        self.batch_size = max(1, int(batch_size))
        self.window = tuple(inference.spatial_window_size)
        self._cache: dict = {}

    def __call__(self, case, subsets, progress=None, samples: int | None = None) -> list[dict]:
        from uhved_tf.inference.predictor import WindowPredictor, predict_volume

        masks = []
        for subset in subsets:
            m = Subset(subset, self.modalities).mask_array() * case.data_mask
            if m.sum() == 0:
                raise DataError(f"subject {case.id}: none of {list(subset)} is available "
                                f"(files: {sorted(k for k in case.files if case.files[k])})")
            masks.append(m)
        inf = self.inference
        samples = inf.samples if samples is None else samples
        masks = np.stack(masks).astype(np.float32)
        key = (masks.tobytes(), samples)
        if key not in self._cache:
            outputs = ("synth",) * inf.save_synthesis + ("uncertainty",) * inf.save_uncertainty
            self._cache[key] = WindowPredictor(self.model, masks, samples=samples, seed=self.seed, tta=inf.tta,
                                               outputs=outputs, batch_size=self.batch_size)
        # Windows planned on the brain's bounding box (predict_volume's cover), not on the crop
        # with its margin.
        return predict_volume(self._cache[key], case.image, self.window, overlap=inf.window_overlap,
                              blend_mode=inf.blend_mode, border=tuple(inf.border), batch_size=self.batch_size,
                              progress=progress)


@dataclass(frozen=True)
class Outputs:
    """What is written per case and subset: the segmentation (``seg_name``: ``<id>_seg.nii.gz``, or
    the dataset's own naming, e.g. ``<id>-seg.nii.gz`` for BraTS 2023, ``<id>.nii.gz`` for nnU-Net),
    ``<id>_<modality>_synth.nii.gz`` (networks that synthesise), ``<id>_uncertainty.nii.gz`` and
    ``<id>_prob.nii.gz`` (when asked)."""

    modalities: tuple
    label_values: tuple
    uncertainty: bool = False
    probabilities: bool = False
    seg_name: str = "{id}_seg.nii.gz"

    @classmethod
    def from_config(cls, cfg, seg_name: str = "{id}_seg.nii.gz") -> "Outputs":
        return cls(tuple(cfg.modalities), tuple(cfg.task.label_values), bool(cfg.inference.save_uncertainty),
                   bool(cfg.inference.output_prob or cfg.task.output_prob), seg_name)

    def seg_file(self, subject_id: str) -> str:
        return self.seg_name.format(id=subject_id)

    def labels(self, result: dict, dtype=np.int32) -> np.ndarray:
        """The label map (label values, not classes) on the working grid."""
        return pp.unmap_labels(np.argmax(result["seg_prob"], axis=-1), self.label_values, dtype=dtype)

    def arrays(self, case, result: dict) -> dict:
        """The outputs on the case's working grid (crop undone), keyed by file-name suffix:
        ``{"seg": (array, dtype, interp_order), "T1_synth": ..., "uncertainty": ..., "prob": ...}``."""
        classes = np.argmax(result["seg_prob"], axis=-1)
        out = {"seg": (pp.unmap_labels(pp.uncrop(classes.astype(np.int32), case.box, fill=0), self.label_values),
                       np.uint8, 0)}
        if "synth" in result:
            for i, m in enumerate(self.modalities):
                out[f"{m}_synth"] = (pp.uncrop(result["synth"][..., i].astype(np.float32), case.box, fill=0.0),
                                     np.float32, 1)
        if self.uncertainty:
            out["uncertainty"] = (pp.uncrop(result["uncertainty"].astype(np.float32), case.box), np.float32, 1)
        if self.probabilities:
            out["prob"] = (pp.uncrop(result["seg_prob"].astype(np.float32), case.box), np.float32, 1)
        return out

    def write(self, case, result: dict, out_dir: Path, overwrite=False) -> list[Path]:
        """The files in the input's geometry; refuses (before writing anything) when one exists,
        unless ``overwrite``."""
        from uhved_tf.io.nifti import save_like

        targets = [(Path(out_dir) / (self.seg_file(case.id) if suffix == "seg" else f"{case.id}_{suffix}.nii.gz"),
                    *spec) for suffix, spec in self.arrays(case, result).items()]
        if not overwrite:
            existing = [str(p) for p, *_ in targets if p.exists()]
            if existing:
                raise DataError(f"{existing[0]} exists (and {len(existing) - 1} more outputs); "
                                f"pass --overwrite to replace them or choose another output folder")
        # All or nothing: every output is written under a hidden temporary name first and moved
        # into place only when all of them are written, so a full disk or an unwritable folder
        # leaves neither a partial set of outputs nor a damaged earlier result.
        staged, written, path = [], [], Path(out_dir)
        try:
            for path, arr, dtype, order in targets:
                tmp = temporary_sibling(path, "partial")
                staged.append((save_like(arr, case.geometry, tmp, dtype=dtype, interp_order=order), path))
            for tmp, path in staged:
                os.replace(tmp, path)
                written.append(path)
        except OSError as exc:
            raise DataError(f"{path}: cannot write the outputs of subject {case.id} ({exc.strerror or exc}); "
                            f"check the free space and permissions of {path.parent}") from None
        finally:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
        return written
