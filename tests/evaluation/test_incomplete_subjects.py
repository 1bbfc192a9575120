"""Subjects without every modality (``allow_missing_modalities``) in evaluation: a subset a subject
cannot provide is skipped for that subject and counted, never the whole run; a subset no subject
has is reported with 0 cases and "–", never a crash nor a bare NaN.

In-process and TensorFlow-free: the application's evaluate with a stand-in network (the real
preprocessing, scoring and reports), and the report functions on hand-made rows."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from tests.conftest import MODALITIES
from tests.helpers import FAST_INI, ini_with, write_tiny_subject
from uhved_tf.errors import DataError
from uhved_tf.evaluation.report import markdown_table, summarise
from uhved_tf.evaluation.synthesis import synthesis_table_markdown
from uhved_tf.subset import Subset

class StandIn:
    """The predictor of a network that segments everything as background and synthesises each
    modality as its input + 0.1; refuses, as the real one does, a subset the case cannot give."""

    def __init__(self):
        self.calls = []

    def __call__(self, case, subsets, progress=None, samples=None):
        self.calls.append((case.id, [Subset(s, MODALITIES).name for s in subsets]))
        for s in subsets:
            if any(m in s and not on for m, on in zip(MODALITIES, case.data_mask)):
                raise DataError(f"subject {case.id}: {Subset(s, MODALITIES).name} is not available")
        prob = np.zeros(case.image.shape[:3] + (4,), np.float32)
        prob[..., 0] = 1
        return [{"seg_prob": prob, "synth": case.image + 0.1} for _ in subsets]


@pytest.fixture
def app_with_incomplete_subject(tmp_path, rng):
    from uhved_tf.application import Application
    from uhved_tf.config import load_config

    data = tmp_path / "data"
    for i in range(3):
        write_tiny_subject(data, f"s{i}", rng, missing=("T2",) if i == 1 else ())
    ini = tmp_path / "tiny.ini"
    ini.write_text(ini_with(FAST_INI.format(data=data, model=tmp_path / "model"),
                            {"TRAINING": {"allow_missing_modalities": "True"}}))
    stand_in = StandIn()

    class App(Application):
        def load_trained_model(self):
            return None

        def predictor(self, model):
            return stand_in

    return App(load_config(ini)), stand_in, tmp_path


def test_evaluate_skips_the_subsets_a_subject_lacks_and_counts_the_cases(app_with_incomplete_subject, caplog):
    app, stand_in, tmp_path = app_with_incomplete_subject
    subsets = Subset.parse("all", MODALITIES)
    with caplog.at_level(logging.WARNING, logger="uhved_tf.evaluation.report"):
        report = app.evaluate(subsets, phase="All", out_dir=tmp_path / "eval", progress=False)
    # s1 (no T2) was asked only for the 7 subsets without T2
    asked = dict(stand_in.calls)
    assert len(asked["s0"]) == 15 and len(asked["s1"]) == 7 and not any("T2" in s for s in asked["s1"])
    summary = report["summary"]
    assert summary["T1+T1c+T2+Flair"]["cases"] == 2 and summary["T1c+Flair"]["cases"] == 3
    # the per-subset mean is over the cases that had the subset
    rows = report["rows"]
    full = [r["hd95_whole"] for r in rows if r["subset"] == "T1+T1c+T2+Flair"]
    assert summary["T1+T1c+T2+Flair"]["hd95_whole"] == pytest.approx(np.mean(full)) and len(full) == 2
    # the synthesis of T2 is scored on the subjects that have a T2 file
    assert summary["T1c+Flair"]["psnr_T2"] == pytest.approx(
        np.mean([r["psnr_T2"] for r in rows if r["subset"] == "T1c+Flair" and "psnr_T2" in r]))
    assert "s1 has no T2: 8 of the 15 subsets not scored for it" in caplog.text
    assert "subsets scored on fewer than the 3 cases (the others lack one of their modalities): T2 2, T1+T2 2," \
        in caplog.text
    out = tmp_path / "eval"
    table = (out / "table.md").read_text().splitlines()
    assert table[0].endswith("| Cases |")
    assert table[2].startswith("| ● | ○ | ○ | ○ |") and table[2].endswith("| 3 |")    # T1 alone
    assert any("a subject is scored only on the subsets it has every modality of" in line for line in table)
    assert json.loads((out / "summary.json").read_text())["T2"]["cases"] == 2
    header = (out / "per_case.csv").read_text().splitlines()[0].split(",")
    assert "psnr_T2" in header                       # whatever the first row's subject had
    assert "PSNR T2" in (out / "synthesis.md").read_text()


def test_a_subset_no_subject_has_is_reported_with_zero_cases(app_with_incomplete_subject, caplog):
    app, _, tmp_path = app_with_incomplete_subject
    for f in (tmp_path / "data").glob("*_t2.nii.gz"):
        f.unlink()
    subsets = Subset.parse("full;singles", MODALITIES)
    with caplog.at_level(logging.WARNING, logger="uhved_tf.evaluation.report"):
        report = app.evaluate(subsets, phase="All", out_dir=tmp_path / "eval", progress=False)
    summary = report["summary"]
    for name in ("T2", "T1+T1c+T2+Flair"):
        assert summary[name]["cases"] == 0 and math.isnan(summary[name]["dice_whole"])
    assert summary["Flair"]["cases"] == 3 and math.isfinite(summary["Flair"]["dice_whole"])
    assert ("subsets no case has every modality of, not scored (0 cases, – in table.md): T1+T1c+T2+Flair, T2"
            in caplog.text)
    table = (tmp_path / "eval" / "table.md").read_text()
    t2_row = next(line for line in table.splitlines() if line.startswith("| ○ | ○ | ● | ○ |"))
    assert t2_row.endswith("| – | – | – | – | 0 |") and "nan" not in table
    assert "–: no subject had the subset (left out of the Mean row)" in table
    # the command line's summary prints every requested subset (0 cases for T2)
    from uhved_tf.cli import format_summary
    printed = format_summary(summary, subsets, ["whole", "core", "enhancing"])
    t2_line = next(line for line in printed.splitlines() if line.startswith("T2 "))
    assert t2_line.split()[1:] == ["0", "-", "-", "-", "-"] and "nan" not in printed


def test_nothing_to_score_is_one_line_error(app_with_incomplete_subject):
    app, _, tmp_path = app_with_incomplete_subject
    for f in (tmp_path / "data").glob("*_t2.nii.gz"):
        f.unlink()
    with pytest.raises(DataError, match=r"^none of the 3 cases has every modality of a requested subset \(T2\)"):
        app.evaluate(Subset.parse("T2", MODALITIES), phase="All", out_dir=tmp_path / "eval", progress=False)


def test_reports_of_a_subset_without_cases():
    subsets = [Subset(s, MODALITIES) for s in (("T1c", "Flair"), ("T2",))]
    rows = [{"subject": "a", "subset": "T1c+Flair", "dice_whole": 0.5, "dice_core": 0.4, "dice_enhancing": 0.3,
             "hd95_whole": 2.0, "psnr_T1": 20.0, "ssim_T1": 0.5},
            {"subject": "b", "subset": "T1c+Flair", "dice_whole": 0.7, "dice_core": 0.6, "dice_enhancing": 0.5,
             "hd95_whole": 4.0}]                   # b has no T1 file: no T1 synthesis score
    summary = summarise(rows, subsets)
    assert summary["T1c+Flair"]["cases"] == 2 and summary["T1c+Flair"]["dice_whole"] == pytest.approx(0.6)
    assert summary["T1c+Flair"]["psnr_T1"] == 20.0          # the mean over the case that had it
    assert summary["T2"]["cases"] == 0 and math.isnan(summary["T2"]["dice_whole"])
    lines = markdown_table(summary, subsets, MODALITIES).splitlines()
    assert lines[2] == "| ○ | ● | ○ | ● | 60.0 | 50.0 | 40.0 | 3.0 | 2 |"
    assert lines[3] == "| ○ | ○ | ● | ○ | – | – | – | – | 0 |"
    assert lines[4] == "| Mean |  |  |  | 60.0 | 50.0 | 40.0 | 3.0 |  |"    # over the subsets with cases
    synth = synthesis_table_markdown(summary, subsets, MODALITIES)
    assert "nan" not in synth and synth.splitlines()[-1].startswith("| Mean |  |  |  | 20.00 | 0.500 |")
