"""The datasets users hold today, end to end through ``[DATASET] path`` (issue 17): an MSD
``Task01_BrainTumour`` folder (4-D images, dataset.json) and an nnU-Net raw dataset (one file per
channel, region-based dataset.json) each train, segment (outputs in the dataset's own names,
labels and geometry, the unlabelled imagesTs cases included) and evaluate with their regions;
``evaluate --predictions`` agrees with an independent Dice / HD95; ``--fold`` writes the split of
that fold. The BraTS 2023 layout is tests/test_brats2023.py."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from tests.helpers import dataset_in_layout, layout_ini, run_cli_here
from uhved_tf.config import parse_config_text

N_CASES, N_TEST = 5, 1
REGIONS = {"whole": (1, 2, 3), "core": (2, 3), "enhancing": (3,)}   # MSD and nnU-Net's BraTS conversion


@pytest.fixture(scope="module", params=["msd", "nnunet"])
def project(request, tmp_path_factory):
    layout = request.param
    root = tmp_path_factory.mktemp(layout)
    data = dataset_in_layout(root, layout, n=N_CASES, n_test=N_TEST)
    cfg = root / f"{layout}.ini"
    cfg.write_text(layout_ini(data, root / "model", layout))
    run_cli_here("train", "-c", cfg, "-q")
    return layout, root, cfg, data


@pytest.mark.slow
def test_segments_in_the_dataset_naming_labels_and_geometry(project):
    layout, root, cfg, data = project
    out = root / "seg"
    proc = run_cli_here("inference", "-c", cfg, "-q", "-o", out)
    split = dict(line.split(",") for line in (root / "model" / "dataset_split.csv").read_text().split())
    held_out = sorted(i for i, p in split.items() if p == "Inference")
    test_case = f"BRATS_{N_CASES:03d}"                     # imagesTs: never in the split file, segmented
    assert test_case not in split and len(held_out) == 1
    segs = sorted(p.name for p in out.glob("BRATS_???.nii.gz"))
    assert segs == [f"{i}.nii.gz" for i in sorted([*held_out, test_case])], (segs, proc.stdout)
    for name in segs:
        seg = nib.load(str(out / name))
        folder = "imagesTs" if name.startswith(test_case) else "imagesTr"
        image = nib.load(str(next((data / folder).glob(name.replace(".nii.gz", "*")))))
        assert seg.shape == image.shape[:3] and seg.header["dim"][0] == 3
        np.testing.assert_allclose(seg.affine, image.affine, atol=1e-5)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
        if folder == "imagesTr":
            assert seg.shape == nib.load(str(data / "labelsTr" / name)).shape


@pytest.mark.slow
def test_evaluate_scores_the_regions_of_the_dataset(project):
    layout, root, cfg, _ = project
    run_cli_here("evaluate", "-c", cfg, "-q", "--subsets", "full", "-o", root / "eval")
    header = (root / "eval" / "per_case.csv").read_text().splitlines()[0].split(",")
    assert {"subject", "dice_whole", "dice_core", "dice_enhancing", "hd95_whole"} <= set(header)
    if layout == "nnunet":                       # the regions are dataset.json's, not a preset's
        from uhved_tf.model_dir import ModelDir
        saved = ModelDir(root / "model").read_metadata()["convention"]
        assert saved["name"] == "nnunet" and saved["regions"] == {k: list(v) for k, v in REGIONS.items()}


def _surface(mask):
    return mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1), border_value=0)


def independent_dice_hd95(pred, ref, spacing):
    """Dice and the 95th percentile symmetric surface distance (mm), with a k-d tree of the surface
    points in millimetres (not uhved_tf's distance transforms)."""
    dice = 2.0 * (pred & ref).sum() / (pred.sum() + ref.sum())
    p, r = (np.argwhere(_surface(m)) * np.asarray(spacing) for m in (pred, ref))
    distances = np.concatenate([cKDTree(r).query(p)[0], cKDTree(p).query(r)[0]])
    return dice, float(np.percentile(distances, 95))


def test_evaluate_predictions_agrees_with_an_independent_dice_and_hd95(project):
    layout, root, cfg, data = project
    labels = sorted((data / "labelsTr").glob("BRATS_*.nii.gz"))
    preds = root / f"predictions_{layout}"
    preds.mkdir()
    (preds / labels[0].name).write_bytes(labels[0].read_bytes())          # the ground truth itself
    img = nib.load(str(labels[1]))
    ref = np.asarray(img.dataobj)
    shifted = np.roll(ref, 1, axis=0)                                     # a wrong segmentation
    nib.save(nib.Nifti1Image(shifted, img.affine), str(preds / labels[1].name))
    proc = run_cli_here("evaluate", "-c", cfg, "--predictions", preds, "--dataset", "all", "-o",
                        root / f"report_{layout}")
    assert "2 cases" in proc.stdout
    rows = {r["subject"]: r for r in csv.DictReader(open(root / f"report_{layout}" / "per_case.csv"))}
    first = np.asarray(nib.load(str(labels[0])).dataobj)
    spacing = img.header.get_zooms()[:3]
    for region, values in REGIONS.items():
        if np.isin(first, values).any():
            assert float(rows["BRATS_001"][f"dice_{region}"]) == 1.0
            assert float(rows["BRATS_001"][f"hd95_{region}"]) == 0.0
        if np.isin(ref, values).any():
            dice, hd = independent_dice_hd95(np.isin(shifted, values), np.isin(ref, values), spacing)
            assert abs(float(rows["BRATS_002"][f"dice_{region}"]) - dice) < 1e-9
            assert abs(float(rows["BRATS_002"][f"hd95_{region}"]) - hd) < 1e-6


def test_a_fold_writes_its_split_and_the_three_test_parts_do_not_overlap(project, tmp_path):
    from uhved_tf.application import Application
    _, root, cfg, _ = project
    tests = []
    for fold in (1, 2, 3):
        text = cfg.read_text().replace(str(root / "model"), str(tmp_path / f"fold{fold}"))
        app = Application(parse_config_text(text, tmp_path, ["--fold", str(fold)]))
        split = app.split(app.discover(need_label=True))
        assert (tmp_path / f"fold{fold}" / "dataset_split.csv").is_file()
        tests.append({i for i, p in split.items() if p == "Inference"})
        assert app.split(app.discover(need_label=True)) == split                  # read back, the same
    assert all(len(t) == 1 for t in tests) and len(set.union(*tests)) == 3
    # A model folder of fold 1 refuses to serve as fold 2's.
    text = cfg.read_text().replace(str(root / "model"), str(tmp_path / "fold1"))
    app = Application(parse_config_text(text, tmp_path, ["--fold", "2"]))
    with pytest.raises(Exception, match="is not the split of fold 2"):
        app.split(app.discover(need_label=True))


# --- the config keys, without training -------------------------------------------------------------

def _parse(text, tmp_path, *overrides):
    return parse_config_text(text, tmp_path, set_overrides=list(overrides))


def test_dataset_keys_are_checked_when_the_config_is_read(tmp_path, caplog):
    from tests.helpers import FAST_INI
    from uhved_tf.errors import ConfigError
    text = layout_ini(tmp_path / "data", tmp_path / "model", "brats2023")
    with pytest.raises(ConfigError, match=r"convention = nnunet .* needs \[DATASET\] path"):
        _parse(text, tmp_path, "DATASET.convention=nnunet", "DATASET.path=")
    with pytest.raises(ConfigError, match="convention = custom has none"):
        _parse(text, tmp_path, "DATASET.convention=custom", "DATASET.regions=whole = 1, 2, 3")
    with pytest.raises(ConfigError, match=r"\[DATASET\] fold"):
        _parse(text, tmp_path, "DATASET.fold=4")
    # NiftyNet's input sections and [DATASET] path: the dataset folder finds the files, loudly.
    sections = FAST_INI.format(data=tmp_path, model=tmp_path / "m").replace(
        "[MULTIMODAL]", f"[DATASET]\npath = {tmp_path}\n[MULTIMODAL]")
    with caplog.at_level("WARNING"):
        cfg = _parse(sections, tmp_path)
    assert cfg.dataset.path == str(tmp_path)
    assert "[T1] path_to_search, filename_contains of <config text> is not used: [DATASET] path" in caplog.text


def test_nnunet_label_values_must_be_those_of_dataset_json(tmp_path):
    import json
    from uhved_tf.application import Application
    from uhved_tf.errors import ConfigError
    data = tmp_path / "Dataset001_X"
    data.mkdir()
    (data / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "tumour": 1, "edema": 2}}))
    text = layout_ini(data, tmp_path / "model", "nnunet")
    with pytest.raises(ConfigError, match="label values 0, 1, 2 but .* set label_values = 0, 1, 2 and num_classes = 3"):
        Application(_parse(text, tmp_path))
    app = Application(_parse(text, tmp_path, "MULTIMODAL.label_values=0,1,2", "MULTIMODAL.num_classes=3"))
    assert app.convention.regions == (("tumour", (1,)), ("edema", (2,)))
    assert app.outputs.seg_file("BRATS_001") == "BRATS_001.nii.gz"
