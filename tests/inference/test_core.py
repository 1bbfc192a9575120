"""The inference step shared by the local predictor and the export: seeds, tiling as TF ops and the
in-graph sliding window against the NumPy one (any predictor, so no network is needed)."""

import numpy as np
import pytest
import tensorflow as tf

from uhved_tf.inference.core import _TF, sample_seed, sliding_window_graph, subset_code
from uhved_tf.inference.sliding_window import axis_starts, sliding_window_inference, window_starts


def test_subset_code_and_sample_seed():
    assert int(subset_code([0, 1, 0, 1])) == 10
    assert subset_code([[0, 1, 0, 1], [1, 1, 1, 1], [1, 0, 0, 0]]).numpy().tolist() == [10, 15, 1]
    assert sample_seed(5, 3, 10, 2) == (5, 3 * 4096 + 10 * 16 + 2)


def test_tf_window_starts_equal_the_numpy_ones():
    for n, w, step in [(8, 8, 4), (9, 8, 4), (20, 8, 4), (21, 8, 3), (30, 8, 8), (17, 16, 1)]:
        assert axis_starts(tf.constant(n), w, step, _TF).numpy().tolist() == window_starts(n, w, step)


@pytest.mark.parametrize("shape, window, overlap, mode, border, batch", [
    ((12, 10, 9), (8, 8, 8), 0.5, "gaussian", (0, 0, 0), 1),
    ((11, 6, 5), (8, 8, 8), 0.5, "gaussian", (0, 0, 0), 2),      # smaller than the window
    ((13, 9, 7), (9, 6, 5), 0.3, "gaussian", (1, 0, 2), 3),
    ((17, 12, 8), (8, 6, 4), 0.0, "constant", (2, 1, 0), 2),
])
def test_graph_sliding_window_equals_the_numpy_one(shape, window, overlap, mode, border, batch):
    """Outputs depend on the window batch index, so the batching and the order must agree too."""
    volume = np.random.default_rng(0).normal(size=(*shape, 2)).astype(np.float32)
    calls = []

    def numpy_predictor(windows):
        calls.append(None)
        return {"out": np.concatenate([windows * 0.5, np.full_like(windows[..., :1], len(calls) - 1)], -1)}

    ref = sliding_window_inference(volume, window, numpy_predictor, overlap=overlap, blend_mode=mode, border=border,
                                   batch_size=batch)["out"]

    def predict(windows, k):
        return tf.concat([windows * 0.5, tf.fill(tf.shape(windows[..., :1]), tf.cast(k, tf.float32))], -1)

    graph = tf.function(lambda image: sliding_window_graph(image, window, predict, 3, overlap=overlap,
                                                           blend_mode=mode, border=border, batch_size=batch),
                        input_signature=[tf.TensorSpec([None, None, None, 2], tf.float32)], autograph=False)
    got = graph(tf.constant(volume)).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
