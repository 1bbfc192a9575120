"""The training loop: a custom ``tf.function`` step under a ``tf.distribute`` strategy.

Keras 3 ``model.fit`` fails under ``MultiWorkerMirroredStrategy``, so the step is ours: forward,
the weighted loss of :mod:`uhved_tf.losses`, gradients (loss-scaled under ``mixed_float16``),
fused optimiser updates. One traced function is reused for every step (the per-step seed and
learning rate are tensors/variables, never Python values that would retrace).

Around it: the learning-rate schedule (``lr / lr_decay_factor ** (iteration // lr_decay_every)``),
checkpoints with ``tf.train.CheckpointManager`` every ``save_every_n`` (and at the end, and on
Ctrl-C), resume from the latest with optimiser state and iteration, TensorBoard scalars, a
metrics CSV (the source of truth; TensorBoard is a view of it) and a progress bar.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from uhved_tf.io.atomic import atomic_path
from uhved_tf.losses import LossForms, LossWeights, total_loss
from uhved_tf.training.checkpoint import BEST_DIR, ROLLING_DIR, model_checkpoint
from uhved_tf.training.optimizer import FusedOptimizer
from uhved_tf.training.progress import Progress

log = logging.getLogger(__name__)

METRIC_FIELDS = ("iteration", "lr", "total", "dice", "ce", "recon", "kl", "weight_decay", "seconds", "subsets")


@dataclass
class TrainSettings:
    max_iter: int
    lr: float
    lr_decay_factor: float = 4.0
    lr_decay_every: int = 10000
    save_every_n: int = 500
    max_checkpoints: int = 100
    tensorboard_every_n: int = 20
    optimiser: str = "adam"
    seed: int = 0
    num_classes: int = 4
    loss_weights: LossWeights = LossWeights()
    loss_forms: LossForms = LossForms()

    def lr_at(self, iteration: int) -> float:
        return self.lr / self.lr_decay_factor ** (iteration // max(1, self.lr_decay_every))


def checkpoint_dir(model_dir) -> Path:
    return Path(model_dir) / ROLLING_DIR


def latest_iteration(model_dir) -> int | None:
    latest = tf.train.latest_checkpoint(str(checkpoint_dir(model_dir)))
    return int(latest.rsplit("-", 1)[1]) if latest else None


class Trainer:
    def __init__(self, model, settings: TrainSettings, model_dir, strategy=None):
        self.model = model
        self.settings = settings
        self.model_dir = Path(model_dir)
        self.strategy = strategy or tf.distribute.get_strategy()
        log.info("training with %s on %d replica(s)", type(self.strategy).__name__,
                 self.strategy.num_replicas_in_sync)
        with self.strategy.scope():
            self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False, name="iteration",
                                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.optimizer = FusedOptimizer(settings.optimiser, settings.lr, model.trainable_variables)
        self.checkpoint = model_checkpoint(model, optimizer=self.optimizer, iteration=self.iteration)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(checkpoint_dir(self.model_dir)),
                                                  max_to_keep=settings.max_checkpoints, checkpoint_name="ckpt")
        # The best validation checkpoint, kept apart from the rolling ones.
        self.best_manager = tf.train.CheckpointManager(self.checkpoint, str(self.model_dir / BEST_DIR),
                                                       max_to_keep=1, checkpoint_name="best")
        self._step_fn = None

    # --- checkpoints ------------------------------------------------------------------------
    def restore(self, iteration: int | None = None) -> int:
        """Restore the latest checkpoint (or the one of ``iteration``); returns the iteration."""
        path = self.manager.latest_checkpoint if iteration is None else str(
            checkpoint_dir(self.model_dir) / f"ckpt-{iteration}")
        if path is None:
            return 0
        self.checkpoint.restore(path).assert_existing_objects_matched()
        log.info("resumed from %s (iteration %d)", path, int(self.iteration.numpy()))
        return int(self.iteration.numpy())

    def save(self) -> str:
        path = self.manager.save(checkpoint_number=int(self.iteration.numpy()))
        log.info("saved checkpoint %s", path)
        return path

    best_score = None

    def _subset_names(self, masks) -> list[str]:
        from uhved_tf.subset import Subset
        names = getattr(self.model, "modalities", None) or [f"m{i}" for i in range(masks.shape[-1])]
        return [Subset.from_mask(row, names).name for row in masks]

    def _validate(self, validator, it, writer, early_stopping) -> bool:
        return _validation_step(self, validator, it, writer, early_stopping)

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

    # --- the loop ---------------------------------------------------------------------------
    def fit(self, dataset, start_iteration: int = 0, progress: bool = True, on_iteration=None,
            validator=None, validation_every_n: int = 0, early_stopping=None) -> dict:
        """Train from ``start_iteration`` to ``max_iter``. With a ``validator`` (model -> dict with
        ``score``), validate every ``validation_every_n`` iterations, keep the best checkpoint and
        stop early when ``early_stopping.update(score)`` says so."""
        s = self.settings
        self.iteration.assign(start_iteration)
        if self._step_fn is None:
            self._step_fn = self._build_step()
        dist = self.strategy.experimental_distribute_dataset(dataset)
        writer = tf.summary.create_file_writer(str(self.model_dir / "logs" / "train"))
        csv_path = self.model_dir / "metrics.csv"
        new_csv = not csv_path.exists()
        if not new_csv:
            _truncate_csv_after(csv_path, start_iteration)
        val_csv = self.model_dir / "validation.csv"
        if val_csv.exists():
            # Resuming: forget validations after the checkpoint, restore the best score and the
            # early-stopping history from those before it.
            scores = _truncate_csv_after(val_csv, start_iteration, field="score")
            if scores:
                self.best_score = max(scores)
                if early_stopping is not None:
                    early_stopping.scores = list(scores)
        bar = Progress(s.max_iter, start=start_iteration, desc="train", enabled=progress)
        last_terms: dict = {}
        it = start_iteration
        saved_at = None
        t_start = time.perf_counter()
        with open(csv_path, "a", newline="") as fcsv:
            out = csv.DictWriter(fcsv, fieldnames=METRIC_FIELDS)
            if new_csv:
                out.writeheader()
            try:
                for batch in dist:
                    if it >= s.max_iter:
                        break
                    lr = s.lr_at(it)
                    self.optimizer.learning_rate.assign(lr)
                    seed = tf.constant([s.seed, it], tf.int64)
                    terms = self._step_fn(batch, seed)
                    if it == 0:   # the traced step's graph (cached: no retrace) for TensorBoard's Graphs tab
                        with writer.as_default():
                            tf.summary.graph(self._step_fn.get_concrete_function(batch, seed).graph)
                    it += 1
                    self.iteration.assign(it)
                    subsets = ";".join(self._subset_names(terms.pop("modality_mask").numpy()))
                    last_terms = {k: float(v) for k, v in terms.items()}
                    if not all(math.isfinite(v) for v in last_terms.values()):
                        raise FloatingPointError(f"non-finite loss at iteration {it}: {last_terms}")
                    row = {"iteration": it, "lr": lr, "seconds": round(time.perf_counter() - t_start, 3),
                           "subsets": subsets, **{k: last_terms.get(k, "") for k in METRIC_FIELDS[2:-2]}}
                    out.writerow(row)
                    fcsv.flush()   # one short line: a killed run loses no logged iteration
                    if it % max(1, s.tensorboard_every_n) == 0 or it == s.max_iter or it == start_iteration + 1:
                        with writer.as_default(step=it):
                            tf.summary.scalar("lr", lr)
                            for k, v in last_terms.items():
                                tf.summary.scalar(f"loss/{k}", v)
                    bar.update(1, f"loss {last_terms['total']:.4f}")
                    if on_iteration is not None:
                        on_iteration(it, last_terms)
                    if s.save_every_n > 0 and it % s.save_every_n == 0:
                        self.save()
                        saved_at = it
                    if validator is not None and validation_every_n > 0 and it % validation_every_n == 0:
                        stop = self._validate(validator, it, writer, early_stopping)
                        if stop:
                            log.info("early stopping at iteration %d: no improvement of the validation score",
                                     it)
                            break
            except KeyboardInterrupt:
                bar.close()
                if saved_at != it and it > start_iteration:
                    log.warning("interrupted at iteration %d: saving a checkpoint before exiting", it)
                    self.save()
                raise
            finally:
                writer.flush()
        bar.close()
        if saved_at != it and it > start_iteration:
            self.save()
        return last_terms


def _validation_step(trainer, validator, it, writer, early_stopping) -> bool:
    t0 = time.perf_counter()
    result = validator(trainer.model)
    images = result.pop("images", {})
    score = result["score"]
    path = trainer.model_dir / "validation.csv"
    new = not path.exists()
    keys = sorted(result)
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["iteration", *keys])
        w.writerow([it, *[result[k] for k in keys]])
    with writer.as_default(step=it):
        for k, v in result.items():
            tf.summary.scalar(f"validation/{k}", v)
        for name, img in images.items():
            tf.summary.image(name, img[None], max_outputs=1)
    writer.flush()
    best = trainer.best_score
    if best is None or score > best:
        trainer.best_score = score
        trainer.best_manager.save(checkpoint_number=it)
        log.info("validation at %d: mean Dice %.4f (best so far, saved) [%.1f s]", it, score,
                 time.perf_counter() - t0)
    else:
        log.info("validation at %d: mean Dice %.4f (best %.4f) [%.1f s]", it, score, best, time.perf_counter() - t0)
    return bool(early_stopping is not None and early_stopping.update(score))


def _truncate_csv_after(path: Path, iteration: int, field: str | None = None) -> list[float]:
    """On resume, drop rows logged after the checkpoint we resume from (they will be redone).
    Returns the values of column ``field`` in the rows kept."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fieldnames = reader.fieldnames or list(METRIC_FIELDS)
        rows = list(reader)
    keep = [r for r in rows if r.get("iteration", "").isdigit() and int(r["iteration"]) <= iteration]
    if len(keep) != len(rows):
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fieldnames)
            w.writeheader()
            w.writerows(keep)
    return [float(r[field]) for r in keep] if field else []
