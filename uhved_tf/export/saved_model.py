"""SavedModel export for TensorFlow Serving: a trained network and its sliding window in one graph.

Layout (what ``tensorflow_model_server --model_base_path=DIR/<model_name>`` watches)::

    DIR/<model_name>/<version>/saved_model.pb
                              variables/
                              assets/metadata.json     modality order, label map, preprocessing
                                                       (incl. Nyul landmarks), window, samples, seed,
                                                       versions; what a client needs
                              assets/<landmarks file>  copy of [NETWORK] histogram_ref_file (if used)

A version is written into a hidden temporary folder next to it and renamed into place, so TF
Serving (which only loads folders named by an integer) never sees half a model.

Signatures (input and output names; ``<m>`` = each ``[MULTIMODAL] image`` name lower-cased, e.g.
``t1, t1c, t2, flair``; every spatial size is dynamic):

``serving_default`` -- a batch of windows, as :class:`~uhved_tf.inference.predictor.WindowPredictor`:
    inputs  ``<m>`` float32 [B, D, H, W] (preprocessed intensities; zeros for a missing modality),
            ``modality_mask`` float32 [B, M] (1 = available, 0 = missing; one subset per sample)
    outputs ``seg_probabilities`` float32 [B, D, H, W, K], ``seg_labels`` int32 [B, D, H, W] in the
            label file's values (``[MULTIMODAL] label_values``, BraTS 0/1/2/4), ``<m>_synth``
            float32 [B, D, H, W] (networks that synthesise only), ``uncertainty`` float32
            [B, D, H, W] (entropy, nats, of the averaged class probabilities).
    D, H, W need not be divisible by 2^(levels-1): the graph pads (zeros, symmetric, as
    :func:`~uhved_tf.inference.sliding_window.pad_to_multiple`) to the next multiple and crops
    the outputs back, so the output size always equals the input size.

``segment_volume`` -- one whole preprocessed volume through the sliding window, inside the graph:
    inputs  ``<m>`` float32 [D, H, W], ``modality_mask`` float32 [M]
    outputs the same names as ``serving_default`` without the batch axis.
    Tiling, padding, Gaussian blending and cropping are those of
    :func:`~uhved_tf.inference.sliding_window.sliding_window_inference` with the export-time
    window, overlap, border and blend mode; windows go through the network ``window_batch_size``
    at a time in a ``tf.while_loop``; a volume smaller than the window is padded.

Randomness. The number of posterior samples averaged for the segmentation (``--samples``,
default ``[INFERENCE] samples``; 0 = decode the posterior mean) and the seed (``[SYSTEM] seed``)
are fixed at export. Both signatures run the inference step of :mod:`uhved_tf.inference.core`,
the one :class:`WindowPredictor` runs, with its stateless seeds: window batch ``k`` of a volume
with subset code ``c`` (bit i = modality i present) and mirroring ``f`` uses
``[seed, k * 4096 + c * 16 + f]`` (:func:`~uhved_tf.inference.core.sample_seed`). Hence

* ``segment_volume`` gives what ``predict_volume(WindowPredictor(model, [mask], samples, seed,
  tta), volume, window, overlap=..., blend_mode=..., border=..., batch_size=window_batch_size)``
  gives with a fresh predictor;
* ``serving_default`` predicts each sample of the batch as a fresh ``WindowPredictor``'s first
  call on that window alone (``k = 0``), so a result never depends on what else is in the batch
  (TF Serving may batch requests together).

Deterministic networks (U-HeMIS, HeMIS, Single: ``model.variational`` False) ignore the samples;
networks that do not synthesise (``model.synthesises`` False) have no ``<m>_synth`` outputs.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from uhved_tf.config.schema import default
from uhved_tf.errors import UhvedError
from uhved_tf.model_dir import ModelDir

log = logging.getLogger(__name__)

SERVING_DEFAULT = "serving_default"
SEGMENT_VOLUME = "segment_volume"
MASK_INPUT = "modality_mask"
METADATA_FILE = ModelDir.METADATA   # an export's assets/metadata.json
FORMAT_VERSION = 1
#: Gaussian sigma relative to the valid window width, as ``sliding_window_inference``'s default.
SIGMA_SCALE = 0.125
_NAME_RE = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-]*$")


class ExportError(UhvedError):
    """An export that cannot be written as asked (existing version, bad window, ...)."""


# --------------------------------------------------------------------------------------------
# names, sizes, seeds
# --------------------------------------------------------------------------------------------
def model_name_for(network_name: str) -> str:
    """The TF Serving model name of a network: its config name (last dotted part) lower-cased
    with everything but letters and digits removed: ``u_hved`` -> ``uhved``, ``U_HeMIS`` ->
    ``uhemis``, ``extensions.my_net.MyNet`` -> ``mynet``."""
    base = str(network_name).strip().rsplit(".", 1)[-1]
    name = re.sub(r"[^a-z0-9]", "", base.lower())
    if not name:
        raise ExportError(f'[NETWORK] name = "{network_name}" gives an empty model name; pass --model-name')
    return name


def tensor_name(modality: str) -> str:
    """Signature input name of a modality: the config name lower-cased (``T1c`` -> ``t1c``)."""
    name = re.sub(r"[^a-z0-9_.\-]", "_", str(modality).lower())
    if not _NAME_RE.match(name):
        name = "m_" + name
    return name


def input_names(modalities) -> list[str]:
    names = [tensor_name(m) for m in modalities]
    clash = {n for n in names if names.count(n) > 1} | ({MASK_INPUT} & set(names))
    if clash:
        raise ExportError(f"modalities {list(modalities)} give clashing signature input names {sorted(clash)}; "
                          f"rename the input sections in [MULTIMODAL] image")
    return names


def synth_names(modalities) -> list[str]:
    return [f"{n}_synth" for n in input_names(modalities)]


def output_names(modalities, synthesises: bool) -> list[str]:
    names = ["seg_probabilities", "seg_labels"]
    if synthesises:
        names += synth_names(modalities)
    return names + ["uncertainty"]


def size_multiple(model) -> int:
    """Spatial sizes a network accepts are multiples of this (2^(levels-1); 1 without scales)."""
    levels = getattr(model, "levels", None)
    return 2 ** (int(levels) - 1) if levels else 1


def check_window(window, multiple: int, what: str = "[INFERENCE] spatial_window_size") -> tuple[int, int, int]:
    """Refuse a window the network would silently shrink (e.g. 17 -> 16 with 2 levels)."""
    window = tuple(int(w) for w in window)
    if len(window) != 3 or any(w < 1 for w in window):
        raise ExportError(f"{what} = {window}: expected 3 positive sizes")
    bad = [w for w in window if w % multiple]
    if bad:
        fixed = tuple(-(-w // multiple) * multiple for w in window)
        raise ExportError(f"{what} = {', '.join(map(str, window))} is not divisible by {multiple} "
                          f"(2^(levels-1)); use e.g. {', '.join(map(str, fixed))}")
    return window


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    modalities: tuple[str, ...]
    label_values: tuple[int, ...]
    window: tuple[int, int, int]
    samples: int = default("INFERENCE", "samples")
    seed: int = default("SYSTEM", "seed")
    overlap: float = default("INFERENCE", "window_overlap")
    blend_mode: str = default("INFERENCE", "blend_mode")
    border: tuple[int, int, int] = default("INFERENCE", "border")
    window_batch_size: int = default("NETWORK", "batch_size")
    tta: bool = default("INFERENCE", "tta")
    sigma_scale: float = SIGMA_SCALE

    @classmethod
    def from_config(cls, cfg, window, samples: int | None = None) -> "ExportSettings":
        inf = cfg.inference
        return cls(modalities=tuple(cfg.modalities), label_values=tuple(int(v) for v in cfg.task.label_values),
                   window=tuple(int(w) for w in window),
                   samples=int(inf.samples if samples is None else samples), seed=int(cfg.system.seed),
                   overlap=float(inf.window_overlap), blend_mode=inf.blend_mode,
                   border=tuple(int(b) for b in inf.border), window_batch_size=max(1, int(cfg.network.batch_size)),
                   tta=bool(inf.tta))


# --------------------------------------------------------------------------------------------
# the graph
# --------------------------------------------------------------------------------------------
class _Graph:
    """The signatures' TF ops: :func:`~uhved_tf.inference.core.predict_window_batch` and
    :func:`~uhved_tf.inference.core.sliding_window_graph` with the export settings, the outputs
    packed along the channel axis (``seg_prob``, ``synth`` if any, ``uncertainty``)."""

    def __init__(self, model, settings: ExportSettings):
        from uhved_tf.inference.core import TTA_FLIPS

        self.model = model
        self.s = settings
        self.num_modalities = len(settings.modalities)
        self.num_classes = int(model.num_classes)
        self.synthesises = bool(getattr(model, "synthesises", False))
        self.stochastic = bool(getattr(model, "variational", False)) and settings.samples > 0
        self.flips = TTA_FLIPS if settings.tta else ((),)
        self.multiple = size_multiple(model)

    def predict(self, windows, masks, call):
        """``windows`` [N, d, h, w, M], ``masks`` [N, M] (one subset when sampling), window batch
        ``call`` -> packed [N, d, h, w, C], as a :class:`WindowPredictor`'s call ``call``."""
        import tensorflow as tf
        from uhved_tf.inference.core import predict_window_batch

        out = predict_window_batch(self.model, windows, masks[None], self.s.seed, call, self.s.samples, self.flips)
        return tf.concat([out[k][0] for k in ("seg_prob", "synth", "uncertainty") if k in out], axis=-1)

    def _channels(self):
        return self.num_classes + (self.num_modalities if self.synthesises else 0) + 1

    def _unpack(self, packed, names):
        """[..., C] -> the named signature outputs."""
        import tensorflow as tf

        k = self.num_classes
        packed = tf.ensure_shape(packed, [None] * (packed.shape.rank - 1) + [self._channels()])
        prob = packed[..., :k]
        result = {"seg_probabilities": prob,
                  "seg_labels": tf.gather(tf.constant(self.s.label_values, tf.int32), tf.argmax(prob, axis=-1,
                                                                                               output_type=tf.int32))}
        if self.synthesises:
            for i, name in enumerate(synth_names(self.s.modalities)):
                result[name] = packed[..., k + i]
        result["uncertainty"] = packed[..., -1]
        return {n: result[n] for n in names}

    # -- serving_default --------------------------------------------------------------------------
    def windows(self, image, mask):
        """``image`` [B, D, H, W, M], ``mask`` [B, M] -> packed [B, D, H, W, C]."""
        import tensorflow as tf
        from uhved_tf.inference.sliding_window import multiple_pads

        spatial = tf.shape(image)[1:4]
        before, after = multiple_pads(spatial, self.multiple)
        x = tf.pad(image, tf.concat([[[0, 0]], tf.stack([before, after], axis=1), [[0, 0]]], axis=0))
        if self.stochastic:      # each window alone, as a fresh predictor's first call (its own seed)
            packed = tf.map_fn(lambda args: self.predict(args[0][None], args[1][None], 0)[0], (x, mask),
                               fn_output_signature=tf.TensorSpec([None, None, None, self._channels()], tf.float32))
        else:
            packed = self.predict(x, mask, 0)
        return tf.slice(packed, tf.concat([[0], before, [0]], 0), tf.concat([[-1], spatial, [-1]], 0))

    # -- segment_volume ---------------------------------------------------------------------------
    def volume(self, image, mask):
        """``image`` [D, H, W, M], ``mask`` [M] -> packed [D, H, W, C], blended exactly as
        :func:`~uhved_tf.inference.sliding_window.sliding_window_inference`."""
        import tensorflow as tf
        from uhved_tf.inference.core import sliding_window_graph

        def predict(windows, k):
            return self.predict(windows, tf.tile(mask[None], [tf.shape(windows)[0], 1]), k)

        s = self.s
        return sliding_window_graph(image, s.window, predict, self._channels(), overlap=s.overlap,
                                    blend_mode=s.blend_mode, border=s.border, batch_size=s.window_batch_size,
                                    sigma_scale=s.sigma_scale)


