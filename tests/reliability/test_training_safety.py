"""Training that must not lose work, hang or hide damage: resuming from what the checkpoint files
really hold, damaged checkpoints as one line, float16 steps that overflow, and who writes the
model directory when several processes train.

* Resume: TensorFlow's state file missing, the newest checkpoint incomplete or cut short, a stray
  newer file: ``train --resume`` resumes from the newest checkpoint that restores, says so when it
  falls back, keeps the metrics rows up to there and moves (never overwrites) the files of later
  checkpoints.
* Nothing to resume from: every checkpoint damaged, or none at all while ``metrics.csv`` has rows:
  one error line and the model directory unchanged; the same for ``inference`` / ``evaluate``.
* float16: a step whose gradients overflow leaves the weights and the optimiser state as they were.
* Distribution: a non-chief worker writes nothing to the model directory; one step under
  ``MirroredStrategy`` on two devices is the single-device step (the real two-worker run is in
  tests/training/test_distributed.py).

Every test runs under a watchdog: a hang prints every thread's stack and ends the process after
``TIMEOUT`` seconds (a failure, not a blocked CI); subprocesses get their own timeout.
"""

from __future__ import annotations

import csv
import faulthandler
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.helpers import run_cli_here
from tests.reliability.helpers import REPO, assert_one_line, error_lines, snapshot, write_config

