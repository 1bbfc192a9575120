"""The Python API (``Trainer.from_config(...).fit()``, ``Predictor.from_model_dir(...).predict``) and
model directories used on their own (``inference --model PATH``, ``zoo list``), with a tiny model
(two levels, width 2) trained here in-process for 2 iterations and one ``Predictor`` of it shared
by the tests that only use it."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import FAST_INI, run_cli, run_cli_here
from uhved_tf.errors import ConfigError, UhvedError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from uhved_tf import Trainer
    from uhved_tf.demo.synthetic import make_demo_dataset

    root = tmp_path_factory.mktemp("api")
    data = root / "data"
    make_demo_dataset(data, n_subjects=3, shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0), seed=2)
    cfg = root / "tiny.ini"
    cfg.write_text(FAST_INI.format(data=data, model=root / "model").replace("samples = 2", "samples = 0"))
    trainer = Trainer.from_config(cfg, set_overrides=["INFERENCE.save_uncertainty=True"])
    terms = trainer.fit()
    # The model directory is self-contained: moved away from its config, data and original path.
    moved = root / "moved_model"
    shutil.move(str(trainer.model_dir), moved)
    case = sorted(p for p in data.glob("*/*") if p.is_dir())[0]
    return root, cfg, moved, case, terms


@pytest.fixture(scope="module")
def predictor(trained):
    """``Predictor.from_model_dir`` of the moved model directory (built and restored once)."""
    from uhved_tf import Predictor
    return Predictor.from_model_dir(trained[2])


def _files(case):
    name = case.name
    return {"t1c": case / f"{name}_t1ce.nii.gz", "flair": case / f"{name}_flair.nii.gz"}


def test_trainer_fit_trains_and_refuses_to_clobber(trained):
    from uhved_tf import Trainer
    root, cfg, moved, _, terms = trained
    assert np.isfinite(terms["total"])
    assert (moved / "checkpoints" / "ckpt-2.index").exists()
    again = Trainer.from_config(cfg, set_overrides=[f"SYSTEM.model_dir={moved}"])
    with pytest.raises(UhvedError, match="--resume"):
        again.fit()


def test_predictor_returns_images_in_the_input_geometry(trained, predictor):
    _, _, moved, case, _ = trained
    files = _files(case)
    flair = nib.load(files["flair"])
    out = predictor.predict({"T1ce": files["t1c"], "flair": flair}, subject_id=case.name)
    assert out["subset"] == ("T1c", "Flair")
    seg = out["seg"]
    assert seg.shape == flair.shape and np.allclose(seg.affine, flair.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
    assert sorted(out["synth"]) == ["Flair", "T1", "T1c", "T2"]
    assert all(img.shape == flair.shape for img in out["synth"].values())
    assert out["uncertainty"].shape == flair.shape
    # A path and an in-memory image of the same file give the same result.
    again = predictor.predict({"t1c": nib.load(files["t1c"]), "flair": files["flair"]}, subject_id=case.name)
    np.testing.assert_array_equal(np.asarray(again["seg"].dataobj), np.asarray(seg.dataobj))


def test_predictor_errors_name_the_input(trained, predictor):
    _, _, moved, case, _ = trained
    with pytest.raises(ConfigError, match='"pd".*modalities'):
        predictor.predict({"pd": _files(case)["flair"]})
    with pytest.raises(UhvedError, match="no input images"):
        predictor.predict({})


def test_cli_inference_with_model_dir_matches_the_api(trained, predictor, tmp_path):
    _, _, moved, case, _ = trained
    files = _files(case)
    out = tmp_path / "out"
    run_cli_here("inference", "--model", moved, "--t1c", files["t1c"], "--flair", files["flair"], "-o", out, "-q",
                 "--subject-id", case.name)
    seg = nib.load(out / f"{case.name}_seg.nii.gz")
    for m in ("T1", "T1c", "T2", "Flair"):
        assert (out / f"{case.name}_{m}_synth.nii.gz").exists()
    api = predictor.predict(files, subject_id=case.name)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), np.asarray(api["seg"].dataobj))
    # The outputs are not overwritten without --overwrite.
    proc = run_cli_here("inference", "--model", moved, "--t1c", files["t1c"], "-o", out, "-q",
                        "--subject-id", case.name, check=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr


def test_model_errors_are_one_line(trained, tmp_path):
    root, cfg, moved, case, _ = trained
    proc = run_cli_here("inference", "--model", tmp_path / "nothing", "--t1c", _files(case)["t1c"], check=False)
    assert proc.returncode == 2 and "no such model directory" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli_here("inference", "--model", moved, "-c", cfg, check=False)
    assert proc.returncode == 2 and "not both" in proc.stderr
    proc = run_cli_here("inference", "--model", tmp_path, check=False)
    assert proc.returncode == 2 and "not a trained model directory" in proc.stderr


def test_zoo_list_runs_without_a_config():
    proc = run_cli("zoo", "list")
    assert proc.returncode == 0 and ("model_zoo" in proc.stdout)
