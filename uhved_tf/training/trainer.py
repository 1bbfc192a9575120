"""The training loop: a custom ``tf.function`` step under a ``tf.distribute`` strategy.

Keras 3 ``model.fit`` fails under ``MultiWorkerMirroredStrategy``, so the step is ours: forward,
the weighted loss of :mod:`uhved_tf.losses`, gradients (loss-scaled under ``mixed_float16``),
fused optimiser updates. One traced function is reused for every step (the per-step seed and
learning rate are tensors/variables, never Python values that would retrace).

:meth:`Trainer.fit` is the loop: the learning-rate schedule (``lr / lr_decay_factor **
(iteration // lr_decay_every)``), the step, a check that the losses are finite, then the
callbacks of :mod:`uhved_tf.training.callbacks` (metrics CSV, TensorBoard, progress bar,
checkpoints, validation). Checkpoints go through ``tf.train.CheckpointManager`` into the
folders of :class:`~uhved_tf.model_dir.ModelDir`; :meth:`Trainer.restore` resumes with the
optimiser state and the iteration.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import tensorflow as tf

from uhved_tf.losses import LossForms, LossWeights, total_loss
from uhved_tf.model_dir import ModelDir
from uhved_tf.training.callbacks import Callback, default_callbacks
from uhved_tf.training.checkpoint import model_checkpoint
from uhved_tf.training.optimizer import FusedOptimizer

log = logging.getLogger(__name__)

__all__ = ["TrainSettings", "Trainer", "default_callbacks"]


@dataclass(frozen=True)
class TrainSettings:
    """What the loop needs of a config: the [TRAINING] keys of the same names (their defaults
    live in the config schema), [SYSTEM] seed, the task's number of classes and the loss setup."""

    max_iter: int
    lr: float
    lr_decay_factor: float
    lr_decay_every: int
    save_every_n: int
    max_checkpoints: int
    tensorboard_every_n: int
    optimiser: str
    seed: int
    num_classes: int
    loss_weights: LossWeights
    loss_forms: LossForms

    TRAINING_KEYS = ("max_iter", "lr", "lr_decay_factor", "lr_decay_every", "save_every_n", "max_checkpoints",
                     "tensorboard_every_n", "optimiser")

    @classmethod
    def from_config(cls, cfg) -> "TrainSettings":
        t = cfg.training
        return cls(**{k: getattr(t, k) for k in cls.TRAINING_KEYS}, seed=cfg.system.seed,
                   num_classes=cfg.task.num_classes, loss_weights=LossWeights.from_training_settings(t),
                   loss_forms=LossForms.from_settings(t, cfg.network))

    def lr_at(self, iteration: int) -> float:
        return self.lr / self.lr_decay_factor ** (iteration // max(1, self.lr_decay_every))


class Trainer:
    def __init__(self, model, settings: TrainSettings, model_dir: ModelDir, strategy=None):
        self.model = model
        self.settings = settings
        self.model_dir = model_dir if isinstance(model_dir, ModelDir) else ModelDir(model_dir)
        self.strategy = strategy or tf.distribute.get_strategy()
        log.info("training with %s on %d replica(s)", type(self.strategy).__name__,
                 self.strategy.num_replicas_in_sync)
        with self.strategy.scope():
            self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False, name="iteration",
                                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.optimizer = FusedOptimizer(settings.optimiser, settings.lr, model.trainable_variables)
        self.checkpoint = model_checkpoint(model, optimizer=self.optimizer, iteration=self.iteration)
        self.manager = self.checkpoint_manager()
        self._step_fn = None
        self._last_args = None

    # --- checkpoints ------------------------------------------------------------------------
    def checkpoint_manager(self, best: bool = False) -> tf.train.CheckpointManager:
        """The manager of the rolling checkpoints (or of the one best validation checkpoint)."""
        folder, name = self.model_dir.checkpoint_prefix(best)
        return tf.train.CheckpointManager(self.checkpoint, str(folder), checkpoint_name=name,
                                          max_to_keep=1 if best else self.settings.max_checkpoints)

    def restore(self, iteration: int | None = None) -> int:
        """Restore the latest checkpoint (or the one of ``iteration``); returns the iteration."""
        path = self.manager.latest_checkpoint if iteration is None else self.model_dir.checkpoint_path(iteration)
        if path is None:
            return 0
        self.checkpoint.restore(path).assert_existing_objects_matched()
        log.info("resumed from %s (iteration %d)", path, int(self.iteration.numpy()))
        return int(self.iteration.numpy())

    def save(self) -> str:
        path = self.manager.save(checkpoint_number=int(self.iteration.numpy()))
        log.info("saved checkpoint %s", path)
        return path

    def _subset_names(self, masks) -> list[str]:
        from uhved_tf.subset import Subset
        names = getattr(self.model, "modalities", None) or [f"m{i}" for i in range(masks.shape[-1])]
        return [Subset.from_mask(row, names).name for row in masks]

    # --- the step ---------------------------------------------------------------------------
    def _build_step(self):
        model, opt, s = self.model, self.optimizer, self.settings
        strategy = self.strategy
        mixed16 = model.dtype_policy.name == "mixed_float16" if hasattr(model, "dtype_policy") else False
        loss_scale = 2.0**15 if mixed16 else None

        def replica_step(batch, seed):
            variables = model.trainable_variables
            with tf.GradientTape() as tape:
                outputs = model({"image": batch["image"], "modality_mask": batch["modality_mask"]},
                                training=True, seed=seed)
                total, terms = total_loss(outputs, batch, s.num_classes, s.loss_weights, model.losses,
                                          s.loss_forms)
                scaled = total / strategy.num_replicas_in_sync
                if loss_scale:
                    scaled = scaled * loss_scale
            grads = tape.gradient(scaled, variables)
            if loss_scale:
                grads = [None if g is None else g / loss_scale for g in grads]
            ctx = tf.distribute.get_replica_context()
            if strategy.num_replicas_in_sync > 1:
                grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            if loss_scale:
                finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
                grads = [None if g is None else tf.where(finite, g, tf.zeros_like(g)) for g in grads]
            opt.apply_gradients(zip(grads, variables))
            return terms

        @tf.function(reduce_retracing=True)
        def step(dist_batch, seed):
            per_replica = strategy.run(replica_step, args=(dist_batch, seed))
            out = {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in per_replica.items()}
            # The modality subsets this step trained on (all replicas), for the metrics CSV.
            masks = dist_batch["modality_mask"]
            out["modality_mask"] = strategy.gather(masks, axis=0) if strategy.num_replicas_in_sync > 1 else (
                strategy.experimental_local_results(masks)[0])
            return out

        return step

    def step_graph(self):
        """The graph of the traced step (cached: no retrace), for TensorBoard's Graphs tab."""
        return self._step_fn.get_concrete_function(*self._last_args).graph

    # --- the loop ---------------------------------------------------------------------------
    def fit(self, dataset, start_iteration: int = 0, callbacks: list[Callback] | None = None) -> dict:
        """Train from ``start_iteration`` to ``max_iter`` (or until a callback stops it); returns
        the losses of the last step. ``callbacks``: None = :func:`default_callbacks` without a
        progress bar or validation. Ctrl-C: the callbacks' ``on_train_end(interrupted=True)``
        (a checkpoint is saved), then the ``KeyboardInterrupt`` goes on."""
        s = self.settings
        callbacks = default_callbacks(s, self.model_dir, progress=False) if callbacks is None else list(callbacks)
        self.iteration.assign(start_iteration)
        if self._step_fn is None:
            self._step_fn = self._build_step()
        dist = self.strategy.experimental_distribute_dataset(dataset)
        for cb in callbacks:
            cb.on_train_begin(self, start_iteration)
        it, terms = start_iteration, {}
        try:
            for batch in dist:
                if it >= s.max_iter:
                    break
                lr = s.lr_at(it)
                self.optimizer.learning_rate.assign(lr)
                self._last_args = (batch, tf.constant([s.seed, it], tf.int64))
                out = self._step_fn(*self._last_args)
                it += 1
                self.iteration.assign(it)
                subsets = self._subset_names(out.pop("modality_mask").numpy())
                terms = {k: float(v) for k, v in out.items()}
                if not all(math.isfinite(v) for v in terms.values()):
                    raise FloatingPointError(f"non-finite loss at iteration {it}: {terms}")
                if any([cb.on_step_end(self, it, terms, lr, subsets) for cb in callbacks]):
                    break
        except KeyboardInterrupt:
            for cb in callbacks:
                cb.on_train_end(self, it, interrupted=True)
            raise
        else:
            for cb in callbacks:
                cb.on_train_end(self, it, interrupted=False)
        finally:
            for cb in callbacks:
                cb.close()
        return terms