class ServingModule:
    """Builds the ``tf.Module`` that is saved: the model's variables (explicitly, as the
    checkpoints do: Keras 3 variables are not reached through the model) and the signatures."""

    def __init__(self, model, settings: ExportSettings):
        import tensorflow as tf
        from uhved_tf.training.checkpoint import model_variables

        self.settings = settings
        self.graph = g = _Graph(model, settings)
        self.names = input_names(settings.modalities)
        self.outputs = output_names(settings.modalities, g.synthesises)
        m = len(settings.modalities)
        names, outputs = self.names, self.outputs

        batch_specs = [tf.TensorSpec([None, None, None, None], tf.float32, name=n) for n in names]
        batch_specs.append(tf.TensorSpec([None, m], tf.float32, name=MASK_INPUT))
        volume_specs = [tf.TensorSpec([None, None, None], tf.float32, name=n) for n in names]
        volume_specs.append(tf.TensorSpec([m], tf.float32, name=MASK_INPUT))

        def check(mask):
            return tf.debugging.assert_positive(
                tf.reduce_sum(tf.cast(mask > 0, tf.float32), axis=-1),
                message=f"{MASK_INPUT}: no modality is available; set 1 for at least one modality "
                        f"(order {', '.join(names)})")

        def serve_windows(*tensors):
            with tf.control_dependencies([check(tensors[-1])]):
                image = tf.stack(tensors[:-1], axis=-1)
            return g._unpack(g.windows(image, tensors[-1]), outputs)

        def serve_volume(*tensors):
            with tf.control_dependencies([check(tensors[-1])]):
                image = tf.stack(tensors[:-1], axis=-1)
            return g._unpack(g.volume(image, tensors[-1]), outputs)

        self.module = tf.Module(name="uhved_serving")
        self.module.model_variables = model_variables(model)
        self.module.serving_default = tf.function(serve_windows, input_signature=batch_specs, autograph=False)
        self.module.segment_volume = tf.function(serve_volume, input_signature=volume_specs, autograph=False)

    def signatures(self) -> dict:
        return {SERVING_DEFAULT: self.module.serving_default.get_concrete_function(),
                SEGMENT_VOLUME: self.module.segment_volume.get_concrete_function()}

    def describe(self) -> dict:
        """Input / output names and shapes of both signatures (for metadata.json and docs)."""
        m, k = len(self.settings.modalities), self.graph.num_classes

        def io(batch: bool):
            lead = ["B"] if batch else []
            space = lead + ["D", "H", "W"]
            inputs = {n: {"dtype": "float32", "shape": space} for n in self.names}
            inputs[MASK_INPUT] = {"dtype": "float32", "shape": lead + [m]}
            outs = {}
            for n in self.outputs:
                shape = space + [k] if n == "seg_probabilities" else space
                outs[n] = {"dtype": "int32" if n == "seg_labels" else "float32", "shape": shape}
            return {"inputs": inputs, "outputs": outs}

        return {SERVING_DEFAULT: io(True), SEGMENT_VOLUME: io(False)}


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def existing_versions(base: Path) -> list[int]:
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def resolve_version(base: Path, version: int | None, overwrite: bool) -> int:
    have = existing_versions(base)
    if version is None:
        return (max(have) + 1) if have else 1
    if version < 1:
        raise ExportError(f"--version {version}: TensorFlow Serving versions are positive integers")
    if (base / str(version)).exists() and not overwrite:
        raise ExportError(f"{base / str(version)} exists; pass --overwrite to replace it or omit --version "
                          f"to write version {(max(have) + 1) if have else 1}")
    return version


