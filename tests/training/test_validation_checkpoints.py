"""Validation during training: the best checkpoint, early stopping on a plateau, resuming with an
existing validation.csv, and choosing the checkpoint (latest | best | N) that inference,
evaluate and export load."""

import csv

import numpy as np
import pytest
import tensorflow as tf

from uhved_tf.model.uhved import UHVED
from uhved_tf.training.checkpoint import find_checkpoint, model_variables, restore_model
from uhved_tf.training.trainer import TrainSettings, Trainer
from uhved_tf.training.validation import EarlyStopping

M = 2


def tiny_model():
    model = UHVED(("a", "b"), 3, base_width=2, levels=2)
    model({"image": tf.zeros((1, 8, 8, 8, M)), "modality_mask": tf.ones((1, M))})
    return model


def dataset(rng):
    batch = {"image": rng.standard_normal((1, 8, 8, 8, M)).astype(np.float32),
             "modality_mask": np.ones((1, M), np.float32),
             "label": rng.integers(0, 3, (1, 8, 8, 8)).astype(np.int32)}
    return tf.data.Dataset.from_tensors(batch).repeat()


class ScriptedValidator:
    """Returns the scores of a script in turn and remembers the weights it was shown."""

    def __init__(self, scores):
        self.scores = list(scores)
        self.seen = []

    def __call__(self, model):
        self.seen.append({k: v.numpy() for k, v in model_variables(model).items()})
        score = self.scores[len(self.seen) - 1]
        return {"score": score, "dice/whole": score}


def fit(tmp_path, rng, scores, max_iter, early=None, start=0, model=None):
    model = model or tiny_model()
    trainer = Trainer(model, TrainSettings(max_iter=max_iter, lr=1e-2, save_every_n=1, num_classes=3,
                                           tensorboard_every_n=0), tmp_path)
    if start:
        trainer.restore(start)
    validator = ScriptedValidator(scores)
    trainer.fit(dataset(rng), start_iteration=start, progress=False, validator=validator, validation_every_n=1,
                early_stopping=early)
    return trainer, validator


def read_validation(tmp_path):
    with open(tmp_path / "validation.csv", newline="") as f:
        return [(int(r["iteration"]), float(r["score"])) for r in csv.DictReader(f)]


# --- early stopping --------------------------------------------------------------------------

def test_early_stopping_mean_mode_stops_on_a_plateau_not_while_improving():
    stop = EarlyStopping(patience=2, mode="mean")
    assert [stop.update(s) for s in (0.1, 0.2, 0.3, 0.4)] == [False] * 4
    # mean(0.4, 0.35) = 0.375 is above the best before them (0.3): go on ...
    assert stop.update(0.35) is False
    # ... mean(0.35, 0.35) is not above the best before them (0.4): a plateau, stop.
    assert stop.update(0.35) is True


def test_early_stopping_validation_up_mode_needs_patience_falls_in_a_row():
    stop = EarlyStopping(patience=2, mode="validation_up")
    assert [stop.update(s) for s in (0.5, 0.4, 0.45, 0.3)] == [False] * 4
    assert stop.update(0.2) is True


def test_training_stops_early_and_keeps_the_best_checkpoint(tmp_path, rng):
    scores = [0.1, 0.5, 0.3, 0.2, 0.25, 0.9]
    trainer, validator = fit(tmp_path, rng, scores, max_iter=6, early=EarlyStopping(patience=2, mode="mean"))
    # Validated at 1..4: after 0.3, 0.2 the mean 0.25 is not above the best before (0.5): stop at 4.
    assert read_validation(tmp_path) == [(1, 0.1), (2, 0.5), (3, 0.3), (4, 0.2)]
    assert int(trainer.iteration.numpy()) == 4
    path, iteration = find_checkpoint(tmp_path, "best")
    assert iteration == 2 and path.endswith("best-2")
    # The best checkpoint holds the weights the validator saw at iteration 2, not the latest ones.
    model = tiny_model()
    restore_model(model, path)
    restored = {k: v.numpy() for k, v in model_variables(model).items()}
    for key, value in validator.seen[1].items():
        np.testing.assert_array_equal(restored[key], value)
    assert any(not np.array_equal(validator.seen[1][k], validator.seen[3][k]) for k in restored)
    assert find_checkpoint(tmp_path, "latest")[1] == 4


def test_resume_keeps_earlier_validations_and_the_best_score(tmp_path, rng):
    fit(tmp_path, rng, [0.2, 0.6, 0.4], max_iter=3)
    # Validations after the checkpoint we resume from (iteration 2) are forgotten; the best score
    # (0.6 at 2) is known again, so a later 0.5 is not saved as best.
    trainer, _ = fit(tmp_path, rng, [0.5, 0.55], max_iter=4, start=2)
    assert read_validation(tmp_path) == [(1, 0.2), (2, 0.6), (3, 0.5), (4, 0.55)]
    assert trainer.best_score == 0.6
    assert find_checkpoint(tmp_path, "best")[1] == 2


def test_resume_restores_the_early_stopping_history(tmp_path, rng):
    fit(tmp_path, rng, [0.5, 0.4], max_iter=2)
    early = EarlyStopping(patience=2, mode="validation_up")
    trainer, _ = fit(tmp_path, rng, [0.3, 0.9], max_iter=4, start=2, early=early)
    # 0.5 -> 0.4 (before the resume) -> 0.3: two falls in a row, stop at iteration 3.
    assert int(trainer.iteration.numpy()) == 3
    assert early.scores == [0.5, 0.4, 0.3]


# --- choosing a checkpoint -------------------------------------------------------------------

def test_find_checkpoint_latest_best_and_iteration(tmp_path, rng):
    fit(tmp_path, rng, [0.3, 0.7, 0.1], max_iter=3)
    assert find_checkpoint(tmp_path, "latest")[1] == 3
    assert find_checkpoint(tmp_path, "best")[1] == 2
    path, it = find_checkpoint(tmp_path, "1")
    assert it == 1 and path.endswith("ckpt-1")
    with pytest.raises(LookupError, match=r"no checkpoint of iteration 7 .*checkpoints present: 1, 2, 3"):
        find_checkpoint(tmp_path, "7")


def test_best_without_validation_names_the_cause(tmp_path, rng):
    model = tiny_model()
    Trainer(model, TrainSettings(max_iter=1, lr=1e-2, num_classes=3, tensorboard_every_n=0),
            tmp_path).fit(dataset(rng), progress=False)
    with pytest.raises(LookupError, match="validation_every_n > 0"):
        find_checkpoint(tmp_path, "best")
    with pytest.raises(LookupError, match="no checkpoint in"):
        find_checkpoint(tmp_path / "elsewhere", "latest")
