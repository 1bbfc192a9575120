"""The application: wires config -> data -> model -> losses -> training -> inference -> evaluation.

Each step is a hook (``discover``, ``build_dataset``, ``build_model``, ``build_trainer``,
``predict_case``...) so that a variant overrides one hook, not a 500-line class. The model
directory is self-describing: ``config_resolved.ini``, ``metadata.json`` (modality order, label
map, network, window, versions), ``dataset_split.csv``, ``checkpoints/``, ``logs/`` and
``metrics.csv``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from uhved_tf import __version__
from uhved_tf.config import Config
from uhved_tf.data.cases import Case, PreprocessSettings, load_case
from uhved_tf.data import preprocessing as pp
from uhved_tf.errors import ConfigError, DataError, UhvedError
from uhved_tf.subset import Subset
from uhved_tf.io.atomic import atomic_write_text, temporary_sibling
from uhved_tf.io.discovery import InputSpec, find_subjects, load_or_create_split, subjects_in

log = logging.getLogger(__name__)

METADATA_NAME = "metadata.json"
# Settings that must not change between training and inference / resuming.
_MODEL_KEYS = ("network", "modalities", "label_values", "num_classes", "base_width", "levels")


class Application:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.model_dir = Path(cfg.system.model_dir)
        self._predictors: dict = {}
        self.pipeline_error: UhvedError | None = None   # the first user error of the input pipeline

    # --- data --------------------------------------------------------------------------------
    def preprocess_settings(self) -> PreprocessSettings:
        landmarks = None
        if self.cfg.network.normalisation:
            from uhved_tf.data.histogram import read_landmarks
            landmarks = read_landmarks(self.histogram_file(), self.cfg.modalities)
        return PreprocessSettings.from_config(self.cfg, landmarks=landmarks)

    def histogram_file(self) -> Path:
        return Path(self.cfg.network.histogram_ref_file)

    def input_specs(self) -> list[InputSpec]:
        specs = []
        for inp in self.cfg.inputs.values():
            specs.append(InputSpec(name=inp.name, path_to_search=tuple(inp.path_to_search),
                                   filename_contains=tuple(inp.filename_contains),
                                   filename_not_contains=tuple(inp.filename_not_contains),
                                   filename_removefromid=inp.filename_removefromid,
                                   csv_file=inp.csv_file))
        return specs

    def discover(self, need_label: bool):
        cfg = self.cfg
        label = cfg.label_section
        if cfg.training.allow_missing_modalities or not need_label:
            required = [label] if (need_label and label) else []
            optional = list(cfg.modalities) + ([label] if (label and not need_label) else [])
        else:
            required = list(cfg.modalities) + ([label] if need_label and label else [])
            optional = []
        specs = [s for s in self.input_specs() if s.name in set(required) | set(optional)]
        return find_subjects(specs, required=required, optional=optional)

    def split(self, subjects) -> dict[str, str]:
        t = self.cfg.training
        return load_or_create_split([s.id for s in subjects], Path(self.cfg.system.dataset_split_file),
                                    t.exclude_fraction_for_validation, t.exclude_fraction_for_inference,
                                    self.cfg.system.seed)

    def load_case(self, subject, settings: PreprocessSettings | None = None, with_label=True) -> Case:
        settings = settings or self.preprocess_settings()
        return load_case(subject.id, subject.files, settings, with_label=with_label,
                         label_key=self.cfg.label_section)

    def build_dataset(self, subjects, start_iteration: int = 0):
        from uhved_tf.data.sampler import make_training_dataset

        cfg = self.cfg
        settings = self.preprocess_settings()
        if cfg.network.window_sampling not in ("uniform", "balanced", "weighted"):
            raise ConfigError(f"[NETWORK] window_sampling = {cfg.network.window_sampling}: U-HVED trains on "
                              "windows; use uniform, balanced or weighted")

        def load(i):
            try:
                case = self.load_case(subjects[i], settings)
                if case.label is None:
                    raise DataError(f"subject {subjects[i].id}: no label file; training needs one")
                if case.data_mask.sum() == 0:
                    raise DataError(f"subject {subjects[i].id}: no modality available")
            except UhvedError as exc:
                # Raised inside tf.data, this reaches the training loop as a TensorFlow error
                # with a traceback; train() re-raises the original one-line error instead.
                if self.pipeline_error is None:
                    self.pipeline_error = exc
                raise
            return case.image, case.label.astype(np.int32), case.data_mask

        from uhved_tf.data.augmentation import rotation_ranges_from_config

        t = cfg.training
        flips = tuple(a for a in t.random_flipping_axes if a >= 0)
        angles = rotation_ranges_from_config(t.rotation_angle, t.rotation_angle_x, t.rotation_angle_y,
                                             t.rotation_angle_z)
        return make_training_dataset(
            load, len(subjects), num_modalities=len(cfg.modalities), window=cfg.spatial_window_size,
            batch_size=cfg.network.batch_size, sample_per_volume=cfg.training.sample_per_volume,
            queue_length=cfg.network.queue_length, seed=cfg.system.seed,
            policy=cfg.training.subset_policy, prior=cfg.training.subset_prior or None,
            flip_axes=flips, angles_deg=angles, scaling_percentage=t.scaling_percentage or None,
            isotropic_scaling=t.isotropic_scaling, window_sampling=cfg.network.window_sampling,
            num_classes=cfg.task.num_classes, start_iteration=start_iteration,
            num_parallel=cfg.system.num_threads)

    # --- model -------------------------------------------------------------------------------
    def build_model(self):
        from uhved_tf.model.registry import get_network_class

        import keras

        cfg = self.cfg
        cls = get_network_class(cfg.network.name)
        # Mixed precision: compute in float16/bfloat16, variables, norms' statistics, pooling on
        # CPU, the output heads and the losses in float32; float16 loss scaling in the trainer.
        policy = cfg.system.mixed_precision if cfg.system.mixed_precision != "none" else "float32"
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(policy)
        try:
            model = cls.from_settings(cfg.modalities, cfg.task.num_classes, cfg.network)
        finally:
            keras.config.set_dtype_policy(previous)
        window = cfg.spatial_window_size
        import tensorflow as tf
        model({"image": tf.zeros((1, *window, len(cfg.modalities))),
               "modality_mask": tf.ones((1, len(cfg.modalities)))}, training=False)
        return model

    def metadata(self) -> dict:
        import tensorflow as tf
        cfg = self.cfg
        return {
            "uhved_tf_version": __version__,
            "tensorflow_version": tf.__version__,
            "network": cfg.network.name,
            "modalities": list(cfg.modalities),
            "label_values": list(cfg.task.label_values),
            "num_classes": cfg.task.num_classes,
            "base_width": cfg.network.base_width,
            "levels": cfg.network.levels,
            "window": list(cfg.spatial_window_size),
            "preprocessing": {
                "axcodes": list(cfg.modality_inputs[0].axcodes),
                "pixdim": list(cfg.modality_inputs[0].pixdim),
                "whitening": cfg.network.whitening,
                "normalise_foreground_only": cfg.network.normalise_foreground_only,
                "foreground_type": cfg.network.foreground_type,
                "normalisation": cfg.network.normalisation,
                "histogram_ref_file": str(self.histogram_file()) if cfg.network.normalisation else None,
                "volume_padding_size": list(cfg.network.volume_padding_size),
            },
        }

    def check_metadata(self) -> dict | None:
        path = self.model_dir / METADATA_NAME
        if not path.exists():
            return None
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable model metadata ({exc})") from None
        now = self.metadata()
        for key in _MODEL_KEYS:
            if saved.get(key) != now.get(key):
                raise ConfigError(
                    f"{path}: the model in {self.model_dir} was trained with {key} = {saved.get(key)!r} but the "
                    f"config says {now.get(key)!r}; use the training config or another model_dir")
        return saved

    # --- training ----------------------------------------------------------------------------
    def train(self, resume: bool = False, overwrite: bool = False, progress: bool = True,
              on_iteration=None) -> dict:
        """Train to ``max_iter`` (see the CLI's ``train``); ``on_iteration(iteration, losses)`` is
        called after every step (benchmarks/soak.py samples memory with it)."""
        import tensorflow as tf
        from uhved_tf.losses import LossForms, LossWeights
        from uhved_tf.training.trainer import TrainSettings, Trainer, latest_iteration

        cfg = self.cfg
        latest = latest_iteration(self.model_dir) if self.model_dir.exists() else None
        start = cfg.training.starting_iter
        if start == -1 or resume:
            start = latest or 0
        if latest is not None and start == 0 and not resume:
            if not overwrite:
                raise UhvedError(
                    f"{self.model_dir} already has checkpoints up to iteration {latest}; pass --resume to continue "
                    f"(or set [TRAINING] starting_iter = -1), or --overwrite to start again and delete them")
            import shutil
            from uhved_tf.training.checkpoint import BEST_DIR, ROLLING_DIR
            for sub in (ROLLING_DIR, BEST_DIR, "logs"):
                shutil.rmtree(self.model_dir / sub, ignore_errors=True)
            for f in ("metrics.csv", "validation.csv", METADATA_NAME):
                (self.model_dir / f).unlink(missing_ok=True)
            latest = None
        if start > 0:
            self.check_metadata()
        if start > 0 and latest is None:
            raise UhvedError(f"[TRAINING] starting_iter = {start} but {self.model_dir} has no checkpoint")
        if start >= cfg.training.max_iter:
            log.info("already at iteration %d >= max_iter %d: nothing to train", start, cfg.training.max_iter)
            return {}

        subjects = self.discover(need_label=True)
        split = self.split(subjects)
        train_ids = set(subjects_in(split, "Training"))
        train_subjects = [s for s in subjects if s.id in train_ids]
        if not train_subjects:
            raise DataError(f"no training subjects in {cfg.system.dataset_split_file}")
        log.info("%d training subjects, %d validation, %d inference", len(train_subjects),
                 len(subjects_in(split, "Validation")), len(subjects_in(split, "Inference")))
        self.model_dir.mkdir(parents=True, exist_ok=True)
        cfg.write_resolved(self.model_dir)
        if cfg.network.normalisation and not self.histogram_file().exists():
            from uhved_tf.data.histogram import train_landmarks_for_subjects
            train_landmarks_for_subjects(self, train_subjects)
        # Atomically: resuming reads it first, and a run killed while writing it must stay resumable.
        _write_text_atomically(self.model_dir / METADATA_NAME, json.dumps(self.metadata(), indent=2))

        import keras
        # Initial weights from [SYSTEM] seed (everything later uses explicit stateless seeds).
        keras.utils.set_random_seed(cfg.system.seed)
        strategy = make_strategy(cfg.system.distribution_strategy)
        with strategy.scope():
            model = self.build_model()
        trainer = Trainer(model, TrainSettings(
            max_iter=cfg.training.max_iter, lr=cfg.training.lr, lr_decay_factor=cfg.training.lr_decay_factor,
            lr_decay_every=cfg.training.lr_decay_every, save_every_n=cfg.training.save_every_n,
            max_checkpoints=cfg.training.max_checkpoints, tensorboard_every_n=cfg.training.tensorboard_every_n,
            optimiser=cfg.training.optimiser, seed=cfg.system.seed, num_classes=cfg.task.num_classes,
            loss_weights=LossWeights.from_training_settings(cfg.training),
            loss_forms=LossForms.from_settings(cfg.training, cfg.network)), self.model_dir, strategy)
        if start > 0:
            try:
                start = trainer.restore(start if start != latest else None)
            except (ValueError, AssertionError, tf.errors.OpError) as exc:
                # Checksums are verified on read: a damaged file (or another network) lands here.
                from uhved_tf.training.trainer import checkpoint_dir
                ckdir = checkpoint_dir(self.model_dir)
                have = sorted(int(p.name[len("ckpt-"):-len(".index")]) for p in ckdir.glob("ckpt-*.index"))
                reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise UhvedError(
                    f"{ckdir / f'ckpt-{start}'}: cannot restore the checkpoint, it is damaged or does not fit "
                    f"this network ({reason}); checkpoints present: {', '.join(map(str, have)) or 'none'}; "
                    f"resume from another with [TRAINING] starting_iter = N, or start again with --overwrite"
                ) from None
        dataset = self.build_dataset(train_subjects, start_iteration=start)
        validator, early = self.build_validator(subjects, split)
        t0 = time.perf_counter()
        try:
            terms = trainer.fit(dataset, start_iteration=start, progress=progress, validator=validator,
                                validation_every_n=cfg.training.validation_every_n, early_stopping=early,
                                on_iteration=on_iteration)
        except tf.errors.OpError:
            if self.pipeline_error is not None:   # a bad training file, read by the tf.data pipeline
                raise self.pipeline_error from None
            raise
        log.info("trained iterations %d..%d in %.1f s", start, cfg.training.max_iter, time.perf_counter() - t0)
        return terms

    def build_validator(self, subjects, split):
        """The validation hook (None when ``validation_every_n <= 0`` or there is no validation split)."""
        from uhved_tf.training.validation import EarlyStopping, Validator

        t = self.cfg.training
        if t.validation_every_n <= 0:
            return None, None
        ids = set(subjects_in(split, "Validation"))
        chosen = [s for s in subjects if s.id in ids]
        if not chosen:
            log.warning("[TRAINING] validation_every_n = %d but the split has no Validation subjects: "
                        "not validating", t.validation_every_n)
            return None, None
        if t.early_stopping_mode not in EarlyStopping.SUPPORTED:
            raise ConfigError(f"[TRAINING] early_stopping_mode = {t.early_stopping_mode}: supported are "
                              f"{', '.join(EarlyStopping.SUPPORTED)}")
        subsets = Subset.parse(t.validation_subsets, self.cfg.modalities)
        log.info("validating on %d subjects every %d iterations, subsets %s", len(chosen), t.validation_every_n,
                 ", ".join(s.name for s in subsets))
        return Validator(self, chosen, subsets), EarlyStopping(t.patience, t.early_stopping_mode)

    # --- inference ---------------------------------------------------------------------------
    def load_trained_model(self):
        import tensorflow as tf

        if self.check_metadata() is None:
            raise UhvedError(f"{self.model_dir} has no trained model ({METADATA_NAME} missing); run "
                             f"`uhved_tf train -c CONFIG` first or point [SYSTEM] model_dir at a model")
        model = self.build_model()
        from uhved_tf.training.checkpoint import find_checkpoint, restore_model
        which = self.checkpoint_choice()
        try:
            path, iteration = find_checkpoint(self.model_dir, which)
        except LookupError as exc:
            if self.cfg.inference.inference_iter >= 0:
                raise UhvedError(f"[INFERENCE] inference_iter = {which}: {exc}; set inference_iter = -1 for the "
                                 "latest") from None
            raise UhvedError(f"[INFERENCE] checkpoint = {which}: {exc}") from None
        try:
            restore_model(model, path)
        except (ValueError, AssertionError, tf.errors.OpError) as exc:
            raise UhvedError(f"{path}: checkpoint is damaged or does not fit this network "
                             f"({str(exc).splitlines()[0]})") from None
        self.loaded_checkpoint = {"checkpoint": which, "iteration": iteration, "path": path}
        log.info("loaded %s (checkpoint = %s, iteration %d)", path, which, iteration)
        return model

    def checkpoint_choice(self) -> str:
        """``[INFERENCE] checkpoint`` with NiftyNet's ``inference_iter`` (N >= 0) as another way to say N."""
        inf = self.cfg.inference
        if inf.inference_iter >= 0:
            if inf.checkpoint not in ("latest", str(inf.inference_iter)):
                raise ConfigError(f"[INFERENCE] inference_iter = {inf.inference_iter} and checkpoint = "
                                  f"{inf.checkpoint} disagree; set only one of them")
            return str(inf.inference_iter)
        return inf.checkpoint

    def inference_window(self):
        return tuple(self.cfg.inference.spatial_window_size or self.cfg.spatial_window_size)

    def predict_case(self, model, case: Case, subsets, progress=None, samples: int | None = None) -> list[dict]:
        from uhved_tf.inference.predictor import WindowPredictor, predict_volume

        masks = []
        for subset in subsets:
            m = np.array([1.0 if mod in subset else 0.0 for mod in self.cfg.modalities], np.float32)
            m = m * case.data_mask   # a missing file is a missing modality
            if m.sum() == 0:
                raise DataError(f"subject {case.id}: none of {list(subset)} is available "
                                f"(files: {sorted(k for k in case.files if case.files[k])})")
            masks.append(m)
        inf = self.cfg.inference
        samples = inf.samples if samples is None else samples
        masks = np.stack(masks)
        key = (id(model), masks.tobytes(), samples)
        if key not in self._predictors:
            self._predictors[key] = WindowPredictor(model, masks, samples=samples, seed=self.cfg.system.seed,
                                                    tta=inf.tta)
        return predict_volume(self._predictors[key], case.image, self.inference_window(), overlap=inf.window_overlap,
                              blend_mode=inf.blend_mode, border=tuple(inf.border),
                              batch_size=max(1, self.cfg.network.batch_size), progress=progress)

    def output_arrays(self, case: Case, result: dict) -> dict:
        """The outputs of one case and subset on the case's working grid (crop undone), keyed by
        file-name suffix: ``{"seg": (array, dtype, interp_order), "T1_synth": ..., "uncertainty": ...,
        "prob": ...}`` (uncertainty and probabilities when the config asks for them)."""
        label_values = self.cfg.task.label_values
        classes = np.argmax(result["seg_prob"], axis=-1)
        out = {"seg": (pp.unmap_labels(pp.uncrop(classes.astype(np.int32), case.box, fill=0), label_values),
                       np.uint8, 0)}
        if "synth" in result:
            for i, m in enumerate(self.cfg.modalities):
                out[f"{m}_synth"] = (pp.uncrop(result["synth"][..., i].astype(np.float32), case.box, fill=0.0),
                                     np.float32, 1)
        if self.cfg.inference.save_uncertainty:
            out["uncertainty"] = (pp.uncrop(result["uncertainty"].astype(np.float32), case.box), np.float32, 1)
        if self.cfg.inference.output_prob or self.cfg.task.output_prob:
            out["prob"] = (pp.uncrop(result["seg_prob"].astype(np.float32), case.box), np.float32, 1)
        return out

    def write_outputs(self, case: Case, result: dict, out_dir: Path, overwrite=False) -> list[Path]:
        """``<id>_seg.nii.gz``, ``<id>_<modality>_synth.nii.gz``, ... in the input's geometry; refuses
        (before writing anything) when one exists, unless ``overwrite``."""
        from uhved_tf.io.nifti import save_like

        targets = [(out_dir / f"{case.id}_{suffix}.nii.gz", *spec)
                   for suffix, spec in self.output_arrays(case, result).items()]
        if not overwrite:
            existing = [str(p) for p, *_ in targets if p.exists()]
            if existing:
                raise DataError(f"{existing[0]} exists (and {len(existing) - 1} more outputs); "
                                f"pass --overwrite to replace them or choose another output folder")
        # All or nothing: every output is written under a hidden temporary name first and moved
        # into place only when all of them are written, so a full disk or an unwritable folder
        # leaves neither a partial set of outputs nor a damaged earlier result.
        staged, written, path = [], [], out_dir
        try:
            for path, arr, dtype, order in targets:
                tmp = temporary_sibling(path, "partial")
                staged.append((save_like(arr, case.geometry, tmp, dtype=dtype, interp_order=order), path))
            for tmp, path in staged:
                os.replace(tmp, path)
                written.append(path)
        except OSError as exc:
            raise DataError(f"{path}: cannot write the outputs of subject {case.id} ({exc.strerror or exc}); "
                            f"check the free space and permissions of {path.parent}") from None
        finally:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
        return written

    def run_inference(self, subjects, subsets, out_dir: Path, overwrite=False, progress=True,
                      keep_going=True) -> dict:
        """Segment ``subjects``; with ``keep_going`` a broken case is reported and skipped
        (returned in the dict of failures) instead of stopping the run."""
        from uhved_tf.training.progress import Progress

        model = self.load_trained_model()
        settings = self.preprocess_settings()
        out_dir = Path(out_dir)
        failed = {}
        bar = Progress(len(subjects), desc="inference", enabled=progress)
        for subject in subjects:
            t0 = time.perf_counter()
            try:
                case = self.load_case(subject, settings, with_label=False)
                results = self.predict_case(model, case, subsets,
                                            progress=_window_progress(case.id) if progress else None)
                for subset, res in zip(subsets, results):
                    subset = Subset(subset, self.cfg.modalities)
                    target = out_dir if len(subsets) == 1 else out_dir / subset.name
                    self.write_outputs(case, res, target, overwrite=overwrite)
                    vols = _volumes(res, case, self.cfg.task.label_values)
                    log.info("%s [%s] %.1f s: whole %.1f mL, core %.1f mL, enhancing %.1f mL", case.id,
                             subset.name, time.perf_counter() - t0, vols["whole"], vols["core"],
                             vols["enhancing"])
            except UhvedError as exc:
                if not keep_going:
                    raise
                failed[subject.id] = str(exc)
                log.error("%s: %s", subject.id, exc)
            bar.update(1, subject.id)
        bar.close()
        return failed

    # --- evaluation --------------------------------------------------------------------------
    def models_for_subsets(self, subsets) -> list[tuple["Application", list]]:
        """``[(application, its subsets)]``: this model for every subset, or, for a Single config
        whose model_dir holds one network per subset (``train --all-subsets``), the network in
        ``<model_dir>/<S>/`` for subset S."""
        from uhved_tf.training.all_subsets import check_subset_model, holds_per_subset_models, subset_config
        if not holds_per_subset_models(self.cfg):
            return [(self, list(subsets))]
        for s in subsets:
            check_subset_model(self.cfg, s)
        return [(Application(subset_config(self.cfg, s)), [s]) for s in subsets]

    def evaluate(self, subsets, phase: str = "Inference", out_dir: Path | None = None, progress=True,
                 figure: bool = False):
        from uhved_tf.evaluation.report import evaluate_subjects
        return evaluate_subjects(self, subsets, phase=phase, out_dir=out_dir, progress=progress, figure=figure)


def _write_text_atomically(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _window_progress(case_id):
    """A progress bar over the sliding-window batches of one case (created on the first call,
    when the number of windows is known)."""
    from uhved_tf.training.progress import Progress
    state = {}

    def update(done, total):
        if "bar" not in state:
            state["bar"] = Progress(total, desc=f"  {case_id} windows")
        bar = state["bar"]
        bar.update(done - bar.count)
        if done >= total:
            bar.close()
    return update


def _volumes(res, case, label_values):
    from uhved_tf.evaluation.metrics import volumes_ml
    classes = np.argmax(res["seg_prob"], axis=-1)
    return volumes_ml(pp.unmap_labels(classes, label_values, dtype=np.int32), case.spacing)


def make_strategy(name: str):
    import tensorflow as tf
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()
