"""uhved_tf.io.layouts (BraTS 2018 / 2023, MSD, nnU-Net folders) and 4-D channels in uhved_tf.io.nifti."""

import json
import logging
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from uhved_tf.errors import ConfigError, DataError
from uhved_tf.io import nifti
from uhved_tf.io.layouts import (
    LAYOUTS,
    find_cases,
    msd_convention_check,
    nnunet_convention,
    output_name,
    prediction_id,
)
from uhved_tf.io.nifti import Channel, clear_channel_cache, image_like, load_volume, read_header_only, save_like

MODALITIES = ("T1", "T1c", "T2", "Flair")
SHAPE = (8, 8, 6)
# LPS, 1.5 mm voxels (2 mm slices), with an offset: reorientation to RAS flips two axes
AFFINE = np.array([[-1.5, 0, 0, 40.0], [0, -1.5, 0, 25.5], [0, 0, 2.0, -11.0], [0, 0, 0, 1]])


def volume(seed: int, shape=SHAPE) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * 100 + seed * 1000).astype(np.float32)


def write(path: Path, data: np.ndarray, affine=AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=2)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


def junk(path: Path) -> None:
    """A macOS AppleDouble file, as in the real MSD archive."""
    path.write_bytes(b"\x00\x05\x16\x07" + b"Mac OS X" * 20)


def labels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, SHAPE).astype(np.uint8)


# ---------------------------------------------------------------------------------- datasets


@pytest.fixture
def brats2018(tmp_path):
    root = tmp_path / "MICCAI_BraTS_2018_Data_Training"
    for group, case, roles in (("HGG", "Brats18_TCIA01_131_1", ("t1", "t1ce", "t2", "flair", "seg")),
                               ("LGG", "Brats18_2013_0_1", ("t1", "t1ce", "t2", "flair", "seg")),
                               ("LGG", "Brats18_2013_9_1", ("t1", "t1ce", "flair", "seg"))):  # no t2
        for k, role in enumerate(roles):
            suffix = ".nii" if (case, role) == ("Brats18_2013_0_1", "t2") else ".nii.gz"
            write(root / group / case / f"{case}_{role}{suffix}", volume(k))
    junk(root / "HGG" / "Brats18_TCIA01_131_1" / "._Brats18_TCIA01_131_1_t1.nii.gz")
    (root / "survival_data.csv").write_text("BraTS18ID,Age\n")
    return root


@pytest.fixture
def brats2023(tmp_path):
    root = tmp_path / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    for case, roles in (("BraTS-GLI-00000-000", ("t1n", "t1c", "t2w", "t2f", "seg")),
                        ("BraTS-GLI-00002-000", ("t1n", "t1c", "t2w", "t2f"))):
        for k, role in enumerate(roles):
            write(root / case / f"{case}-{role}.nii.gz", volume(k))
    return root


MSD_JSON = {
    "name": "BRATS", "tensorImageSize": "4D",
    "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
    "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
    "numTraining": 2, "numTest": 1,
    "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"},
                 {"image": "./imagesTr/BRATS_002.nii.gz", "label": "./labelsTr/BRATS_002.nii.gz"}],
    "test": ["./imagesTs/BRATS_485.nii.gz"],
}


def msd_image(seed: int) -> np.ndarray:
    return np.stack([volume(seed * 10 + c) for c in range(4)], axis=-1)


@pytest.fixture
def msd(tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(MSD_JSON, indent=4))
    for n in (1, 2):
        write(root / "imagesTr" / f"BRATS_00{n}.nii.gz", msd_image(n))
        write(root / "labelsTr" / f"BRATS_00{n}.nii.gz", labels(n))
        junk(root / "imagesTr" / f"._BRATS_00{n}.nii.gz")
        junk(root / "labelsTr" / f"._BRATS_00{n}.nii.gz")
    write(root / "imagesTs" / "BRATS_485.nii.gz", msd_image(3))
    junk(root / "._dataset.json")
    return root


NNUNET_JSON = {
    "channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
    "regions_class_order": [1, 2, 3],
    "numTraining": 2,
    "file_ending": ".nii.gz",
}


