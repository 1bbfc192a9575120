"""Shared test set-up: quiet TensorFlow, oneDNN on, and a seeded NumPy generator.

The environment must be set before TensorFlow is imported anywhere, which is why it lives at the
top of the root ``conftest.py`` (pytest imports it before any test module).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

MODALITIES = ("T1", "T1c", "T2", "Flair")


@pytest.fixture
def rng():
    """A fresh, seeded NumPy generator per test (tests never share random state)."""
    return np.random.default_rng(20190513)