TIMEOUT = 300


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(TIMEOUT, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def two_checkpoints(pristine_data, tmp_path_factory):
    """A tiny model trained 4 iterations, checkpoints at 2 and 4: ``(data, model dir)`` (read-only)."""
    data, _ = pristine_data
    root = tmp_path_factory.mktemp("two_checkpoints")
    faulthandler.dump_traceback_later(TIMEOUT, exit=True)   # (set up before the tests' own watchdog)
    try:
        run_cli_here("train", "-c", write_config(root / "tiny.ini", data, root / "model"), "-q", "--save_every_n", "2")
    finally:
        faulthandler.cancel_dump_traceback_later()
    return data, root / "model"


@pytest.fixture
def model(two_checkpoints, tmp_path):
    """A copy of the two-checkpoint model and its config: ``(config, model dir)``."""
    data, trained = two_checkpoints
    copy = tmp_path / "model"
    shutil.copytree(trained, copy)
    return write_config(tmp_path / "tiny.ini", data, copy), copy


def rows(model_dir):
    with open(model_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DATA = "ckpt-{}.data-00000-of-00001"

# --------------------------------------------------------------------------------------- resume

# damage(checkpoints folder) -> (iteration resumed, the fallback warning's fragment or None,
# file names that must be moved aside with their bytes)
RESUME_CASES = {
    "state_file_missing": (lambda c: (c / "checkpoint").unlink(), 4, None, []),
    "newest_index_missing": (lambda c: (c / "ckpt-4.index").unlink(), 2,
                             "ckpt-4.index: checkpoint 4 is damaged (missing)", [DATA.format(4)]),
    "newest_data_cut_short": (lambda c: cut(c / DATA.format(4)), 2,
                              f"{DATA.format(4)}: checkpoint 4 is damaged (cut short", ["ckpt-4.index", DATA.format(4)]),
    "stray_newer_file": (lambda c: shutil.copy(c / DATA.format(4), c / DATA.format(6)), 4,
                         "ckpt-6.index: checkpoint 6 is damaged (missing)", [DATA.format(6)]),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_from_the_newest_checkpoint_that_restores(model, case):
    cfg, md = model
    damage, resumed, fallback, moved = RESUME_CASES[case]
    ckpts = md / "checkpoints"
    damage(ckpts)
    before = rows(md)
    kept = {n: (ckpts / n).read_bytes() for n in sorted(p.name for p in ckpts.glob(f"ckpt-{resumed}.*"))}
    aside = {n: (ckpts / n).read_bytes() for n in moved}

    proc = run_cli_here("train", "-c", cfg, "--resume", "--max_iter", "6", "--save_every_n", "2")
    assert f"resumed from {ckpts / f'ckpt-{resumed}'} (iteration {resumed})" in proc.stderr, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "resuming from the older checkpoint" in line]
    if fallback:
        assert len(warnings) == 1 and fallback in warnings[0] and f"ckpt-{resumed} (iteration {resumed})" in warnings[0]
    else:
        assert not warnings
    # The metrics rows up to the resumed iteration are kept as they were; the later ones redone once.
    after = rows(md)
    assert after[:resumed] == before[:resumed]
    assert [int(r["iteration"]) for r in after] == list(range(1, 7))
    # The checkpoint resumed from is untouched; the files this run would have overwritten moved aside.
    assert {n: (ckpts / n).read_bytes() for n in kept} == kept
    set_aside = list((ckpts / "set_aside").glob("*/*")) if moved else []
    assert {p.name: p.read_bytes() for p in set_aside} == aside
    if moved:
        assert any("moved the files of checkpoints after iteration" in line for line in proc.stderr.splitlines())
    assert md.joinpath("checkpoints", "ckpt-6.index").is_file()


# ----------------------------------------------------------------------- nothing to resume from


@pytest.mark.parametrize("command", ["train", "inference", "evaluate"])
def test_a_checkpoint_cut_short_is_one_line_naming_its_file(model, command, tmp_path):
    cfg, md = model
    ckpts = md / "checkpoints"
    for n in ((2, 4) if command == "train" else (4,)):   # resuming would fall back to an intact 2
        cut(ckpts / DATA.format(n))
    before = snapshot(md)
    args = {"train": ["--resume", "--max_iter", "6"], "inference": ["--dataset", "all", "-o", tmp_path / "out"],
            "evaluate": ["--dataset", "all", "-o", tmp_path / "eval"]}[command]
    proc = run_cli_here(command, "-c", cfg, "-q", *args, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(error_lines(proc.stderr)) == 1, proc.stderr[-3000:]
    line = error_lines(proc.stderr)[0]
    assert line.startswith(f"uhved_tf {command}: error: {ckpts / DATA.format(4)}: checkpoint 4 is damaged (cut short")
    fix = ("no older checkpoint restores; checkpoints present: 2, 4; restore the file from a backup, or start again "
           "with --overwrite") if command == "train" else "[INFERENCE] checkpoint = N"
    assert_one_line(line, fix)
    assert snapshot(md) == before


@pytest.mark.parametrize("resume", [True, False])
def test_metrics_rows_without_a_checkpoint_are_not_overwritten(model, resume):
    """A run stopped before its first checkpoint: starting again from 0 would rewrite its rows."""
    cfg, md = model
    shutil.rmtree(md / "checkpoints")
    before = snapshot(md)
    proc = run_cli_here("train", "-c", cfg, "-q", *(["--resume"] if resume else []), check=False)
    assert proc.returncode == 2 and len(error_lines(proc.stderr)) == 1, proc.stderr[-3000:]
    assert_one_line(error_lines(proc.stderr)[0], f"{md / 'metrics.csv'} logs iterations up to 4", "--overwrite")
    assert snapshot(md) == before


# ---------------------------------------------------------------------------------------- float16


def test_a_float16_step_that_overflows_changes_nothing_and_the_next_one_trains(tmp_path):
    import tensorflow as tf

    from tests.training.helpers import float16_model, settings
    from uhved_tf.training.checkpoint import model_variables
    from uhved_tf.training.trainer import Trainer

    model = float16_model()
    trainer = Trainer(model, settings(lr=1e-3), tmp_path)
    step = trainer._build_step()
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(2, 8, 8, 8, 2)).astype(np.float32),
             "label": rng.integers(0, 3, size=(2, 8, 8, 8)).astype(np.int32),
             "modality_mask": np.ones((2, 2), np.float32)}
    # 1e6 is beyond float16 (65504): the activations, the loss and the gradients are not finite.
    overflow = {**batch, "image": batch["image"] * 1e6}

    def state():
        opt = trainer.optimizer
        return {**{k: v.numpy() for k, v in model_variables(model).items()},
                **{f"slot{s}_{i}": v.numpy() for s, slots in enumerate(opt.slots) for i, v in enumerate(slots)},
                "iterations": opt.iterations.numpy()}

    def run(b, i):
        return step({k: tf.constant(v) for k, v in b.items()}, tf.constant([0, i], tf.int64))

    run(batch, 0)   # Adam's moments are not zero any more: a zeroed gradient would still move the weights
    before, scale = state(), float(trainer.loss_scale.scale.numpy())
    assert before["iterations"] == 1
    out = run(overflow, 1)
    assert not np.isfinite(float(out["total"]))
    after = state()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert float(trainer.loss_scale.scale.numpy()) == scale / 2
    out = run(batch, 2)
    assert np.isfinite(float(out["total"])) and trainer.optimizer.iterations.numpy() == 2
    trained = state()
    assert any(not np.array_equal(trained[k], before[k]) for k in model_variables(model))


# ---------------------------------------------------------------------------------- distribution


def test_a_non_chief_worker_writes_nothing_to_the_model_dir(pristine_data, tmp_path, monkeypatch):
    """What a worker that is not the chief does (TF_CONFIG's worker 1): it trains, its collective
    saves go to a temporary folder it deletes, and model_dir gets no file from it at all."""
    import tempfile

    from uhved_tf.training import trainer as trainer_module

    data, _ = pristine_data
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(trainer_module, "is_chief", lambda strategy: False)
    writes = []
    real_write = trainer_module.tf.train.Checkpoint.write
    monkeypatch.setattr(trainer_module.tf.train.Checkpoint, "write",
                        lambda self, prefix, *a, **k: writes.append(str(prefix)) or real_write(self, prefix, *a, **k))
    md = tmp_path / "model"
    cfg = write_config(tmp_path / "tiny.ini", data, md)
    proc = run_cli_here("train", "-c", cfg, "--max_iter", "2", "--save_every_n", "1", "--tensorboard_every_n", "1",
                        "--set", "TRAINING.validation_every_n=1", "--set", "TRAINING.exclude_fraction_for_validation=0.5")
    assert "not the chief" not in proc.stderr   # (one worker: no cluster to name)
    assert not md.exists(), sorted(str(p) for p in md.rglob("*"))
    assert len(writes) == 2 and all(w.startswith(str(scratch)) for w in writes), writes
    assert not list(scratch.iterdir()), "the worker's temporary files were left"


MIRRORED = textwrap.dedent("""
    import numpy as np
    import tensorflow as tf
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                               [tf.config.LogicalDeviceConfiguration()] * 2)
    import tempfile
    from tests.training.helpers import settings
    from uhved_tf.losses import LossWeights
    from uhved_tf.model.u_hemis import UHeMIS
    from uhved_tf.training.checkpoint import model_variables
    from uhved_tf.training.trainer import Trainer

    def build():
        model = UHeMIS(("a", "b"), 3, base_width=2, levels=2)
        model({"image": tf.zeros((1, 8, 8, 8, 2)), "modality_mask": tf.ones((1, 2))})
        return model

    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(2, 8, 8, 8, 2)).astype(np.float32),
             "label": rng.integers(0, 3, size=(2, 8, 8, 8)).astype(np.int32),
             "modality_mask": np.array([[1, 0], [1, 1]], np.float32)}
    # SGD: the step is lr x the gradient (Adam's first step, lr x sign, would hide a wrong scale).
    # The Dice term sums over the batch, so each replica's differs from the global batch's: off.
    s = settings(max_iter=1, optimiser="sgd", lr=0.1, loss_weights=LossWeights(dice=0.0))
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with mirrored.scope():
        a = build()
    b = build()
    for key, v in model_variables(b).items():
        v.assign(model_variables(a)[key].numpy())
    initial = {k: v.numpy() for k, v in model_variables(b).items()}
    results = []
    for model, strategy in ((a, mirrored), (b, None)):
        trainer = Trainer(model, s, tempfile.mkdtemp(), strategy)
        assert trainer.strategy.num_replicas_in_sync == (2 if strategy else 1)
        results.append(trainer.fit(tf.data.Dataset.from_tensors(batch).repeat(), callbacks=[]))
    np.testing.assert_allclose(results[0]["total"], results[1]["total"], rtol=1e-5)
    moved = 0
    for key, v in model_variables(b).items():
        np.testing.assert_allclose(model_variables(a)[key].numpy(), v.numpy(), rtol=1e-4, atol=1e-6, err_msg=key)
        moved += not np.allclose(v.numpy(), initial[key])
    assert moved > len(initial) // 2, moved

    # float16 on two replicas: steps whose gradients overflow (a loss scale of 2^100) are skipped
    # on both together (the skip is decided after the all-reduce), and halve the scale each time.
    import keras
    from uhved_tf.model.uhved import UHVED
    keras.config.set_dtype_policy("mixed_float16")
    with mirrored.scope():
        c = UHVED(("a", "b"), 3, base_width=2, levels=2)
        c({"image": tf.zeros((1, 8, 8, 8, 2)), "modality_mask": tf.ones((1, 2))})
    keras.config.set_dtype_policy("float32")
    before = {k: v.numpy() for k, v in model_variables(c).items()}
    trainer = Trainer(c, settings(max_iter=2), tempfile.mkdtemp(), mirrored)
    trainer.loss_scale.scale.assign(2.0**100)
    trainer.fit(tf.data.Dataset.from_tensors(batch).repeat(), callbacks=[])
    assert trainer.optimizer.iterations.numpy() == 0 and trainer.loss_scale.scale.numpy() == 2.0**98
    for key, v in model_variables(c).items():
        np.testing.assert_array_equal(v.numpy(), before[key], err_msg=key)
    print("MIRRORED OK", moved)
""")


def test_one_mirrored_step_on_two_devices_is_the_single_device_step():
    proc = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True, cwd=REPO,
                          timeout=TIMEOUT - 30)
    assert proc.returncode == 0 and "MIRRORED OK" in proc.stdout, proc.stderr[-3000:]
