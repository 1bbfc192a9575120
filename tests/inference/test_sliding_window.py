"""Sliding-window grid, blending weights and whole-volume aggregation on tiny volumes."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uhved_tf.inference.sliding_window import (
    MIN_GAUSSIAN_WEIGHT,
    blending_weights,
    grid_positions,
    pad_to_multiple,
    sliding_window_inference,
    window_starts,
)

OVERLAPS = [0.0, 0.25, 0.5, 0.75]
MODES = ["gaussian", "constant"]
SHAPES = [(8, 8, 8), (16, 16, 16), (5, 7, 3), (17, 9, 20), (23, 16, 11)]  # incl. < window and non-multiples
WINDOW = (8, 8, 8)


def ones_predictor(batch):
    n, d, h, w, _ = batch.shape
    return {"seg": np.ones((n, d, h, w, 3), np.float32), "img": np.ones((n, d, h, w, 1), np.float32)}


def identity_predictor(batch):
    return {"out": batch.copy()}


def coordinate_volume(shape):
    """A volume whose channels are the voxel's global coordinates (and a product): any misplaced or
    mis-weighted window shows up in the reconstruction."""
    g = np.indices(shape).astype(np.float32)
    return np.stack([g[0], g[1], g[2], g[0] * g[1] - g[2]], axis=-1)


# ---------------------------------------------------------------------------------------------
# grid
# ---------------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 60), window=st.integers(1, 20), step=st.integers(1, 20))
def test_window_starts_cover_and_flush(size, window, step):
    step = min(step, window)
    starts = window_starts(size, window, step)
    assert starts[0] == 0
    assert starts == sorted(set(starts))
    if size <= window:
        assert starts == [0]
        return
    assert starts[-1] + window == size  # flush with the end
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + window] = True
    assert covered.all()
    assert all(b - a <= step for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize(
    ("size", "window", "step", "expected"),
    [(16, 8, 4, [0, 4, 8]), (17, 8, 4, [0, 4, 8, 9]), (8, 8, 4, [0]), (5, 8, 4, [0]), (16, 8, 8, [0, 8])],
)
def test_window_starts_examples(size, window, step, expected):
    assert window_starts(size, window, step) == expected


def test_window_starts_rejects_gaps():
    with pytest.raises(ValueError, match="step"):
        window_starts(16, 4, 5)


def test_grid_positions_product_and_step():
    pos = grid_positions((16, 12, 8), (8, 8, 8), 0.5)
    assert pos == list(itertools.product([0, 4, 8], [0, 4], [0]))
    # the step is computed on the valid width: window 8, border 2 -> valid 4, overlap 0.5 -> step 2
    assert [p[0] for p in grid_positions((12, 8, 8), (8, 8, 8), 0.5, border=2)] == [0, 2, 4]


# ---------------------------------------------------------------------------------------------
# blending weights
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "window", "border"),
    [
        (mode, window, border)
        for mode, window, border in itertools.product(MODES, [(8, 8, 8), (7, 10, 5), (1, 4, 9)], [(0, 0, 0), (1, 2, 0)])
        if all(2 * b < n for n, b in zip(window, border))
    ],
)
def test_blending_weights_properties(mode, window, border):
    w = blending_weights(window, mode, border=border)
    assert w.dtype == np.float32 and w.shape == window
    inner = tuple(slice(b, n - b) for n, b in zip(window, border))
    assert w.max() == pytest.approx(1.0)
    assert w[inner].min() >= (MIN_GAUSSIAN_WEIGHT if mode == "gaussian" else 1.0) - 1e-9
    outer = np.ones(window, bool)
    outer[inner] = False
    assert np.all(w[outer] == 0)
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1])  # symmetric about the centre


def test_gaussian_weights_peak_in_centre_and_decay():
    w = blending_weights((9, 9, 9), "gaussian", sigma_scale=0.25)
    assert w[4, 4, 4] == 1.0
    assert w[4, 4, 4] > w[4, 4, 6] > w[4, 4, 8]
    # separable: value = product of the 1D profiles
    np.testing.assert_allclose(w[2, 4, 6], w[2, 4, 4] * w[4, 4, 6], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "overlap", "mode"), list(itertools.product(SHAPES, OVERLAPS, MODES)))
def test_constant_predictor_gives_ones(shape, overlap, mode):
    vol = np.random.default_rng(0).normal(size=(*shape, 2)).astype(np.float32)
    out = sliding_window_inference(vol, WINDOW, ones_predictor, overlap=overlap, blend_mode=mode)
    assert set(out) == {"seg", "img"}
    assert out["seg"].shape == (*shape, 3) and out["img"].shape == (*shape, 1)
    for arr in out.values():
        assert arr.dtype == np.float32
        np.testing.assert_allclose(arr, 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("shape", "overlap", "mode", "border"),
    list(itertools.product([(16, 16, 16), (5, 7, 3), (17, 9, 20)], [0.0, 0.5], MODES, [(0, 0, 0), (2, 1, 3)])),
)
def test_identity_predictor_reconstructs(shape, overlap, mode, border):
    vol = coordinate_volume(shape)
    out = sliding_window_inference(vol, WINDOW, identity_predictor, overlap=overlap, blend_mode=mode, border=border)
    np.testing.assert_allclose(out["out"], vol, rtol=1e-5, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(*[st.integers(1, 14)] * 3),
    window=st.tuples(*[st.integers(3, 7)] * 3),
    border=st.tuples(*[st.integers(0, 1)] * 3),
    overlap=st.sampled_from(OVERLAPS + [0.9]),
    mode=st.sampled_from(MODES),
)
def test_every_voxel_covered_random_geometry(shape, window, border, overlap, mode):
    """Any shape / window / border / overlap: every voxel gets a positive total weight (the function
    raises otherwise) and a constant prediction comes back unchanged."""
    vol = np.zeros((*shape, 1), np.float32)
    out = sliding_window_inference(
        vol, window, lambda b: {"x": np.full((*b.shape[:4], 1), 0.5, np.float32)}, overlap=overlap,
        blend_mode=mode, border=border,
    )
    np.testing.assert_allclose(out["x"], 0.5, rtol=1e-6)


@pytest.mark.parametrize("overlap", [0.0, 0.5])
@pytest.mark.parametrize("shape", [(16, 16, 16), (3, 20, 9)])
def test_border_outputs_are_discarded(overlap, shape):
    """Predictions in each window's border are garbage; with border > 0 none of it reaches the output,
    even at the volume's edges (the volume is padded so every voxel is in some window's valid region)."""
    border = (2, 2, 2)

    def predictor(batch):
        n = batch.shape[0]
        out = np.full((n, *WINDOW, 1), 1000.0, np.float32)
        out[:, 2:-2, 2:-2, 2:-2] = 1.0
        return {"p": out}

    vol = np.zeros((*shape, 1), np.float32)
    for mode in MODES:
        out = sliding_window_inference(vol, WINDOW, predictor, overlap=overlap, blend_mode=mode, border=border)
        np.testing.assert_allclose(out["p"], 1.0, rtol=1e-6)


def test_pad_value_reaches_predictor():
    seen = []

    def predictor(batch):
        seen.append(batch.copy())
        return {"x": batch[..., :1]}

    vol = np.ones((4, 8, 8, 1), np.float32)
    sliding_window_inference(vol, WINDOW, predictor, pad_value=-7.0, border=1)
    values = np.unique(np.concatenate([b.ravel() for b in seen]))
    np.testing.assert_array_equal(values, [-7.0, 1.0])


@pytest.mark.parametrize("mode", MODES)
def test_batch_size_does_not_change_output(mode):
    vol = coordinate_volume((17, 9, 20))
    calls = {1: [], 3: []}

    def make(bs):
        def predictor(batch):
            calls[bs].append(batch.shape[0])
            return {"out": batch * 2.0, "mean": batch.mean(axis=-1, keepdims=True)}

        return predictor

    progress = []
    a = sliding_window_inference(vol, WINDOW, make(1), overlap=0.5, blend_mode=mode, batch_size=1)
    b = sliding_window_inference(
        vol, WINDOW, make(3), overlap=0.5, blend_mode=mode, batch_size=3, progress=lambda d, t: progress.append((d, t))
    )
    total = len(calls[1])
    assert all(n == 1 for n in calls[1])
    assert calls[3] == [3] * (total // 3) + ([total % 3] if total % 3 else [])
    assert progress == [(min(3 * (i + 1), total), total) for i in range(len(calls[3]))]
    for key in ("out", "mean"):
        np.testing.assert_array_equal(a[key], b[key])


def test_progress_called_once_per_batch():
    progress = []
    sliding_window_inference(
        np.zeros((16, 16, 8, 1), np.float32),
        WINDOW,
        ones_predictor,
        overlap=0.0,
        progress=lambda d, t: progress.append((d, t)),
    )
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]


# ---------------------------------------------------------------------------------------------
# pad_to_multiple
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "multiple"), [((5, 8, 3, 2), 4), ((5, 8, 3, 2), (2, 3, 5)), ((16, 16, 16, 1), 8)])
def test_pad_to_multiple(shape, multiple):
    vol = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    padded, crop = pad_to_multiple(vol, multiple, pad_value=-1.0)
    mults = (multiple,) * 3 if isinstance(multiple, int) else multiple
    assert all(n % m == 0 for n, m in zip(padded.shape, mults))
    assert padded.shape[3:] == shape[3:]
    np.testing.assert_array_equal(padded[crop], vol)
    assert np.sum(padded == -1.0) == padded.size - vol.size


def test_pad_to_multiple_rejects_bad_multiple():
    with pytest.raises(ValueError, match="multiple"):
        pad_to_multiple(np.zeros((4, 4)), (2, 2, 2))
    with pytest.raises(ValueError, match="multiple"):
        pad_to_multiple(np.zeros((4, 4, 4)), 0)


# ---------------------------------------------------------------------------------------------
# argument errors
# ---------------------------------------------------------------------------------------------
VOL = np.zeros((8, 8, 8, 1), np.float32)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": (0, 8, 8)}, "window"),
        ({"window": (8, 8)}, "window"),
        ({"window": (8.0, 8, 8)}, "window"),
        ({"overlap": 1.0}, "overlap"),
        ({"overlap": -0.1}, "overlap"),
        ({"border": (4, 0, 0)}, "border"),
        ({"border": (-1, 0, 0)}, "border"),
        ({"batch_size": 0}, "batch_size"),
        ({"blend_mode": "gausian"}, "blend mode"),
        ({"volume": np.zeros((8, 8, 8))}, r"\[D, H, W, C\]"),
        ({"volume": np.zeros((1, 8, 8, 8, 1))}, r"\[D, H, W, C\]"),
    ],
)
def test_argument_errors(kwargs, match):
    args = {"volume": VOL, "window": WINDOW, "predictor": ones_predictor} | kwargs
    with pytest.raises(ValueError, match=match):
        sliding_window_inference(**args)


@pytest.mark.parametrize(
    ("predictor", "match"),
    [
        (lambda b: np.ones_like(b), "dict"),
        (lambda b: {}, "dict"),
        (
            lambda b: {"seg": np.ones((b.shape[0], 4, 8, 8, 2))},
            r'"seg" has shape \(1, 4, 8, 8, 2\); expected \(1, 8, 8, 8',
        ),
        (lambda b: {"seg": np.ones((b.shape[0], 8, 8, 8))}, r'"seg" has shape \(1, 8, 8, 8\)'),
        (lambda b: {"seg": np.ones((2, 8, 8, 8, 1))}, r'"seg" has shape \(2, 8, 8, 8, 1\)'),
    ],
)
def test_predictor_output_errors(predictor, match):
    with pytest.raises(ValueError, match=match):
        sliding_window_inference(VOL, WINDOW, predictor)


def test_predictor_inconsistent_outputs_between_batches():
    state = {"calls": 0}

    def predictor(batch):
        state["calls"] += 1
        k = 2 if state["calls"] == 1 else 3
        return {"seg": np.ones((*batch.shape[:4], k))}

    with pytest.raises(ValueError, match='"seg" has 3 channels'):
        sliding_window_inference(np.zeros((16, 8, 8, 1), np.float32), WINDOW, predictor, overlap=0.0)
