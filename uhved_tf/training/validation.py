"""Validation during training: Dice on the validation split for a fixed set of subsets, and
early stopping.

The validation cases are preprocessed once and kept in memory. Each round segments them with the
posterior mean (``samples = 0``: deterministic and cheap) for every subset (encoders once per
window), scores whole / core / enhancing Dice on the working grid and returns the mean over
regions, subsets and cases as the score to maximise. TensorBoard gets the scores and, for the
first case, the middle axial slice of the inputs, the syntheses of the full subset and the
segmentation next to the ground truth.

Incomplete subjects (``[TRAINING] allow_missing_modalities = True``): a subset is scored only on
the cases that have every one of its modalities (a subject without T2 is not scored on ``full``
nor on ``T2``); each subset's Dice is the mean over those cases. When a subset lacks some cases,
the result also has ``cases/<subset>`` (how many were scored; 0: none could, the subset has no
Dice and is left out of the score), and the validator says so once, when it is built.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from uhved_tf.evaluation.metrics import dice, region_mask
from uhved_tf.subset import Subset

log = logging.getLogger(__name__)


class Validator:
    """``validator(model) -> {"score": ..., "dice/<region>/<subset>": ..., "images": {...}}``.

    ``cases``: the preprocessed validation cases (with labels); ``predict(case, subsets,
    samples=0)``: the inference step of the model being trained (it holds the model: the weights
    change between rounds, the traced functions are reused). Each case is predicted and scored
    only for the subsets it has every modality of (module docstring)."""

    def __init__(self, cases, subsets, predict, modalities, convention):
        self.modalities = tuple(modalities)
        self.cases = [c for c in cases if c.label is not None]
        self.subsets = [Subset(s, self.modalities) for s in subsets]
        self.predict = predict
        self.convention = convention
        self.label_values = np.asarray(convention.label_values)
        self.regions = convention.region_map
        #: per case, the subsets it can provide (all of their modalities present)
        self.available = [[s for s in self.subsets if s.available_in(c.data_mask)] for c in self.cases]
        self.counts = {s: sum(s in have for have in self.available) for s in self.subsets}
        #: the subsets scored (at least one case has them); the others are reported with 0 cases
        self.scored = [s for s in self.subsets if self.counts[s]]
        self.incomplete = any(n < len(self.cases) for n in self.counts.values())
        for case, have in zip(self.cases, self.available):
            if len(have) < len(self.subsets):
                lacking = [m for m, on in zip(self.modalities, case.data_mask) if not on]
                log.warning("validation subject %s has no %s: scored on %d of the %d validation subsets (%s)",
                            case.id, ", ".join(lacking), len(have), len(self.subsets),
                            ", ".join(s.name for s in have) or "none")
        for s in self.subsets:
            if not self.counts[s]:
                log.warning("validation subset %s: no validation subject has all of %s; it is not scored "
                            "(cases/%s = 0 in validation.csv) and left out of the validation score",
                            s.name, ", ".join(s), s.name)

    def __call__(self, model=None) -> dict:
        regions = self.regions
        per = {(r, s): [] for r in regions for s in self.scored}
        images = {}
        for case, have in zip(self.cases, self.available):
            if not have:
                continue
            results = self.predict(case, have, samples=0)
            ref = self.label_values[case.label]
            for subset, res in zip(have, results):
                pred = self.label_values[np.argmax(res["seg_prob"], axis=-1)]
                for r in regions:
                    per[(r, subset)].append(dice(region_mask(pred, r, regions), region_mask(ref, r, regions)))
            if not images:
                images = self._images(case, have, results, ref)
        out = {f"dice/{r}/{s.name}": float(np.mean(v)) for (r, s), v in per.items()}
        if self.incomplete:
            out.update({f"cases/{s.name}": self.counts[s] for s in self.subsets})
        for r in regions:
            out[f"dice/{r}"] = float(np.mean([np.mean(per[(r, s)]) for s in self.scored]))
        out["score"] = float(np.mean([out[f"dice/{r}"] for r in regions]))
        out["images"] = images
        return out

    def _images(self, case, subsets, results, ref) -> dict:
        z = case.image.shape[2] // 2
        full = results[int(np.argmax([len(s) for s in subsets]))]
        imgs = {}
        for i, m in enumerate(self.modalities):
            imgs[f"input/{m}"] = _gray(case.image[:, :, z, i])
            if "synth" in full:
                imgs[f"synth/{m}"] = _gray(full["synth"][:, :, z, i])
        pred = self.label_values[np.argmax(full["seg_prob"], axis=-1)]
        colours = self.convention.colour_map
        imgs["segmentation/prediction"] = _colour(pred[:, :, z], colours)
        imgs["segmentation/ground_truth"] = _colour(ref[:, :, z], colours)
        return imgs


def _gray(slice2d) -> np.ndarray:
    lo, hi = np.percentile(slice2d, [1, 99])
    scaled = np.clip((slice2d - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat((255 * scaled).astype(np.uint8)[..., None], 3, axis=-1)


def _colour(labels2d, colours) -> np.ndarray:
    out = np.zeros(labels2d.shape + (3,), np.uint8)
    for value, rgb in colours.items():
        out[labels2d == value] = rgb
    return out


@dataclass
class EarlyStopping:
    """Stop when the validation score has not improved for ``patience`` validation rounds
    (``mode = mean``: the mean of the last ``patience`` scores is not above the best score before
    them; ``validation_up``: the score fell ``patience`` rounds in a row)."""

    patience: int
    mode: str = "mean"
    scores: list = field(default_factory=list)

    SUPPORTED = ("mean", "validation_up")

    def update(self, score: float) -> bool:
        self.scores.append(score)
        p = self.patience
        if p <= 0 or len(self.scores) <= p:
            return False
        if self.mode == "validation_up":
            recent = self.scores[-(p + 1):]
            return all(b < a for a, b in zip(recent, recent[1:]))
        before, recent = self.scores[:-p], self.scores[-p:]
        return float(np.mean(recent)) <= max(before)
