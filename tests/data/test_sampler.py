"""The tf.data training pipeline: batch contract, determinism, exact resume, incomplete subjects."""

import numpy as np
import pytest

from uhved_tf.data.sampler import make_training_dataset

M = 4


def make_loader(shapes, missing=None):
    missing = missing or {}
    rng = np.random.default_rng(0)
    cases = []
    for i, shape in enumerate(shapes):
        image = rng.normal(size=shape + (M,)).astype(np.float32)
        label = rng.integers(0, 4, size=shape).astype(np.int32)
        data_mask = np.ones(M, np.float32)
        for m in missing.get(i, ()):
            data_mask[m] = 0
            image[..., m] = 0
        cases.append((image, label, data_mask))
    return (lambda i: cases[int(i)]), cases


def dataset(loader, n, start=0, **kw):
    args = dict(num_modalities=M, window=(8, 8, 8), batch_size=2, sample_per_volume=3, queue_length=6,
                seed=7, flip_axes=(0, 1, 2), start_iteration=start)
    args.update(kw)
    return make_training_dataset(loader, n, **args)


def take(ds, k):
    return [{key: v.numpy() for key, v in b.items()} for b in ds.take(k)]


def test_batch_contract():
    loader, _ = make_loader([(12, 10, 9), (9, 9, 9), (16, 8, 8)])
    batch = take(dataset(loader, 3), 1)[0]
    assert batch["image"].shape == (2, 8, 8, 8, M) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (2, 8, 8, 8) and batch["label"].dtype == np.int32
    assert batch["modality_mask"].shape == (2, M) and batch["data_mask"].shape == (2, M)
    assert np.all(batch["modality_mask"].sum(1) >= 1)


def test_deterministic_and_seed_dependent():
    loader, _ = make_loader([(12, 10, 9), (9, 9, 9), (16, 8, 8)])
    a, b = take(dataset(loader, 3), 5), take(dataset(loader, 3), 5)
    c = take(dataset(loader, 3, seed=8), 5)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))


@pytest.mark.parametrize("start", [1, 3, 4, 7])
def test_resume_sees_the_same_batches(start):
    loader, _ = make_loader([(12, 10, 9), (9, 9, 9), (16, 8, 8), (10, 10, 10)])
    full = take(dataset(loader, 4), start + 3)
    resumed = take(dataset(loader, 4, start=start), 3)
    for x, y in zip(full[start:], resumed):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("sampling", ["uniform", "balanced", "weighted"])
def test_window_samplers_and_augmentation_run(sampling):
    loader, _ = make_loader([(12, 10, 9), (9, 9, 9)])
    batches = take(dataset(loader, 2, window_sampling=sampling, angles_deg=((-10, 10),) * 3,
                           scaling_percentage=(-10, 10)), 3)
    for b in batches:
        assert set(np.unique(b["label"])) <= {0, 1, 2, 3}
        assert np.all(np.isfinite(b["image"]))


def test_incomplete_subjects_never_get_a_missing_modality():
    loader, cases = make_loader([(9, 9, 9), (9, 9, 9), (9, 9, 9)], missing={0: (1, 3), 1: (0,)})
    seen_sizes = set()
    for b in take(dataset(loader, 3), 60):
        assert np.all(b["modality_mask"] <= b["data_mask"])
        seen_sizes.update(b["modality_mask"].sum(1).astype(int).tolist())
    assert seen_sizes == {1, 2, 3, 4}
