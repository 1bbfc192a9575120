"""uhved_tf.io.discovery: NiftyNet-style subject discovery, safe ids, split files."""

import logging
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uhved_tf.errors import DataError
from uhved_tf.io.discovery import (
    InputSpec,
    find_subjects,
    load_or_create_split,
    safe_subject_id,
    subjects_in,
)

BRATS_SUFFIXES = {"T1": "_t1", "T1c": "_t1ce", "T2": "_t2", "Flair": "_flair", "label": "_seg"}
MODALITIES = ("T1", "T1c", "T2", "Flair")


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # discovery only looks at names
    return path


def brats_tree(root: Path, grade: str, ids, sections=tuple(BRATS_SUFFIXES)) -> None:
    for sid in ids:
        for section in sections:
            touch(root / grade / sid / f"{sid}{BRATS_SUFFIXES[section]}.nii.gz")


def brats_specs(*folders: Path) -> list[InputSpec]:
    specs = []
    for name, suffix in BRATS_SUFFIXES.items():
        not_contains = ("_t1ce",) if name == "T1" else ()
        specs.append(InputSpec(name, tuple(folders), (suffix,), not_contains))
    return specs


def test_brats2018_tree_over_two_search_folders(tmp_path, caplog):
    train, extra = tmp_path / "MICCAI_BraTS_2018_Data_Training", tmp_path / "extra"
    brats_tree(train, "HGG", ["Brats18_TCIA01_131_1", "Brats18_2013_2_1"])
    brats_tree(train, "LGG", ["Brats18_TCIA10_103_1"])
    brats_tree(extra, "HGG", ["Brats18_CBICA_AAB_1"])
    touch(train / "HGG" / "Brats18_2013_2_1" / "notes.txt")
    touch(train / "HGG" / "Brats18_2013_2_1" / "._Brats18_2013_2_1_t1.nii.gz")  # macOS resource fork

    with caplog.at_level(logging.INFO, logger="uhved_tf.io.discovery"):
        subjects = find_subjects(brats_specs(train, extra), required=[*MODALITIES, "label"])

    assert [s.id for s in subjects] == sorted(
        ["Brats18_TCIA01_131_1", "Brats18_2013_2_1", "Brats18_TCIA10_103_1", "Brats18_CBICA_AAB_1"]
    )
    s = subjects[0]
    assert s.id == "Brats18_2013_2_1"
    assert s.files == {
        name: train / "HGG" / s.id / f"{s.id}{suffix}.nii.gz" for name, suffix in BRATS_SUFFIXES.items()
    }
    assert any("found 4 subjects" in r.getMessage() for r in caplog.records)


def test_niftynet_style_names(tmp_path):
    for sid in ["HGG100", "HGG101", "LGG7"]:
        for mod in ["T1", "T1c", "T2", "Flair", "Label"]:
            touch(tmp_path / f"{sid}_{mod}.nii.gz")
    specs = [
        InputSpec("T1", (tmp_path,), ("T1",), ("T1c",)),
        InputSpec("T1c", (tmp_path,), ("T1c",)),
        InputSpec("T2", (tmp_path,), ("T2",)),
        InputSpec("Flair", (tmp_path,), ("Flair",)),
        InputSpec("label", (tmp_path,), ("Label",)),
    ]
    subjects = find_subjects(specs, required=["T1", "T1c", "T2", "Flair", "label"])
    assert [s.id for s in subjects] == ["HGG100", "HGG101", "LGG7"]
    assert subjects[0].files["T1"].name == "HGG100_T1.nii.gz"
    assert subjects[0].files["T1c"].name == "HGG100_T1c.nii.gz"


def test_matching_is_case_sensitive_and_removefromid_applies(tmp_path):
    touch(tmp_path / "sub01_T1_preproc.nii")
    touch(tmp_path / "sub02_t1_preproc.nii.gz")  # lower-case t1: not a match for "T1"
    spec = InputSpec("T1", (tmp_path,), ("T1",), filename_removefromid=r"_preproc$")
    assert [s.id for s in find_subjects([spec], required=["T1"])] == ["sub01"]


