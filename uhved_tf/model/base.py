"""The contract every network honours, so that training, inference and export treat them alike.

A network is a ``keras.Model`` whose ``call({"image": [B, D, H, W, M], "modality_mask": [B, M]},
training, seed)`` returns a dict with at least ``seg_logits`` [B, D, H, W, K]; optionally
``recon`` [B, D, H, W, M] (reconstruction / synthesis of every modality) and
``posterior_loc`` / ``posterior_logvar`` (lists over scales) for the KL term. The losses module
adds a term for each output that is present.

``predict_windows`` is the inference step: segmentation probabilities (and synthesis when the
network has it) for a batch of windows.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class BaseNetwork(keras.Model):
    #: True when the network synthesises every modality (``recon`` output).
    synthesises = False
    #: True when the network is variational (posterior outputs, KL loss, sampling at inference).
    variational = False

    def __init__(self, modalities, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.modalities = tuple(modalities)
        self.num_classes = int(num_classes)

    def build(self, *input_shapes, **named_shapes):
        """Built by the first call, layer by layer (see ``blocks.Configurable.build``)."""

    @classmethod
    def from_settings(cls, modalities, num_classes, network_settings, **extra) -> "BaseNetwork":
        """Build from the typed ``[NETWORK]`` section. Override to read extra keys (given as ``extra``)."""
        return cls(modalities=modalities, num_classes=num_classes,
                   base_width=network_settings.base_width, levels=network_settings.levels,
                   activation=network_settings.activation_function,
                   weight_decay=network_settings.decay, reg_type=network_settings.reg_type, **extra)

    def predict_windows(self, image, modality_mask, samples: int = 0, seed=None):
        """Returns ``{"seg_prob": [B, D, H, W, K]}`` (+ ``"synth"`` [B, D, H, W, M] when available,
        + ``"uncertainty"`` [B, D, H, W] = predictive entropy)."""
        out = self({"image": image, "modality_mask": modality_mask}, training=False)
        prob = tf.nn.softmax(out["seg_logits"], axis=-1)
        result = {"seg_prob": prob, "uncertainty": entropy(prob)}
        if "recon" in out:
            result["synth"] = out["recon"]
        return result

    def get_config(self):
        return {"modalities": list(self.modalities), "num_classes": self.num_classes}


def entropy(prob):
    """Voxel-wise entropy (nats) of class probabilities over the last axis."""
    return -tf.reduce_sum(prob * tf.math.log(tf.maximum(prob, 1e-12)), axis=-1)
