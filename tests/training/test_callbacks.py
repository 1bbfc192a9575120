"""The callbacks around the training step: validation (best checkpoint, early stopping, resuming
with an existing validation.csv), the metrics CSV on resume, checkpoints at the end / on Ctrl-C
and never twice. Through ``Trainer.fit`` with a tiny U-HVED, or driven directly when only the
callback is under test."""

import csv
import logging

import numpy as np
import pytest

from tests.training.helpers import ScriptedValidator, dataset, settings, tiny_model
from uhved_tf.model_dir import ModelDir
from uhved_tf.training.callbacks import Checkpointing, MetricsCSV, OnIteration, Validation
from uhved_tf.training.checkpoint import model_variables, restore_model
from uhved_tf.training.trainer import Trainer, default_callbacks
from uhved_tf.training.validation import EarlyStopping


def read(path, field):
    with open(path, newline="") as f:
        return [(int(r["iteration"]), r[field]) for r in csv.DictReader(f)]


def validation_run(trainer, rng, scores, start=0, early=None):
    s = trainer.settings
    callbacks = default_callbacks(s, trainer.model_dir, progress=False, validator=ScriptedValidator(scores),
                                  validation_every_n=1, early_stopping=early)
    trainer.fit(dataset(rng), start_iteration=start, callbacks=callbacks)
    return callbacks[-1]


def test_early_stopping_on_a_plateau_stops_the_loop_and_the_best_checkpoint_is_kept(tmp_path, rng):
    md = ModelDir(tmp_path)
    trainer = Trainer(tiny_model(), settings(max_iter=6), md)
    validation = validation_run(trainer, rng, [0.1, 0.5, 0.3, 0.2, 0.25, 0.9], early=EarlyStopping(2, "mean"))
    # Validated at 1..4: after 0.3, 0.2 the mean 0.25 is not above the best before (0.5): stop at 4.
    assert read(md.validation_csv, "score") == [(1, "0.1"), (2, "0.5"), (3, "0.3"), (4, "0.2")]
    assert int(trainer.iteration.numpy()) == 4 and validation.best_score == 0.5
    assert md.saved_iterations() == [4]   # save_every_n = 0: the end of the run, early or not
    assert md.saved_iterations(best=True) == [2]
    # The best checkpoint holds the weights the validator saw at iteration 2, not the latest ones.
    model = tiny_model()
    restore_model(model, md.find_checkpoint("best")[0])
    seen = validation.validator.seen
    for key, value in model_variables(model).items():
        np.testing.assert_array_equal(value.numpy(), seen[1][key])
    assert any(not np.array_equal(seen[1][k], seen[3][k]) for k in seen[1])


def test_resume_truncates_the_csvs_and_restores_best_score_and_early_stopping(tmp_path, rng):
    md = ModelDir(tmp_path)
    trainer = Trainer(tiny_model(), settings(max_iter=3, save_every_n=1), md)
    validation_run(trainer, rng, [0.5, 0.6, 0.4])
    # Resume from iteration 2: what was logged at 3 is forgotten and redone.
    trainer = Trainer(trainer.model, settings(max_iter=6, save_every_n=1), md)
    assert trainer.restore(2) == 2
    early = EarlyStopping(patience=2, mode="validation_up")
    validation = validation_run(trainer, rng, [0.55, 0.3, 0.9], start=2, early=early)
    # 0.6 (before the resume) -> 0.55 -> 0.3: two falls in a row, stop at 4; the best stays 0.6 at 2.
    assert read(md.validation_csv, "score") == [(1, "0.5"), (2, "0.6"), (3, "0.55"), (4, "0.3")]
    assert early.scores == [0.5, 0.6, 0.55, 0.3] and validation.best_score == 0.6
    assert md.saved_iterations(best=True) == [2]
    assert [i for i, _ in read(md.metrics_csv, "total")] == [1, 2, 3, 4]


def test_validation_csv_is_kept_consistent_by_a_resume_that_does_not_validate(tmp_path):
    md = ModelDir(tmp_path)
    md.validation_csv.write_text("iteration,score\n1,0.25\n2,0.5\n3,0.75\n")
    trainer = Trainer(tiny_model(), settings(), md)
    validation = Validation(md)
    validation.on_train_begin(trainer, 2)
    assert read(md.validation_csv, "score") == [(1, "0.25"), (2, "0.5")] and validation.best_score == 0.5
    assert validation.on_step_end(trainer, 3, {}, 0.0, []) is False


def test_metrics_csv_keeps_the_rows_up_to_the_resumed_iteration(tmp_path):
    md = ModelDir(tmp_path)
    md.metrics_csv.touch()   # killed before the header reached the disk

    def run(start, stop):
        cb = MetricsCSV(md)
        cb.on_train_begin(None, start)
        for it in range(start + 1, stop + 1):
            cb.on_step_end(None, it, {"total": float(it), "dice": 0.5}, 0.01, ["T1", "T1+T2"])
        cb.close()

    run(0, 4)
    run(2, 3)
    with open(md.metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["iteration"], r["total"]) for r in rows] == [("1", "1.0"), ("2", "2.0"), ("3", "3.0")]
    assert rows[0]["subsets"] == "T1;T1+T2" and rows[0]["kl"] == "" and rows[0]["lr"] == "0.01"


def test_checkpointing_every_n_at_the_end_on_ctrl_c_and_never_twice(tmp_path, caplog):
    md = ModelDir(tmp_path)
    trainer = Trainer(tiny_model(), settings(), md)
    cb = Checkpointing(every_n=2)

    def run(start, stop, interrupted=False):
        cb.on_train_begin(trainer, start)
        for it in range(start + 1, stop + 1):
            trainer.iteration.assign(it)
            cb.on_step_end(trainer, it, {}, 0.0, [])
        cb.on_train_end(trainer, stop, interrupted)

    with caplog.at_level(logging.INFO, logger="uhved_tf"):
        run(0, 4)                       # saved at 2 and 4; the end is 4: not again
        run(4, 5, interrupted=True)     # Ctrl-C at 5: saved
        run(5, 5, interrupted=True)     # Ctrl-C before a step: nothing new to save
    assert md.saved_iterations() == [2, 4, 5]
    assert sum(r.getMessage().startswith("saved checkpoint") for r in caplog.records) == 3
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "interrupted at iteration 5: saving a checkpoint before exiting"]


def test_ctrl_c_in_the_loop_saves_then_goes_on(tmp_path, rng):
    md = ModelDir(tmp_path)
    s = settings(max_iter=10)
    trainer = Trainer(tiny_model(), s, md)

    def interrupt(iteration, losses):
        if iteration == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(dataset(rng), callbacks=default_callbacks(s, md, progress=False, on_iteration=interrupt))
    assert md.saved_iterations() == [2]
    assert [i for i, _ in read(md.metrics_csv, "total")] == [1, 2]
    # Resumed, the loop goes on to max_iter with the OnIteration hook seeing every iteration.
    seen = []
    trainer.fit(dataset(rng), start_iteration=trainer.restore(),
                callbacks=[*default_callbacks(s, md, progress=False), OnIteration(lambda i, _: seen.append(i))])
    assert seen == list(range(3, 11)) and md.latest_iteration() == 10
