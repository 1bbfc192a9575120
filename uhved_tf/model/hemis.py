"""HeMIS (Havaei, Guizard, Chapados, Bengio, "HeMIS: Hetero-Modal Image Segmentation", MICCAI 2016),
adapted to 3-D patches: the paper's "HeMIS" baseline (Dorent et al. 2019, section 4, Table 1).

Three stages, all at full resolution:

1. Back end: one convolutional branch per modality (no weight sharing): two convolutions of
   ``6 * base_width`` filters (48 at the default base width 8, HeMIS's count), each followed by
   the activation.
2. Abstraction: the first and second moments (mean, population variance) of the branch outputs
   across the *available* modalities (:func:`uhved_tf.model.hemis_fusion.hemis_abstraction`),
   concatenated: [B, D, H, W, 2 * 6 * base_width].
3. Front end: two convolutions of ``2 * base_width`` filters (16 at base 8, HeMIS's count), each
   followed by the activation, then a 1x1x1 convolution to the K class logits.

Output: ``seg_logits`` only (Dice + cross-entropy; no KL, no synthesis); inference is one
deterministic forward pass.

What differs from the 2016 paper (2-D slices of BraTS):

* 3-D: 3-D convolutions on 3-D patches instead of 2-D ones on slices.
* Kernel sizes: ``kernel_size`` (default 3, i.e. 3x3x3) for every convolution instead of the
  paper's 5x5 (and its large final front-end kernel), to keep the 3-D network cheap; the last
  layer is a 1x1x1 convolution.
* No pooling: the paper's max-pooling layers have stride 1 (they keep the resolution); they are
  left out, so the network is purely convolutional at full resolution.
* Widths follow ``base_width`` (6x and 2x of it); activation is ``[NETWORK] activation_function``
  (HeMIS used ReLU: ``config/hemis.ini`` sets ``relu``); weight decay as in the other networks;
  "same" padding.
* Training: the paper's pseudo-curriculum (all modalities first, then more and more dropped
  modalities) is not implemented; the modality subsets come from our subset policy
  (``[TRAINING] subset_policy``, the same as for U-HVED), and the loss is the other networks'
  Dice + cross-entropy.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from uhved_tf.model.base import BaseNetwork
from uhved_tf.model.blocks import Configurable, conv3d, get_activation, make_regularizer
from uhved_tf.model.hemis_fusion import hemis_abstraction

#: Widths as multiples of ``base_width``: HeMIS's 48 back-end and 16 front-end filters at base 8.
BRANCH_MULTIPLIER = 6
HEAD_MULTIPLIER = 2


class ConvStack(Configurable, keras.layers.Layer):
    """Plain (convolution -> activation) units, no normalisation: HeMIS's layers."""

    def __init__(self, widths=(48, 48), kernel_size: int = 3, activation: str = "relu",
                 weight_decay: float = 0.0, reg_type: str = "L2", **kwargs):
        super().__init__(**kwargs)
        self._keep(widths=tuple(int(w) for w in widths), kernel_size=int(kernel_size), activation=activation,
                   weight_decay=float(weight_decay), reg_type=reg_type)
        self._act = get_activation(activation, after_conv=True)
        self.convs = [conv3d(w, self.kernel_size, f"conv_{i}", self.weight_decay, reg_type)
                      for i, w in enumerate(self.widths)]

    def call(self, x):
        for conv in self.convs:
            x = self._act(conv(x))
        return x


class HeMIS(Configurable, BaseNetwork):

    def __init__(self, modalities, num_classes: int, base_width: int = 8, kernel_size: int = 3,
                 activation: str = "relu", weight_decay: float = 0.0, reg_type: str = "L2", **kwargs):
        super().__init__(modalities, num_classes, **kwargs)
        self._keep(base_width=int(base_width))
        common = self._keep(kernel_size=int(kernel_size), activation=activation, weight_decay=float(weight_decay),
                            reg_type=reg_type)
        branch, head = BRANCH_MULTIPLIER * self.base_width, HEAD_MULTIPLIER * self.base_width
        self.branches = [ConvStack((branch, branch), name=f"branch_{m}", **common)
                         for m in range(len(self.modalities))]
        self.head = ConvStack((head, head), name="front_end", **common)
        self.classifier = keras.layers.Conv3D(num_classes, 1, name="final_conv", dtype="float32",
                                              kernel_regularizer=make_regularizer(self.weight_decay, reg_type))

    @classmethod
    def from_settings(cls, modalities, num_classes, network_settings):
        """HeMIS has no scales: ``[NETWORK] levels`` does not apply (and is not read)."""
        return cls(modalities=modalities, num_classes=num_classes, base_width=network_settings.base_width,
                   activation=network_settings.activation_function, weight_decay=network_settings.decay,
                   reg_type=network_settings.reg_type)

    # --- the steps (same interface as U-HeMIS, one scale) ----------------------------------
    def modality_features(self, image):
        """[B, D, H, W, M] -> ``[features]``, features [B, D, H, W, M, C] of every modality's branch."""
        return [tf.stack([branch(image[..., m:m + 1]) for m, branch in enumerate(self.branches)], axis=-2)]

    def fused_features(self, image, modality_mask):
        """``[concat(mean, variance)]`` [B, D, H, W, 2C] over the modalities in ``modality_mask``."""
        return [hemis_abstraction(feats, modality_mask) for feats in self.modality_features(image)]

    # --- Keras entry point -----------------------------------------------------------------
    def call(self, inputs, training=False, seed=None):
        """Deterministic: ``training`` and ``seed`` are accepted for the common contract."""
        (fused,) = self.fused_features(inputs["image"], inputs["modality_mask"])
        return {"seg_logits": self.classifier(tf.cast(self.head(fused), tf.float32))}
