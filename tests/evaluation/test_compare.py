"""Paired run comparison: planted differences are found, identical runs are not, unpaired subjects
are dropped and counted, bad CSVs raise DataError naming the file, and the Markdown / CSV outputs."""

import csv

import numpy as np
import pytest

from tests.conftest import MODALITIES
from uhved_tf.errors import DataError
from uhved_tf.evaluation.compare import (
    MEAN_ROW,
    RESULT_FIELDS,
    compare,
    compare_csv,
    compare_markdown,
    load_per_case,
)
from uhved_tf.evaluation.report import write_reports

SUBSETS = [("T1c", "Flair"), ("T2",), ("T1", "T1c", "T2", "Flair")]
REGIONS = ("whole", "core", "enhancing")


def make_rows(rng, subjects, subsets=SUBSETS, shift=0.0, base=None):
    """Per-case rows like report.py's; ``base`` (same rows) + ``shift`` + small noise when given."""
    rows = []
    for subset in subsets:
        for s in subjects:
            row = {"subject": s, "subset": "+".join(subset)}
            for region in REGIONS:
                if base is None:
                    row[f"dice_{region}"] = float(rng.uniform(0.4, 0.8))
                else:
                    ref = next(r for r in base if r["subject"] == s and r["subset"] == row["subset"])
                    row[f"dice_{region}"] = ref[f"dice_{region}"] + shift + float(rng.normal(0, 0.01))
                row[f"hd95_{region}"] = float(rng.uniform(2, 10))
            rows.append(row)
    return rows


def entry(result, subset, region):
    return next(e for e in result if e["subset"] == subset and e["region"] == region)


def test_planted_improvement_is_significant_for_b(rng):
    subjects = [f"case{i:02d}" for i in range(12)]
    a = make_rows(rng, subjects)
    b = make_rows(rng, subjects, shift=0.1, base=a)
    result = compare(a, b)
    assert {e["subset"] for e in result} == {"+".join(s) for s in SUBSETS} | {MEAN_ROW}
    assert len(result) == (len(SUBSETS) + 1) * len(REGIONS)
    for e in result:
        assert set(e) == set(RESULT_FIELDS)
        assert e["n"] == 12 and not e["n_small"]
        assert e["significant"] and e["better"] == "B" and e["p_value"] < 0.05
        assert e["mean_b"] - e["mean_a"] == pytest.approx(0.1, abs=0.02)
    # the exact two-sided p of 12 positive differences: 2 / 2^12
    assert entry(result, "T2", "whole")["p_value"] == pytest.approx(2 / 2**12)


def test_lower_is_better_for_hd95(rng):
    subjects = [f"s{i}" for i in range(10)]
    a = make_rows(rng, subjects)
    b = [dict(r, hd95_whole=r["hd95_whole"] + 1.0 + 0.01 * i) for i, r in enumerate(a)]
    e = entry(compare(a, b, regions=("whole",), metric="hd95"), "T2", "whole")
    assert e["better"] == "A" and e["significant"]
    with pytest.raises(ValueError, match='did you mean "dice"'):
        compare(a, b, metric="dise")


def test_identical_runs_are_not_significant(rng):
    subjects = [f"case{i:02d}" for i in range(8)]
    a = make_rows(rng, subjects)
    result = compare(a, [dict(r) for r in a])
    for e in result:
        assert e["p_value"] == 1.0 and not e["significant"] and e["better"] is None
        assert e["mean_a"] == e["mean_b"]


def test_unpaired_subjects_are_dropped_and_counted(rng, caplog):
    a = make_rows(rng, ["s1", "s2", "s3", "s4", "s5"])
    b = make_rows(rng, ["s3", "s4", "s5", "s6"])
    with caplog.at_level("WARNING", logger="uhved_tf.evaluation.compare"):
        result = compare(a, b)
    e = entry(result, "T2", "core")
    assert (e["n"], e["n_only_a"], e["n_only_b"]) == (3, 2, 1)
    assert e["n_small"] and not e["significant"]  # 3 pairs: smallest exact two-sided p is 0.25
    paired = [r["dice_core"] for r in a if r["subset"] == "T2" and r["subject"] in ("s3", "s4", "s5")]
    assert e["mean_a"] == pytest.approx(np.mean(paired))
    assert "2 subject(s) only in A and 1 only in B" in caplog.text


def test_markdown_table_has_a_row_per_subset_with_marks(rng):
    subjects = [f"case{i:02d}" for i in range(12)]
    a = make_rows(rng, subjects)
    b = make_rows(rng, subjects, shift=0.1, base=a)
    result = compare(a, b)
    md = compare_markdown(result, SUBSETS, MODALITIES, "U-HeMIS", "U-HVED")
    lines = md.strip().splitlines()
    assert "U-HeMIS" in lines[0] and "U-HVED" in lines[0]
    ncols = len(lines[0].strip("|").split("|"))
    body = lines[2 : 2 + len(SUBSETS)]
    for line, subset in zip(body, SUBSETS):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == ncols
        assert cells[: len(MODALITIES)] == ["●" if m in subset else "○" for m in MODALITIES]
        # B is better and significant in every region: bold with a star in every B column
        for i in range(len(REGIONS)):
            a_cell, b_cell = cells[len(MODALITIES) + 2 * i], cells[len(MODALITIES) + 2 * i + 1]
            assert b_cell.startswith("**") and b_cell.endswith("\\*") and "**" not in a_cell
        assert cells[-1] == "12"
    assert lines[2 + len(SUBSETS)].startswith("| Mean")