@pytest.fixture
def nnunet(tmp_path):
    root = tmp_path / "Dataset137_BraTS2021"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(NNUNET_JSON))
    for case, part in (("BraTS2021_00000", "imagesTr"), ("BraTS2021_00002", "imagesTr"),
                       ("BraTS2021_00099", "imagesTs")):
        for c in range(4):
            write(root / part / f"{case}_{c:04d}.nii.gz", volume(c))
        if part == "imagesTr":
            write(root / "labelsTr" / f"{case}.nii.gz", labels(1))
    junk(root / "imagesTr" / "._BraTS2021_00000_0000.nii.gz")
    return root


# ------------------------------------------------------------------------------- BraTS layouts


def test_brats2018_finds_every_case_recursively(brats2018, caplog):
    with caplog.at_level(logging.WARNING, logger="uhved_tf.io.layouts"):
        cases = find_cases("brats2018", brats2018, ("T1", "T1ce", "T2", "FLAIR"), "label")
    assert [s.id for s in cases.subjects] == ["Brats18_2013_0_1", "Brats18_2013_9_1", "Brats18_TCIA01_131_1"]
    assert cases.test_ids == frozenset() and cases.dataset_json is None
    full = cases.subjects[2]
    case_dir = brats2018 / "HGG" / "Brats18_TCIA01_131_1"
    assert full.files == {"T1": case_dir / "Brats18_TCIA01_131_1_t1.nii.gz",
                          "T1ce": case_dir / "Brats18_TCIA01_131_1_t1ce.nii.gz",
                          "T2": case_dir / "Brats18_TCIA01_131_1_t2.nii.gz",
                          "FLAIR": case_dir / "Brats18_TCIA01_131_1_flair.nii.gz",
                          "label": case_dir / "Brats18_TCIA01_131_1_seg.nii.gz"}
    assert list(full.files) == ["T1", "T1ce", "T2", "FLAIR", "label"]  # channel order, label last
    assert cases.subjects[0].files["T2"].name == "Brats18_2013_0_1_t2.nii"  # .nii accepted
    # the case without t2 is returned with the files it has, and the gap is reported
    assert set(cases.subjects[1].files) == {"T1", "T1ce", "FLAIR", "label"}
    assert "Brats18_2013_9_1 (no T2)" in caplog.text


def test_brats2018_without_label_section_ignores_seg_files(brats2018):
    cases = find_cases("brats2018", brats2018, ("T1c", "Flair"), None)
    assert all(set(s.files) == {"T1c", "Flair"} for s in cases.subjects)


def test_brats2023_names(brats2023):
    cases = find_cases("brats2023", brats2023, MODALITIES, "label")
    assert [s.id for s in cases.subjects] == ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"]
    first, second = cases.subjects
    assert {k: v.name for k, v in first.files.items()} == {
        "T1": "BraTS-GLI-00000-000-t1n.nii.gz", "T1c": "BraTS-GLI-00000-000-t1c.nii.gz",
        "T2": "BraTS-GLI-00000-000-t2w.nii.gz", "Flair": "BraTS-GLI-00000-000-t2f.nii.gz",
        "label": "BraTS-GLI-00000-000-seg.nii.gz"}
    assert set(second.files) == set(MODALITIES)  # no label: inference only


def test_two_files_for_one_case_and_modality_is_an_error(brats2018):
    copy = brats2018 / "copies" / "Brats18_2013_0_1_flair.nii.gz"
    copy.parent.mkdir()
    shutil.copy(brats2018 / "LGG" / "Brats18_2013_0_1" / "Brats18_2013_0_1_flair.nii.gz", copy)
    with pytest.raises(DataError) as info:
        find_cases("brats2018", brats2018, MODALITIES, "label")
    message = str(info.value)
    assert str(copy) in message and "LGG" in message and "[Flair] of subject 'Brats18_2013_0_1'" in message


