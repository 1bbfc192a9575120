"""Single: one plain 3-D U-Net for one fixed subset of the modalities (Dorent et al. 2019, section 4).

The "brute-force" baseline: "for each possible subset of modalities, we train a U-Net network
where the observed modalities are concatenated as input. The encoder and decoder are those of our
model." One :class:`Single` is one such network; the paper trained 15 of them per fold.

* Input: the channels of ``[NETWORK] subset`` (names from ``[MULTIMODAL] image``; empty = all
  modalities), taken in the modalities' channel order (so ``Flair, T1c`` and ``T1c, Flair`` are
  the same network) and concatenated: [B, D, H, W, S].
* Encoder: U-HVED's per-modality encoder (:class:`~uhved_tf.model.encoders.ModalityEncoder`,
  same widths base * 2^k at ``levels`` scales); its 1x1x1 stem takes the S channels at once.
* Decoder: U-HVED's :class:`~uhved_tf.model.decoders.UNetDecoder` on the encoder features (the
  skips), to the K class logits. Output: ``seg_logits`` only (Dice + cross-entropy).

The network never looks at ``modality_mask`` in :meth:`call`: in training the subset policy
draws masks for the hetero-modal networks, but Single always sees its own subset (every training
subject must have those modalities; a missing one would be read as zeros). At inference,
:meth:`predict_windows` refuses a mask that lacks one of the subset's modalities
(:class:`MissingModalityError`) and ignores any other available modality.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from uhved_tf.errors import ConfigError, close_matches
from uhved_tf.model.base import BaseNetwork
from uhved_tf.model.blocks import Configurable
from uhved_tf.model.decoders import UNetDecoder
from uhved_tf.model.encoders import ModalityEncoder


class MissingModalityError(ConfigError, ValueError):
    """A modality mask given to a :class:`Single` network lacks one of the modalities it was
    trained on (a :class:`ConfigError`, so the CLI shows one line; a ``ValueError`` for callers
    of the model API)."""


def resolve_subset(subset, modalities) -> tuple[str, ...]:
    """``[NETWORK] subset`` -> the subset's names in channel order (empty = every modality).

    Raises :class:`ConfigError` naming the key, the bad value and the valid names."""
    modalities = tuple(modalities)
    names = (subset,) if isinstance(subset, str) else tuple(subset or ())
    if not names:
        return modalities
    shown = ", ".join(names)
    valid = ", ".join(modalities)
    for name in names:
        if name not in modalities:
            close = close_matches(name, modalities, n=1)
            hint = f' Did you mean "{close[0]}"?' if close else ""
            raise ConfigError(f'[NETWORK] subset = "{shown}": "{name}" is not a modality.{hint} '
                              f"Valid names (from [MULTIMODAL] image): {valid}")
        if names.count(name) > 1:
            raise ConfigError(f'[NETWORK] subset = "{shown}": "{name}" is listed twice. '
                              f"Valid names (from [MULTIMODAL] image): {valid}")
    return tuple(m for m in modalities if m in names)


class Single(Configurable, BaseNetwork):

    def __init__(self, modalities, num_classes: int, subset=(), base_width: int = 8, levels: int = 4,
                 activation: str = "leakyrelu", weight_decay: float = 0.0, reg_type: str = "L2", **kwargs):
        super().__init__(modalities, num_classes, **kwargs)
        self.subset = resolve_subset(subset, self.modalities)
        self.subset_indices = tuple(self.modalities.index(m) for m in self.subset)
        common = self._keep(base_width=int(base_width), levels=int(levels), activation=activation,
                            weight_decay=float(weight_decay), reg_type=reg_type)
        self.encoder = ModalityEncoder(name="encoder", **common)
        self.seg_decoder = UNetDecoder(num_classes, name="decoder_seg", **common)

    @classmethod
    def from_settings(cls, modalities, num_classes, network_settings):
        return super().from_settings(modalities, num_classes, network_settings, subset=network_settings.subset)

    def select_inputs(self, image):
        """[B, D, H, W, M] -> [B, D, H, W, S]: the subset's channels, in channel order."""
        return tf.gather(image, list(self.subset_indices), axis=-1)

    def call(self, inputs, training=False, seed=None):
        """``modality_mask`` is not read (see the module docstring); deterministic."""
        return {"seg_logits": self.seg_decoder(self.encoder(self.select_inputs(inputs["image"])))}

    def check_modality_mask(self, modality_mask):
        """Raise :class:`MissingModalityError` if a sample's mask [B, M] (or [M]) lacks one of the
        subset's modalities. A mask known only at run time (inside a ``tf.function``) gets a
        run-time assertion with the same message instead (``tf.errors.InvalidArgumentError``)."""
        needed = ", ".join(self.subset)
        static = tf.get_static_value(modality_mask)
        if static is not None:
            present = np.asarray(static).reshape(-1, len(self.modalities))[:, self.subset_indices] > 0
            missing = [m for m, ok in zip(self.subset, present.all(axis=0)) if not ok]
            if missing:
                raise MissingModalityError(
                    f"network single (subset {needed}) needs {', '.join(missing)}, which the modality mask "
                    f"lacks; give it at least {needed} ([INFERENCE] modalities), or use a network trained "
                    f"on the available modalities")
            return None
        mask = tf.reshape(tf.convert_to_tensor(modality_mask), [-1, len(self.modalities)])
        return tf.debugging.assert_equal(
            tf.reduce_all(tf.gather(mask, list(self.subset_indices), axis=-1) > 0), True,
            message=f"network single (subset {needed}) got a modality mask lacking one of {needed}")

    def predict_windows(self, image, modality_mask, samples: int = 0, seed=None):
        """As :meth:`BaseNetwork.predict_windows` after :meth:`check_modality_mask`; modalities
        outside the subset are ignored, ``samples`` and ``seed`` too (deterministic)."""
        self.check_modality_mask(modality_mask)
        return super().predict_windows(image, modality_mask, samples, seed)

    def get_config(self):
        return {**super().get_config(), "subset": list(self.subset)}
