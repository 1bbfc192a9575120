"""Model weights really go into checkpoints and come back (Keras 3 + tf.train.Checkpoint)."""

import numpy as np
import pytest
import tensorflow as tf

from uhved_tf.model.uhved import UHVED
from uhved_tf.training.checkpoint import model_checkpoint, model_variables, restore_model


def build(base_width=2):
    m = UHVED(("a", "b"), 3, base_width=base_width, levels=2)
    m({"image": tf.zeros((1, 8, 8, 8, 2)), "modality_mask": tf.ones((1, 2))})
    return m


def test_weights_round_trip_into_a_fresh_model(tmp_path):
    a = build()
    path = model_checkpoint(a).save(str(tmp_path / "ckpt"))
    reader = tf.train.load_checkpoint(path)
    assert sum(k.startswith("model/") for k in reader.get_variable_to_shape_map()) == len(a.variables)
    b = build()   # a second model in the same process gets an auto-numbered name (uhved_1)
    x = tf.random.normal((1, 8, 8, 8, 2))
    mask = tf.constant([[1.0, 0.0]])
    assert not np.allclose(a({"image": x, "modality_mask": mask})["seg_logits"],
                           b({"image": x, "modality_mask": mask})["seg_logits"])
    restore_model(b, path)
    np.testing.assert_array_equal(a({"image": x, "modality_mask": mask})["seg_logits"],
                                  b({"image": x, "modality_mask": mask})["seg_logits"])


def test_restore_into_a_different_architecture_fails(tmp_path):
    path = model_checkpoint(build(2)).save(str(tmp_path / "ckpt"))
    with pytest.raises((ValueError, AssertionError, tf.errors.OpError)):
        restore_model(build(4), path)


def test_keys_do_not_depend_on_the_model_name():
    assert set(model_variables(build())) == set(model_variables(build()))
