"""The application: wires config -> data -> model -> losses -> training -> inference -> evaluation.

It is the only module that sees the whole config. Each step is a method that builds one part
(``discover``, ``build_dataset``, ``build_model``, ``build_validator``, ``predictor``...) and hands
the modules below it what they need (settings, a :class:`~uhved_tf.model_dir.ModelDir`, a
predictor), never the application itself; a variant overrides one method. The model directory's
layout is :class:`~uhved_tf.model_dir.ModelDir`'s.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from uhved_tf import IMPORTED_AT, __version__
from uhved_tf.config import Config
from uhved_tf.data.cases import Case, PreprocessSettings, load_case
from uhved_tf.convention import Convention
from uhved_tf.convention import from_config as convention_from_config
from uhved_tf.errors import ConfigError, DataError, UhvedError
from uhved_tf.inference.case import CasePredictor, Outputs
from uhved_tf.io.atomic import check_folder
from uhved_tf.io.discovery import InputSpec, find_subjects, load_or_create_split, subjects_in
from uhved_tf.io.layouts import LAYOUTS, find_cases, nnunet_convention, output_name, prediction_id, read_dataset_json
from uhved_tf.model_dir import ModelDir
from uhved_tf.subset import Subset

log = logging.getLogger(__name__)


class Application:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.model_dir = ModelDir.from_config(cfg)
        self.convention, file_ending = self._convention()
        self.outputs = Outputs.from_config(cfg, seg_name=self.seg_name_pattern(file_ending))
        self.test_ids: frozenset[str] = frozenset()     # unlabelled imagesTs cases of an msd / nnunet dataset
        self.incomplete: dict[str, list[str]] = {}      # subjects discover left out -> their missing sections
        self.pipeline_error: UhvedError | None = None   # the first user error of the input pipeline
        self.loaded_checkpoint: dict | None = None      # which weights load_trained_model restored

    def _convention(self):
        """``(convention, file ending)``: a preset's or custom's; nnunet's from the dataset's
        dataset.json (or, when the dataset is not here, from the model's metadata)."""
        cfg = self.cfg
        if cfg.dataset.convention != "nnunet":
            return convention_from_config(cfg), ".nii.gz"
        try:
            data, where = read_dataset_json(cfg.dataset.path)
        except DataError:
            saved = self.model_dir.read_metadata() if self.model_dir.metadata.is_file() else {}
            if "convention" not in saved:
                raise
            return Convention.from_metadata(saved["convention"]), ".nii.gz"
        convention = nnunet_convention(data, str(where))
        if convention.label_values != tuple(cfg.task.label_values):
            values = ", ".join(map(str, convention.label_values))
            raise ConfigError(f"{where} has the label values {values} but [MULTIMODAL] label_values = "
                              f"{', '.join(map(str, cfg.task.label_values))}; set label_values = {values} and "
                              f"num_classes = {len(convention.label_values)}")
        return convention, str(data.get("file_ending", ".nii.gz"))

    def seg_name_pattern(self, file_ending: str = ".nii.gz") -> str:
        """The segmentation's file name, ``{id}`` to fill: the dataset's own naming."""
        layout = self.cfg.dataset.convention if self.cfg.dataset.convention in LAYOUTS else "brats2018"
        return output_name(layout, "ID", file_ending).replace("ID", "{id}", 1)

    # --- data --------------------------------------------------------------------------------
    def preprocess_settings(self) -> PreprocessSettings:
        landmarks = None
        if self.cfg.network.normalisation:
            from uhved_tf.data.histogram import read_landmarks
            landmarks = read_landmarks(self.model_dir.histogram, self.cfg.modalities)
        return PreprocessSettings.from_config(self.cfg, landmarks=landmarks)

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
        """The subjects with every file this command needs; those found without one are left out
        with a warning and kept in ``self.incomplete`` (id -> sections), for :meth:`split`'s message."""
        cfg = self.cfg
        label = cfg.label_section
        self.incomplete = {}
        if cfg.training.allow_missing_modalities or not need_label:
            required = [label] if (need_label and label) else []
            optional = list(cfg.modalities) + ([label] if (label and not need_label) else [])
        else:
            required = list(cfg.modalities) + ([label] if need_label and label else [])
            optional = []
        if cfg.dataset.path:
            return self._dataset_subjects(required, optional)
        specs = [s for s in self.input_specs() if s.name in set(required) | set(optional)]
        return find_subjects(specs, required=required, optional=optional, incomplete=self.incomplete)

    def _dataset_subjects(self, required, optional):
        """The subjects of ``[DATASET] path`` (its convention's layout) with every required section."""
        d = self.cfg.dataset
        cases = find_cases(d.convention, d.path, self.cfg.modalities, self.cfg.label_section, d.channels)
        self.test_ids = cases.test_ids
        subjects = [s for s in cases.subjects if all(n in s.files for n in required)
                    and any(m in s.files for m in self.cfg.modalities)]
        dropped = [s.id for s in cases.subjects if s not in subjects and s.id not in cases.test_ids]
        self.incomplete = {s.id: [n for n in required if n not in s.files] or list(self.cfg.modalities)
                           for s in cases.subjects if s.id in dropped}
        if dropped:   # (the unlabelled imagesTs/ cases are expected to lack the label)
            log.warning("%d of the %d cases of %s lack a file this command needs (%s) and are not used: %s",
                        len(dropped), len(cases.subjects), d.path, ", ".join(required), ", ".join(dropped[:5]))
        if not subjects:
            raise DataError(f"[DATASET] path {d.path}: no case has every file this command needs "
                            f"({', '.join(required or self.cfg.modalities)})")
        return subjects

    def split(self, subjects) -> dict[str, str]:
        """``{id: phase}``: the model directory's split file (drawn when missing; the fold's with
        ``[DATASET] fold``); a dataset's unlabelled test cases (imagesTs) are always Inference."""
        t, md = self.cfg.training, self.model_dir
        check_folder(md.root, "[SYSTEM] model_dir")
        found = {s.id for s in subjects}
        incomplete = {i: v for i, v in self.incomplete.items() if i not in found}
        trained = md.has_model() or (md.root.is_dir() and any(md.root.glob(f"*/{md.METADATA}")))  # (--all-subsets)
        split = load_or_create_split([s.id for s in subjects if s.id not in self.test_ids], md.split,
                                     t.exclude_fraction_for_validation, t.exclude_fraction_for_inference,
                                     self.cfg.system.seed, fold=self.cfg.dataset.fold, incomplete=incomplete,
                                     trained_model=md.root if trained else None)
        return {**split, **{s.id: "Inference" for s in subjects if s.id in self.test_ids}}

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
        # Built by one eager call on the smallest window the network takes (2^(levels-1) voxels
        # per axis): the weights do not depend on the window, and building at the training window
        # (config/uhved.ini's 112^3) took 3.8 s of every start-up, at 8^3 1.45 s.
        import tensorflow as tf
        smallest = (2 ** (cfg.network.levels - 1),) * 3
        model({"image": tf.zeros((1, *smallest, len(cfg.modalities))),
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
            "convention": self.convention.to_metadata(),
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
                "histogram_ref_file": str(self.model_dir.histogram) if cfg.network.normalisation else None,
                "volume_padding_size": list(cfg.network.volume_padding_size),
            },
        }

    def check_metadata(self) -> dict | None:
        """The model directory's metadata, checked against this config (None: no model yet)."""
        return self.model_dir.check_metadata(self.metadata())

    # --- training ----------------------------------------------------------------------------
    def start_iteration(self, resume: bool, overwrite: bool) -> int | None:
        """The iteration training starts from (None: nothing left to train); with ``overwrite``
        an existing training is forgotten first. Refuses to continue or clobber silently.

        ``resume`` (or ``starting_iter = -1``) starts from the newest checkpoint file; the restore
        may still fall back to an older one (:meth:`restore`). Starting from 0 in a model_dir whose
        ``metrics.csv`` has rows but no checkpoint is refused too: it would overwrite them."""
        cfg, md = self.cfg, self.model_dir
        have = md.saved_iterations()
        latest = have[-1] if have else None
        start = cfg.training.starting_iter
        if start == -1 or resume:
            start = latest or 0
        if latest is not None and start == 0 and not resume:
            if not overwrite:
                raise UhvedError(
                    f"{md} already has checkpoints up to iteration {latest}; pass --resume to continue "
                    f"(or set [TRAINING] starting_iter = -1), or --overwrite to start again and delete them")
            md.clear_training()
            latest = None
        if start == 0 and latest is None and (logged := md.last_logged_iteration()) is not None:
            if not overwrite:
                raise UhvedError(
                    f"{md.metrics_csv} logs iterations up to {logged} but {md} has no checkpoint"
                    f"{' to resume from' if resume else ''} (its run stopped before saving one); pass --overwrite "
                    "to start again and delete that log")
            md.clear_training()
        if start > 0:
            self.check_metadata()
        if start > 0 and latest is None:
            raise UhvedError(f"[TRAINING] starting_iter = {start} but {md} has no checkpoint")
        if start > 0 and start not in have:
            raise UhvedError(f"[TRAINING] starting_iter = {start}: no checkpoint of iteration {start} in "
                             f"{md.checkpoints}; checkpoints present: {', '.join(map(str, have))} "
                             "(starting_iter = -1 or --resume: the newest)")
        if start >= cfg.training.max_iter:
            log.info("already at iteration %d >= max_iter %d: nothing to train", start, cfg.training.max_iter)
            return None
        return start

    def train(self, resume: bool = False, overwrite: bool = False, progress: bool = True,
              on_iteration=None) -> dict:
        """Train to ``max_iter`` (see the CLI's ``train``); ``on_iteration(iteration, losses)`` is
        called after every step (benchmarks/soak.py samples memory with it).

        Under ``MultiWorkerMirroredStrategy`` only the chief writes model_dir (config, metadata,
        split, landmarks, checkpoints, logs); the other workers read what is there, and compute
        what is not yet (the split, the landmarks: the same on every worker) into a temporary folder."""
        import tempfile
        from dataclasses import replace

        import keras
        import tensorflow as tf
        from uhved_tf.training.trainer import TrainSettings, Trainer, default_callbacks, is_chief

        cfg = self.cfg
        # The strategy first: it says whether this process is the chief. (It is also what
        # MultiWorkerMirroredStrategy wants: to be created before other TensorFlow work.)
        strategy = make_strategy(cfg.system.distribution_strategy)
        chief = is_chief(strategy)
        # A non-chief worker never deletes: with --overwrite the chief forgets the old training.
        start = self.start_iteration(resume, overwrite) if chief or not overwrite else 0
        if start is None:
            return {}
        shared = self.model_dir
        scratch = None if chief else tempfile.TemporaryDirectory(prefix="uhved_tf-worker-")
        try:
            if scratch is not None:
                own = {"split_file": Path(scratch.name) / shared.SPLIT} if not shared.split.is_file() else {}
                if cfg.network.normalisation and not shared.histogram.is_file():
                    own["histogram_file"] = Path(scratch.name) / shared.HISTOGRAM
                self.model_dir = replace(shared, **own)
            md = self.model_dir
            subjects = self.discover(need_label=True)
            split = self.split(subjects)
            train_ids = set(subjects_in(split, "Training"))
            train_subjects = [s for s in subjects if s.id in train_ids]
            if not train_subjects:
                raise DataError(f"no training subjects in {md.split}")
            log.info("%d training subjects, %d validation, %d inference", len(train_subjects),
                     len(subjects_in(split, "Validation")), len(subjects_in(split, "Inference")))
            if cfg.network.normalisation and not md.histogram.exists():
                from uhved_tf.data.histogram import train_landmarks_for_subjects
                train_landmarks_for_subjects(train_subjects, cfg.modality_inputs, cfg.network, md.histogram)

            # Initial weights from [SYSTEM] seed (everything later uses explicit stateless seeds).
            keras.utils.set_random_seed(cfg.system.seed)
            with strategy.scope():
                model = self.build_model()
            settings = TrainSettings.from_config(cfg)
            trainer = Trainer(model, settings, md, strategy)
            if start > 0:
                start = self.restore(trainer, start, newest=resume or cfg.training.starting_iter == -1)
            if chief:   # (after the restore: a run that cannot resume leaves the model_dir as it was)
                md.root.mkdir(parents=True, exist_ok=True)
                cfg.write_resolved(md.root)
                md.write_metadata(self.metadata())
            dataset = self.build_dataset(train_subjects, start_iteration=start)
            validator, early = self.build_validator(subjects, split, model)
            callbacks = default_callbacks(settings, md, progress=progress, validator=validator,
                                          validation_every_n=cfg.training.validation_every_n, early_stopping=early,
                                          on_iteration=on_iteration)
            t0 = time.perf_counter()
            try:
                terms = trainer.fit(dataset, start_iteration=start, callbacks=callbacks)
            except tf.errors.OpError:
                if self.pipeline_error is not None:   # a bad training file, read by the tf.data pipeline
                    raise self.pipeline_error from None
                raise
            log.info("trained iterations %d..%d in %.1f s", start, cfg.training.max_iter, time.perf_counter() - t0)
            return terms
        finally:
            if scratch is not None:
                self.model_dir = shared
                scratch.cleanup()

    def restore(self, trainer, start: int, newest: bool = True) -> int:
        """Restore ``trainer`` for a run from iteration ``start``: the newest checkpoint that
        restores (``newest``; ``start`` is the newest file) or exactly ``start`` (``starting_iter =
        N``). Returns the iteration restored. A checkpoint that does not restore is one line naming
        its damaged file (checksums are verified on read) or saying it is another network's."""
        from uhved_tf.training.checkpoint import UnrestorableCheckpoint

        try:
            return trainer.restore(None if newest else start)
        except UnrestorableCheckpoint as exc:
            have = self.model_dir.saved_iterations()
            older = " and no older checkpoint restores" if newest and len(have) > 1 else ""
            if exc.damage is None:
                fix = "train with the config this model was trained with, or start again with --overwrite"
            elif newest:
                fix = "restore the file from a backup, or start again with --overwrite"
            else:
                fix = ("restore the file from a backup, resume from another with [TRAINING] starting_iter = N "
                       "(or --resume: the newest that restores), or start again with --overwrite")
            raise UhvedError(f"{exc.describe()}{older}; checkpoints present: {', '.join(map(str, have)) or 'none'}; "
                             f"{fix}") from None

    def build_validator(self, subjects, split, model):
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
        settings = self.preprocess_settings()
        cases = [self.load_case(s, settings) for s in chosen]
        validator = Validator(cases, subsets, self.predictor(model), self.cfg.modalities, self.convention)
        if not validator.scored:
            # Incomplete subjects (allow_missing_modalities): none has every modality of any subset.
            present = [m for i, m in enumerate(self.cfg.modalities) if any(c.data_mask[i] for c in validator.cases)]
            log.warning("[TRAINING] validation_subsets = %s: none of the %d validation subjects has every modality "
                        "of any of these subsets: not validating (choose subsets of the modalities they have: %s)",
                        t.validation_subsets, len(validator.cases), ", ".join(present) or "none")
            return None, None
        return validator, EarlyStopping(t.patience, t.early_stopping_mode)

    # --- inference ---------------------------------------------------------------------------
    def load_trained_model(self):
        from uhved_tf.training.checkpoint import UnrestorableCheckpoint, restore_model

        md = self.model_dir
        if self.check_metadata() is None:
            raise UhvedError(f"{md} has no trained model ({md.METADATA} missing); run "
                             f"`uhved_tf train -c CONFIG` first or point [SYSTEM] model_dir at a model")
        model = self.build_model()
        which = self.checkpoint_choice()
        try:
            path, iteration = md.find_checkpoint(which)
        except LookupError as exc:
            if self.cfg.inference.inference_iter >= 0:
                raise UhvedError(f"[INFERENCE] inference_iter = {which}: {exc}; set inference_iter = -1 for the "
                                 "latest") from None
            raise UhvedError(f"[INFERENCE] checkpoint = {which}: {exc}") from None
        try:
            restore_model(model, path, iteration)
        except UnrestorableCheckpoint as exc:   # (checksums are verified on read)
            have = ", ".join(map(str, md.saved_iterations())) or "none"
            fix = ("restore the file from a backup, or choose another with [INFERENCE] checkpoint = N (or best)"
                   if exc.damage else "use the config this model was trained with")
            raise UhvedError(f"{exc.describe()}; checkpoints present: {have}; {fix}") from None
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

    def predictor(self, model) -> CasePredictor:
        """``predictor(case, subsets)``: the local inference step of a trained ``model``."""
        return CasePredictor(model, self.cfg.modalities, self.cfg.inference, seed=self.cfg.system.seed,
                             batch_size=self.cfg.network.batch_size)

    def run_inference(self, subjects, subsets, out_dir: Path, overwrite=False, progress=True,
                      keep_going=True) -> dict:
        """Segment ``subjects``; with ``keep_going`` a broken case is reported and skipped
        (returned in the dict of failures) instead of stopping the run."""
        from uhved_tf.evaluation.metrics import volumes_ml
        from uhved_tf.training.progress import Progress, window_progress

        started = time.perf_counter()
        predict = self.predictor(self.load_trained_model())
        loaded = time.perf_counter()
        settings = self.preprocess_settings()
        subsets = [Subset(s, self.cfg.modalities) for s in subsets]
        out_dir = Path(out_dir)
        failed = {}
        bar = Progress(len(subjects), desc="inference", enabled=progress)
        first = []

        def on_windows(case_id):
            bar_update = window_progress(case_id) if progress else None

            def update(done, total):
                if not first:     # the first window batch of the run: the time a user waits for it
                    first.append(time.perf_counter())
                    log.info("time to first prediction %.2f s (start-up and imports %.2f s, model %.2f s, trace, "
                             "case loading and first window %.2f s)", first[0] - IMPORTED_AT,
                             started - IMPORTED_AT, loaded - started, first[0] - loaded)
                if bar_update is not None:
                    bar_update(done, total)
            return update

        for subject in subjects:
            t0 = time.perf_counter()
            try:
                case = self.load_case(subject, settings, with_label=False)
                results = predict(case, subsets, progress=on_windows(case.id))
                for subset, res in zip(subsets, results):
                    self.outputs.write(case, res, out_dir if len(subsets) == 1 else out_dir / subset.name,
                                       overwrite=overwrite)
                    vols = volumes_ml(self.outputs.labels(res), case.spacing,
                                      label_values=self.convention.region_map)
                    log.info("%s [%s] %.1f s: %s", case.id, subset.name, time.perf_counter() - t0,
                             ", ".join(f"{r} {v:.1f} mL" for r, v in vols.items()))
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
        """Segmentation (and synthesis) scores of the ``phase`` split's cases for every subset."""
        from uhved_tf.evaluation.report import Evaluation, evaluate_cases

        cfg = self.cfg
        subsets = [Subset(s, cfg.modalities) for s in subsets]
        subjects = self.discover(need_label=True)
        ids = {s.id for s in subjects} if phase == "All" else set(subjects_in(self.split(subjects), phase))
        chosen = [s for s in subjects if s.id in ids]
        if not chosen:
            raise DataError(f"no {phase} subjects with labels in {self.model_dir.split}")
        # One model for every subset, or one Single network per subset (train --all-subsets).
        groups = [(a.predictor(a.load_trained_model()), group, a) for a, group in self.models_for_subsets(subsets)]
        models = [{"model_dir": str(a.model_dir), "subsets": [s.name for s in group],
                   **{k: v for k, v in (a.loaded_checkpoint or {}).items() if k != "path"}} for _, group, a in groups]
        settings = self.preprocess_settings()

        def cases():
            for subject in chosen:
                yield subject, self.load_case(subject, settings, with_label=False), subject.files[cfg.label_section]

        def predict(case, wanted) -> dict:
            """``{subset: result}`` for the subsets in ``wanted`` (those the case has every modality of)."""
            by_subset = {}
            for predictor, group, _ in groups:
                mine = [s for s in group if s in wanted]
                if mine:
                    by_subset.update(zip(mine, predictor(case, mine)))
            return by_subset

        ev = Evaluation.from_config(cfg, subsets, self.convention)
        return evaluate_cases(cases(), len(chosen), predict, ev, models,
                              out_dir=Path(out_dir or cfg.evaluation.save_csv_dir), progress=progress, figure=figure)

    def evaluate_predictions(self, predictions: Path, phase: str = "Inference", out_dir: Path | None = None,
                             progress=True) -> dict:
        """Score the segmentation files in ``predictions`` (``<id>_seg.nii.gz`` as ``inference``
        writes them, or ``<id>.nii.gz`` as nnU-Net does) against the ``phase`` split's labels
        (``All``: every subject with a label), with the convention's regions; no model."""
        from uhved_tf.evaluation.report import Evaluation, score_predictions

        predictions = Path(predictions)
        if not predictions.is_dir():
            raise DataError(f"--predictions {predictions}: no such folder (expected segmentation files "
                            f"named <subject>_seg.nii.gz or <subject>.nii.gz)")
        subjects = self.discover(need_label=True)
        if phase != "All":
            ids = set(subjects_in(self.split(subjects), phase))
            subjects = [s for s in subjects if s.id in ids]
        layout = self.cfg.dataset.convention if self.cfg.dataset.convention in LAYOUTS else "brats2018"
        files = {}
        for f in sorted(predictions.iterdir()):
            sid = prediction_id(layout, f.name)
            if sid is not None:
                files[sid] = f
        by_id = {s.id: s for s in subjects}
        pairs = [(sid, files[sid], by_id[sid].files[self.cfg.label_section]) for sid in by_id if sid in files]
        missing = [sid for sid in by_id if sid not in files]
        extra = [str(f) for sid, f in files.items() if sid not in by_id]
        if not pairs:
            raise DataError(f"--predictions {predictions}: no file matches a {phase} subject with a label "
                            f"({len(by_id)} subjects, e.g. {next(iter(by_id), 'none')}; {len(files)} files)")
        for what, items in (("subjects without a prediction", missing), ("predictions of no subject", extra)):
            if items:
                log.warning("%d %s (listed in unmatched.txt): %s", len(items), what, ", ".join(items[:5]) +
                            (", ..." if len(items) > 5 else ""))
        ev = Evaluation.from_config(self.cfg, (), self.convention)
        return score_predictions(pairs, ev, Path(out_dir or self.cfg.evaluation.save_csv_dir), missing, extra,
                                 progress=progress)

    # --- one network per subset (the Single baseline) ------------------------------------------
    def train_all_subsets(self, subsets=None, resume: bool = False, overwrite: bool = False,
                          progress: bool = True) -> dict[str, dict]:
        """Train one Single network per subset (default: all 2^M - 1), one after the other, each in
        ``<model_dir>/<subset>/`` (:mod:`uhved_tf.training.all_subsets`). Returns ``{subset name:
        final loss terms}`` (empty terms for a run that had nothing left to train)."""
        from uhved_tf.training.all_subsets import check_single, subset_config

        cfg = self.cfg
        check_single(cfg)
        subsets = list(subsets) if subsets else Subset.parse("all", cfg.modalities)
        if cfg.network.subset:
            log.info("--all-subsets: ignoring [NETWORK] subset = %s", ", ".join(cfg.network.subset))
        out = {}
        for i, subset in enumerate(subsets, 1):
            sub_cfg = subset_config(cfg, subset)
            name = Subset(subset, cfg.modalities).name
            log.info("[%d/%d] Single for %s in %s", i, len(subsets), name, sub_cfg.system.model_dir)
            t0 = time.perf_counter()
            out[name] = type(self)(sub_cfg).train(resume=resume, overwrite=overwrite, progress=progress)
            log.info("[%d/%d] %s done in %.1f s", i, len(subsets), name, time.perf_counter() - t0)
        return out


def make_strategy(name: str):
    import tensorflow as tf
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()