def test_brats_layout_refuses_channels_and_unknown_modalities(brats2018):
    with pytest.raises(ConfigError, match=r"\[DATASET\] channels = T1, T2: only for convention msd or nnunet"):
        find_cases("brats2018", brats2018, MODALITIES, "label", channels=("T1", "T2"))
    with pytest.raises(ConfigError, match="ADC is not a BraTS modality"):
        find_cases("brats2018", brats2018, ("T1", "ADC"), "label")
    with pytest.raises(ConfigError, match="T1 and T1w are the same modality"):
        find_cases("brats2018", brats2018, ("T1", "T1w"), "label")
    with pytest.raises(ConfigError, match='did you mean "brats2018"'):
        find_cases("brats2019", brats2018, MODALITIES, "label")


# --------------------------------------------------------------------------------------- MSD


def test_msd_channels_come_from_dataset_json(msd):
    cases = find_cases("msd", msd, ("T1", "T1ce", "T2", "FLAIR"), "label")
    assert [s.id for s in cases.subjects] == ["BRATS_001", "BRATS_002", "BRATS_485"]  # ._ files skipped
    assert cases.test_ids == frozenset({"BRATS_485"})
    assert cases.dataset_json == MSD_JSON
    image = msd / "imagesTr" / "BRATS_001.nii.gz"
    # FLAIR is channel 0, T1w 1, t1gd 2, T2w 3
    assert cases.subjects[0].files == {"T1": Channel(image, 1), "T1ce": Channel(image, 2), "T2": Channel(image, 3),
                                       "FLAIR": Channel(image, 0), "label": msd / "labelsTr" / "BRATS_001.nii.gz"}
    test_case = cases.subjects[2].files
    assert "label" not in test_case and test_case["FLAIR"] == Channel(msd / "imagesTs" / "BRATS_485.nii.gz", 0)


def test_msd_explicit_channels_override_dataset_json(msd):
    cases = find_cases("msd", msd, MODALITIES, "label", channels="T2, t1gd, T1w, Flair")
    files = cases.subjects[1].files
    assert {k: v.index for k, v in files.items() if k != "label"} == {"T1": 2, "T1c": 1, "T2": 0, "Flair": 3}


