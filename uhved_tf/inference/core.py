"""The inference step as TensorFlow ops, written once for the local predictor and the export.

:class:`~uhved_tf.inference.predictor.WindowPredictor` (local prediction, NumPy sliding window)
and the exported SavedModel (:mod:`uhved_tf.export.saved_model`) both call
:func:`predict_window_batch`; the SavedModel's whole-volume signature runs
:func:`sliding_window_graph`, whose geometry (padding, window starts, steps, blending weights) is
that of :mod:`uhved_tf.inference.sliding_window`, so both paths give the same numbers.

Seeds. Sampling is stateless: window batch (call) ``k`` of subset code ``c`` (bit i = modality i
present) and test-time mirroring ``f`` (index in :data:`TTA_FLIPS`) draws with
:func:`sample_seed` ``= [seed, k * 4096 + c * 16 + f]``. The seed depends on the subset itself,
not on its position in a list, so predicting all 15 subsets at once gives what 15 runs give.
"""

from __future__ import annotations

from types import SimpleNamespace

import tensorflow as tf

from uhved_tf.inference.sliding_window import axis_pads, blending_weights, plan_starts, window_steps
from uhved_tf.model.base import entropy

#: Test-time augmentation: every combination of mirroring the three spatial axes (nnU-Net's).
TTA_FLIPS = ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))

# The NumPy ops sliding_window's geometry helpers use, as TensorFlow ops (sizes are tensors here).
_TF = SimpleNamespace(maximum=tf.maximum, minimum=tf.minimum, arange=tf.range,
                      fewer=lambda a, b: tf.cond(tf.size(a) < tf.size(b), lambda: a, lambda: b))


def subset_code(masks):
    """Subset code(s) over the last axis of ``masks`` (int64): bit i set = modality i present."""
    masks = tf.convert_to_tensor(masks, tf.float32)
    bits = tf.constant([1 << i for i in range(masks.shape[-1])], tf.int64)
    return tf.reduce_sum(tf.cast(masks > 0, tf.int64) * bits, axis=-1)


def sample_seed(seed, call, code, flip: int = 0):
    """The stateless sampling seed pair of window batch ``call``, subset ``code`` and mirroring
    ``flip`` (Python ints or int64 tensors)."""
    return seed, call * 4096 + code * 16 + flip


def predict_window_batch(model, windows, masks, seed, call, samples: int = 0, flips=((),),
                         outputs=("synth", "uncertainty")) -> dict:
    """One batch of windows for ``S`` subsets, encoding each (mirrored) window once.

    Args:
        windows: [N, d, h, w, M] float32.
        masks: [S, N, M] (static ``S``): subset ``s`` fuses window ``n`` with ``masks[s, n]``. The
            sample seed uses the code of ``masks[s, 0]``: when sampling, give one mask per subset.
        seed, call: int64 scalars (see :func:`sample_seed`).
        samples: posterior samples averaged for the segmentation (0 = the posterior mean).
        flips: :data:`TTA_FLIPS` (test-time augmentation) or ``((),)``.
        outputs: which of ``synth`` and ``uncertainty`` to compute besides ``seg_prob`` (no
            synthesis: the image decoders do not run).

    Returns:
        ``seg_prob`` [S, N, d, h, w, K], ``synth`` [S, N, d, h, w, M] (networks that synthesise)
        and ``uncertainty`` [S, N, d, h, w, 1], float32: the un-mirrored outputs averaged over
        ``flips``, the uncertainty being the entropy of the averaged probabilities. Networks
        without ``encode`` / ``predict_from_posteriors`` run ``predict_windows`` per subset.
    """
    synthesis = getattr(model, "synthesises", False) and "synth" in outputs
    keys = ("seg_prob", "synth") if synthesis else ("seg_prob",)
    encode_once = hasattr(model, "encode") and hasattr(model, "predict_from_posteriors")
    seed, call = tf.cast(seed, tf.int64), tf.cast(call, tf.int64)
    codes = subset_code(masks[:, 0])
    result = {}
    weight = 1.0 / len(flips)
    for f_index, flip in enumerate(flips):
        axes = [a + 1 for a in flip]
        x = tf.reverse(windows, axis=axes) if axes else windows
        encodings = model.encode(x) if encode_once else None

        def subset(mask, code, x=x, encodings=encodings, f_index=f_index):
            sub_seed = tf.stack(sample_seed(seed, call, code, f_index))
            if encode_once:
                out = model.predict_from_posteriors(model.fuse(encodings, mask), samples, sub_seed,
                                                    **({} if synthesis else {"synthesis": False}))
            else:
                out = model.predict_windows(x, mask, samples, sub_seed)
            return {k: tf.cast(out[k], tf.float32) for k in keys}

        if masks.shape[0] == 1:
            stacked = {k: v[None] for k, v in subset(masks[0], codes[0]).items()}
        else:
            # One copy of the decoders in the graph whatever the number of subsets (a loop, one
            # subset at a time: the memory of one subset, a trace ~S times smaller).
            stacked = tf.map_fn(lambda args: subset(*args), (masks, codes), parallel_iterations=1,
                                fn_output_signature={k: tf.TensorSpec(None, tf.float32) for k in keys})
        for k, v in stacked.items():
            v = tf.reverse(v, axis=[a + 1 for a in axes]) if axes else v
            result[k] = result[k] + weight * v if k in result else weight * v
    if "uncertainty" in outputs:
        result["uncertainty"] = entropy(result["seg_prob"])[..., None]
    return result


