"""A tiny U-HVED, one repeated batch and explicit training settings for the training tests."""

import dataclasses

import numpy as np
import tensorflow as tf

from uhved_tf.losses import LossForms, LossWeights
from uhved_tf.model.uhved import UHVED
from uhved_tf.training.checkpoint import model_variables
from uhved_tf.training.trainer import TrainSettings

M = 2
SETTINGS = TrainSettings(max_iter=2, lr=1e-2, lr_decay_factor=4.0, lr_decay_every=10000, save_every_n=0,
                         max_checkpoints=100, tensorboard_every_n=0, optimiser="adam", seed=0, num_classes=3,
                         loss_weights=LossWeights(), loss_forms=LossForms())


def settings(**changes) -> TrainSettings:
    return dataclasses.replace(SETTINGS, **changes)


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


def float16_model():
    """A tiny U-HVED built under the mixed_float16 policy (the global policy is restored)."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = UHVED(("a", "b"), 3, base_width=2, levels=2)
        model({"image": tf.zeros((1, 8, 8, 8, 2)), "modality_mask": tf.ones((1, 2))})
    finally:
        keras.config.set_dtype_policy(previous)
    return model
