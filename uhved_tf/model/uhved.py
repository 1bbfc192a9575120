"""U-HVED: hetero-modal variational encoder-decoder (Dorent et al., MICCAI 2019).

Four (one per modality) encoders give a Gaussian expert per modality at ``levels`` scales (the
first half of each block's channels is the mean, the second half the log-variance, clipped to
``[-logvar_clip, logvar_clip]``). At each scale the experts of the available modalities are fused
with the N(0, I) prior (:func:`uhved_tf.model.fusion.product_of_gaussians`), a latent sample is
drawn (training; reparameterised) or the posterior mean taken, and five U-Net decoders (one per
modality + the segmentation) decode the multi-scale latent.

Inference is split into ``encode`` / ``fuse`` / ``decode_*`` so that the encoders run once per
window and any number of subsets and posterior samples reuse the encodings.
"""

from __future__ import annotations

import tensorflow as tf

from uhved_tf.model.base import BaseNetwork, entropy
from uhved_tf.model.blocks import Configurable
from uhved_tf.model.decoders import UNetDecoder
from uhved_tf.model.encoders import MultiModalEncoder
from uhved_tf.model.fusion import product_of_gaussians, sample_posterior, split_seed


class UHVED(Configurable, BaseNetwork):
    synthesises = True
    variational = True

    def __init__(self, modalities, num_classes: int, base_width: int = 8, levels: int = 4,
                 activation: str = "leakyrelu", logvar_clip: float = 50.0,
                 weight_decay: float = 0.0, reg_type: str = "L2", **kwargs):
        super().__init__(modalities, num_classes, **kwargs)
        if base_width < 2 or base_width % 2:
            raise ValueError(f"base_width must be an even number >= 2 (mean and log-variance halves), got {base_width}")
        common = self._keep(base_width=int(base_width), levels=int(levels), activation=activation,
                            weight_decay=float(weight_decay), reg_type=reg_type)
        self._keep(logvar_clip=float(logvar_clip))
        self.encoder = MultiModalEncoder(len(self.modalities), name="encoders", **common)
        # Decoders see latent samples of widths base/2 * 2^k; their blocks use U-HVED's widths.
        self.seg_decoder = UNetDecoder(num_classes, name="decoder_seg", **common)
        self.image_decoders = [UNetDecoder(1, name=f"decoder_{m}", **common) for m in self.modalities]

    @classmethod
    def from_settings(cls, modalities, num_classes, network_settings):
        return super().from_settings(modalities, num_classes, network_settings,
                                     logvar_clip=network_settings.logvar_clip)

    # --- the steps -------------------------------------------------------------------------
    def encode(self, image):
        """[B, D, H, W, M] -> per scale ``(mu, logvar)``, each [B, d, h, w, M, C]."""
        encodings = []
        for feats in self.encoder(image):
            # tf.split, not two slices: the gradient of a channel slice (StridedSliceGrad) pads a
            # zero tensor per slice and cost ~0.18 s of a 1.3 s 64^3 training step; a split's
            # gradient is one concat.
            mu, logvar = tf.split(tf.cast(feats, tf.float32), 2, axis=-1)
            encodings.append((mu, tf.clip_by_value(logvar, -self.logvar_clip, self.logvar_clip)))
        return encodings

    @staticmethod
    def fuse(encodings, modality_mask):
        """Per scale posterior ``(loc, logvar)`` over the modalities in ``modality_mask`` [B, M]."""
        return [product_of_gaussians(mu, logvar, modality_mask) for mu, logvar in encodings]

    @staticmethod
    def sample(posteriors, seed, num_samples=None):
        """Reparameterised samples z = loc + sigma * eps of every scale (stateless, from ``seed``).

        ``num_samples`` None gives one sample with the posterior's shape (training); an int N
        gives [B * N, ...], window-major (row ``b * N + k`` is sample ``k`` of window ``b``),
        ready for one batched decoder call: a window's samples do not depend on the windows
        after it in the batch, so padding a short last batch changes nothing.
        """
        seeds = split_seed(seed, len(posteriors))
        if num_samples is None:
            return [sample_posterior(loc, logvar, s)[0] for (loc, logvar), s in zip(posteriors, seeds)]
        # The static batch (windows x samples) is kept, so the decoder's norms can use the fused kernel.
        return [tf.ensure_shape(tf.reshape(sample_posterior(loc, logvar, s, num_samples, axis=1),
                                           tf.concat([[-1], tf.shape(loc)[1:]], axis=0)),
                                [None if loc.shape[0] is None else num_samples * loc.shape[0], *loc.shape[1:]])
                for (loc, logvar), s in zip(posteriors, seeds)]

    def decode_seg(self, zs):
        return self.seg_decoder([tf.cast(z, self.compute_dtype) for z in zs])

    def decode_images(self, zs):
        zs = [tf.cast(z, self.compute_dtype) for z in zs]
        return tf.concat([dec(zs) for dec in self.image_decoders], axis=-1)

    # --- Keras entry points ----------------------------------------------------------------
    def call(self, inputs, training=False, seed=None):
        encodings = self.encode(inputs["image"])
        posteriors = self.fuse(encodings, inputs["modality_mask"])
        if training:
            if seed is None:
                seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
            zs = self.sample(posteriors, seed)
        else:
            zs = [loc for loc, _ in posteriors]
        return {
            "seg_logits": self.decode_seg(zs),
            "recon": self.decode_images(zs),
            "posterior_loc": [loc for loc, _ in posteriors],
            "posterior_logvar": [logvar for _, logvar in posteriors],
            # Every modality's expert (for the original code's KL over all 15 subsets).
            "expert_loc": [mu for mu, _ in encodings],
            "expert_logvar": [logvar for _, logvar in encodings],
        }

    def predict_from_posteriors(self, posteriors, samples: int = 0, seed=None, synthesis: bool = True):
        """Segmentation from ``samples`` posterior samples (averaged softmax; 0 = the posterior
        mean) and synthesis of every modality from the posterior mean (``synthesis=False``: no
        synthesis, the four image decoders do not run)."""
        means = [loc for loc, _ in posteriors]
        out = {"synth": self.decode_images(means)} if synthesis else {}
        if samples and samples > 0:
            seed = tf.constant([0, 0], tf.int32) if seed is None else seed
            prob = tf.nn.softmax(self.decode_seg(self.sample(posteriors, seed, num_samples=samples)), axis=-1)
            shape = tf.concat([[tf.shape(means[0])[0], samples], tf.shape(prob)[1:]], axis=0)
            prob = tf.reduce_mean(tf.reshape(prob, shape), axis=1)
        else:
            prob = tf.nn.softmax(self.decode_seg(means), axis=-1)
        return {"seg_prob": prob, **out, "uncertainty": entropy(prob)}

    def predict_windows(self, image, modality_mask, samples: int = 0, seed=None):
        return self.predict_from_posteriors(self.fuse(self.encode(image), modality_mask), samples, seed)
