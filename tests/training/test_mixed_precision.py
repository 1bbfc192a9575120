"""Mixed precision trains (float16 with loss scaling, bfloat16) with finite losses and float32
variables; the loss-scaled float16 step skips non-finite gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.training.helpers import settings
from uhved_tf.model.uhved import UHVED
from uhved_tf.training.trainer import Trainer


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_step(policy, tmp_path):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = UHVED(("a", "b"), 3, base_width=2, levels=2)
        model({"image": tf.zeros((1, 8, 8, 8, 2)), "modality_mask": tf.ones((1, 2))})
    finally:
        keras.config.set_dtype_policy(previous)
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(2, 8, 8, 8, 2)).astype(np.float32),
             "label": rng.integers(0, 3, size=(2, 8, 8, 8)).astype(np.int32),
             "modality_mask": np.array([[1, 0], [1, 1]], np.float32), "data_mask": np.ones((2, 2), np.float32)}
    ds = tf.data.Dataset.from_tensors(batch).repeat()
    trainer = Trainer(model, settings(lr=1e-3), tmp_path)
    terms = trainer.fit(ds)
    assert np.isfinite(terms["total"])
    out = model({"image": batch["image"], "modality_mask": batch["modality_mask"]})
    assert out["seg_logits"].dtype == tf.float32
