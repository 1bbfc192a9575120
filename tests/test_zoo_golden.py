"""Golden outputs: each model-zoo entry segments the bundled demo case as it did when it was
packaged (Dice >= 0.99 per region against the stored segmentation), so a regression in
preprocessing, the model or the aggregation is caught (``inference --model NAME`` through the
CLI's ``main`` in this process). Also the README's quick path: ``inference --model uhved_demo``
with two modalities, from the repository as cloned, as a user runs it (a subprocess)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import run_cli, run_cli_here

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "model_zoo"
CASE = ZOO / "demo_case"
ENTRIES = sorted(p.name for p in ZOO.glob("*") if (p / "golden").is_dir())


def dice(a, b):
    if not a.any() and not b.any():
        return 1.0
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def case_files():
    seg = next(CASE.glob("*_seg.nii.gz"))
    case_id = seg.name[: -len("_seg.nii.gz")]
    return case_id, {m: CASE / f"{case_id}_{suffix}.nii.gz"
                     for m, suffix in (("t1", "t1"), ("t1c", "t1ce"), ("t2", "t2"), ("flair", "flair"))}


def test_the_zoo_has_its_demo_models():
    assert {"uhved_demo", "u_hemis_demo"} <= set(ENTRIES)
    proc = run_cli("zoo", "list")
    assert "uhved_demo" in proc.stdout and "u_hemis_demo" in proc.stdout


@pytest.mark.parametrize("name", ENTRIES)
def test_zoo_model_reproduces_its_golden_segmentation(name, tmp_path):
    case_id, files = case_files()
    args = [a for m, f in files.items() for a in (f"--{m}", f)]
    run_cli_here("inference", "--model", name, *args, "-o", tmp_path, "-q", "--subject-id", case_id, cwd=tmp_path)
    got = np.asarray(nib.load(tmp_path / f"{case_id}_seg.nii.gz").dataobj)
    golden_img = nib.load(ZOO / name / "golden" / f"{case_id}_seg.nii.gz")
    golden = np.asarray(golden_img.dataobj)
    assert got.shape == golden.shape
    for region, labels in (("whole", (1, 2, 4)), ("core", (1, 4)), ("enhancing", (4,))):
        d = dice(np.isin(got, labels), np.isin(golden, labels))
        assert d >= 0.99, f"{name}: Dice {d:.4f} of {region} against the golden segmentation"


def test_readme_quick_path_two_modalities(tmp_path):
    case_id, files = case_files()
    run_cli("inference", "--model", "uhved_demo", "--t1c", files["t1c"], "--flair", files["flair"],
            "-o", tmp_path, "-q", cwd=tmp_path)
    outputs = {p.name for p in tmp_path.iterdir()}
    sid = next(n for n in outputs if n.endswith("_seg.nii.gz"))[: -len("_seg.nii.gz")]
    assert {f"{sid}_{m}_synth.nii.gz" for m in ("T1", "T1c", "T2", "Flair")} <= outputs
    seg = np.asarray(nib.load(tmp_path / f"{sid}_seg.nii.gz").dataobj)
    truth = np.asarray(nib.load(CASE / f"{case_id}_seg.nii.gz").dataobj)
    assert dice(seg > 0, truth > 0) > 0.7      # the demo model finds the tumour from T1c + FLAIR
