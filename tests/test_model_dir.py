"""ModelDir: the one owner of a model directory's file names (no TensorFlow needed)."""

import json
from pathlib import Path

import pytest

from uhved_tf.errors import ConfigError, DataError
from uhved_tf.model_dir import MODEL_KEYS, ModelDir

ZOO_MODEL = Path(__file__).resolve().parents[1] / "model_zoo" / "uhved_demo"


def test_a_model_directory_written_by_an_earlier_release_reads_through_model_dir():
    md = ModelDir(ZOO_MODEL)   # committed by `model_zoo/retrain.py` with the previous layout code
    assert md.missing_parts() == []
    assert md.has_model()
    meta = md.read_metadata()
    assert meta["modalities"] == ["T1", "T1c", "T2", "Flair"] and meta["network"] == "u_hved"
    assert md.check_metadata({k: meta[k] for k in MODEL_KEYS}) == meta
    path, iteration = md.find_checkpoint("latest")
    assert Path(path + ".index").is_file() and iteration == md.latest_iteration() == md.saved_iterations()[-1]
    assert md.split.is_file() and md.config.is_file()


def _fake_checkpoints(md: ModelDir, rolling=(), best=()):
    md.checkpoints.mkdir(parents=True, exist_ok=True)
    md.best_checkpoints.mkdir(parents=True, exist_ok=True)
    for i in rolling:
        (md.checkpoints / f"ckpt-{i}.index").write_text("")
    for i in best:
        (md.best_checkpoints / f"best-{i}.index").write_text("")


def test_layout_and_checkpoint_lookup(tmp_path):
    md = ModelDir(tmp_path / "m")
    assert md.missing_parts() == ["config_resolved.ini", "metadata.json", "checkpoints/"]
    assert md.split == tmp_path / "m" / "dataset_split.csv"
    assert md.histogram == tmp_path / "m" / "histogram_ref_file.txt"
    assert md.latest_iteration() is None
    with pytest.raises(LookupError, match="no checkpoint in .*train first"):
        md.find_checkpoint("latest")
    _fake_checkpoints(md, rolling=(10, 2, 30), best=(20,))
    (md.checkpoints / "ckpt-x.index").write_text("")        # not an iteration: ignored
    assert md.saved_iterations() == [2, 10, 30]
    assert md.find_checkpoint("latest") == (str(md.checkpoints / "ckpt-30"), 30)
    assert md.find_checkpoint("best") == (str(md.best_checkpoints / "best-20"), 20)
    assert md.find_checkpoint("10")[1] == 10
    with pytest.raises(LookupError, match="checkpoints present: 2, 10, 30"):
        md.find_checkpoint("7")


def test_metadata_round_trip_check_and_clear(tmp_path):
    md = ModelDir(tmp_path / "m")
    assert md.read_metadata() is None and md.check_metadata({}) is None
    md.root.mkdir()
    meta = {"network": "uhved", "modalities": ["T1", "T2"], "label_values": [0, 1], "num_classes": 2,
            "base_width": 8, "levels": 4}
    md.write_metadata(meta)
    assert md.check_metadata(dict(meta)) == meta
    with pytest.raises(ConfigError, match=r"trained with modalities = \['T1', 'T2'\] but the config says"):
        md.check_metadata(dict(meta, modalities=["T1"]))
    md.metadata.write_text("{broken")
    with pytest.raises(DataError, match="unreadable model metadata"):
        md.read_metadata()
    md.write_metadata(meta)
    _fake_checkpoints(md, rolling=(1,), best=(1,))
    for name in (md.METRICS, md.VALIDATION, md.SPLIT):
        (md / name).write_text("x")
    md.clear_training()
    assert not md.metadata.exists() and md.latest_iteration() is None and not md.validation_csv.exists()
    assert md.split.exists()       # the split, landmarks and outputs stay


def test_a_subset_directory_keeps_the_parent_split_and_landmarks(tmp_path):
    md = ModelDir(tmp_path / "m", histogram_file=tmp_path / "h.txt")
    sub = md.subset("T1c+Flair")
    assert sub.root == tmp_path / "m" / "T1c+Flair"
    assert sub.split == md.split and sub.histogram == tmp_path / "h.txt"
    assert json.loads(json.dumps(str(sub))) == str(tmp_path / "m" / "T1c+Flair")
