"""Early stopping's rules, and choosing the checkpoint (latest | best | N) that inference,
evaluate and export load among those a training wrote (the validation loop itself:
test_callbacks.py)."""

import pytest

from tests.training.helpers import ScriptedValidator, dataset, settings, tiny_model
from uhved_tf.model_dir import ModelDir
from uhved_tf.training.trainer import Trainer, default_callbacks
from uhved_tf.training.validation import EarlyStopping


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


def test_find_checkpoint_latest_best_and_iteration(tmp_path, rng):
    md = ModelDir(tmp_path)
    s = settings(max_iter=3, save_every_n=1)
    Trainer(tiny_model(), s, md).fit(dataset(rng), callbacks=default_callbacks(
        s, md, progress=False, validator=ScriptedValidator([0.3, 0.7, 0.1]), validation_every_n=1))
    assert md.find_checkpoint("latest")[1] == 3
    assert md.find_checkpoint("best") == (md.checkpoint_path(2, best=True), 2)
    assert md.find_checkpoint("1") == (md.checkpoint_path(1), 1)
    with pytest.raises(LookupError, match=r"no checkpoint of iteration 7 .*checkpoints present: 1, 2, 3"):
        md.find_checkpoint("7")


def test_best_without_validation_names_the_cause(tmp_path, rng):
    Trainer(tiny_model(), settings(max_iter=1, save_every_n=500), tmp_path).fit(dataset(rng))
    with pytest.raises(LookupError, match="validation_every_n > 0"):
        ModelDir(tmp_path).find_checkpoint("best")
    with pytest.raises(LookupError, match="no checkpoint in"):
        ModelDir(tmp_path / "elsewhere").find_checkpoint("latest")
