"""Validation with subjects that lack a modality (``allow_missing_modalities``): each subset is
scored on the cases that have all of its modalities, the counts are in the result, a subset no
case has is reported and left out of the score, and training is never stopped by it.

TensorFlow-free: hand-made cases and a stand-in predictor (the application's build_validator on
tiny files for the last test)."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import MODALITIES
from uhved_tf.convention import PRESETS
from uhved_tf.errors import DataError
from uhved_tf.subset import Subset
from uhved_tf.training.validation import Validator

CONVENTION = PRESETS["brats2018"]


def case(cid, missing=(), perfect=True):
    """A 4^3 case with a tumour (label classes 0..3); ``perfect``: the stand-in predicts its label."""
    label = np.zeros((4, 4, 4), np.int32)
    label[1:3, 1:3, 1:3] = 2
    label[1, 1, 1] = 3
    mask = np.array([0.0 if m in missing else 1.0 for m in MODALITIES], np.float32)
    return SimpleNamespace(id=cid, image=np.ones((4, 4, 4, 4), np.float32) * mask, data_mask=mask, label=label,
                           perfect=perfect)


class StandIn:
    """Predicts the label (``case.perfect``) or background everywhere; refuses, as the real
    predictor does, a subset the case cannot give."""

    def __init__(self):
        self.calls = []

    def __call__(self, case, subsets, samples=None):
        assert samples == 0
        self.calls.append((case.id, [Subset(s, MODALITIES).name for s in subsets]))
        for s in subsets:
            if any(m in s and not on for m, on in zip(MODALITIES, case.data_mask)):
                raise DataError(f"subject {case.id}: {Subset(s, MODALITIES).name} is not available")
        classes = case.label if case.perfect else np.zeros_like(case.label)
        return [{"seg_prob": np.eye(4, dtype=np.float32)[classes], "synth": case.image} for _ in subsets]


def test_incomplete_case_is_scored_on_the_subsets_it_has(caplog):
    predict = StandIn()
    cases = [case("full_ok"), case("no_t2", missing=("T2",), perfect=False)]
    with caplog.at_level(logging.WARNING, logger="uhved_tf.training.validation"):
        validator = Validator(cases, Subset.parse("full;singles", MODALITIES), predict, MODALITIES, CONVENTION)
        result = validator()
    assert dict(predict.calls)["no_t2"] == ["T1", "T1c", "Flair"]
    assert result["cases/T1+T1c+T2+Flair"] == 1 and result["cases/T2"] == 1 and result["cases/T1"] == 2
    # the per-subset mean is over the cases that had the subset
    assert result["dice/whole/T1+T1c+T2+Flair"] == 1.0 and result["dice/whole/T2"] == 1.0
    assert result["dice/whole/T1"] == 0.5
    assert result["dice/whole"] == pytest.approx(np.mean([1.0, 0.5, 0.5, 1.0, 0.5]))
    assert math.isfinite(result["score"]) and result["images"]
    assert "validation subject no_t2 has no T2: scored on 3 of the 5 validation subsets (T1, T1c, Flair)" \
        in caplog.text


def test_a_subset_no_validation_case_has_is_reported_not_scored(caplog):
    cases = [case("a", missing=("T2",)), case("b", missing=("T2",))]
    with caplog.at_level(logging.WARNING, logger="uhved_tf.training.validation"):
        validator = Validator(cases, Subset.parse("T2;T1c,Flair", MODALITIES), StandIn(), MODALITIES, CONVENTION)
        result = validator()
    assert result["cases/T2"] == 0 and result["cases/T1c+Flair"] == 2
    assert not any(k.startswith("dice/") and k.endswith("/T2") for k in result)
    assert all(math.isfinite(v) for k, v in result.items() if k != "images")
    assert result["score"] == 1.0                                   # T1c+Flair only
    assert "validation subset T2: no validation subject has all of T2; it is not scored" in caplog.text


def test_complete_cases_keep_the_columns_of_validation_csv():
    """No ``cases/`` keys when every case has every subset: validation.csv of a resumed run keeps its columns."""
    result = Validator([case("a"), case("b")], Subset.parse("full;singles", MODALITIES), StandIn(), MODALITIES,
                       CONVENTION)()
    assert not any(k.startswith("cases/") for k in result)
    assert sorted(k for k in result if k.startswith("dice/")) == sorted(
        [f"dice/{r}/{s}" for r in ("whole", "core", "enhancing") for s in ("T1+T1c+T2+Flair", *MODALITIES)]
        + [f"dice/{r}" for r in ("whole", "core", "enhancing")])


def test_no_validation_subject_has_any_subset_means_no_validation(tmp_path, rng, caplog):
    """The application then validates nothing (said once) instead of stopping the training."""
    from tests.helpers import FAST_INI, ini_with, write_tiny_subject
    from uhved_tf.application import Application
    from uhved_tf.config import load_config

    data = tmp_path / "data"
    for i in range(2):
        write_tiny_subject(data, f"s{i}", rng, missing=("T2",))
    ini = tmp_path / "tiny.ini"
    ini.write_text(ini_with(FAST_INI.format(data=data, model=tmp_path / "model"), {"TRAINING": {
        "allow_missing_modalities": "True", "validation_every_n": "1", "validation_subsets": "full;T2"}}))
    app = Application(load_config(ini))
    subjects = app.discover(need_label=True)
    with caplog.at_level(logging.WARNING, logger="uhved_tf.application"):
        assert app.build_validator(subjects, {s.id: "Validation" for s in subjects}, model=None) == (None, None)
    assert ("validation_subsets = full;T2: none of the 2 validation subjects has every modality of any of these "
            "subsets: not validating (choose subsets of the modalities they have: T1, T1c, Flair)") in caplog.text