def test_msd_channel_count_must_match_the_images(msd):
    data = dict(MSD_JSON, modality={"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w", "4": "T1"})
    (msd / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        find_cases("msd", msd, ("T1c", "T2"), "label")
    message = str(info.value)
    assert "BRATS_001.nii.gz: channel 4 asked for, but the file has 4 channels" in message
    assert "dataset.json lists 5 channels" in message and "\n" not in message


@pytest.mark.parametrize("modality, fragments", [
    ({"0": "FLAIR", "1": "T1w", "2": "MPRAGE post", "3": "T2w"},
     ["channels {0: FLAIR, 1: T1w, 2: MPRAGE post, 3: T2w}", "no channel is T1c", '"MPRAGE post" is no known']),
    ({"0": "FLAIR", "1": "T1w", "2": "T1", "3": "T2w"}, ["channels 1 and 2 are both T1", "no channel is T1c"]),
])
def test_unrecognised_or_repeated_channel_names(msd, modality, fragments):
    (msd / "dataset.json").write_text(json.dumps(dict(MSD_JSON, modality=modality)))
    with pytest.raises(DataError) as info:
        find_cases("msd", msd, MODALITIES, "label")
    message = str(info.value)
    assert message.startswith(str(msd / "dataset.json") + ": ")
    for fragment in [*fragments, "[DATASET] channels (e.g. channels = T1, T1c, T2, Flair)"]:
        assert fragment in message
    assert "\n" not in message
    # the explicit map fixes it
    cases = find_cases("msd", msd, MODALITIES, "label", channels=["Flair", "T1", "T1c", "T2"])
    assert cases.subjects[0].files["T1c"].index == 2


def test_channels_override_errors(msd):
    with pytest.raises(ConfigError, match=r"names 3 channels but .*dataset.json has 4 \(FLAIR, T1w, t1gd, T2w\)"):
        find_cases("msd", msd, MODALITIES, "label", channels="T1, T1c, T2")
    with pytest.raises(ConfigError, match=r"^\[DATASET\] channels = T1, T1c, T2, ADC: .*no channel is Flair"):
        find_cases("msd", msd, MODALITIES, "label", channels="T1, T1c, T2, ADC")
    with pytest.raises(ConfigError, match="an empty channel name"):
        find_cases("msd", msd, MODALITIES, "label", channels="T1, , T2, Flair")


def test_unused_channels_are_ignored_with_a_warning(msd, caplog):
    with caplog.at_level(logging.WARNING, logger="uhved_tf.io.layouts"):
        cases = find_cases("msd", msd, ("T1c", "Flair"), "label")
    assert {k: v.index for k, v in cases.subjects[0].files.items() if k != "label"} == {"T1c": 2, "Flair": 0}
    assert "channel 1 (T1w), 3 (T2w) is none of the modalities T1c, Flair; not used" in caplog.text


def test_msd_labels_must_be_those_of_the_msd_convention(msd):
    bad = dict(MSD_JSON, labels={"0": "background", "1": "necrosis", "2": "edema", "4": "enhancing"})
    with pytest.raises(DataError, match=r'dataset\.json: "labels" \{0: background, .*values 0, 1, 2, 3'):
        msd_convention_check(bad, "x/dataset.json")
    msd_convention_check(MSD_JSON, "x/dataset.json")  # the real one passes
    (msd / "dataset.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=str(msd / "dataset.json")):
        find_cases("msd", msd, MODALITIES, "label")


def test_invalid_dataset_json_is_one_line(msd):
    (msd / "dataset.json").write_text('{"modality": {"0": "FLAIR",}}')
    with pytest.raises(DataError, match=r"dataset\.json: not valid JSON: .* at line 1"):
        find_cases("msd", msd, MODALITIES, "label")


# ------------------------------------------------------------------------------------ nnU-Net


def test_nnunet_cases_and_region_convention(nnunet):
    cases = find_cases("nnunet", nnunet, ("T1", "T1c", "T2", "Flair"), "label")
    assert [s.id for s in cases.subjects] == ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00099"]
    assert cases.test_ids == frozenset({"BraTS2021_00099"}) and cases.file_ending == ".nii.gz"
    assert cases.subjects[0].files == {
        "T1": nnunet / "imagesTr" / "BraTS2021_00000_0000.nii.gz",
        "T1c": nnunet / "imagesTr" / "BraTS2021_00000_0001.nii.gz",
        "T2": nnunet / "imagesTr" / "BraTS2021_00000_0002.nii.gz",
        "Flair": nnunet / "imagesTr" / "BraTS2021_00000_0003.nii.gz",
        "label": nnunet / "labelsTr" / "BraTS2021_00000.nii.gz"}
    assert "label" not in cases.subjects[2].files and len(cases.subjects[2].files) == 4

    convention = nnunet_convention(cases.dataset_json, str(nnunet / "dataset.json"))
    assert convention.name == "nnunet"
    assert convention.label_values == (0, 1, 2, 3)
    assert convention.regions == (("whole", (1, 2, 3)), ("core", (2, 3)), ("enhancing", (3,)))
    assert convention.enhancing == 3 and convention.core == 2
    assert convention.colour_map.keys() == {1, 2, 3}


def test_nnunet_convention_of_plain_and_v1_labels():
    plain = nnunet_convention({"labels": {"background": 0, "Edema": 1, "non-enhancing tumor": 2, "ET": 3}}, "d.json")
    assert plain.label_values == (0, 1, 2, 3)
    assert plain.regions == (("edema", (1,)), ("non_enhancing_tumor", (2,)), ("enhancing", (3,)))
    assert plain.enhancing is None and plain.core is None  # no core region: no post-processing
    v1 = nnunet_convention({"labels": {"0": "background", "1": "whole_tumour", "2": "Tumor Core"}}, "d.json")
    assert v1.regions == (("whole", (1,)), ("core", (2,))) and v1.label_values == (0, 1, 2)
    with pytest.raises(DataError, match=r'^d\.json: "labels" has no background 0'):
        nnunet_convention({"labels": {"tumour": 1}}, "d.json")
    with pytest.raises(DataError, match=r"^d\.json: label \"tumour\": 'x' is not a label value"):
        nnunet_convention({"labels": {"background": 0, "tumour": "x"}}, "d.json")
    with pytest.raises(DataError, match=r'^d\.json: no "labels" object'):
        nnunet_convention({}, "d.json")


def test_nnunet_v1_modality_key_and_channel_override(nnunet):
    data = {k: v for k, v in NNUNET_JSON.items() if k != "channel_names"}
    data["modality"] = {"0": "t1", "1": "t1gd", "2": "t2w", "3": "flair"}
    (nnunet / "dataset.json").write_text(json.dumps(data))
    cases = find_cases("nnunet", nnunet, MODALITIES, "label")
    assert cases.subjects[0].files["T1c"].name == "BraTS2021_00000_0001.nii.gz"
    cases = find_cases("nnunet", nnunet, MODALITIES, "label", channels=("Flair", "T2", "T1c", "T1"))
    assert cases.subjects[0].files["T1c"].name == "BraTS2021_00000_0002.nii.gz"
    assert cases.subjects[0].files["Flair"].name == "BraTS2021_00000_0000.nii.gz"


def test_nnunet_file_ending_and_channel_numbers(nnunet):
    (nnunet / "dataset.json").write_text(json.dumps(dict(NNUNET_JSON, file_ending=".mha")))
    with pytest.raises(DataError, match=r"dataset\.json: file_ending '\.mha' is not supported; expected \.nii\.gz"):
        find_cases("nnunet", nnunet, MODALITIES, "label")
    (nnunet / "dataset.json").write_text(json.dumps(NNUNET_JSON))
    extra = write(nnunet / "imagesTr" / "BraTS2021_00000_0004.nii.gz", volume(0))
    with pytest.raises(DataError, match=rf"^{extra}: channel 0004 but .* lists 4 channels \(_0000 to _0003\)"):
        find_cases("nnunet", nnunet, MODALITIES, "label")


# ----------------------------------------------------------------------------- wrong layouts


@pytest.mark.parametrize("dataset, layout, fragments", [
    ("msd", "brats2023", ["no image of T1, T1c, T2, Flair", "expected BraTS 2023 files named <id>-t1n.nii.gz",
                          "this looks like an MSD task (Task01_BrainTumour): set [DATASET] convention = msd"]),
    ("brats2018", "msd", ["no dataset.json and no imagesTr/",
                          "expected imagesTr/ and dataset.json of an MSD task (Task01_BrainTumour)",
                          "this looks like a BraTS 2018-2021 dataset: set [DATASET] convention = brats2018"]),
    ("brats2023", "brats2018", ["expected BraTS 2018-2021 files", "set [DATASET] convention = brats2023"]),
    ("nnunet", "msd", ["are those of an nnU-Net raw dataset, not an MSD task", "convention = nnunet"]),
    ("msd", "nnunet", ["are those of an MSD task (Task01_BrainTumour), not an nnU-Net", "convention = msd"]),
])
def test_a_folder_of_another_layout_says_which(request, dataset, layout, fragments):
    folder = request.getfixturevalue(dataset)
    with pytest.raises(DataError) as info:
        find_cases(layout, folder, MODALITIES, "label")
    message = str(info.value)
    assert message.startswith(str(folder))
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


def test_pointing_at_a_part_of_or_above_the_dataset(msd, tmp_path):
    with pytest.raises(DataError, match=rf"imagesTr/ is part of the dataset {msd}: set \[DATASET\] path = {msd}$"):
        find_cases("msd", msd / "imagesTr", MODALITIES, "label")
    with pytest.raises(DataError, match=rf"the subfolder Task01_BrainTumour/ has a dataset.json: .*path = {msd}$"):
        find_cases("msd", tmp_path, MODALITIES, "label")
    with pytest.raises(DataError, match=r"\[DATASET\] path .*nowhere does not exist or is not a folder"):
        find_cases("msd", tmp_path / "nowhere", MODALITIES, "label")


# ------------------------------------------------------------------------------- 4-D channels


def test_channel_is_pathlike_and_names_itself():
    channel = Channel("/x/BRATS_001.nii.gz", 2)
    assert str(channel) == "/x/BRATS_001.nii.gz (channel 2)"
    assert os.fspath(channel) == "/x/BRATS_001.nii.gz" and isinstance(channel, os.PathLike)
    assert channel.path == Path("/x/BRATS_001.nii.gz") and channel == Channel(Path("/x/BRATS_001.nii.gz"), 2)
    assert nifti.is_nifti_path(channel)
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError):
            Channel("/x/a.nii.gz", bad)


@pytest.mark.parametrize("axcodes, pixdim", [(None, None), ("RAS", None), ("RAS", (1.0, 1.0, 1.0))])
def test_a_channel_loads_like_the_3d_file_of_that_channel(tmp_path, axcodes, pixdim):
    stack = msd_image(5)
    four_d = write(tmp_path / "BRATS_005.nii.gz", stack)
    three_d = write(tmp_path / "flair.nii.gz", stack[..., 2])
    arr, geom = load_volume(Channel(four_d, 2), axcodes=axcodes, pixdim=pixdim)
    ref, ref_geom = load_volume(three_d, axcodes=axcodes, pixdim=pixdim)
    assert np.array_equal(arr, ref) and arr.dtype == np.float32
    assert not np.array_equal(arr, load_volume(Channel(four_d, 1), axcodes=axcodes, pixdim=pixdim)[0])
    assert geom.path == str(four_d) and geom.channel == 2 and ref_geom.channel is None
    assert geom.original_shape == SHAPE == ref_geom.original_shape
    for name in ("original_affine", "orientation", "working_affine"):
        np.testing.assert_array_equal(getattr(geom, name), getattr(ref_geom, name))
    assert (geom.working_spacing, geom.working_shape, geom.resampled) == \
        (ref_geom.working_spacing, ref_geom.working_shape, ref_geom.resampled)
    assert tuple(geom.header.get_data_shape()) == SHAPE


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_output_on_a_channel_grid_is_a_3d_file_in_the_input_geometry(tmp_path, suffix):
    four_d = write(tmp_path / f"BRATS_007{suffix}", msd_image(7))
    source = nib.load(str(four_d))
    arr, geom = load_volume(Channel(four_d, 3), axcodes="RAS", interp_order=0)
    seg = (arr > np.median(arr)).astype(np.uint8) * 3
    out = save_like(seg, geom, tmp_path / "BRATS_007_pred.nii.gz", dtype=np.uint8)
    written = nib.load(str(out))
    assert written.shape == SHAPE
    assert int(written.header["dim"][0]) == 3 and int(written.header["dim"][4]) == 1
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    np.testing.assert_allclose(written.header.get_zooms(), source.header.get_zooms()[:3])
    assert len(written.header.get_zooms()) == 3
    assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 2
    expected = (msd_image(7)[..., 3] > np.median(msd_image(7)[..., 3])).astype(np.uint8) * 3
    assert np.array_equal(np.asanyarray(written.dataobj), expected)
    in_memory = image_like(seg, geom, dtype=np.uint8)
    assert in_memory.shape == SHAPE and in_memory.header.get_data_shape() == SHAPE


def test_channel_errors_name_the_file_shape_and_channel(tmp_path):
    four_d = write(tmp_path / "BRATS_001.nii.gz", msd_image(1))
    three_d = write(tmp_path / "t1.nii.gz", volume(1))
    cases = [
        (lambda: load_volume(Channel(four_d, 4)),
         f"{four_d}: channel 4 asked for, but the file has 4 channels (shape (8, 8, 6, 4)"),
        (lambda: read_header_only(Channel(four_d, 7)), f"{four_d}: channel 7 asked for, but the file has 4 channels"),
        (lambda: load_volume(Channel(three_d, 0)),
         f"{three_d}: channel 0 asked for, but the file is not a 4-D image [X, Y, Z, C]: shape (8, 8, 6)"),
        (lambda: load_volume(four_d), f"{four_d}: expected a 3-D image, got shape (8, 8, 6, 4)"),
        (lambda: load_volume(Channel(tmp_path / "missing.nii.gz", 0)),
         f"{tmp_path / 'missing.nii.gz'}: file not found"),
    ]
    for call, expected in cases:
        with pytest.raises(DataError) as info:
            call()
        assert str(info.value).startswith(expected) and "\n" not in str(info.value)
    shape, affine, zooms = read_header_only(Channel(four_d, 3))
    assert shape == SHAPE and zooms == (1.5, 1.5, 2.0)
    np.testing.assert_allclose(affine, AFFINE)


def test_non_finite_voxels_of_a_channel_name_the_channel(tmp_path):
    stack = msd_image(1)
    stack[0, 0, 0, 1] = np.nan
    four_d = write(tmp_path / "BRATS_001.nii.gz", stack)
    load_volume(Channel(four_d, 0))  # the other channels are fine
    with pytest.raises(DataError, match=rf"^{four_d} \(channel 1\): contains 1 non-finite voxels"):
        load_volume(Channel(four_d, 1))


def test_the_four_channels_of_a_case_decompress_once(tmp_path, monkeypatch):
    calls = []
    real = nifti.gzip.decompress
    monkeypatch.setattr(nifti.gzip, "decompress", lambda raw: calls.append(1) or real(raw))
    clear_channel_cache()
    stack = msd_image(2)
    four_d = write(tmp_path / "BRATS_002.nii.gz", stack)
    for c in range(4):
        assert np.array_equal(load_volume(Channel(four_d, c))[0], stack[..., c])
    assert len(calls) == 1
    # a changed file is read again (key: path, inode, size, mtime)
    write(four_d, stack[..., ::-1] + 1)
    os.utime(four_d, ns=(1_000_000_000, 1_000_000_000))
    assert np.array_equal(load_volume(Channel(four_d, 0))[0], stack[..., 3] + 1)
    assert len(calls) == 2
    # plain 3-D files are not cached
    three_d = write(tmp_path / "t1.nii.gz", volume(1))
    load_volume(three_d)
    load_volume(three_d)
    assert len(calls) == 4
    clear_channel_cache()
    load_volume(Channel(four_d, 0))
    assert len(calls) == 5


def test_channel_reads_from_several_threads_are_correct(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    stacks = {n: msd_image(n) for n in (1, 2)}
    files = {n: write(tmp_path / f"BRATS_00{n}.nii.gz", stack) for n, stack in stacks.items()}
    jobs = [(n, c) for _ in range(3) for n in (1, 2) for c in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda job: load_volume(Channel(files[job[0]], job[1]))[0], jobs))
    for (n, c), arr in zip(jobs, results):
        assert np.array_equal(arr, stacks[n][..., c])


# ------------------------------------------------------------------------------ output names


@pytest.mark.parametrize("layout, subject_id, name", [
    ("brats2018", "Brats18_TCIA01_131_1", "Brats18_TCIA01_131_1_seg.nii.gz"),
    ("brats2018", "BraTS2021_00000", "BraTS2021_00000_seg.nii.gz"),
    ("brats2023", "BraTS-GLI-00000-000", "BraTS-GLI-00000-000-seg.nii.gz"),
    ("msd", "BRATS_001", "BRATS_001.nii.gz"),
    ("nnunet", "BraTS2021_00000", "BraTS2021_00000.nii.gz"),
])
def test_output_name_and_prediction_id_round_trip(layout, subject_id, name):
    assert output_name(layout, subject_id) == name
    assert prediction_id(layout, name) == subject_id
    assert prediction_id(layout, Path("/out") / name) == subject_id
    for other in (f"{subject_id}_seg.nii.gz", f"{subject_id}.nii.gz", f"{subject_id}_seg.nii"):
        assert prediction_id(layout, other) == subject_id
    for not_a_prediction in (f"{subject_id}.csv", f"._{name}", "_seg.nii.gz", "notes.txt"):
        assert prediction_id(layout, not_a_prediction) is None


def test_output_name_details():
    assert output_name("nnunet", "case_1", ".nii") == "case_1.nii"
    assert prediction_id("nnunet", "case_1.nii") == "case_1"
    assert LAYOUTS == ("brats2018", "brats2023", "msd", "nnunet")
    with pytest.raises(DataError, match=r"file_ending '\.mha' is not supported"):
        output_name("nnunet", "case_1", ".mha")
    with pytest.raises(ValueError, match="not file-name safe"):
        output_name("msd", "../escape", ".nii.gz")
    with pytest.raises(ConfigError, match="no dataset layout"):
        output_name("decathlon", "x")