def sliding_window_graph(image, window, predict, channels: int, *, overlap=0.5, blend_mode="gaussian",
                         border=(0, 0, 0), batch_size: int = 1, sigma_scale: float = 0.125, background=0):
    """:func:`~uhved_tf.inference.predictor.predict_volume` 's sliding window as TF ops (one graph,
    any volume size; the arguments are checked by the caller): windows planned on the bounding box
    of the non-zero voxels (the brain); voxels no window reaches get 1 in channel ``background``
    (the background class's probability) and 0 elsewhere.

    ``image`` [D, H, W, M] float32; ``predict(windows [n, *window, M], k)`` -> [n, *window,
    channels] for window batch ``k`` (``batch_size`` windows, the last one fewer, C order).
    Returns [D, H, W, channels].
    """
    weights = tf.constant(blending_weights(window, blend_mode, sigma_scale, border))[..., None]
    spatial = tf.shape(image)[:3]
    pads = tf.stack([tf.stack(axis_pads(spatial[a], window[a], border[a], _TF)) for a in range(3)])
    padded = tf.pad(image, tf.concat([pads, [[0, 0]]], 0))
    padded_shape = tf.shape(padded)[:3]
    steps = window_steps(window, overlap, border)
    inside = tf.cast(tf.where(tf.reduce_any(tf.not_equal(image, 0.0), axis=-1)), tf.int32)
    found = tf.shape(inside)[0] > 0
    lo = tf.where(found, tf.reduce_min(inside, axis=0), tf.zeros([3], tf.int32))
    hi = tf.where(found, tf.reduce_max(inside, axis=0) + 1, spatial)
    starts = [plan_starts(lo[a] + pads[a, 0] - border[a], hi[a] + pads[a, 0] + border[a], padded_shape[a],
                          window[a], steps[a], _TF) for a in range(3)]
    positions = tf.reshape(tf.stack(tf.meshgrid(*starts, indexing="ij"), axis=-1), [-1, 3])  # C order
    total = tf.shape(positions)[0]
    window_size = [*window, image.shape[-1]]

    def body(k, acc):
        pos = positions[k * batch_size:tf.minimum((k + 1) * batch_size, total)]
        out = predict(tf.map_fn(lambda p: tf.slice(padded, tf.concat([p, [0]], 0), window_size), pos,
                                fn_output_signature=tf.TensorSpec(window_size, tf.float32)), k)

        def add(i, acc):
            begin = tf.concat([pos[i], [0]], 0)
            value = tf.concat([out[i] * weights, weights], axis=-1)
            size = tf.shape(value)
            region = tf.slice(acc, begin, size)
            acc = tf.raw_ops.TensorStridedSliceUpdate(input=acc, begin=begin, end=begin + size,
                                                      strides=tf.ones_like(begin), value=region + value)
            return i + 1, acc

        _, acc = tf.while_loop(lambda i, _: i < tf.shape(pos)[0], add, (tf.constant(0), acc))
        return k + 1, acc

    acc = tf.zeros(tf.concat([padded_shape, [channels + 1]], 0), tf.float32)
    _, acc = tf.while_loop(lambda k, _: k < (total + batch_size - 1) // batch_size, body, (tf.constant(0), acc),
                           shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None, None, channels + 1])))
    acc = tf.slice(acc, tf.concat([pads[:, 0], [0]], 0), tf.concat([spatial, [-1]], 0))
    total_weight = acc[..., channels:]
    fill = tf.one_hot(background, channels) * tf.cast(tf.equal(total_weight, 0.0), tf.float32)
    return tf.math.divide_no_nan(acc[..., :channels], total_weight) + fill
