"""benchmarks/soak.py (issue #8, item 5): the slope arithmetic, and a --quick smoke run."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import pytest

from tests.reliability.helpers import REPO

SCRIPT = REPO / "benchmarks" / "soak.py"


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_slope_ignores_the_warm_up_and_measures_growth_per_1000_iterations():
    soak = _soak_module()
    flat = [(i, 900.0 if i > 400 else 500.0 + i, 0.0) for i in range(100, 2100, 100)]
    slope, kept = soak.slope_per_1000(flat, 0.2)
    assert kept[0][0] == 500 and slope == pytest.approx(0.0, abs=1e-9)
    leaking = [(i, 800.0 + 0.05 * i, 0.0) for i in range(100, 2100, 100)]   # 50 KB per iteration
    assert soak.slope_per_1000(leaking, 0.2)[0] == pytest.approx(50.0)
    assert math.isnan(soak.slope_per_1000([(100, 1.0, 0.0)], 0.2)[0])
    assert soak.rss_mb() > 10


@pytest.mark.slow
def test_quick_soak_runs_and_reports(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out_csv = tmp_path / "soak.csv"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--iterations", "12", "--every", "3",
                           "--csv", str(out_csv)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "iteration    RSS MB   seconds" in out
    assert "MB / 1000 iterations" in out and ("PASS:" in out or "MISS:" in out)
    rows = out_csv.read_text().splitlines()
    assert rows[0] == "iteration,rss_mb,seconds" and [r.split(",")[0] for r in rows[1:]] == ["3", "6", "9", "12"]