@dataclasses.dataclass
class ExportResult:
    path: Path
    model_name: str
    version: int
    seconds: float
    metadata: dict


def export_metadata(cfg, model_dir, model_meta: dict, module: ServingModule, model_name: str, version: int,
                    landmarks_asset: str | None) -> dict:
    """The model's metadata (``model_meta``, as in its model directory) + everything a client needs
    to prepare a case and read the outputs."""
    import tensorflow as tf
    from uhved_tf.data.cases import PreprocessSettings

    s = module.settings
    meta = json.loads(json.dumps(model_meta))
    landmarks = None
    if cfg.network.normalisation:
        from uhved_tf.data.histogram import read_landmarks
        landmarks = read_landmarks(model_dir.histogram, cfg.modalities)
    settings = PreprocessSettings.from_config(cfg, landmarks=landmarks)
    pre = dataclasses.asdict(settings)      # every PreprocessSettings field (the client rebuilds them)
    if pre.pop("landmarks") is not None:
        landmarks = {m: [float(v) for v in arr] for m, arr in landmarks.items()}
    meta["preprocessing"].update({"landmarks": landmarks, "landmarks_asset": landmarks_asset,
                                  "cutoff": list(cfg.network.cutoff), "norm_type": cfg.network.norm_type})
    meta.update({
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "version": version,
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "synthesises": module.graph.synthesises,
        "variational": bool(getattr(module.graph.model, "variational", False)),
        "input_names": dict(zip(s.modalities, module.names)),
        "preprocess_settings": pre,
        "inference": {
            "samples": s.samples, "seed": s.seed, "window": list(s.window), "window_overlap": s.overlap,
            "blend_mode": s.blend_mode, "border": list(s.border), "sigma_scale": s.sigma_scale,
            "window_batch_size": s.window_batch_size, "tta": s.tta, "size_multiple": module.graph.multiple,
            "seed_rule": "stateless seed [seed, k * 4096 + code * 16 + flip] for window batch k, "
                         "subset code (bit i = modality i) and mirroring flip, as WindowPredictor",
        },
        "signatures": module.describe(),
        "tensorflow_version": tf.__version__,
    })
    return meta


