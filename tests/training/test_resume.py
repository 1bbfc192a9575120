"""The pieces of a safe resume: checkpoint files found by name (complete or not), the files of
later checkpoints moved aside, the diagnosis of a damaged checkpoint, the restore that falls back
to an older checkpoint, and float16's dynamic loss scale (its rule and its place in checkpoints).
The whole runs through the CLI are in tests/reliability/test_training_safety.py."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from tests.training.helpers import dataset, float16_model, settings, tiny_model
from uhved_tf.model_dir import ModelDir
from uhved_tf.training.checkpoint import UnrestorableCheckpoint, find_damage, model_checkpoint, model_variables
from uhved_tf.training.trainer import DynamicLossScale, Trainer


def test_checkpoint_files_by_iteration_and_set_aside(tmp_path):
    md = ModelDir(tmp_path)
    md.checkpoints.mkdir()
    for name in ("ckpt-2.index", "ckpt-2.data-00000-of-00001", "ckpt-4.data-00000-of-00001", "checkpoint",
                 "ckpt-10.index", "ckpt-x.index", "best-3.index"):
        (md.checkpoints / name).write_text(name)
    (md.checkpoints / "ckpt-5_temp").mkdir()
    assert {n: [p.name for p in files] for n, files in md.checkpoint_files().items()} == {
        2: ["ckpt-2.data-00000-of-00001", "ckpt-2.index"], 4: ["ckpt-4.data-00000-of-00001"], 5: ["ckpt-5_temp"],
        10: ["ckpt-10.index"]}
    assert md.saved_iterations() == [2, 10]
    moved, folder = md.set_aside_checkpoints_after(2)
    assert sorted(p.name for p in moved) == ["ckpt-10.index", "ckpt-4.data-00000-of-00001", "ckpt-5_temp"]
    assert folder.parent == md.checkpoints / "set_aside"
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in moved)
    assert (folder / "ckpt-10.index").read_text() == "ckpt-10.index"
    assert list(md.checkpoint_files()) == [2] and (md.checkpoints / "checkpoint").exists()
    assert md.set_aside_checkpoints_after(2) == ([], None)
    (md.checkpoints / "ckpt-3.index").write_text("again")       # a second set-aside in the same second
    _, second = md.set_aside_checkpoints_after(2)
    assert second != folder and (second / "ckpt-3.index").read_text() == "again"


def test_last_logged_iteration(tmp_path):
    md = ModelDir(tmp_path)
    assert md.last_logged_iteration() is None
    md.metrics_csv.write_text("iteration,total\n")
    assert md.last_logged_iteration() is None
    md.metrics_csv.write_text("iteration,total\n1,0.5\n2,0.4\n")
    assert md.last_logged_iteration() == 2


@pytest.fixture
def saved(tmp_path):
    """A checkpoint of three variables: its prefix."""
    ckpt = tf.train.Checkpoint(a=tf.Variable(tf.range(1000.0)), b=tf.Variable(tf.ones((50, 50))), c=tf.Variable(3))
    return ckpt.write(str(tmp_path / "ckpt-7"))


@pytest.mark.parametrize("damage, file, what", [
    ("none", None, None),
    ("no_index", ".index", "missing"),
    ("no_data", ".data-00000-of-00001", "missing"),
    ("cut_data", ".data-00000-of-00001", "cut short: Read less bytes than requested"),
    ("flipped_data", ".data-00000-of-00001", "unreadable: "),
    ("cut_index", ".index", "unreadable: "),
])
def test_find_damage_names_the_file(saved, damage, file, what):
    index, data = f"{saved}.index", f"{saved}.data-00000-of-00001"
    if damage == "no_index":
        tf.io.gfile.remove(index)
    elif damage == "no_data":
        tf.io.gfile.remove(data)
    elif damage.startswith("cut"):
        target = data if damage == "cut_data" else index
        raw = open(target, "rb").read()
        open(target, "wb").write(raw[: len(raw) // 2])
    elif damage == "flipped_data":
        raw = bytearray(open(data, "rb").read())
        raw[len(raw) // 2] ^= 0x10
        open(data, "wb").write(bytes(raw))
    found = find_damage(saved)
    if file is None:
        assert found is None
    else:
        assert found[0] == saved + file and found[1].startswith(what), found


def trained(md, rng, **changes):
    trainer = Trainer(tiny_model(), settings(max_iter=4, save_every_n=2, **changes), md)
    trainer.fit(dataset(rng))
    return trainer


def test_restore_falls_back_to_the_newest_checkpoint_that_restores(tmp_path, rng, caplog):
    md = ModelDir(tmp_path)
    first = trained(md, rng)
    (md.checkpoints / "checkpoint").unlink()                     # TensorFlow's state file: not needed
    assert Trainer(tiny_model(), settings(), md).restore() == 4
    data4 = md.checkpoints / "ckpt-4.data-00000-of-00001"
    data4.write_bytes(data4.read_bytes()[:100])
    fresh = Trainer(tiny_model(), settings(), md)
    with caplog.at_level(logging.INFO, logger="uhved_tf"):
        assert fresh.restore() == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("uhved_tf")]
    assert len(warnings) == 1 and warnings[0].startswith(f"{data4}: checkpoint 4 is damaged (cut short")
    assert warnings[0].endswith(f"resuming from the older checkpoint {md.checkpoint_path(2)} (iteration 2) instead")
    # The weights are the ones of iteration 2 (none left over from the attempt at 4).
    reader = tf.train.load_checkpoint(md.checkpoint_path(2))
    for key, v in model_variables(fresh.model).items():
        np.testing.assert_array_equal(v.numpy(), reader.get_tensor(f"model/{key.replace('.', '..')}/.ATTRIBUTES/"
                                                                   "VARIABLE_VALUE"), err_msg=key)
    assert fresh.optimizer.iterations.numpy() == 2 and first.optimizer.iterations.numpy() == 4
    with pytest.raises(UnrestorableCheckpoint) as info:          # asked for exactly 4: no fallback
        fresh.restore(4)
    assert info.value.damage[0] == str(data4)


def test_fit_moves_the_files_of_later_checkpoints_aside(tmp_path, rng):
    md = ModelDir(tmp_path)
    trained(md, rng)
    before = {p.name: p.read_bytes() for p in md.checkpoints.glob("ckpt-4.*")}
    trainer = Trainer(tiny_model(), settings(max_iter=3, save_every_n=1), md)
    trainer.fit(dataset(rng), start_iteration=trainer.restore(2))
    assert md.saved_iterations() == [2, 3]
    [folder] = (md.checkpoints / "set_aside").iterdir()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_dynamic_loss_scale_rule():
    ls = DynamicLossScale(initial=8.0, growth_steps=2)
    seen = []
    for finite in (True, True, True, False, False, False, False, True):
        ls.update(tf.constant(finite))
        seen.append((float(ls.scale.numpy()), int(ls.good_steps.numpy())))
    assert seen == [(8, 1), (16, 0), (16, 1), (8, 0), (4, 0), (2, 0), (1, 0), (1, 1)]
    ls.update(tf.constant(False))
    assert float(ls.scale.numpy()) == 1.0          # never below 1


def test_the_loss_scale_is_checkpointed_and_an_older_float16_checkpoint_still_resumes(tmp_path, rng):
    md = ModelDir(tmp_path / "a")
    md.root.mkdir()
    trainer = Trainer(float16_model(), settings(max_iter=1), md)
    trainer.loss_scale.scale.assign(64.0)
    trainer.fit(dataset(rng))
    again = Trainer(float16_model(), settings(), md)
    assert again.restore() == 1 and float(again.loss_scale.scale.numpy()) == 64.0
    # A checkpoint written before dynamic loss scaling: everything else restores, the scale starts over.
    old = ModelDir(tmp_path / "b")
    old.checkpoints.mkdir(parents=True)
    model_checkpoint(trainer.model, optimizer=trainer.optimizer, iteration=trainer.iteration).save(
        str(old.checkpoints / "ckpt"))   # ckpt-1
    later = Trainer(float16_model(), settings(), old)
    assert later.restore() == 1 and float(later.loss_scale.scale.numpy()) == 2.0**15
