"""U-Net style decoders over a multi-scale representation.

Starting from the coarsest scale, each level upsamples (trilinear, x2), concatenates the
same-scale skip tensor and applies a conv block of widths (base*2^k, base*2^(k-1)); a final
1x1x1 convolution gives ``out_channels`` (1 for an image, K classes for the segmentation).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from uhved_tf.model.blocks import Configurable, ConvBlock, make_regularizer, upsample2x_trilinear


class UNetDecoder(Configurable, keras.layers.Layer):
    def __init__(self, out_channels: int, base_width: int = 8, levels: int = 4,
                 activation: str = "leakyrelu", weight_decay: float = 0.0, reg_type: str = "L2",
                 **kwargs):
        super().__init__(**kwargs)
        self._keep(out_channels=out_channels, base_width=base_width, levels=levels, activation=activation,
                   weight_decay=weight_decay, reg_type=reg_type)
        # Level k (0 = finest) gets block widths (base*2^k, base*2^k/2), coarse to fine.
        self.blocks = [
            ConvBlock((base_width * 2**k, max(1, base_width * 2**k // 2)), activation=activation,
                      weight_decay=weight_decay, reg_type=reg_type, name=f"block_{levels - 1 - k}")
            for k in reversed(range(levels - 1))
        ]
        self.head = keras.layers.Conv3D(out_channels, 1, name="final_conv", dtype="float32",
                                        kernel_regularizer=make_regularizer(weight_decay, reg_type))

    def call(self, skips):
        """``skips``: list of [B, d_k, h_k, w_k, C_k] tensors, finest first."""
        x = skips[-1]
        for block, skip in zip(self.blocks, reversed(skips[:-1])):
            x = upsample2x_trilinear(x)
            x = block(tf.concat([x, tf.cast(skip, x.dtype)], axis=-1))
        return self.head(tf.cast(x, tf.float32))
