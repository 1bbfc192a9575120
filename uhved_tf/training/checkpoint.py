"""Checkpoints of Keras 3 models through ``tf.train.Checkpoint``.

``tf.train.Checkpoint(model=keras_model)`` does not reach the variables of a Keras 3 model
(layers held in Python lists, Keras ``Variable`` wrappers): the checkpoint is written without a
single weight and restoring it silently changes nothing. So the model is checkpointed as an
explicit dict {variable path: tf.Variable}; paths are stable for a given architecture and a
mismatch fails loudly on restore. The model's own (auto-numbered) name is not part of the key.
"""

from __future__ import annotations

import tensorflow as tf


def model_variables(model) -> dict:
    out = {}
    for v in model.variables:
        # Drop the model's own name: Keras numbers it per process (uhved, uhved_1, ...).
        key = v.path.split("/", 1)[-1].replace("/", ".")
        if key in out:
            raise ValueError(f"two variables share the path {v.path!r}")
        out[key] = v if isinstance(v, tf.Variable) else v.value
    return out


def model_checkpoint(model, **extra) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(model=model_variables(model), **extra)


def restore_model(model, path: str) -> None:
    """Restore only the weights (no optimizer) and fail if any model weight is not in the file."""
    status = model_checkpoint(model).restore(path)
    status.expect_partial()
    status.assert_existing_objects_matched()
