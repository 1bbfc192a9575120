"""U-HeMIS: U-HVED's encoders with HeMIS fusion in the skip connections (Dorent et al. 2019, section 4).

"A particular case of our method where the modalities are encoded as U-HVED and the
skip-connections are the first and second moments of the modality-specific feature maps such as
in HeMIS. U-HeMIS has only one decoder for tumour segmentation."

* Encoders: :class:`~uhved_tf.model.encoders.MultiModalEncoder`, the very encoders of U-HVED
  (one per modality, same widths base * 2^k at ``levels`` scales).
* Skip connection at scale k: ``concat(mean, variance)`` of the available modalities' feature maps
  (:func:`uhved_tf.model.hemis_fusion.hemis_abstraction`), [B, d_k, h_k, w_k, 2 * base * 2^k].
* One :class:`~uhved_tf.model.decoders.UNetDecoder` to the K classes (U-HVED's block widths).

Output: ``seg_logits`` only, so the loss is Dice + cross-entropy (no KL, no reconstruction) and
inference is one deterministic forward pass (``samples`` is ignored).

Difference from the original code (ReubenDo/U-HVED ``u_hemis_net.py``): there the second conv
of each encoder block had half the block's width, so the moments were base * 2^k / 2 wide and the
skips base * 2^k; here the encoder is shared with U-HVED unchanged (both convs base * 2^k, as
U-HVED's, whose halves are its means and log-variances), so the skips are twice as wide. The
decoder blocks' output widths are the same.
"""

from __future__ import annotations

from uhved_tf.model.base import BaseNetwork
from uhved_tf.model.decoders import UNetDecoder
from uhved_tf.model.encoders import MultiModalEncoder
from uhved_tf.model.hemis_fusion import hemis_abstraction


class UHeMIS(BaseNetwork):
    synthesises = False
    variational = False

    def __init__(self, modalities, num_classes: int, base_width: int = 8, levels: int = 4,
                 activation: str = "leakyrelu", weight_decay: float = 0.0, reg_type: str = "L2", **kwargs):
        super().__init__(modalities, num_classes, **kwargs)
        self.base_width = int(base_width)
        self.levels = int(levels)
        self.activation = activation
        self.weight_decay = float(weight_decay)
        self.reg_type = reg_type
        common = dict(base_width=self.base_width, levels=self.levels, activation=activation,
                      weight_decay=self.weight_decay, reg_type=reg_type)
        self.encoder = MultiModalEncoder(len(self.modalities), name="encoders", **common)
        self.seg_decoder = UNetDecoder(num_classes, name="decoder_seg", **common)

    # --- the steps -------------------------------------------------------------------------
    def modality_features(self, image):
        """[B, D, H, W, M] -> per scale (finest first) [B, d, h, w, M, C] of every modality."""
        return self.encoder(image)

    def fused_features(self, image, modality_mask):
        """Per scale the HeMIS skip ``concat(mean, variance)`` [B, d, h, w, 2C] over the
        modalities in ``modality_mask`` [B, M]."""
        return [hemis_abstraction(feats, modality_mask) for feats in self.modality_features(image)]

    # --- Keras entry point -----------------------------------------------------------------
    def call(self, inputs, training=False, seed=None):
        """Deterministic: ``training`` and ``seed`` are accepted for the common contract."""
        return {"seg_logits": self.seg_decoder(self.fused_features(inputs["image"], inputs["modality_mask"]))}

    def get_config(self):
        return {**super().get_config(), "base_width": self.base_width, "levels": self.levels,
                "activation": self.activation, "weight_decay": self.weight_decay,
                "reg_type": self.reg_type}
