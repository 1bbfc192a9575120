"""``uhved_tf table1``: like-for-like training and evaluation of several networks, at tiny scale
(two levels, width 2) through the real CLI, and the report it writes (checked against the
per-case CSVs). The re-run (whose trainings find nothing to do) and the refusal run the CLI's
``main`` in this process; the trainings and evaluations it starts are subprocesses as always."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from tests.helpers import FAST_INI, run_cli, run_cli_here
from uhved_tf.errors import ConfigError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("table1")
    data = root / "data"
    from uhved_tf.demo.synthetic import make_demo_dataset
    make_demo_dataset(data, n_subjects=5, shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0), seed=2)
    cfg = root / "tiny.ini"
    cfg.write_text(FAST_INI.format(data=data, model=root / "model").replace(
        "exclude_fraction_for_inference = 0.25", "exclude_fraction_for_inference = 0.4"))
    out = root / "study"
    proc = run_cli("table1", "-c", cfg, "--methods", "u_hved,u_hemis", "--max_iter", "2", "-o", out, "-q")
    return root, cfg, out, proc


def mean_dice(per_case, subset, region):
    with open(per_case, newline="") as f:
        vals = [float(r[f"dice_{region}"]) for r in csv.DictReader(f) if r["subset"] == subset]
    return float(np.mean(vals)), len(vals)


def test_table1_trains_and_evaluates_every_method_like_for_like(study):
    root, cfg, out, proc = study
    for slug in ("u_hved", "u_hemis"):
        assert (out / "models" / slug / "checkpoints" / "ckpt-2.index").exists()
        assert (out / "eval" / slug / "per_case.csv").exists()
    # One split for every method.
    assert (out / "dataset_split.csv").exists()
    resolved = {slug: (out / "models" / slug / "config_resolved.ini").read_text() for slug in ("u_hved", "u_hemis")}
    assert all(f"dataset_split_file = {out / 'dataset_split.csv'}" in t for t in resolved.values())
    report = (out / "table1.md").read_text()
    assert report.count("●") == 32   # 15 subsets x 1..4 modalities = 32 filled circles
    assert "## Subsets where each run is >= U-HeMIS (of 15)" in report
    assert "| U-HVED |" in report and "The paper's patterns" in report and "Synthesis of the missing" in report
    assert "table1.md" in proc.stdout or "report in" in proc.stdout


def test_table1_numbers_are_the_means_of_the_per_case_scores(study):
    _, _, out, _ = study
    with open(out / "table1.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for run, slug in (("U-HVED", "u_hved"), ("U-HeMIS", "u_hemis")):
        for subset, region in (("T1c", "enhancing"), ("T1+T1c+T2+Flair", "whole"), ("T2+Flair", "core")):
            expected, n = mean_dice(out / "eval" / slug / "per_case.csv", subset, region)
            (row,) = [r for r in rows if r["run"] == run and r["subset"] == subset and r["region"] == region]
            assert float(row["dice"]) == pytest.approx(expected) and int(row["n"]) == n == 2


def test_table1_rerun_resumes_without_training_or_evaluating_again(study):
    root, cfg, out, _ = study
    before = (out / "eval" / "u_hved" / "per_case.csv").stat().st_mtime_ns
    log_lines = (out / "study.log").read_text().count("$ ")
    run_cli_here("table1", "-c", cfg, "--methods", "u_hved,u_hemis", "--max_iter", "2", "-o", out, "-q")
    assert (out / "eval" / "u_hved" / "per_case.csv").stat().st_mtime_ns == before
    # Two `train --resume` calls (each finds nothing to do), no evaluation.
    new = (out / "study.log").read_text().split("$ ")[log_lines + 1:]
    assert len(new) == 2 and all(" train " in c for c in new)


def test_table1_refuses_configs_that_differ_in_more_than_the_network(study, tmp_path):
    root, cfg, out, _ = study
    other = tmp_path / "other.ini"
    other.write_text(cfg.read_text().replace("lr = 0.001", "lr = 0.01"))
    proc = run_cli_here("table1", "-c", cfg, "--methods", f"u_hved,u_hemis={other}", "-o", tmp_path / "s",
                        check=False)
    assert proc.returncode == 2
    assert "differ in more than the network" in proc.stderr and "lr = 0.01" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_table1_methods_are_checked_before_anything_runs(tmp_path):
    from pathlib import Path

    from uhved_tf.study import parse_methods
    cfg = Path(__file__).resolve().parents[1] / "config" / "demo.ini"
    with pytest.raises(ConfigError, match="u_hemi"):
        parse_methods("u_hved,u_hemi", cfg)
    with pytest.raises(ConfigError, match="at least two"):
        parse_methods("u_hved", cfg)
    assert [m for m, _ in parse_methods("u_hved,u_hemis,hemis,single", cfg)] == ["u_hved", "u_hemis", "hemis",
                                                                                  "single"]
