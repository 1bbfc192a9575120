"""Shared test set-up: quiet TensorFlow, oneDNN on, and a seeded NumPy generator.

The environment must be set before TensorFlow is imported anywhere, which is why it lives at the
top of the root ``conftest.py`` (pytest imports it before any test module).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# The two pytest workers share the machine's two cores: one compute thread per TensorFlow process
# (the workers and the CLI processes they start) instead of one per core in each, which made the
# processes of the two workers preempt each other on the tiny test networks.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

MODALITIES = ("T1", "T1c", "T2", "Flair")


@pytest.fixture
def rng():
    """A fresh, seeded NumPy generator per test (tests never share random state)."""
    return np.random.default_rng(20190513)


# The longest test files (seconds of one file on one worker, measured with --junitxml on the 2-core
# machine), longest first. `make test` runs two workers that take whole files (--dist loadfile) in
# collection order: starting with the longest ones keeps both workers busy to the end instead of
# leaving one file running alone at the end (longest-processing-time-first scheduling). Files not
# listed keep their order after these; a stale list only costs balance, never correctness.
LONGEST_FILES = (
    "tests/test_training_recipe.py", "tests/test_table1_cli.py", "tests/reliability/test_kill_resume.py",
    "tests/export/test_export.py", "tests/test_end_to_end.py", "tests/test_performance_benchmark.py",
    "tests/test_zoo_golden.py", "tests/test_dataset_layouts.py", "tests/test_brats2023.py",
    "tests/reliability/test_training_safety.py", "tests/inference/test_predictor.py", "tests/test_extensions.py",
    "tests/training/test_distributed.py", "tests/reliability/test_input_safety.py", "tests/training/test_resume.py",
    "tests/reliability/test_bad_inputs.py", "tests/reliability/test_soak.py", "tests/test_baselines_cli.py",
    "tests/reliability/test_write_faults.py", "tests/model/test_baselines.py", "tests/test_api_zoo.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        first_seen.setdefault(item.nodeid.split("::")[0], i)

    def key(item):
        path = item.nodeid.split("::")[0]
        return rank.get(path, len(rank)), first_seen[path]

    items.sort(key=key)
