"""Whole-volume prediction for any number of modality subsets, encoding each window once.

:class:`WindowPredictor` is the callable handed to the array-only sliding-window aggregator
(:func:`uhved_tf.inference.sliding_window.sliding_window_inference`): for a batch of windows it
runs the encoders once, then for every requested subset fuses the available experts and decodes
(``samples`` posterior samples batched into one decoder call for the segmentation, the posterior
mean for the synthesis). Networks without ``encode``/``fuse`` fall back to one forward pass per
subset.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from uhved_tf.inference.sliding_window import sliding_window_inference
from uhved_tf.model.base import entropy

log = logging.getLogger(__name__)


# Test-time augmentation: every combination of mirroring the three spatial axes (nnU-Net's).
TTA_FLIPS = ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))


class WindowPredictor:
    """Callable for the sliding window: [N, d, h, w, M] windows -> {"<output>/<subset index>": ...}.

    The sample seed of a subset depends on the subset itself (its modality bit code), not on its
    position in the list, so predicting all 15 subsets at once gives exactly what 15 separate runs
    give. With ``tta`` every window is also predicted mirrored along each combination of axes and
    the un-mirrored probabilities and syntheses are averaged (the uncertainty is the entropy of
    the averaged probabilities).
    """

    def __init__(self, model, subset_masks, samples: int = 10, seed: int = 0, tta: bool = False):
        self.model = model
        masks = np.asarray(subset_masks, np.float32)
        self.subset_masks = tf.constant(masks)
        # Networks that cannot take every subset (Single) refuse here, with a one-line error,
        # rather than in a run-time assertion inside the traced function.
        check = getattr(model, "check_modality_mask", None)
        if check is not None:
            check(self.subset_masks)
        self.num_subsets = int(masks.shape[0])
        self.codes = [int(sum(int(v) << i for i, v in enumerate(m > 0))) for m in masks]
        self.code_tensor = tf.constant(self.codes, tf.int64)
        self.output_keys = ("seg_prob", "synth") if getattr(model, "synthesises", False) else ("seg_prob",)
        self.samples = int(samples)
        self.seed = int(seed)
        self.flips = TTA_FLIPS if tta else ((),)
        self.calls = 0
        self.encode_once = hasattr(model, "encode") and hasattr(model, "predict_from_posteriors")
        window_spec = tf.TensorSpec([None, None, None, None, int(masks.shape[1])], tf.float32)
        self._fn = tf.function(self._predict, input_signature=[window_spec, tf.TensorSpec([2], tf.int64)])

    def _subset_outputs(self, x, encodings, s, n, seed, f_index):
        """Outputs (float32, no uncertainty) of subset index ``s`` (a Python int or a scalar tensor)."""
        if isinstance(s, int):
            row, code = self.subset_masks[s], self.codes[s]        # static: Single checks it at trace time
        else:
            row, code = tf.gather(self.subset_masks, s), tf.gather(self.code_tensor, s)
        mask = tf.tile(row[None, :], [n, 1])
        sub_seed = tf.stack([seed[0], seed[1] * 4096 + code * 16 + f_index])
        if self.encode_once:
            out = self.model.predict_from_posteriors(self.model.fuse(encodings, mask), self.samples, sub_seed)
        else:
            out = self.model.predict_windows(x, mask, self.samples, sub_seed)
        return {k: tf.cast(v, tf.float32) for k, v in out.items() if k in self.output_keys}

    def _predict(self, windows, seed):
        n = tf.shape(windows)[0]
        outputs = {}
        weight = 1.0 / len(self.flips)
        for f_index, flip in enumerate(self.flips):
            axes = [a + 1 for a in flip]
            x = tf.reverse(windows, axis=axes) if axes else windows
            encodings = self.model.encode(x) if self.encode_once else None
            if self.num_subsets == 1:
                per_subset = [self._subset_outputs(x, encodings, 0, n, seed, f_index)]
            else:
                # One copy of the decoders in the graph whatever the number of subsets (a loop,
                # one subset at a time: the same memory as one subset, a trace ~S times smaller).
                stacked = tf.map_fn(
                    lambda s: self._subset_outputs(x, encodings, s, n, seed, f_index),
                    tf.range(self.num_subsets, dtype=tf.int64),
                    fn_output_signature={k: tf.TensorSpec(None, tf.float32) for k in self.output_keys},
                    parallel_iterations=1)
                per_subset = [{k: v[s] for k, v in stacked.items()} for s in range(self.num_subsets)]
            for s, out in enumerate(per_subset):
                for k, v in out.items():
                    v = tf.reverse(v, axis=axes) if axes else v
                    key = f"{k}/{s}"
                    outputs[key] = outputs[key] + weight * v if key in outputs else weight * v
        for s in range(self.num_subsets):
            outputs[f"uncertainty/{s}"] = entropy(outputs[f"seg_prob/{s}"])[..., None]
        return outputs

    def __call__(self, windows: np.ndarray) -> dict:
        seed = tf.constant([self.seed, self.calls], tf.int64)
        self.calls += 1
        return {k: v.numpy() for k, v in self._fn(tf.convert_to_tensor(windows, tf.float32), seed).items()}


def predict_volume(predictor: WindowPredictor, image: np.ndarray, window, *, overlap=0.5,
                   blend_mode="gaussian", border=(0, 0, 0), batch_size=1, progress=None) -> list[dict]:
    """``image`` [D, H, W, M] (preprocessed) -> one dict per subset of ``predictor`` with
    ``seg_prob`` [D,H,W,K], ``synth`` [D,H,W,M] (if the network synthesises) and ``uncertainty``
    [D,H,W]. Reuse one predictor across cases: its traced function is reused too."""
    merged = sliding_window_inference(image.astype(np.float32), tuple(window), predictor, overlap=overlap,
                                      blend_mode=blend_mode, border=tuple(border), batch_size=batch_size,
                                      progress=progress)
    results = []
    for s in range(predictor.num_subsets):
        res = {k.split("/")[0]: v for k, v in merged.items() if k.endswith(f"/{s}")}
        res["uncertainty"] = res["uncertainty"][..., 0]
        results.append(res)
    return results
