"""Tests of the synthetic BraTS-like demo data set (small volumes so the module runs in seconds)."""

import json
import os

import nibabel as nib
import numpy as np
import pytest

from uhved_tf.demo import synthetic
from uhved_tf.demo.synthetic import (
    MANIFEST_NAME,
    MODALITIES,
    make_demo_dataset,
    subject_ids,
    synthesize_subject,
)
from uhved_tf.errors import ConfigError, DataError

SHAPE = (32, 32, 24)
SPACING = (3.0, 3.0, 3.5)
N = 4
SUFFIXES = MODALITIES + ("seg",)


def _make(out, **kw):
    args = dict(n_subjects=N, shape=SHAPE, spacing=SPACING, seed=0)
    args.update(kw)
    return make_demo_dataset(out, **args)


def _files(root, sid):
    grade = sid.split("_")[2]
    return {s: root / grade / sid / f"{sid}_{s}.nii.gz" for s in SUFFIXES}


def _number(sid):
    return int(sid.rsplit("_", 1)[1])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    ids = _make(root)
    cases = {}
    for sid in ids:
        imgs = {s: nib.load(str(p)) for s, p in _files(root, sid).items()}
        cases[sid] = {
            "nii": imgs,
            "data": {s: np.asarray(img.dataobj) for s, img in imgs.items()},
            "synth": synthesize_subject(sid.split("_")[2], _number(sid), SHAPE, SPACING, seed=0),
        }
    return root, ids, cases


# ------------------------------------------------------------------ layout and geometry


def test_layout_and_names(dataset):
    root, ids, _ = dataset
    assert ids == subject_ids(N)
    assert ids == [
        "Brats18_Demo_HGG_001",
        "Brats18_Demo_HGG_002",
        "Brats18_Demo_HGG_003",
        "Brats18_Demo_LGG_001",
    ]
    assert sorted(p.name for p in root.iterdir()) == ["HGG", "LGG", MANIFEST_NAME]
    for grade in ("HGG", "LGG"):
        for sdir in (root / grade).iterdir():
            sid = sdir.name
            assert sid in ids and sid.split("_")[2] == grade
            assert sorted(p.name for p in sdir.iterdir()) == sorted(f"{sid}_{s}.nii.gz" for s in SUFFIXES)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["subjects"] == ids and manifest["complete"] is True
    params = {"n_subjects": N, "shape": list(SHAPE), "spacing": list(SPACING), "seed": 0}
    assert manifest["parameters"] == params


def test_headers_affines_dtypes(dataset):
    _, ids, cases = dataset
    orientations = set()
    for sid in ids:
        nii = cases[sid]["nii"]
        ref = nii["t1"].affine
        assert not np.allclose(ref, np.eye(4))
        assert np.abs(ref[:3, 3]).min() > 0  # origin not zero
        np.testing.assert_array_equal(np.abs(np.diag(ref)[:3]), SPACING)
        for s, img in nii.items():
            assert img.shape == SHAPE
            np.testing.assert_array_equal(img.affine, ref)
            np.testing.assert_allclose(img.header.get_zooms(), SPACING)
            assert img.get_data_dtype() == (np.uint8 if s == "seg" else np.int16)
        np.testing.assert_array_equal(ref, cases[sid]["synth"].affine)
        orientations.add("".join(nib.aff2axcodes(ref)))
    assert "LPS" in orientations and len(orientations) >= 2  # non-RAS orientations are exercised


def test_files_match_in_memory_synthesis(dataset):
    _, ids, cases = dataset
    for sid in ids:
        synth, data = cases[sid]["synth"], cases[sid]["data"]
        for m in MODALITIES:
            np.testing.assert_array_equal(data[m], synth.images[m])
        np.testing.assert_array_equal(data["seg"], synth.seg)


