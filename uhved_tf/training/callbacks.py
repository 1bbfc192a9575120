"""What happens around the training step: logs, checkpoints, validation, each a :class:`Callback`.

:meth:`Trainer.fit <uhved_tf.training.trainer.Trainer.fit>` calls, in list order,
``on_train_begin`` once, ``on_step_end`` after every step (a True return stops the loop once
every callback has seen the step), ``on_train_end`` when the loop ends or is interrupted (Ctrl-C)
and ``close`` always, last, also after an error. :func:`default_callbacks` gives the usual list,
ordered so that the metrics CSV is written before the checkpoint of the same iteration (a run
killed in between is resumed from an earlier checkpoint and its CSV rows after that are dropped:
every iteration is logged exactly once).

On resume both CSVs lose the rows after the resumed iteration (they will be redone), and the
best validation score and the early-stopping history come back from ``validation.csv``.

Only the chief of a multi-worker run writes (``trainer.chief``): on the other workers the CSVs
and TensorBoard do nothing, checkpoints go to :meth:`Trainer.save
<uhved_tf.training.trainer.Trainer.save>`'s temporary folder and validation takes the chief's
verdict (:meth:`Trainer.agree <uhved_tf.training.trainer.Trainer.agree>`) without validating.
"""

from __future__ import annotations

import csv
import logging
import time

import tensorflow as tf

from uhved_tf.io.atomic import atomic_path
from uhved_tf.training.progress import Progress

log = logging.getLogger(__name__)

METRIC_FIELDS = ("iteration", "lr", "total", "dice", "ce", "recon", "kl", "weight_decay", "seconds", "subsets")


def _writes(trainer) -> bool:
    """Whether this process writes the model directory (not a non-chief worker; no trainer: yes)."""
    return getattr(trainer, "chief", True)


class Callback:
    def on_train_begin(self, trainer, start: int) -> None:
        pass

    def on_step_end(self, trainer, iteration: int, terms: dict, lr: float, subsets: list[str]) -> bool | None:
        """After the step that reached ``iteration``; a true return stops the training."""

    def on_train_end(self, trainer, iteration: int, interrupted: bool) -> None:
        pass

    def close(self) -> None:
        pass


class OnIteration(Callback):
    """``fn(iteration, losses)`` after every step."""

    def __init__(self, fn):
        self.fn = fn

    def on_step_end(self, trainer, iteration, terms, lr, subsets):
        self.fn(iteration, terms)


class MetricsCSV(Callback):
    """One row per iteration in ``metrics.csv`` (the source of truth; TensorBoard is a view of
    it), flushed at once: a killed run loses no logged iteration."""

    def __init__(self, model_dir):
        self.path = model_dir.metrics_csv
        self.file = None

    def on_train_begin(self, trainer, start):
        if not _writes(trainer):
            return
        new = not self.path.exists() or self.path.stat().st_size == 0
        if not new:
            _truncate_after(self.path, start)
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=METRIC_FIELDS)
        if new:
            self.writer.writeheader()
        self.t0 = time.perf_counter()

    def on_step_end(self, trainer, iteration, terms, lr, subsets):
        if self.file is None:
            return
        self.writer.writerow({"iteration": iteration, "lr": lr, "seconds": round(time.perf_counter() - self.t0, 3),
                              "subsets": ";".join(subsets), **{k: terms.get(k, "") for k in METRIC_FIELDS[2:-2]}})
        self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()


class TensorBoard(Callback):
    """Scalars every ``every_n`` iterations (and at the first and last), the graph of the step
    once (a run from 0), and the validation scores and images :class:`Validation` hands over."""

    def __init__(self, model_dir, every_n: int):
        self.folder = model_dir.train_logs
        self.every_n = every_n
        self.writer = None

    def on_train_begin(self, trainer, start):
        if _writes(trainer):
            self.writer = tf.summary.create_file_writer(str(self.folder))
        self.start = start

    def on_step_end(self, trainer, iteration, terms, lr, subsets):
        if self.writer is None:
            return
        if iteration == 1:   # for the Graphs tab
            with self.writer.as_default():
                tf.summary.graph(trainer.step_graph())
        if iteration % self.every_n == 0 or iteration in (self.start + 1, trainer.settings.max_iter):
            with self.writer.as_default(step=iteration):
                tf.summary.scalar("lr", lr)
                for k, v in terms.items():
                    tf.summary.scalar(f"loss/{k}", v)

    def validation(self, iteration: int, scores: dict, images: dict) -> None:
        if self.writer is None:
            return
        with self.writer.as_default(step=iteration):
            for k, v in scores.items():
                tf.summary.scalar(f"validation/{k}", v)
            for name, img in images.items():
                tf.summary.image(name, img[None], max_outputs=1)
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.flush()


