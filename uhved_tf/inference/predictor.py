"""Whole-volume prediction for any number of modality subsets, encoding each window once.

:class:`WindowPredictor` is the callable handed to the array-only sliding-window aggregator
(:func:`uhved_tf.inference.sliding_window.sliding_window_inference`): for a batch of windows it
runs :func:`uhved_tf.inference.core.predict_window_batch` (the step the exported SavedModel runs
too): the encoders once, then for every requested subset the fusion of the available experts and
the decoders (``samples`` posterior samples batched into one decoder call for the segmentation,
the posterior mean for the synthesis).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from uhved_tf.inference.core import TTA_FLIPS, predict_window_batch
from uhved_tf.inference.sliding_window import nonzero_box, sliding_window_inference


class WindowPredictor:
    """Callable for the sliding window: [N, d, h, w, M] windows -> {"<output>/<subset index>": ...}.

    Call ``k`` of the predictor (its ``calls`` counter) samples with the seeds of
    :func:`~uhved_tf.inference.core.sample_seed`, which depend on the subset itself, not on its
    position in the list, so predicting all 15 subsets at once gives exactly what 15 separate runs
    give. With ``tta`` every window is also predicted mirrored along each combination of axes and
    the un-mirrored probabilities and syntheses are averaged (the uncertainty is the entropy of
    the averaged probabilities).
    """

    def __init__(self, model, subset_masks, samples: int = 10, seed: int = 0, tta: bool = False,
                 outputs=("synth", "uncertainty"), batch_size: int | None = None):
        self.model = model
        masks = np.asarray(subset_masks, np.float32)
        self.subset_masks = tf.constant(masks)
        # Networks that cannot take every subset (Single) refuse here, with a one-line error,
        # rather than in a run-time assertion inside the traced function.
        check = getattr(model, "check_modality_mask", None)
        if check is not None:
            check(self.subset_masks)
        self.num_subsets = int(masks.shape[0])
        self.samples = int(samples)
        self.seed = int(seed)
        self.flips = TTA_FLIPS if tta else ((),)
        self.outputs = tuple(outputs)
        self.calls = 0
        # A batch size known when tracing lets the instance norms use the fused kernel (see
        # blocks.InstanceNorm). ``batch_size`` is the largest batch; a function is traced per
        # batch size actually needed: a shorter batch is padded up to the smallest traced batch
        # that holds it, and traces its own size only when none does (a case with fewer windows
        # than ``batch_size`` computes its windows, not a padded batch).
        self.batch_size = batch_size
        self._fns: dict = {}

    @property
    def traced_batches(self) -> list:
        """The window batch sizes traced so far (None: a dynamic batch)."""
        return list(self._fns)

    def _function(self, batch):
        if batch not in self._fns:
            window_spec = tf.TensorSpec([batch, None, None, None, self.subset_masks.shape[-1]], tf.float32)
            # No AutoGraph: the step has no Python control flow on tensors (subsets loop in
            # map_fn), and converting every layer's call cost ~1 s of the trace (2.5-2.8 -> 1.5-1.8 s
            # at 64^3).
            self._fns[batch] = tf.function(self._predict, autograph=False,
                                           input_signature=[window_spec, tf.TensorSpec([2], tf.int64)])
        return self._fns[batch]

    def _predict(self, windows, seed):
        masks = tf.tile(self.subset_masks[:, None, :], [1, tf.shape(windows)[0], 1])
        return predict_window_batch(self.model, windows, masks, seed[0], seed[1], self.samples, self.flips,
                                    self.outputs)

    def __call__(self, windows: np.ndarray) -> dict:
        seed = tf.constant([self.seed, self.calls], tf.int64)
        self.calls += 1
        n = len(windows)
        batch = None
        if self.batch_size is not None:
            if n > self.batch_size:
                raise ValueError(f"{n} windows in one call; this predictor takes at most {self.batch_size}")
            batch = min((b for b in self._fns if b >= n), default=n)
            if batch != n:
                windows = np.concatenate([windows, np.zeros((batch - n, *windows.shape[1:]), windows.dtype)])
        out = self._function(batch)(tf.convert_to_tensor(windows, tf.float32), seed)
        return {f"{k}/{s}": v[:n] for k, t in out.items() for s, v in enumerate(t.numpy())}


def predict_volume(predictor: WindowPredictor, image: np.ndarray, window, *, overlap=0.5,
                   blend_mode="gaussian", border=(0, 0, 0), batch_size=1, progress=None,
                   cover="nonzero") -> list[dict]:
    """``image`` [D, H, W, M] (preprocessed) -> one dict per subset of ``predictor`` with
    ``seg_prob`` [D,H,W,K], ``synth`` [D,H,W,M] (if the network synthesises) and ``uncertainty``
    [D,H,W]. Reuse one predictor across cases: its traced function is reused too.

    ``cover``: the box the windows must cover: by default the bounding box of the non-zero
    voxels (the brain of a whitened case), as the exported SavedModel does; None: the whole
    volume. Voxels no window reaches are background (probability 1 for class 0) with zero
    synthesis and uncertainty."""
    if isinstance(cover, str):
        if cover != "nonzero":
            raise ValueError(f'cover must be "nonzero", None or ((lo, hi),) * 3; got {cover!r}')
        cover = nonzero_box(image)
    merged = sliding_window_inference(image.astype(np.float32), tuple(window), predictor, overlap=overlap,
                                      blend_mode=blend_mode, border=tuple(border), batch_size=batch_size,
                                      progress=progress, cover=cover)
    results = []
    for s in range(predictor.num_subsets):
        res = {k.split("/")[0]: v for k, v in merged.items() if k.endswith(f"/{s}")}
        if "uncertainty" in res:
            res["uncertainty"] = res["uncertainty"][..., 0]
        if cover is not None:
            res["seg_prob"][..., 0][res["seg_prob"].sum(axis=-1) == 0] = 1.0
        results.append(res)
    return results
