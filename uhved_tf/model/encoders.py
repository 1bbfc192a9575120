"""Per-modality convolutional encoders.

Each modality has its own encoder (no weight sharing): a 1x1x1 convolution to ``base_width``
channels with an activation, then ``levels`` conv blocks of widths base*(1, 2, 4, 8, ...) with 2x2x2
max-pooling between them. The output of every block is one scale of the representation.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from uhved_tf.model.blocks import Configurable, ConvBlock, get_activation, make_regularizer


class ModalityEncoder(Configurable, keras.layers.Layer):
    """Encodes an image [B, D, H, W, C_in] into ``levels`` feature maps, finest first.

    C_in is 1 for one modality (U-HVED, U-HeMIS); the 1x1x1 stem takes any channel count, so
    :class:`~uhved_tf.model.single.Single` feeds it its concatenated modalities.

    ``half_second_conv`` gives each block's second convolution half the block's width (the
    original U-HeMIS encoder, ReubenDo/U-HVED ``u_hemis_net.py``, ``ResBlock(encoding=True)``);
    U-HVED's blocks have two full-width convolutions (the halves are its means and log-variances).
    """

    def __init__(self, base_width: int = 8, levels: int = 4, activation: str = "leakyrelu",
                 weight_decay: float = 0.0, reg_type: str = "L2", half_second_conv: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self._keep(base_width=base_width, levels=levels, activation=activation, weight_decay=weight_decay,
                   reg_type=reg_type, half_second_conv=bool(half_second_conv))
        self._act = get_activation(activation, after_conv=True)
        self.stem = keras.layers.Conv3D(base_width, 1, name="conv_0", kernel_initializer="he_normal",
                                        kernel_regularizer=make_regularizer(weight_decay, reg_type))
        self.blocks = [
            ConvBlock((base_width * 2**k, max(1, base_width * 2**k // (2 if half_second_conv else 1))),
                      activation=activation, weight_decay=weight_decay,
                      reg_type=reg_type, name=f"block_{k + 1}")
            for k in range(levels)
        ]
        self.pool = keras.layers.MaxPooling3D(pool_size=2, strides=2, name="pool", dtype="float32")

    def call(self, x):
        x = self._act(self.stem(x))
        features = []
        for k, block in enumerate(self.blocks):
            if k > 0:
                # float16 MaxPool3D has no CPU kernel: pool in float32 under mixed precision.
                x = tf.cast(self.pool(tf.cast(x, tf.float32)), self.compute_dtype)
            x = block(x)
            features.append(x)
        return features


class MultiModalEncoder(Configurable, keras.layers.Layer):
    """One :class:`ModalityEncoder` per modality; returns per level a tensor [B, d, h, w, M, C]
    with the modalities stacked on axis -2 (the layout :mod:`uhved_tf.model.fusion` expects)."""

    def __init__(self, num_modalities: int, base_width: int = 8, levels: int = 4,
                 activation: str = "leakyrelu", weight_decay: float = 0.0, reg_type: str = "L2",
                 half_second_conv: bool = False, **kwargs):
        super().__init__(**kwargs)
        self._keep(num_modalities=num_modalities, base_width=base_width, levels=levels, activation=activation,
                   weight_decay=weight_decay, reg_type=reg_type, half_second_conv=bool(half_second_conv))
        self.encoders = [
            ModalityEncoder(base_width, levels, activation, weight_decay, reg_type,
                            half_second_conv=half_second_conv, name=f"encoder_{m}")
            for m in range(num_modalities)
        ]

    def call(self, image):
        per_modality = [enc(image[..., m:m + 1]) for m, enc in enumerate(self.encoders)]
        return [tf.stack([feats[k] for feats in per_modality], axis=-2) for k in range(self.levels)]
