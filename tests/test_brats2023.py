"""A BraTS 2023-2024 (GLI) layout end to end: file names ``BraTS-GLI-NNNNN-NNN-{t1n,t1c,t2w,t2f,seg}``,
labels 0/1/2/3 with enhancing tumour 3, ``[DATASET] convention = brats2023``."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import TINY_INI, dataset_in_layout, layout_ini, run_cli, run_cli_here
from uhved_tf.config import load_config

REPO = Path(__file__).resolve().parents[1]


def sections_ini(data, model, convention: str) -> str:
    """The BraTS 2023 files found by input sections (filename_contains) instead of [DATASET] path."""
    text = TINY_INI.format(data=data, model=model)
    for old, new in (("_t1ce", "-t1c"), ("_t1\n", "-t1n\n"), ("_t2\n", "-t2w\n"), ("_flair", "-t2f"),
                     ("_seg", "-seg")):
        text = text.replace(f"filename_contains = {old}", f"filename_contains = {new}")
    return text.replace("filename_not_contains = _t1ce\n", "").replace(
        "[MULTIMODAL]", f"[DATASET]\nconvention = {convention}\n[MULTIMODAL]")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats2023")
    data = dataset_in_layout(root, "brats2023")
    cfg = root / "tiny2023.ini"
    cfg.write_text(layout_ini(data, root / "model", "brats2023"))
    return root, cfg, data


def test_the_shipped_config_finds_every_case_of_the_layout(project):
    from uhved_tf.application import Application
    _, _, data = project
    cfg = load_config(REPO / "config" / "brats2023.ini", set_overrides=[f"DATASET.path={data}"])
    subjects = Application(cfg).discover(need_label=True)
    assert [s.id for s in subjects] == [f"BraTS-GLI-{i:05d}-000" for i in range(4)]
    assert all(s.files["T1"].name.endswith("-t1n.nii.gz") and s.files["label"].name.endswith("-seg.nii.gz")
               for s in subjects)


@pytest.mark.slow
def test_trains_segments_in_brats2023_labels_and_scores_its_regions(project):
    root, cfg, data = project
    run_cli("train", "-c", cfg, "-q")
    out = root / "seg"
    run_cli_here("inference", "-c", cfg, "-q", "-o", out)
    segs = sorted(out.glob("BraTS-GLI-*-seg.nii.gz"))          # the dataset's own naming
    assert segs and all(set(np.unique(np.asarray(nib.load(str(p)).dataobj))) <= {0, 1, 2, 3} for p in segs)
    run_cli_here("evaluate", "-c", cfg, "-q", "--subsets", "full", "-o", root / "eval")
    header = (root / "eval" / "per_case.csv").read_text().splitlines()[0].split(",")
    assert {"dice_whole", "dice_core", "dice_enhancing", "hd95_whole"} <= set(header)
    # Training the BraTS 2018 convention on these labels is refused, naming a label file and the preset.
    wrong = root / "wrong.ini"
    wrong.write_text(sections_ini(data, root / "model2018", "brats2018"))
    proc = run_cli_here("train", "-c", wrong, "-q", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "-seg.nii.gz: label values [3] are not in label_values [0, 1, 2, 4]" in proc.stderr
    assert "preset brats2023 or msd fits" in proc.stderr


def _dice(a, b):   # independent of uhved_tf.evaluation.metrics
    a, b = a.astype(bool), b.astype(bool)
    return 1.0 if not a.any() and not b.any() else 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_evaluate_predictions_scores_any_segmentation_folder_without_a_model(project):
    import csv
    import json
    root, cfg, data = project
    labels = sorted(data.rglob("*-seg.nii.gz"))
    preds = root / "predictions"
    preds.mkdir()
    for f in labels[:2]:                                        # the ground truth itself
        (preds / f.name.replace("-seg.nii.gz", "_seg.nii.gz")).write_bytes(f.read_bytes())
    img = nib.load(str(labels[2]))                              # a shifted copy, nnU-Net's naming
    shifted = np.roll(np.asarray(img.dataobj), 2, axis=0)
    nib.save(nib.Nifti1Image(shifted, img.affine, img.header), str(preds / labels[2].name.replace("-seg", "")))
    (preds / "stranger_seg.nii.gz").write_bytes(labels[0].read_bytes())
    proc = run_cli_here("evaluate", "-c", cfg, "--predictions", preds, "--dataset", "all", "-o", root / "report")
    assert "3 cases" in proc.stdout
    rows = {r["subject"]: r for r in csv.DictReader(open(root / "report" / "per_case.csv"))}
    assert sorted(rows) == [f"BraTS-GLI-{i:05d}-000" for i in range(3)]
    for i in range(2):
        ref = np.asarray(nib.load(str(labels[i])).dataobj)
        for region, values in (("whole", (1, 2, 3)), ("core", (1, 3)), ("enhancing", (3,))):
            if np.isin(ref, values).any():
                assert float(rows[f"BraTS-GLI-{i:05d}-000"][f"dice_{region}"]) == 1.0
        assert float(rows[f"BraTS-GLI-{i:05d}-000"]["hd95_whole"]) == 0.0
    ref = np.asarray(img.dataobj)
    for region, values in (("whole", (1, 2, 3)), ("core", (1, 3)), ("enhancing", (3,))):
        expected = _dice(np.isin(shifted, values), np.isin(ref, values))
        assert abs(float(rows["BraTS-GLI-00002-000"][f"dice_{region}"]) - expected) < 1e-9
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert summary["unmatched"]["subjects_without_prediction"] == ["BraTS-GLI-00003-000"]
    assert summary["unmatched"]["predictions_without_subject"] == [str(preds / "stranger_seg.nii.gz")]
    assert "no prediction: BraTS-GLI-00003-000" in (root / "report" / "unmatched.txt").read_text()
