"""The benchmark scripts run end to end (tiny sizes) and print every figure they promise.

The numbers themselves are not checked: speed targets live in the benchmarks' output, never in
timed unit tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_script(*args, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_inference_subsets_benchmark_prints_all_ratios():
    # The smallest network (two levels, width 2: building and tracing it is most of the run) and two subsets.
    out = run_script("benchmarks/inference_subsets.py", "--size", 24, "--window", 16, "--repeats", 1,
                     "--base-width", 2, "--levels", 2, "--case-shape", "24,24,16", "--subsets", 2)
    for text in (" 2 subsets, encode once:", "lowest possible ratio", "one subset, 10 samples:",
                  " 2 separate runs:", "one run for the  2 subsets:"):
        assert text in out, out


def test_inference_benchmark_without_torch_says_what_to_install(tmp_path):
    """torch and monai are never CI dependencies: without them the MONAI comparison stops at once
    with one line naming the interpreter and the requirements file, before any work."""
    missing = tmp_path / "no-python"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "benchmarks/inference.py", "--quick", "--twin-python", str(missing)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(missing) in lines[0] and "benchmarks/requirements-twin.txt" in lines[0], lines[0]
