"""The training input pipeline: tf.data from preprocessed cases to batches of random windows.

Structure (all randomness from TF's stateless RNG, seeded from ``[SYSTEM] seed``, so a run is
reproducible and a resumed run sees exactly the batches an uninterrupted run would have seen):

    block b = 0, 1, 2, ...                     (Dataset.range, starts at the resumed block)
      -> the ``volumes_per_block`` subjects of block b (a fresh permutation of the training
         subjects every epoch)
      -> load + preprocess them (numpy in ``tf.numpy_function``, parallel, deterministic order;
         preprocessed cases are cached in memory when they fit the cache budget)
      -> ``sample_per_volume`` windows per volume (corners by ``window_sampling``: uniform,
         balanced or weighted), augmented (flips, rotation, scaling: resampled from the whole
         volume, image trilinear and label nearest), a modality mask per window drawn by the
         subset policy among the modalities the subject has
      -> the block's windows in a random order (the shuffle queue), unbatched
      -> a buffer of one block of windows (the next block is built while this one trains)
      -> batches of ``batch_size``, prefetched

Iteration i consumes windows [i*B, (i+1)*B), which lie in block (i*B) // windows_per_block, so
resuming only re-reads one block.

A batch is a dict: ``image`` [B, D, H, W, M] float32, ``label`` [B, D, H, W] int32,
``modality_mask`` [B, M] float32 (the drawn subset), ``data_mask`` [B, M] float32 (what the
subject's data has: the reconstruction loss uses it).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Callable

import tensorflow as tf

from uhved_tf.data.augmentation import augment_crop
from uhved_tf.data.subsets import SubsetSampler
from uhved_tf.data.window_sampling import corners_for, corners_to_centres

log = logging.getLogger(__name__)


class CaseCache:
    """Loads cases by index through ``loader`` and keeps up to ``budget_bytes`` of them (LRU)."""

    def __init__(self, loader: Callable[[int], tuple], budget_bytes: int = 2 * 1024**3):
        self.loader = loader
        self.budget = budget_bytes
        self.cache: OrderedDict[int, tuple] = OrderedDict()
        self.used = 0

    def __call__(self, index) -> tuple:
        index = int(index)
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        item = self.loader(index)
        size = sum(a.nbytes for a in item)
        if size <= self.budget:
            while self.used + size > self.budget and self.cache:
                _, old = self.cache.popitem(last=False)
                self.used -= sum(a.nbytes for a in old)
            self.cache[index] = item
            self.used += size
        return item


def make_training_dataset(load_case_arrays: Callable[[int], tuple], num_subjects: int, *,
                          num_modalities: int, window, batch_size: int, sample_per_volume: int,
                          queue_length: int, seed: int, policy: str = "uniform_size", prior=None,
                          flip_axes=(), angles_deg=None, scaling_percentage=None,
                          isotropic_scaling: bool = False, window_sampling: str = "uniform",
                          num_classes: int = 4, start_iteration: int = 0, num_parallel: int = 2,
                          cache_bytes: int = 2 * 1024**3) -> tf.data.Dataset:
    """``load_case_arrays(i)`` returns ``(image [D,H,W,M] f32, label [D,H,W] i32, data_mask [M] f32)``
    for training subject i, each volume at least ``window`` in size."""
    window = tuple(int(w) for w in window)
    volumes_per_block = max(1, math.ceil(queue_length / sample_per_volume))
    windows_per_block = volumes_per_block * sample_per_volume
    start_block, skip = divmod(start_iteration * batch_size, windows_per_block)
    subset_sampler = SubsetSampler(num_modalities, policy, prior)
    cache = CaseCache(load_case_arrays, cache_bytes)
    n = int(num_subjects)

    def load(index):
        image, label, data_mask = tf.numpy_function(cache, [index], [tf.float32, tf.int32, tf.float32], stateful=False)
        image.set_shape([None, None, None, num_modalities])
        label.set_shape([None, None, None])
        data_mask.set_shape([num_modalities])
        return image, label, data_mask

    def subject_of(volume_counter):
        epoch, pos = volume_counter // n, volume_counter % n
        keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.cast(seed, tf.int64), 1000 + epoch]))
        return tf.gather(tf.argsort(keys), pos)

    def volume_windows(volume_counter, image, label, data_mask):
        """The ``sample_per_volume`` windows of one volume: corners by the window sampler
        (uniform / balanced / weighted), then flips, rotation and scaling resampled from the
        whole volume around each window's centre, and a modality mask per window."""
        base = tf.stack([tf.cast(seed, tf.int64), 3_000_003 + volume_counter])
        s = tf.random.experimental.stateless_split(base, 2 + sample_per_volume)
        corners = corners_for(window_sampling, label, window, sample_per_volume, num_classes, s[0])
        centres = corners_to_centres(corners, window)

        def one(j):
            sj = tf.random.experimental.stateless_split(tf.gather(s, 2 + j), 2)
            img, lab = augment_crop(image, label, centres[j], window, sj[0], flip_axes=flip_axes,
                                    angles_deg=angles_deg, scaling_percentage=scaling_percentage,
                                    isotropic_scaling=isotropic_scaling)
            return {"image": img, "label": lab, "modality_mask": subset_sampler.draw(sj[1], data_mask),
                    "data_mask": data_mask}

        return tf.data.Dataset.range(sample_per_volume).map(one)

    def block_windows(block):
        volume_ids = block * volumes_per_block + tf.range(volumes_per_block, dtype=tf.int64)
        vols = tf.data.Dataset.from_tensor_slices(volume_ids).map(
            lambda v: (v,) + load(subject_of(v)), num_parallel_calls=num_parallel, deterministic=True)
        wins = vols.flat_map(volume_windows)
        # The shuffle queue: a stateless permutation of the block's windows.
        order = tf.argsort(tf.random.stateless_uniform(
            [windows_per_block], seed=tf.stack([tf.cast(seed, tf.int64), 2000 + block])))
        return wins.batch(windows_per_block).map(
            lambda b: tf.nest.map_structure(lambda t: tf.gather(t, order), b)).unbatch()

    ds = tf.data.Dataset.range(start_block, 2**62).flat_map(block_windows)
    if skip:
        ds = ds.skip(skip)
    # A block's windows come out only once the whole block is built (they are shuffled
    # together), so a short prefetch left training waiting for every new block (load +
    # preprocess + augment, ~3 s for a BraTS-size case). A buffer of one block of windows lets
    # the next block be built while this one trains.
    ds = ds.prefetch(windows_per_block).batch(batch_size, drop_remainder=True).prefetch(2)
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = max(1, num_parallel)
    return ds.with_options(options)