def test_anatomy_is_consistent_in_world_coordinates(dataset):
    """The tumour lies in the hemisphere the generator chose, whatever the voxel orientation."""
    _, ids, cases = dataset
    for sid in ids:
        seg, affine = cases[sid]["data"]["seg"], cases[sid]["nii"]["seg"].affine
        centroid = np.argwhere(seg > 0).mean(axis=0)
        x_world = (affine @ np.append(centroid, 1.0))[0]
        brain = np.argwhere(cases[sid]["data"]["t1"] > 0).mean(axis=0)
        x_brain = (affine @ np.append(brain, 1.0))[0]
        assert (x_world > x_brain) == (cases[sid]["synth"].hemisphere == "R")


# ------------------------------------------------------------------ labels and masks


def test_labels(dataset):
    _, ids, cases = dataset
    for sid in ids:
        seg = cases[sid]["data"]["seg"]
        labels = set(np.unique(seg).tolist())
        assert labels <= {0, 1, 2, 4}
        if "_HGG_" in sid:
            assert {1, 2, 4} <= labels
        else:
            assert 4 not in labels and {1, 2} <= labels


def test_background_zero_and_tumour_inside_brain(dataset):
    _, ids, cases = dataset
    for sid in ids:
        data = cases[sid]["data"]
        brain = cases[sid]["synth"].tissue != synthetic.BACKGROUND
        assert 0.1 < brain.mean() < 0.6
        for m in MODALITIES:
            assert np.all(data[m][~brain] == 0)
            assert np.all(data[m][brain] > 0)
        assert np.all(brain[data["seg"] > 0])
        # tissue map and labels agree
        np.testing.assert_array_equal(synthetic._TISSUE_TO_LABEL[cases[sid]["synth"].tissue], data["seg"])


# ------------------------------------------------------------------ contrast


def _means(case, modality):
    img = case["data"][modality].astype(np.float64)
    seg, tissue = case["data"]["seg"], case["synth"].tissue

    def mean(mask):
        assert mask.any()
        return img[mask].mean()

    out = {
        "wm": mean(tissue == synthetic.WM),
        "gm": mean(tissue == synthetic.GM),
        "csf": mean(tissue == synthetic.CSF),
        "oedema": mean(seg == 2),
        "core": mean((seg == 1) | (seg == 4)),
        "necrosis": mean(seg == 1),
    }
    if (seg == 4).any():
        out["rim"] = mean(seg == 4)
    return out


def test_contrast_relations(dataset):
    _, ids, cases = dataset
    for sid in ids:
        case = cases[sid]
        t1, t1c, t2, flair = (_means(case, m) for m in MODALITIES)
        # means relative to white matter, per modality
        rel = {
            name: {k: v / m["wm"] for k, v in m.items()}
            for name, m in zip(MODALITIES, (t1, t1c, t2, flair))
        }
        # T1: WM > GM > CSF; oedema only slightly different from WM
        assert rel["t1"]["gm"] < 0.95 and rel["t1"]["csf"] < rel["t1"]["gm"]
        assert abs(rel["t1"]["oedema"] - 1.0) < 0.25
        assert abs(rel["t1ce"]["oedema"] - 1.0) < 0.25
        # T2 / FLAIR: oedema clearly brighter than WM; CSF bright in T2, dark in FLAIR; WM < GM
        assert rel["t2"]["oedema"] > 1.5 and rel["flair"]["oedema"] > 1.5
        assert rel["t2"]["csf"] > 1.3 and rel["flair"]["csf"] < 0.7
        assert rel["t2"]["gm"] > 1.2 and rel["flair"]["gm"] > 1.0
        # necrosis / non-enhancing core darker than WM in T1c
        assert rel["t1ce"]["necrosis"] < 0.9
        if "rim" in t1c:
            # enhancing rim: very bright in T1c only, iso to the core in T1
            assert t1c["rim"] > 1.3 * t1c["oedema"] and t1c["rim"] > 1.3 * t1c["necrosis"]
            assert rel["t1ce"]["rim"] > 1.25
            assert abs(t1["rim"] - t1["core"]) < 0.1 * t1["wm"]
            assert t1["rim"] < t1["wm"]


# ------------------------------------------------------------------ determinism


