"""The Single baseline for every subset through the real CLI: ``train --all-subsets`` and
``evaluate`` picking the per-subset networks.

To stay within a few minutes on a loaded 2-core CPU, ``train --all-subsets`` is limited to three
subsets with ``--subsets`` (the loop is the same for 15), at two levels and width 2. The training
and the evaluation run the real CLI in a subprocess; the calls that end early (refusals, a resume
with nothing left to do) run the CLI's ``main`` in this process. ``uhved_tf table1`` is tested
with two methods in ``tests/test_table1_cli.py``.
"""

from __future__ import annotations

import csv

import pytest

from tests.helpers import FAST_INI, run_cli, run_cli_here

pytestmark = pytest.mark.slow

SUBSETS = "T1c,Flair;T2;T1,T1c,T2,Flair"
NAMES = ["T1c+Flair", "T2", "T1+T1c+T2+Flair"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    data = root / "data"
    from uhved_tf.demo.synthetic import make_demo_dataset
    make_demo_dataset(data, n_subjects=4, shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0), seed=1)
    text = FAST_INI.format(data=data, model=root / "single").replace("name = u_hved", "name = single")
    text = text.replace("samples = 2", "samples = 0")
    cfg = root / "single.ini"
    cfg.write_text(text)
    uhved = root / "uhved.ini"
    uhved.write_text(FAST_INI.format(data=data, model=root / "uhved"))
    return root, cfg, uhved


@pytest.fixture(scope="module")
def trained(project):
    root, cfg, _ = project
    proc = run_cli("train", "-c", cfg, "-q", "--all-subsets", "--subsets", SUBSETS)
    return project, proc


def test_all_subsets_writes_one_model_dir_per_subset(trained):
    (root, _, _), proc = trained
    dirs = sorted(p.name for p in (root / "single").iterdir() if p.is_dir())
    assert dirs == sorted(NAMES)
    for name in NAMES:
        d = root / "single" / name
        assert (d / "checkpoints" / "ckpt-2.index").exists()
        resolved = (d / "config_resolved.ini").read_text()
        assert f"model_dir = {d}" in resolved
        assert f"subset = {name.replace('+', ', ')}" in resolved
    # One split file shared by every subset's network, in the parent model_dir.
    assert (root / "single" / "dataset_split.csv").exists()
    assert not (root / "single" / "T2" / "dataset_split.csv").exists()
    for name in NAMES:
        assert name + ":" in proc.stdout


def test_all_subsets_resume_skips_finished_runs_and_refuses_without_it(trained):
    (root, cfg, _), _ = trained
    proc = run_cli_here("train", "-c", cfg, "-q", "--all-subsets", "--subsets", "T2", check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli_here("train", "-c", cfg, "-q", "--all-subsets", "--subsets", "T2", "--resume")
    assert "T2: nothing left to train" in proc.stdout


def test_evaluate_picks_the_model_of_each_subset(trained):
    (root, cfg, _), _ = trained
    out = root / "eval_single"
    run_cli_here("evaluate", "-c", cfg, "-q", "--subsets", SUBSETS, "-o", out)
    rows = list(csv.DictReader(open(out / "per_case.csv")))
    assert [r["subset"] for r in rows] == NAMES * (len(rows) // 3) and rows
    assert (out / "table.md").exists()
    # A subset with no trained network: one line naming the directory and how to train it.
    proc = run_cli_here("evaluate", "-c", cfg, "-q", "--subsets", "T1", "-o", root / "eval_t1", check=False)
    assert proc.returncode == 2 and "T1" in proc.stderr and "--all-subsets" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_all_subsets_refuses_hetero_modal_networks(project):
    root, _, uhved = project
    proc = run_cli_here("train", "-c", uhved, "-q", "--all-subsets", check=False)
    assert proc.returncode == 2 and "--all-subsets" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (root / "uhved").exists()
