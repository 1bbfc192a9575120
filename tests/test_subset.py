"""Subset: the one value type of a modality subset, and the one table of modality spellings."""

import pickle

import numpy as np
import pytest

from uhved_tf.errors import ConfigError
from uhved_tf.subset import Subset, all_subsets, canonical_modality, files_from_flags, modality_for

MODS = ("T1", "T1c", "T2", "Flair")


@pytest.mark.parametrize("spelling,expected", [
    ("t1", "T1"), ("T1w", "T1"), ("t1n", "T1"), ("T1ce", "T1c"), ("t1gd", "T1c"), ("T1Gd", "T1c"),
    ("t2w", "T2"), ("FLAIR", "Flair"), ("t2f", "Flair"), ("fl", "Flair")])
def test_usual_spellings_find_the_configured_modality(spelling, expected):
    assert modality_for(spelling, MODS) == expected
    # ... whatever the config calls it (BraTS 2018 file suffixes as section names).
    assert modality_for(spelling, ("t1", "t1ce", "t2", "flair")) == expected.lower().replace("t1c", "t1ce")


def test_an_unknown_name_is_one_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r'unknown modality "Flar"; did you mean "Flair"\?'):
        modality_for("Flar", MODS)
    assert canonical_modality(" T1CE ") == "t1c"


def test_subset_is_an_ordered_tuple_with_name_and_mask():
    s = Subset(["flair", "t1ce"], MODS)
    assert s == ("T1c", "Flair") and s.name == "T1c+Flair" and "T1c" in s and len(s) == 2
    assert s.mask == 0b1010 and s.mask_array().tolist() == [0, 1, 0, 1]
    assert Subset.from_name("T1c+Flair", MODS) == s == Subset.from_mask(np.array([0, 1, 0, 1]), MODS)
    assert pickle.loads(pickle.dumps(s)) == s and pickle.loads(pickle.dumps(s)).name == "T1c+Flair"
    with pytest.raises(ConfigError):
        Subset([], MODS)


def test_all_subsets_in_table_order():
    subsets = all_subsets(MODS)
    assert len(subsets) == 15 and len(set(s.mask for s in subsets)) == 15
    assert [s.name for s in subsets[:5]] == ["T1", "T1c", "T2", "Flair", "T1+T1c"]
    assert subsets[-1].name == "T1+T1c+T2+Flair"


@pytest.mark.parametrize("text,names", [
    ("all", None), ("full", ["T1+T1c+T2+Flair"]), ("singles", ["T1", "T1c", "T2", "Flair"]),
    ("T1c,Flair;T2", ["T1c+Flair", "T2"]), ("T1ce+flair", ["T1c+Flair"]), ("full;T1,T1c,T2,Flair", ["T1+T1c+T2+Flair"])])
def test_parse(text, names):
    got = [s.name for s in Subset.parse(text, MODS)]
    assert got == (names if names is not None else [s.name for s in all_subsets(MODS)])


@pytest.mark.parametrize("text", ["", " ; ", None])
def test_parse_refuses_no_subset(text):
    with pytest.raises(ConfigError, match="no modality subset"):
        Subset.parse(text, MODS)


def test_parse_names_the_bad_part():
    with pytest.raises(ConfigError, match=r'did you mean "Flair".*in the subset "T1c,Flare"'):
        Subset.parse("T2;T1c,Flare", MODS)


def test_files_from_flags():
    assert files_from_flags({"t1c": "a.nii.gz", "flair": None}, ("t1", "t1ce", "t2", "flair")) == {
        "t1ce": __import__("pathlib").Path("a.nii.gz")}
    with pytest.raises(ConfigError, match="--t2 is not a modality of this model"):
        files_from_flags({"t2": "b.nii.gz"}, ("T1", "T1c", "Flair"))