def test_csv_round_trip_and_writer(rng, tmp_path):
    subjects = [f"case{i:02d}" for i in range(6)]
    rows = make_rows(rng, subjects)
    summary = {"+".join(s): {} for s in SUBSETS}
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    write_reports(rows, {k: {"dice_whole": 0.5, "dice_core": 0.5, "dice_enhancing": 0.5, "hd95_whole": 1.0}
                         for k in summary}, SUBSETS, MODALITIES, tmp_path / "a")
    loaded = load_per_case(tmp_path / "a")  # a directory: its per_case.csv
    assert loaded == rows
    result = compare(loaded, load_per_case(tmp_path / "a" / "per_case.csv"))
    compare_csv(result, tmp_path / "out" / "compare.csv")
    with open(tmp_path / "out" / "compare.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert len(back) == len(result) and list(back[0]) == list(RESULT_FIELDS)
    assert back[0]["better"] == "" and float(back[0]["p_value"]) == 1.0


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "no such file"),
        ("", "empty file"),
        ("subject,dice_whole\ns1,0.5\n", "missing column.*subset"),
        ("subject,subset,dice_whole\ns1,T1,abc\n", "line 2: column 'dice_whole' is not a number"),
        ("subject,subset,dice_whole\ns1,T1,0.5\ns1,T1,0.6\n", "appears twice"),
        ("subject,subset,dice_whole\ns1,T1\n", "columns expected"),
        ("subject,subset,dice_whole\n", "no rows"),
    ],
)
def test_load_per_case_errors_name_the_file(tmp_path, content, match):
    path = tmp_path / "per_case.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=match) as info:
        load_per_case(path)
    assert str(path) in str(info.value)


def paired_rows(a, b, subset="T2"):
    """Rows of two runs with the given Dice (whole tumour) per subject."""
    def rows(values):
        return [{"subject": f"s{i}", "subset": subset, "dice_whole": float(v)} for i, v in enumerate(values)]
    return rows(a), rows(b)


def test_float_noise_does_not_break_ties():
    """Differences equal in exact arithmetic (0.1 three times...) are ties, whatever the float
    noise of b - a: with ties the normal approximation (tie-corrected), on the clean differences."""
    from scipy import stats

    a = np.array([0.1, 0.2, 0.3, 0.7, 0.5, 0.6, 0.35, 0.45])
    clean = np.array([0.1, 0.1, 0.2, 0.2, -0.1, 0.3, 0.1, 0.2])
    b = a + clean
    assert np.unique(np.abs(b - a)).size > np.unique(np.abs(clean)).size      # the noise is there
    e = entry(compare(*paired_rows(a, b), regions=("whole",)), "T2", "whole")
    # the signed-rank normal approximation by hand: mid-ranks of |d|, variance corrected for ties
    n, ranks = clean.size, stats.rankdata(np.abs(clean))
    r_plus = ranks[clean > 0].sum()
    _, t = np.unique(np.abs(clean), return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24 - np.sum(t**3 - t) / 48
    p = 2 * stats.norm.sf(abs(r_plus - n * (n + 1) / 4) / np.sqrt(var))
    assert e["p_value"] == pytest.approx(p, rel=1e-9)
    assert e["statistic"] == min(r_plus, ranks[clean < 0].sum())
    assert (e["n"], e["n_nonzero"]) == (8, 8)


def test_zero_differences_are_dropped_and_do_not_count_for_the_small_sample_flag():
    """8 pairs, 4 of them equal (one only up to float noise): the exact test on the 4 non-zero
    differences, flagged n_small (its smallest two-sided p is 2/2^4 = 0.125)."""
    same = np.array([0.7, 0.3, 0.9, 0.55])
    a = np.concatenate([same, [0.2, 0.4, 0.6, 0.8]])
    b = np.concatenate([(same + 0.1) - 0.1, [0.25, 0.47, 0.69, 0.91]])
    assert np.count_nonzero(b - a) == 5                                        # 0.55: float noise only
    e = entry(compare(*paired_rows(a, b), regions=("whole",)), "T2", "whole")
    assert e["n_small"] and e["p_value"] == pytest.approx(2 / 2**4)
    assert (e["n"], e["n_nonzero"]) == (8, 4) and not e["significant"] and e["better"] == "B"
    all_zero = entry(compare(*paired_rows(a, a), regions=("whole",)), "T2", "whole")
    assert all_zero["p_value"] == 1.0 and all_zero["n_small"] and (all_zero["n"], all_zero["n_nonzero"]) == (8, 0)