def test_deterministic_and_seed_dependent(dataset, tmp_path):
    root, ids, cases = dataset
    ids2 = _make(tmp_path / "again")
    assert ids2 == ids
    for sid in ids:
        for s, p in _files(tmp_path / "again", sid).items():
            a = np.asarray(nib.load(str(p)).dataobj)
            assert a.tobytes() == cases[sid]["data"][s].tobytes()
    other = synthesize_subject("HGG", 1, SHAPE, SPACING, seed=1)
    assert not np.array_equal(other.images["t1"], cases[ids[0]]["data"]["t1"])
    # different subjects of one data set differ
    assert not np.array_equal(cases[ids[0]]["data"]["seg"], cases[ids[1]]["data"]["seg"])


# ------------------------------------------------------------------ re-runs and overwrite


def test_idempotent_rerun_does_not_rewrite(tmp_path):
    ids = _make(tmp_path)
    files = [p for sid in ids for p in _files(tmp_path, sid).values()] + [tmp_path / MANIFEST_NAME]
    stamps = {p: os.stat(p).st_mtime_ns for p in files}
    assert _make(tmp_path) == ids
    assert {p: os.stat(p).st_mtime_ns for p in files} == stamps


def test_refuses_other_dataset_and_overwrites_when_asked(tmp_path):
    ids = _make(tmp_path)
    with pytest.raises(DataError) as exc:
        _make(tmp_path, seed=1)
    msg = str(exc.value)
    assert str(tmp_path) in msg and "\n" not in msg and "overwrite" in msg
    # overwrite with fewer subjects replaces the demo subjects, stale ones included
    new_ids = _make(tmp_path, n_subjects=2, seed=1, overwrite=True)
    assert new_ids == ["Brats18_Demo_HGG_001", "Brats18_Demo_LGG_001"]
    assert sorted(p.name for p in (tmp_path / "HGG").iterdir()) == ["Brats18_Demo_HGG_001"]
    t1 = np.asarray(nib.load(str(_files(tmp_path, new_ids[0])["t1"])).dataobj)
    np.testing.assert_array_equal(t1, synthesize_subject("HGG", 1, SHAPE, SPACING, seed=1).images["t1"])
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["parameters"]["seed"] == 1
    assert ids != new_ids


def test_refuses_folder_with_foreign_nifti(tmp_path):
    sub = tmp_path / "HGG" / "Brats18_2013_2_1"
    sub.mkdir(parents=True)
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    nib.save(img, str(sub / "Brats18_2013_2_1_t1.nii.gz"))
    with pytest.raises(DataError, match="Brats18_2013_2_1_t1"):
        _make(tmp_path)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_non_nifti_content_and_interrupted_run_are_fine(tmp_path):
    (tmp_path / "README.txt").write_text("notes")
    ids = _make(tmp_path, n_subjects=1)
    assert ids == ["Brats18_Demo_HGG_001"]
    # simulate an interrupted run: manifest marked incomplete, a file missing
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    manifest["complete"] = False
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    _files(tmp_path, ids[0])["flair"].unlink()
    assert _make(tmp_path, n_subjects=1) == ids
    assert _files(tmp_path, ids[0])["flair"].is_file()
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())["complete"] is True
    assert (tmp_path / "README.txt").read_text() == "notes"
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporary files left


def test_out_dir_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        _make(f)


@pytest.mark.parametrize(
    "kw",
    [
        {"n_subjects": 0},
        {"n_subjects": 2.5},
        {"seed": -1},
        {"shape": (32, 32)},
        {"shape": (8, 32, 32)},
        {"spacing": (3.0, 0.0, 3.0)},
    ],
)
def test_bad_parameters(tmp_path, kw):
    with pytest.raises(ConfigError):
        _make(tmp_path, **kw)
    assert not any(tmp_path.iterdir())


def test_lgg_fraction():
    ids = subject_ids(16)
    assert sum("_LGG_" in s for s in ids) == 4
    assert all("_HGG_" in s for s in subject_ids(1))
