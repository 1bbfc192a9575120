"""Checkpoints of Keras 3 models through ``tf.train.Checkpoint``.

``tf.train.Checkpoint(model=keras_model)`` does not reach the variables of a Keras 3 model
(layers held in Python lists, Keras ``Variable`` wrappers): the checkpoint is written without a
single weight and restoring it silently changes nothing. So the model is checkpointed as an
explicit dict {variable path: tf.Variable}; paths are stable for a given architecture and a
mismatch fails loudly on restore. The model's own (auto-numbered) name is not part of the key.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

#: Folders of a model directory holding the rolling checkpoints and the best validation one.
ROLLING_DIR = "checkpoints"
BEST_DIR = "checkpoints_best"


def saved_iterations(folder, prefix: str = "ckpt") -> list[int]:
    """Iterations of the checkpoints in ``folder`` found from the files themselves (``PREFIX-N.index``)."""
    out = []
    for p in Path(folder).glob(f"{prefix}-*.index"):
        number = p.name[len(prefix) + 1:-len(".index")]
        if number.isdigit():
            out.append(int(number))
    return sorted(out)


def find_checkpoint(model_dir, which: str = "latest") -> tuple[str, int]:
    """The checkpoint prefix and iteration of ``which`` (``latest``, ``best`` or an iteration) in a
    model directory. Raises ``LookupError`` with a sentence naming what is there."""
    model_dir = Path(model_dir)
    rolling = model_dir / ROLLING_DIR
    have = saved_iterations(rolling)
    listing = f"checkpoints present: {', '.join(map(str, have)) or 'none'}"
    if which == "best":
        best = saved_iterations(model_dir / BEST_DIR, "best")
        if not best:
            raise LookupError(f"no best checkpoint in {model_dir / BEST_DIR}: it is kept only when training "
                              f"validates ([TRAINING] validation_every_n > 0 and a Validation split); {listing}")
        return str(model_dir / BEST_DIR / f"best-{best[-1]}"), best[-1]
    if which == "latest":
        if not have:
            raise LookupError(f"no checkpoint in {rolling}; train first")
        return str(rolling / f"ckpt-{have[-1]}"), have[-1]
    iteration = int(which)
    if iteration not in have:
        raise LookupError(f"no checkpoint of iteration {iteration} in {rolling}; {listing} "
                          "(checkpoint = latest or best also work)")
    return str(rolling / f"ckpt-{iteration}"), iteration


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