def test_missing_label_is_dropped_with_a_warning(tmp_path, caplog):
    brats_tree(tmp_path, "HGG", ["A1", "A2"])
    brats_tree(tmp_path, "LGG", ["B1", "B2", "B3"], sections=MODALITIES)
    specs = brats_specs(tmp_path)
    with caplog.at_level(logging.WARNING, logger="uhved_tf.io.discovery"):
        subjects = find_subjects(specs, required=[*MODALITIES, "label"])
    assert [s.id for s in subjects] == ["A1", "A2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("3 subjects have no label file: B1, B2, B3" in w for w in warnings)

    # with the label optional (inference), everyone is kept and the label is filled where present
    subjects = find_subjects(specs, required=MODALITIES, optional=["label"])
    assert [s.id for s in subjects] == ["A1", "A2", "B1", "B2", "B3"]
    assert ["label" in s.files for s in subjects] == [True, True, False, False, False]


def test_any_subset_of_modalities_when_nothing_is_required(tmp_path):
    brats_tree(tmp_path, "HGG", ["A1"], sections=("T1", "Flair"))
    brats_tree(tmp_path, "HGG", ["A2"], sections=("T2",))
    subjects = find_subjects(brats_specs(tmp_path), required=[], optional=[*MODALITIES, "label"])
    assert [(s.id, sorted(s.files)) for s in subjects] == [("A1", ["Flair", "T1"]), ("A2", ["T2"])]


def test_missing_search_folder(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(DataError, match=r"\[T1\]: path_to_search folder .*does_not_exist does not exist"):
        find_subjects([InputSpec("T1", (tmp_path, missing), ("_t1",))], required=["T1"])


def test_no_match_message(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    brats_tree(a, "HGG", ["X1"], sections=("T1c", "T2"))
    b.mkdir()
    spec = InputSpec("T1", (a, b), ("_t1",), ("_t1ce",))
    with pytest.raises(DataError) as info:
        find_subjects([spec], required=["T1"])
    assert str(info.value) == (
        f"[T1]: no file under {a}, {b} whose name contains '_t1' and not '_t1ce' (searched 2 NIfTI files)"
    )


def test_duplicate_ids_name_both_files(tmp_path):
    first = touch(tmp_path / "HGG" / "P1" / "P1_t1.nii.gz")
    second = touch(tmp_path / "LGG" / "P1" / "P1_t1.nii")
    with pytest.raises(DataError) as info:
        find_subjects([InputSpec("T1", (tmp_path,), ("_t1",))], required=["T1"])
    message = str(info.value)
    assert str(first) in message and str(second) in message and "'P1'" in message


def test_overlapping_search_folders_are_not_duplicates(tmp_path):
    brats_tree(tmp_path, "HGG", ["P1"], sections=("T1",))
    subjects = find_subjects([InputSpec("T1", (tmp_path, tmp_path / "HGG"), ("_t1",))], required=["T1"])
    assert [s.id for s in subjects] == ["P1"]


def test_no_subject_with_every_required_section(tmp_path):
    touch(tmp_path / "A_t1.nii.gz")
    touch(tmp_path / "B_seg.nii.gz")
    specs = [InputSpec("T1", (tmp_path,), ("_t1",)), InputSpec("label", (tmp_path,), ("_seg",))]
    with pytest.raises(DataError, match=r"no subject has a file in every required section \['T1', 'label'\]"):
        find_subjects(specs, required=["T1", "label"])


def test_csv_file_is_used_instead_of_searching(tmp_path):
    images = [touch(tmp_path / "data" / f"img{i}.nii.gz") for i in range(2)]
    listing = tmp_path / "t1.csv"
    listing.write_text(f"subj0,{images[0]}\nsubj1,data/img1.nii.gz\n\n")
    spec = InputSpec("T1", (tmp_path / "nowhere",), ("_t1",), csv_file=str(listing))
    subjects = find_subjects([spec], required=["T1"])
    assert [(s.id, s.files["T1"]) for s in subjects] == [("subj0", images[0]), ("subj1", tmp_path / "data/img1.nii.gz")]

    listing.write_text("subj0,missing.nii.gz\n")
    with pytest.raises(DataError, match=r"t1\.csv line 1: file .*missing\.nii\.gz not found"):
        find_subjects([spec], required=["T1"])


@pytest.mark.parametrize(
    "filename, expected_id",
    [
        ("x..%2F..%2Fetc_t1.nii.gz", "x__2F__2Fetc"),
        ("%2E%2E%2F_t1.nii.gz", "2E_2E_2F"),
        ("a..b_t1.nii.gz", "a_b"),
        ("sub 01\x07bell_t1.nii.gz", "sub_01_bell"),
        ("sub\\01_t1.nii.gz", "sub_01"),
        ("-rf_t1.nii.gz", "rf"),
    ],
)
def test_traversal_like_names_become_safe_ids(tmp_path, filename, expected_id):
    folder = tmp_path / "data"
    touch(folder / filename)
    out = tmp_path / "out"
    (subject,) = find_subjects([InputSpec("T1", (folder,), ("_t1",))], required=["T1"])
    assert subject.id == expected_id
    assert (out / f"{subject.id}_seg.nii.gz").resolve().parent == out.resolve()


def test_hidden_files_and_folders_are_skipped(tmp_path):
    touch(tmp_path / "..%2F..%2Fetc_t1.nii.gz")
    touch(tmp_path / ".git" / "P2_t1.nii.gz")
    touch(tmp_path / "P1_t1.nii.gz")
    assert [s.id for s in find_subjects([InputSpec("T1", (tmp_path,), ("_t1",))], required=["T1"])] == ["P1"]


def test_csv_ids_are_made_safe(tmp_path):
    image = touch(tmp_path / "img.nii.gz")
    listing = tmp_path / "list.csv"
    listing.write_text(f"../../etc/passwd,{image}\n")
    (subject,) = find_subjects([InputSpec("T1", csv_file=str(listing))], required=["T1"])
    assert subject.id == "etc_passwd"


@pytest.mark.parametrize("raw", ["", "...", "_-. ", "/", "..", "\x00\x01"])
def test_safe_subject_id_rejects_ids_that_vanish(raw):
    with pytest.raises(DataError, match="empty"):
        safe_subject_id(raw)


def test_safe_subject_id_rejects_overlong_ids():
    with pytest.raises(DataError, match="longer than 200 bytes"):
        safe_subject_id("a" * 201)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_safe_subject_id_never_escapes(raw):
    try:
        safe = safe_subject_id(raw)
    except DataError:
        return
    assert safe == safe_subject_id(safe)  # idempotent
    assert "/" not in safe and "\\" not in safe and os.sep not in safe and ".." not in safe
    assert not safe.startswith((".", "-", "_")) and safe.isprintable()
    out = Path("/srv/out")
    assert os.path.normpath(out / f"{safe}_seg.nii.gz").startswith(str(out) + os.sep)


# ---------------------------------------------------------------------------------------- splits

IDS = [f"S{i:02d}" for i in range(20)]


def test_split_is_created_deterministically(tmp_path):
    split_file = tmp_path / "splits" / "split.csv"
    split = load_or_create_split(IDS, split_file, 0.2, 0.1, seed=7)
    assert list(split) == sorted(IDS)
    assert len(subjects_in(split, "Validation")) == 4
    assert len(subjects_in(split, "inference")) == 2
    assert len(subjects_in(split, "Training")) == 14
    lines = split_file.read_text().splitlines()
    assert lines == [f"{i},{p}" for i, p in split.items()]
    assert sorted(p.name for p in split_file.parent.iterdir()) == ["split.csv"]  # no temp left

    again = load_or_create_split(IDS, tmp_path / "other.csv", 0.2, 0.1, seed=7)
    assert again == split
    different = load_or_create_split(IDS, tmp_path / "seed8.csv", 0.2, 0.1, seed=8)
    assert different != split
    # the order of the given ids does not matter
    assert load_or_create_split(IDS[::-1], tmp_path / "rev.csv", 0.2, 0.1, seed=7) == split


@pytest.mark.parametrize(
    "n, fv, fi, expected",
    [
        (3, 0.1, 0.0, (1, 0, 2)),  # a positive fraction gives at least one subject
        (2, 0.1, 0.1, (1, 0, 1)),  # ... but one subject stays in Training
        (1, 0.5, 0.0, (0, 0, 1)),
        (10, 0.0, 0.0, (0, 0, 10)),
        (4, 0.5, 0.5, (2, 2, 0)),  # fractions adding up to 1 leave Training empty on purpose
    ],
)
def test_split_counts(tmp_path, n, fv, fi, expected):
    split = load_or_create_split([f"s{i}" for i in range(n)], tmp_path / "s.csv", fv, fi, seed=0)
    counts = tuple(len(subjects_in(split, p)) for p in ("Validation", "Inference", "Training"))
    assert counts == expected


def test_existing_split_is_read_case_insensitively(tmp_path, caplog):
    split_file = tmp_path / "split.csv"
    split_file.write_text("S00,training\nS01, Validation\nS02,INFERENCE\n\n")
    with caplog.at_level(logging.WARNING, logger="uhved_tf.io.discovery"):
        split = load_or_create_split(["S00", "S01", "S02", "S03"], split_file, 0.5, 0.5, seed=0)
    assert split == {"S00": "Training", "S01": "Validation", "S02": "Inference", "S03": "Training"}
    assert any("1 subjects are not in split file" in r.getMessage() and "S03" in r.getMessage() for r in caplog.records)
    assert split_file.read_text() == "S00,training\nS01, Validation\nS02,INFERENCE\n\n"  # left untouched


def test_split_with_unknown_ids_is_an_error(tmp_path):
    split_file = tmp_path / "split.csv"
    split_file.write_text("S00,Training\nGHOST1,Validation\nGHOST2,Training\n")
    with pytest.raises(DataError) as info:
        load_or_create_split(["S00", "S01"], split_file, 0.1, 0.1, seed=0)
    message = str(info.value)
    assert str(split_file) in message and "GHOST1, GHOST2" in message


@pytest.mark.parametrize(
    "content", ["S00,Testing\n", "S00\n", "S00,Training,extra\n", "S00,Training\nS00,Validation\n"]
)
def test_malformed_split_file(tmp_path, content):
    split_file = tmp_path / "split.csv"
    split_file.write_text(content)
    with pytest.raises(DataError, match=str(split_file).replace(".", r"\.")):
        load_or_create_split(["S00"], split_file, 0.1, 0.1, seed=0)


def test_split_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="add up"):
        load_or_create_split(IDS, tmp_path / "a.csv", 0.7, 0.5, seed=0)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        load_or_create_split(IDS, tmp_path / "a.csv", -0.1, 0.0, seed=0)
    with pytest.raises(DataError, match="no subjects"):
        load_or_create_split([], tmp_path / "a.csv", 0.1, 0.0, seed=0)
    with pytest.raises(ValueError, match="unknown phase"):
        subjects_in({"a": "Training"}, "Testing")


# ------------------------------------------------------ subjects of a split that this command cannot use


def test_find_subjects_reports_what_the_dropped_subjects_lack(tmp_path):
    brats_tree(tmp_path, "HGG", ["A", "B"])
    brats_tree(tmp_path, "HGG", ["C"], sections=("T1", "T1c", "T2", "Flair"))
    brats_tree(tmp_path, "HGG", ["D"], sections=("T1", "label"))
    incomplete = {}
    subjects = find_subjects(brats_specs(tmp_path), required=[*MODALITIES, "label"], incomplete=incomplete)
    assert [s.id for s in subjects] == ["A", "B"]
    assert incomplete == {"C": ["label"], "D": ["T1c", "T2", "Flair"]}


def test_split_of_subjects_missing_a_file_names_the_files_and_keeps_a_trained_models_split(tmp_path):
    """evaluate with a label file gone used to say the split lists subjects "not found ... delete
    it to create a new split": deleting a trained model's split re-splits its subjects."""
    split_file = tmp_path / "model" / "dataset_split.csv"
    split_file.parent.mkdir()
    split_file.write_text("S00,Training\nS01,Inference\nS02,Inference\nGHOST,Training\n")
    before = split_file.read_bytes()
    incomplete = {"S01": ["label"], "S02": ["label", "T2"]}
    with pytest.raises(DataError) as info:
        load_or_create_split(["S00"], split_file, 0.1, 0.1, seed=0, incomplete=incomplete,
                             trained_model=split_file.parent)
    message = str(info.value)
    assert message == (f"split file {split_file} lists 2 subjects whose files are missing (no [label] file for "
                       f"S01, S02; no [T2] file for S02) and 1 subject that was not found: GHOST; restore the "
                       f"missing files, or point the config's input sections (path_to_search / csv_file) at them; "
                       f"keep the split file: the model in {split_file.parent} was trained with it, and a new split "
                       f"would mix its training subjects into the test sets")
    # Without a trained model: the files are still what is missing; deleting the split is no fix.
    with pytest.raises(DataError) as info:
        load_or_create_split(["S00", "GHOST"], split_file, 0.1, 0.1, seed=0, incomplete=incomplete)
    assert "no [label] file for S01, S02" in str(info.value) and "delete" not in str(info.value)
    # Only unknown subjects and no trained model: as before.
    with pytest.raises(DataError, match=r"1 subject that was not found: GHOST; fix the file, or delete it"):
        load_or_create_split(["S00", "S01", "S02"], split_file, 0.1, 0.1, seed=0)
    assert split_file.read_bytes() == before


@pytest.mark.parametrize("blocked", ["folder", "parent"])
def test_split_file_whose_folder_is_a_file(tmp_path, blocked):
    blocker = tmp_path / "model"
    blocker.write_text("a file, not a model folder")
    split_file = blocker / "dataset_split.csv" if blocked == "folder" else blocker / "sub" / "split.csv"
    with pytest.raises(DataError) as info:
        load_or_create_split(IDS, split_file, 0.1, 0.1, seed=0)
    assert str(info.value).startswith(f"cannot write split file {split_file}: its folder {split_file.parent} ")
    assert f"{blocker} is a file, not a folder" in str(info.value)
    assert blocker.read_text() == "a file, not a model folder"
