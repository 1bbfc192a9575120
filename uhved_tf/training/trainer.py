"""The training loop: a custom ``tf.function`` step under a ``tf.distribute`` strategy.

Keras 3 ``model.fit`` fails under ``MultiWorkerMirroredStrategy``, so the step is ours: forward,
the weighted loss of :mod:`uhved_tf.losses`, gradients, fused optimiser updates. Under
``mixed_float16`` the loss is scaled by :class:`DynamicLossScale`, and a step whose gradients
overflow is skipped (weights, optimiser slots and step counter untouched) and halves the scale.
One traced function is reused for every step (the per-step seed and learning rate are
tensors/variables, never Python values that would retrace).

:meth:`Trainer.fit` is the loop: the learning-rate schedule (``lr / lr_decay_factor **
(iteration // lr_decay_every)``), the step, a check that the losses are finite, then the
callbacks of :mod:`uhved_tf.training.callbacks` (metrics CSV, TensorBoard, progress bar,
checkpoints, validation). Checkpoints go through ``tf.train.CheckpointManager`` into the
folders of :class:`~uhved_tf.model_dir.ModelDir`; :meth:`Trainer.restore` resumes with the
optimiser state and the iteration, from the newest checkpoint that restores (found from the
files, not from TensorFlow's state file), and :meth:`Trainer.fit` moves the files of later
checkpoints aside rather than overwrite them.

Under ``MultiWorkerMirroredStrategy`` only the chief writes the model directory (checkpoints,
metrics, TensorBoard, validation). Saving is collective, so the other workers save too, into a
temporary folder deleted at once, and take the chief's decisions (a new best checkpoint, early
stopping) through :meth:`Trainer.agree`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass

import tensorflow as tf

from uhved_tf.losses import LossForms, LossWeights, total_loss
from uhved_tf.model_dir import ModelDir
from uhved_tf.training.callbacks import Callback, default_callbacks
from uhved_tf.training.checkpoint import (
    RESTORE_ERRORS,
    UnrestorableCheckpoint,
    model_checkpoint,
    restore_checkpoint,
)
from uhved_tf.training.optimizer import FusedOptimizer

log = logging.getLogger(__name__)

__all__ = ["DynamicLossScale", "TrainSettings", "Trainer", "default_callbacks", "is_chief"]


def is_chief(strategy) -> bool:
    """Whether this process writes the model directory: every process but the non-chief workers
    of a ``MultiWorkerMirroredStrategy`` (TensorFlow's ``should_checkpoint``)."""
    return bool(strategy.extended.should_checkpoint)


def num_workers(strategy) -> int:
    """The processes of a multi-worker run (1 without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, sum(len(spec.get(task, [])) for task in ("chief", "worker")))


class DynamicLossScale(tf.Module):
    """float16's dynamic loss scale (the algorithm of Keras' ``LossScaleOptimizer``): the loss is
    multiplied by ``scale`` before the gradients and they are divided by it after; a step whose
    gradients are not all finite is skipped and halves the scale (not below 1), ``growth_steps``
    finite steps in a row double it. Its variables are checkpointed with the optimiser's."""

    def __init__(self, initial: float = 2.0**15, growth_steps: int = 2000):
        super().__init__(name="loss_scale")
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA   # written from replica context, same everywhere
        self.scale = tf.Variable(float(initial), trainable=False, dtype=tf.float32, name="scale", aggregation=first)
        self.good_steps = tf.Variable(0, trainable=False, dtype=tf.int64, name="good_steps", aggregation=first)
        self.growth_steps = int(growth_steps)

    def update(self, finite):
        """After a step: ``finite`` whether its gradients were (the step was applied)."""
        good = tf.where(finite, self.good_steps + 1, tf.zeros_like(self.good_steps))
        grow = good >= self.growth_steps
        scale = tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale), tf.maximum(self.scale / 2.0, 1.0))
        return tf.group(self.scale.assign(scale), self.good_steps.assign(tf.where(grow, tf.zeros_like(good), good)))


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
        #: False on the non-chief workers of a multi-worker run: they write nothing to model_dir.
        self.chief = is_chief(self.strategy)
        self.workers = num_workers(self.strategy)
        log.info("training with %s on %d replica(s)%s", type(self.strategy).__name__,
                 self.strategy.num_replicas_in_sync,
                 f", {self.workers} workers, this one {'the chief' if self.chief else 'not the chief'}"
                 if self.workers > 1 else "")
        mixed16 = getattr(getattr(model, "dtype_policy", None), "name", "") == "mixed_float16"
        with self.strategy.scope():
            self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False, name="iteration",
                                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.optimizer = FusedOptimizer(settings.optimiser, settings.lr, model.trainable_variables)
            self.loss_scale = DynamicLossScale() if mixed16 else None
        state = dict(optimizer=self.optimizer, iteration=self.iteration)
        self.checkpoint = model_checkpoint(model, **state, **({"loss_scale": self.loss_scale} if mixed16 else {}))
        # (A checkpoint of a float16 run from before dynamic loss scaling has no loss scale.)
        self._checkpoint_without_loss_scale = model_checkpoint(model, **state) if mixed16 else self.checkpoint
        self.manager = self.checkpoint_manager() if self.chief else None
        self._best_manager = None
        self._step_fn = None
        self._agree_fn = None
        self._last_args = None

    # --- checkpoints ------------------------------------------------------------------------
    def checkpoint_manager(self, best: bool = False) -> tf.train.CheckpointManager:
        """The manager of the rolling checkpoints (or of the one best validation checkpoint)."""
        folder, name = self.model_dir.checkpoint_prefix(best)
        return tf.train.CheckpointManager(self.checkpoint, str(folder), checkpoint_name=name,
                                          max_to_keep=1 if best else self.settings.max_checkpoints)

    def restore(self, iteration: int | None = None) -> int:
        """Restore the checkpoint of ``iteration``, or (None) the newest one that restores, found
        from the checkpoint files, complete or not: TensorFlow's state file
        (``checkpoints/checkpoint``) can be missing or name a checkpoint a crash left torn. An older
        checkpoint is used only when every newer one fails, which one warning line says. Returns
        the iteration restored (0: there is no checkpoint); raises :class:`UnrestorableCheckpoint`
        (the newest's) when none restores."""
        # (Iterations with any file, complete or not: a torn newest one is said, not silently skipped.)
        candidates = [iteration] if iteration is not None else list(self.model_dir.checkpoint_files())[::-1]
        failed = []
        for n in candidates:
            path = self.model_dir.checkpoint_path(n)
            try:
                restore_checkpoint(self._checkpoint_for(path), path, n)
            except UnrestorableCheckpoint as exc:
                failed.append(exc)
                continue
            restored = int(self.iteration.numpy())
            if failed:
                log.warning("%s; resuming from the older checkpoint %s (iteration %d) instead",
                            "; ".join(e.describe() for e in failed), path, restored)
            log.info("resumed from %s (iteration %d)", path, restored)
            return restored
        if failed:
            raise failed[0]
        return 0

    def _checkpoint_for(self, path: str) -> tf.train.Checkpoint:
        if self.loss_scale is None:
            return self.checkpoint
        try:
            keys = tf.train.load_checkpoint(path).get_variable_to_shape_map()
        except RESTORE_ERRORS:
            return self.checkpoint     # (the restore says what is wrong)
        if any(k.startswith("loss_scale/") for k in keys):
            return self.checkpoint
        log.info("%s has no loss scale (written before dynamic loss scaling): starting at %g", path,
                 float(self.loss_scale.scale.numpy()))
        return self._checkpoint_without_loss_scale

    def save(self, best: bool = False) -> str | None:
        """Save a rolling (or the best) checkpoint of the current iteration; returns its path.

        Saving is collective under ``MultiWorkerMirroredStrategy``: every worker saves at the same
        point, but a non-chief worker writes into a temporary folder of its own, deleted at once
        (returns None), so only the chief's checkpoint reaches model_dir."""
        number = int(self.iteration.numpy())
        if not self.chief:
            scratch = tempfile.mkdtemp(prefix="uhved_tf-worker-")
            try:
                self.checkpoint.write(os.path.join(scratch, "ckpt"))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return None
        if best:
            if self._best_manager is None:
                self._best_manager = self.checkpoint_manager(best=True)
            return self._best_manager.save(checkpoint_number=number)
        path = self.manager.save(checkpoint_number=number)
        log.info("saved checkpoint %s", path)
        return path

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """The chief's ``flags`` on every worker of a multi-worker run (a collective: every worker
        calls it at the same point of the loop); elsewhere ``flags`` as they are."""
        if self.workers <= 1:
            return tuple(bool(f) for f in flags)
        if self._agree_fn is None:
            strategy = self.strategy

            @tf.function
            def agree(values):
                # The sum over every replica of the chief's values (others give 0): > 0 iff set.
                return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(values,)),
                                       axis=None)

            self._agree_fn = agree
        values = tf.constant([float(bool(f)) if self.chief else 0.0 for f in flags], tf.float32)
        return tuple(bool(v > 0) for v in self._agree_fn(values).numpy())

    def _subset_names(self, masks) -> list[str]:
        from uhved_tf.subset import Subset
        names = getattr(self.model, "modalities", None) or [f"m{i}" for i in range(masks.shape[-1])]
        return [Subset.from_mask(row, names).name for row in masks]

    # --- the step ---------------------------------------------------------------------------
    def _build_step(self):
        model, opt, s = self.model, self.optimizer, self.settings
        strategy = self.strategy
        loss_scale = self.loss_scale

        def replica_step(batch, seed):
            variables = model.trainable_variables
            with tf.GradientTape() as tape:
                outputs = model({"image": batch["image"], "modality_mask": batch["modality_mask"]},
                                training=True, seed=seed)
                total, terms = total_loss(outputs, batch, s.num_classes, s.loss_weights, model.losses,
                                          s.loss_forms)
                scaled = total / strategy.num_replicas_in_sync
                if loss_scale is not None:
                    scale = tf.identity(loss_scale.scale)
                    scaled = scaled * scale
            grads = tape.gradient(scaled, variables)
            if loss_scale is not None:
                grads = [None if g is None else g / scale for g in grads]
            ctx = tf.distribute.get_replica_context()
            if strategy.num_replicas_in_sync > 1:
                grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            if loss_scale is None:
                opt.apply_gradients(zip(grads, variables))
                return terms
            # After the all-reduce: every replica sees the same verdict and skips together.
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
            with tf.control_dependencies([opt.apply_gradients(zip(grads, variables), apply_if=finite)]):
                update = loss_scale.update(finite)
            with tf.control_dependencies([update]):
                return {**terms, "loss_scale": tf.identity(loss_scale.scale)}

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
        if self.chief:
            # This run writes checkpoints after start_iteration: files of earlier runs with those
            # numbers (unrestorable ones, a torn save, later ones of a starting_iter run) move aside.
            moved, folder = self.model_dir.set_aside_checkpoints_after(start_iteration)
            if moved:
                log.warning("moved the files of checkpoints after iteration %d, which this run writes again, to %s: "
                            "%s", start_iteration, folder, ", ".join(p.name for p in moved))
        if self._step_fn is None:
            self._step_fn = self._build_step()
        dist = self.strategy.experimental_distribute_dataset(dataset)
        last_scale = float(self.loss_scale.scale.numpy()) if self.loss_scale is not None else 0.0
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
                scale = out.pop("loss_scale", None)
                if scale is not None:
                    if float(scale) < last_scale:
                        log.debug("iteration %d: float16 gradients overflowed, step skipped; loss scale now %g",
                                  it, float(scale))
                    last_scale = float(scale)
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