class ProgressBar(Callback):
    def on_train_begin(self, trainer, start):
        self.bar = Progress(trainer.settings.max_iter, start=start, desc="train")

    def on_step_end(self, trainer, iteration, terms, lr, subsets):
        self.bar.update(1, f"loss {terms['total']:.4f}")

    def on_train_end(self, trainer, iteration, interrupted):
        self.bar.close()


class Checkpointing(Callback):
    """A rolling checkpoint every ``every_n`` iterations (0: none), at the end and on Ctrl-C,
    unless the iteration is saved already."""

    def __init__(self, every_n: int):
        self.every_n = every_n

    def on_train_begin(self, trainer, start):
        self.saved_at = start

    def on_step_end(self, trainer, iteration, terms, lr, subsets):
        if self.every_n > 0 and iteration % self.every_n == 0:
            trainer.save()
            self.saved_at = iteration

    def on_train_end(self, trainer, iteration, interrupted):
        if iteration == self.saved_at:
            return
        if interrupted:
            log.warning("interrupted at iteration %d: saving a checkpoint before exiting", iteration)
        trainer.save()
        self.saved_at = iteration


class Validation(Callback):
    """Every ``every_n`` iterations (<= 0 or no validator: never) ``validator(model)`` -> ``{"score":
    float, ..., "images": {name: HxWx3 uint8}}``: a row of ``validation.csv``, the best checkpoint
    (highest score) and ``early_stopping.update(score)``. Resuming keeps ``validation.csv`` up to
    the resumed iteration, also in a run that does not validate."""

    def __init__(self, model_dir, validator=None, every_n: int = 0, early_stopping=None, tensorboard=None):
        self.model_dir = model_dir
        self.path = model_dir.validation_csv
        self.validator, self.every_n = validator, every_n
        self.early_stopping, self.tensorboard = early_stopping, tensorboard
        self.best_score = None

    def on_train_begin(self, trainer, start):
        if not _writes(trainer):
            return
        scores = [float(r["score"]) for r in _truncate_after(self.path, start)] if self.path.exists() else []
        if scores:
            self.best_score = max(scores)
            if self.early_stopping is not None:
                self.early_stopping.scores = list(scores)

    def on_step_end(self, trainer, iteration, terms, lr, subsets):
        if self.validator is None or self.every_n <= 0 or iteration % self.every_n:
            return False
        if not _writes(trainer):   # the chief's verdict; saving is collective
            saved, stop = trainer.agree(False, False)
            if saved:
                trainer.save(best=True)
            return stop
        t0 = time.perf_counter()
        result = dict(self.validator(trainer.model))
        images = result.pop("images", {})
        score = result["score"]
        self._append(iteration, result)
        if self.tensorboard is not None:
            self.tensorboard.validation(iteration, result, images)
        saved = self.best_score is None or score > self.best_score
        stop = self.early_stopping is not None and self.early_stopping.update(score)
        saved, stop = trainer.agree(saved, stop)
        if saved:
            self.best_score = score
            trainer.save(best=True)
        log.info("validation at %d: mean Dice %.4f (%s) [%.1f s]", iteration, score,
                 "best so far, saved" if saved else f"best {self.best_score:.4f}", time.perf_counter() - t0)
        if stop:
            log.info("early stopping at iteration %d: no improvement of the validation score", iteration)
        return bool(stop)

    def _append(self, iteration: int, result: dict) -> None:
        new = not self.path.exists()
        keys = sorted(result)
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["iteration", *keys])
            w.writerow([iteration, *[result[k] for k in keys]])


def default_callbacks(settings, model_dir, *, progress: bool = True, validator=None, validation_every_n: int = 0,
                      early_stopping=None, on_iteration=None) -> list[Callback]:
    """The callbacks of ``uhved_tf train``, in order: metrics CSV, TensorBoard (none when
    ``tensorboard_every_n <= 0``), progress bar, ``on_iteration(iteration, losses)``, rolling
    checkpoints, validation."""
    tensorboard = TensorBoard(model_dir, settings.tensorboard_every_n) if settings.tensorboard_every_n > 0 else None
    return [MetricsCSV(model_dir), *([tensorboard] if tensorboard else []), *([ProgressBar()] if progress else []),
            *([OnIteration(on_iteration)] if on_iteration is not None else []), Checkpointing(settings.save_every_n),
            Validation(model_dir, validator, validation_every_n, early_stopping, tensorboard)]


def _truncate_after(path, iteration: int) -> list[dict]:
    """Drop the rows of CSV ``path`` logged after ``iteration``; returns the rows kept."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    keep = [r for r in rows if r.get("iteration", "").isdigit() and int(r["iteration"]) <= iteration]
    if len(keep) != len(rows):
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=reader.fieldnames)
            w.writeheader()
            w.writerows(keep)
    return keep
