"""U-HeMIS: U-HVED's encoders with HeMIS fusion in the skip connections (Dorent et al. 2019, section 4).

"A particular case of our method where the modalities are encoded as U-HVED and the
skip-connections are the first and second moments of the modality-specific feature maps such as
in HeMIS. U-HeMIS has only one decoder for tumour segmentation."

* Encoders: one per modality, as :class:`~uhved_tf.model.encoders.MultiModalEncoder`, with the
  original U-HeMIS widths: each block's first convolution base * 2^k channels, its second
  base * 2^k / 2 (ReubenDo/U-HVED ``u_hemis_net.py``: ``ResBlock(encoding=True)`` halves the
  second convolution).
* Skip connection at scale k: ``concat(mean, variance)`` of the available modalities' feature maps
  (:func:`uhved_tf.model.hemis_fusion.hemis_abstraction`), [B, d_k, h_k, w_k, base * 2^k].
* One :class:`~uhved_tf.model.decoders.UNetDecoder` to the K classes (U-HVED's block widths, as
  the original's ``ConvDecoderImg``).

Output: ``seg_logits`` only, so the loss is Dice + cross-entropy (no KL, no reconstruction) and
inference is one deterministic forward pass (``samples`` is ignored).

``u_hemis_wide`` (:class:`UHeMISWide`) is a variant that is *not* the paper's baseline: it reuses
U-HVED's encoder unchanged (both convolutions base * 2^k), so its skips are twice as wide as the
original's (an earlier release of this project called it ``u_hemis``).
"""

from __future__ import annotations

from uhved_tf.model.base import BaseNetwork
from uhved_tf.model.blocks import Configurable
from uhved_tf.model.decoders import UNetDecoder
from uhved_tf.model.encoders import MultiModalEncoder
from uhved_tf.model.hemis_fusion import hemis_abstraction


class UHeMIS(Configurable, BaseNetwork):
    #: The original U-HeMIS encoder: the second convolution of each block is half width.
    half_second_conv = True

    def __init__(self, modalities, num_classes: int, base_width: int = 8, levels: int = 4,
                 activation: str = "leakyrelu", weight_decay: float = 0.0, reg_type: str = "L2", **kwargs):
        super().__init__(modalities, num_classes, **kwargs)
        common = self._keep(base_width=int(base_width), levels=int(levels), activation=activation,
                            weight_decay=float(weight_decay), reg_type=reg_type)
        self.encoder = MultiModalEncoder(len(self.modalities), name="encoders",
                                         half_second_conv=self.half_second_conv, **common)
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


class UHeMISWide(UHeMIS):
    """U-HeMIS with U-HVED's full-width encoder (two base * 2^k convolutions per block): skips twice
    as wide as the original baseline's. Not the paper's U-HeMIS; ``[NETWORK] name = u_hemis_wide``."""
    half_second_conv = False
