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


def restore_model(model, path: str, iteration: int | None = None) -> None:
    """Restore only the weights (no optimizer) and fail if any model weight is not in the file
    (:class:`UnrestorableCheckpoint`, also for a damaged file)."""
    restore_checkpoint(model_checkpoint(model), path, iteration, partial=True)


#: What restoring a checkpoint that is damaged (or of another network) raises: a checksum mismatch
#: or a missing file (``tf.errors.OpError``), a file cut short (``IndexError: Read less bytes than
#: requested``), variables that do not match (``AssertionError``, ``ValueError``).
RESTORE_ERRORS = (ValueError, AssertionError, IndexError, tf.errors.OpError)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def find_damage(prefix: str) -> tuple[str, str] | None:
    """``(file, what is wrong with it)`` for the checkpoint ``prefix`` (``.../ckpt-N``) when one of
    its files is missing or does not read back (every tensor is read: checksums verified), None
    when the files are sound (a checkpoint that fails to restore then belongs to another network)."""
    import glob
    import os
    import re

    index = f"{prefix}.index"
    if not os.path.isfile(index):
        return index, "missing"
    shards = sorted(glob.glob(glob.escape(prefix) + ".data-*-of-*"))
    if not shards:
        return f"{prefix}.data-00000-of-00001", "missing"
    total = re.search(r"-of-(\d+)$", shards[0])
    for i in range(int(total.group(1)) if total else 0):
        shard = f"{prefix}.data-{i:05d}-of-{total.group(1)}"
        if not os.path.isfile(shard):
            return shard, "missing"
    data = shards[0] if len(shards) == 1 else f"{prefix}.data-*"
    try:
        reader = tf.train.load_checkpoint(prefix)
    except RESTORE_ERRORS as exc:
        return index, f"unreadable: {first_line(exc)}"
    for name in sorted(reader.get_variable_to_shape_map()):
        try:
            reader.get_tensor(name)
        except IndexError as exc:
            return data, f"cut short: {first_line(exc)}"
        except RESTORE_ERRORS as exc:
            return data, f"unreadable: {first_line(exc)}"
    return None


class UnrestorableCheckpoint(ValueError):
    """A checkpoint that does not restore: ``damage`` is :func:`find_damage`'s ``(file, what)``
    (None: sound files that do not fit the network), ``reason`` TensorFlow's first line."""

    def __init__(self, path: str, iteration: int | None, exc: BaseException):
        self.path, self.iteration, self.reason = path, iteration, first_line(exc)
        self.damage = find_damage(path)
        super().__init__(self.describe())

    def describe(self) -> str:
        """``<file>: checkpoint N is damaged (what)`` or ``<prefix>: checkpoint N does not fit this network (why)``."""
        which = "the checkpoint" if self.iteration is None else f"checkpoint {self.iteration}"
        if self.damage is None:
            return f"{self.path}: {which} does not fit this network ({self.reason})"
        file, what = self.damage
        return f"{file}: {which} is damaged ({what})"


def restore_checkpoint(checkpoint: tf.train.Checkpoint, path: str, iteration: int | None = None,
                       partial: bool = False) -> None:
    """Restore ``path`` into ``checkpoint``, every object of it matched (``partial``: what the file
    has more, e.g. the optimiser, is ignored); :class:`UnrestorableCheckpoint` when it does not."""
    try:
        status = checkpoint.restore(path)
        if partial:
            status.expect_partial()
        status.assert_existing_objects_matched()
    except RESTORE_ERRORS as exc:
        raise UnrestorableCheckpoint(path, iteration, exc) from None