def export_saved_model(model, cfg, model_dir, model_meta: dict, *, checkpoint: dict | None = None,
                       output: str | os.PathLike | None = None, version: int | None = None,
                       samples: int | None = None, overwrite: bool = False,
                       model_name: str | None = None) -> ExportResult:
    """Write ``<output>/<model_name>/<version>/`` (see the module docstring) from the trained
    ``model`` of ``cfg`` (its :class:`~uhved_tf.model_dir.ModelDir`, metadata and, when known, the
    checkpoint it was restored from: ``{"checkpoint": "latest", "iteration": N}``)."""
    import tensorflow as tf

    t0 = time.perf_counter()
    if samples is not None and samples < 0:
        raise ExportError(f"--samples {samples}: expected 0 (posterior mean) or a positive number of samples")
    name = model_name or model_name_for(cfg.network.name)
    if not _NAME_RE.match(name):
        raise ExportError(f'model name "{name}": use letters, digits, "_", "-" and "."')
    base = (Path(output) if output else model_dir.export_dir) / name
    version = resolve_version(base, version, overwrite)
    final = base / str(version)
    window = check_window(tuple(cfg.inference.spatial_window_size), size_multiple(model))
    settings = ExportSettings.from_config(cfg, window, samples)
    from uhved_tf.inference.sliding_window import grid_positions
    grid_positions(window, window, settings.overlap, settings.border)          # checks border / overlap

    module = ServingModule(model, settings)

    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    try:
        tf.saved_model.save(module.module, str(tmp), signatures=module.signatures())
        assets = tmp / "assets"
        assets.mkdir(exist_ok=True)
        landmarks_asset = None
        if cfg.network.normalisation:
            src = model_dir.histogram
            landmarks_asset = src.name or "hist.txt"
            shutil.copyfile(src, assets / landmarks_asset)
        meta = export_metadata(cfg, model_dir, model_meta, module, name, version, landmarks_asset)
        if checkpoint:
            meta["checkpoint"] = {"checkpoint": checkpoint["checkpoint"], "iteration": checkpoint["iteration"]}
        (assets / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():          # only with overwrite (checked above)
            trash = base / f".old-{version}-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    log.info("exported %s version %d to %s in %.1f s", name, version, final, seconds)
    return ExportResult(final, name, version, seconds, meta)


def read_export_metadata(path: str | os.PathLike) -> dict:
    """``metadata.json`` of an export: the file itself, a version folder or its ``assets/``."""
    from uhved_tf.errors import DataError

    path = Path(path)
    for candidate in (path, path / "assets" / METADATA_FILE, path / METADATA_FILE):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except (OSError, ValueError) as exc:
                raise DataError(f"{candidate}: unreadable export metadata ({exc})") from None
    raise DataError(f"{path}: no {METADATA_FILE} (expected an export's assets/{METADATA_FILE} or a version folder)")
