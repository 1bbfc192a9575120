"""The Python API segments several modality subsets of one case in one call (encoded once), as the
CLI's ``inference --modalities "T1c,Flair;T2"``; each equals the call for that subset alone."""

from pathlib import Path

import numpy as np
import pytest

from uhved_tf import Predictor
from uhved_tf.errors import ConfigError

CASE = Path(__file__).resolve().parents[1] / "model_zoo" / "demo_case"
FILES = {m: CASE / f"Brats18_Demo_HGG_001_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")}


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_model_dir("uhved_demo", set_overrides=["INFERENCE.samples=0"])


def test_several_subsets_in_one_call_equal_one_call_each(predictor):
    both = predictor.predict(FILES, subject_id="demo", subsets="T1c,Flair;T2")
    assert list(both) == ["T1c+Flair", "T2"]
    assert both["T2"]["subset"] == ("T2",)
    alone = predictor.predict({"t2": FILES["t2"]}, subject_id="demo")
    np.testing.assert_array_equal(np.asarray(both["T2"]["seg"].dataobj), np.asarray(alone["seg"].dataobj))
    np.testing.assert_allclose(np.asarray(both["T2"]["synth"]["Flair"].dataobj),
                               np.asarray(alone["synth"]["Flair"].dataobj), atol=1e-5)
    assert set(predictor.predict(FILES, subsets="singles")) == {"T1", "T1c", "T2", "Flair"}


def test_an_unknown_subset_name_is_one_clear_error(predictor):
    with pytest.raises(ConfigError, match='did you mean "Flair"') as info:
        predictor.predict(FILES, subsets="T1c,Flar")
    assert "\n" not in str(info.value)
