"""Example network: a U-Net over all four modalities with the missing ones filled with zeros.

The simplest hetero-modal baseline (zero imputation, as in "modality dropout" training): one
encoder whose 1x1x1 stem takes the four modalities and the four mask channels, U-HVED's decoder,
segmentation only. Trained with the same random subsets as U-HVED, it is the baseline every
fusion method should beat. Use it with ``[NETWORK] name = extensions.zero_fill_unet.ZeroFillUNet``.

What a network must provide (:mod:`uhved_tf.model.base`): ``call({"image", "modality_mask"},
training, seed)`` returning at least ``seg_logits``; ``from_settings`` if it needs more than
``base_width``, ``levels``, ``activation``, ``decay`` and ``reg_type``; ``get_config``.
"""

from __future__ import annotations

import tensorflow as tf

from uhved_tf.model.base import BaseNetwork
from uhved_tf.model.decoders import UNetDecoder
from uhved_tf.model.encoders import ModalityEncoder


class ZeroFillUNet(BaseNetwork):
    synthesises = False
    variational = False

    def __init__(self, modalities, num_classes: int, base_width: int = 8, levels: int = 4,
                 activation: str = "leakyrelu", weight_decay: float = 0.0, reg_type: str = "L2", **kwargs):
        super().__init__(modalities, num_classes, **kwargs)
        self.base_width, self.levels, self.activation = int(base_width), int(levels), activation
        self.weight_decay, self.reg_type = float(weight_decay), reg_type
        common = dict(base_width=self.base_width, levels=self.levels, activation=activation,
                      weight_decay=self.weight_decay, reg_type=reg_type)
        self.encoder = ModalityEncoder(name="encoder", **common)
        self.seg_decoder = UNetDecoder(num_classes, name="decoder_seg", **common)

    def call(self, inputs, training=False, seed=None):
        image, mask = inputs["image"], tf.cast(inputs["modality_mask"], inputs["image"].dtype)
        mask5 = mask[:, None, None, None, :]
        filled = image * mask5                                     # missing modalities -> 0
        planes = tf.broadcast_to(mask5, tf.shape(image))           # tell the network which are real
        return {"seg_logits": self.seg_decoder(self.encoder(tf.concat([filled, planes], axis=-1)))}

    def get_config(self):
        return {**super().get_config(), "base_width": self.base_width, "levels": self.levels,
                "activation": self.activation, "weight_decay": self.weight_decay, "reg_type": self.reg_type}
