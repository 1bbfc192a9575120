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


def counting_predictor():
    """A NumPy window predictor whose last output channel is its call index (so batching and
    order show in the result), and the list of its calls."""
    calls = []

    def predict(windows):
        calls.append(None)
        return {"out": np.concatenate([windows * 0.5, np.full_like(windows[..., :1], len(calls) - 1)], -1)}
    return predict, calls


def graph_sliding_window(window, **options):
    """The in-graph sliding window with the TF twin of :func:`counting_predictor`."""
    def predict(windows, k):
        return tf.concat([windows * 0.5, tf.fill(tf.shape(windows[..., :1]), tf.cast(k, tf.float32))], -1)

    return tf.function(lambda image: sliding_window_graph(image, window, predict, 3, **options),
                       input_signature=[tf.TensorSpec([None, None, None, 2], tf.float32)], autograph=False)


@pytest.mark.parametrize("shape, window, overlap, mode, border, batch", [
    ((12, 10, 9), (8, 8, 8), 0.5, "gaussian", (0, 0, 0), 1),
    ((11, 6, 5), (8, 8, 8), 0.5, "gaussian", (0, 0, 0), 2),      # smaller than the window
    ((13, 9, 7), (9, 6, 5), 0.3, "gaussian", (1, 0, 2), 3),
    ((17, 12, 8), (8, 6, 4), 0.0, "constant", (2, 1, 0), 2),
])
def test_graph_sliding_window_equals_the_numpy_one(shape, window, overlap, mode, border, batch):
    """Outputs depend on the window batch index, so the batching and the order must agree too."""
    volume = np.random.default_rng(0).normal(size=(*shape, 2)).astype(np.float32)
    ref = sliding_window_inference(volume, window, counting_predictor()[0], overlap=overlap, blend_mode=mode,
                                   border=border, batch_size=batch)["out"]
    graph = graph_sliding_window(window, overlap=overlap, blend_mode=mode, border=border, batch_size=batch)
    got = graph(tf.constant(volume)).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape, brain, window, overlap, border, batch", [
    ((40, 30, 20), ((6, 20), (3, 27), (2, 18)), (16, 16, 8), 0.5, (0, 0, 0), 1),   # box shorter than a window
    ((40, 30, 20), ((1, 39), (0, 30), (5, 6)), (16, 8, 8), 0.25, (2, 1, 0), 3),
    ((12, 10, 9), ((0, 12), (0, 10), (0, 9)), (8, 8, 8), 0.5, (0, 0, 0), 2),      # the whole volume
])
def test_windows_planned_on_the_brain_box_agree_between_numpy_and_graph(shape, brain, window, overlap, border, batch):
    """Zero outside a box (a whitened case's background): both sliding windows tile only the box
    (fewer windows), give the same numbers, and call what no window reaches background."""
    from uhved_tf.inference.sliding_window import nonzero_box

    rng = np.random.default_rng(1)
    volume = np.zeros((*shape, 2), np.float32)
    box = tuple(slice(lo, hi) for lo, hi in brain)
    volume[box] = rng.normal(size=volume[box].shape) + 3.0
    assert nonzero_box(volume) == brain
    numpy_predictor, calls = counting_predictor()
    ref = sliding_window_inference(volume, window, numpy_predictor, overlap=overlap, border=border, batch_size=batch,
                                   cover=brain)["out"]
    with_box = len(calls)
    calls.clear()
    whole = sliding_window_inference(volume, window, numpy_predictor, overlap=overlap, border=border,
                                     batch_size=batch)["out"]
    assert len(calls) >= with_box
    reached = sliding_window_inference(volume, window, lambda w: {"w": np.ones_like(w[..., :1])}, overlap=overlap,
                                       border=border, batch_size=batch, cover=brain)["w"][..., 0] > 0
    assert reached[box].all()                                        # every brain voxel predicted
    np.testing.assert_allclose(ref[box][..., :2], whole[box][..., :2], rtol=1e-5, atol=1e-5)
    assert np.all(ref[~reached] == 0)
    graph = graph_sliding_window(window, overlap=overlap, border=border, batch_size=batch, background=2)
    got = graph(tf.constant(volume)).numpy()
    np.testing.assert_allclose(got[reached], ref[reached], rtol=1e-6, atol=1e-6)
    assert np.all(got[~reached] == [0, 0, 1])                       # the background channel


def test_a_brain_shorter_than_the_window_gets_one_centred_window():
    from uhved_tf.inference.sliding_window import cover_starts, plan_starts

    # a 140-voxel brain in a 148-voxel crop: one 144 window (the crop would need two at overlap 0.5)
    assert cover_starts(4, 144, 148, 144, 72).tolist() == [2]
    assert window_starts(148, 144, 72) == [0, 4]
    assert cover_starts(0, 10, 10, 8, 4).tolist() == window_starts(10, 8, 4)
    assert cover_starts(30, 50, 60, 8, 4).tolist() == [30, 34, 38, 42]
    assert cover_starts(0, 3, 60, 8, 4).tolist() == [0]           # kept inside the axis
    # the plan: the box's windows only when they are fewer, else the whole axis's (MONAI's positions)
    assert plan_starts(4, 144, 148, 144, 72) == [2]
    assert plan_starts(4, 196, 200, 144, 72) == window_starts(200, 144, 72) == [0, 56]
    assert plan_starts(30, 50, 60, 8, 4) == [30, 34, 38, 42]
