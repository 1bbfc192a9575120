"""The schema of the uhved_tf INI file: every section, key, type, default and help text, in one place.

Each section is a tuple of :class:`Key` entries. Everything else is derived from these tuples: the
typed, frozen section dataclasses (:class:`SystemConfig`, :class:`NetworkConfig`, ...), parsing and
validation of single values (:mod:`uhved_tf.config.parser`), the help comments of the shipped
``config/*.ini`` files and of the resolved config written into the model directory, and
:func:`key_reference_markdown`.

Keys come from NiftyNet (its ``user_parameters_*.py``: same names, types and defaults) plus the
keys uhved_tf adds. NiftyNet keys that uhved_tf does not implement have ``used=False``: they are
accepted, so a NiftyNet / U-HVED config still parses, and a WARNING names each one that is set.

A :class:`Kind` turns one raw INI string into a typed value (``parse``) and back (``format``), with
``parse(format(v)) == v``. Path keys parse to ``str``; the parser resolves them to absolute
:class:`~pathlib.Path` objects (relative to the config file's folder or to ``model_dir``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from uhved_tf.errors import did_you_mean
from uhved_tf.convention import NAMES as CONVENTIONS
from uhved_tf.convention import PRESETS
from uhved_tf.model_dir import ModelDir

TRUE_WORDS = ("yes", "true", "y", "1", "on")
FALSE_WORDS = ("no", "false", "n", "0", "off")

_OPEN_TO_CLOSE = {"(": ")", "[": "]", "{": "}"}
_QUOTES = ("'", '"')


#: Common names for keys, used only to suggest the real key (never accepted as keys): the
#: ``aliases`` of :func:`uhved_tf.errors.did_you_mean`.
KEY_ALIASES = {
    "learning_rate": "lr",
    "learningrate": "lr",
    "optimizer": "optimiser",
    "weight_decay": "decay",
    "n_classes": "num_classes",
    "nb_classes": "num_classes",
    "number_of_classes": "num_classes",
    "iterations": "max_iter",
    "num_iterations": "max_iter",
    "n_iterations": "max_iter",
    "patch_size": "spatial_window_size",
    "window_size": "spatial_window_size",
    "normalization": "normalisation",
    "normalize_foreground_only": "normalise_foreground_only",
    "num_samples": "samples",
    "n_samples": "samples",
    "model_directory": "model_dir",
    "padding_size": "volume_padding_size",
    "flip_axes": "random_flipping_axes",
    "random_seed": "seed",
    "batchsize": "batch_size",
}


# --------------------------------------------------------------------------------------------
# Kinds: raw string <-> typed value
# --------------------------------------------------------------------------------------------

def _g(x: float) -> str:
    """A bound printed compactly: 0, 1, 0.5, 1e-06."""
    return f"{x:g}"


def _unquote(text: str) -> str:
    """Strip one pair of matching surrounding quotes (``cuda_devices = ""`` means the empty string)."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
        return text[1:-1]
    return text


def _quote_if_needed(text: str) -> str:
    """Inverse of ``strip`` + :func:`_unquote`: quote strings that would not survive them."""
    if text != text.strip() or (len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES):
        return f'"{text}"'
    return text


def split_array(text: str) -> tuple[str, ...]:
    """``a, b, c`` / ``(a, b, c)`` / ``[a, b, c]`` / ``{a, b, c}`` -> ``("a", "b", "c")``; empty -> ``()``.

    One trailing comma is allowed (``(64,)``); an empty item elsewhere is an error.
    """
    s = text.strip()
    if len(s) >= 2 and s[0] in _OPEN_TO_CLOSE and s[-1] == _OPEN_TO_CLOSE[s[0]]:
        s = s[1:-1].strip()
    if not s:
        return ()
    items = [part.strip() for part in s.split(",")]
    if len(items) > 1 and items[-1] == "":
        items.pop()
    if any(item == "" for item in items):
        raise ValueError("expected a comma-separated list without empty items")
    return tuple(items)


def join_array(items: Sequence[str]) -> str:
    """Inverse of :func:`split_array` for items that contain no comma."""
    text = ", ".join(items)
    if text[:1] in _OPEN_TO_CLOSE:  # would otherwise lose its bracket on re-parsing
        text = f"({text})"
    return text


class Kind:
    """How one key's value is written in the INI file and what it becomes in Python."""

    type_name = "str"
    py_type: Any = str

    def parse(self, text: str) -> Any:
        """Raw INI text -> typed value; raises ``ValueError("expected ...")`` when invalid."""
        raise NotImplementedError

    def format(self, value: Any) -> str:
        """Typed value -> INI text (``parse(format(v)) == v``)."""
        raise NotImplementedError

    def describe(self) -> str:
        """What a valid value looks like, completing "expected ...", e.g. "a positive number (float)"."""
        raise NotImplementedError

    def fail(self) -> ValueError:
        return ValueError(f"expected {self.describe()}")


class Str(Kind):
    """Any string; one pair of surrounding quotes is removed (``quoted=False``: kept, for array items)."""

    def __init__(self, quoted: bool = True):
        self.quoted = quoted

    def parse(self, text: str) -> str:
        return _unquote(text.strip()) if self.quoted else text.strip()

    def format(self, value: Any) -> str:
        return _quote_if_needed(str(value)) if self.quoted else str(value)

    def describe(self) -> str:
        return "a string (str)"


class CheckpointChoice(Str):
    """``latest``, ``best`` or a checkpoint iteration (a whole number >= 0)."""

    type_name = "checkpoint"

    def parse(self, text: str) -> str:
        value = super().parse(text).lower()
        if value in ("latest", "best") or value.isdigit():
            return str(int(value)) if value.isdigit() else value
        raise ValueError("expected latest, best or a checkpoint iteration (a whole number >= 0)")

    def describe(self) -> str:
        return "latest, best or an iteration (checkpoint)"


class Regex(Str):
    """A Python regular expression that must compile."""

    type_name = "regex"

    def parse(self, text: str) -> str:
        pattern = super().parse(text)
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            raise ValueError(f"expected a valid regular expression ({exc})") from None
        return pattern

    def describe(self) -> str:
        return "a regular expression (str)"


class Choice(Kind):
    """One of a fixed list of strings, matched case-insensitively, stored with the canonical spelling."""

    type_name = "choice"

    def __init__(self, *options: str, aliases: dict[str, str] | None = None):
        self.options = options
        self.aliases = {k.lower(): v for k, v in (aliases or {}).items()}

    def parse(self, text: str) -> str:
        s = _unquote(text.strip())
        for option in self.options:
            if option.lower() == s.lower():
                return option
        if s.lower() in self.aliases:
            return self.aliases[s.lower()]
        hint = did_you_mean(s, [o for o in self.options if o], aliases=self.aliases) if s else ""
        raise ValueError(f"expected {self.describe()}{hint}")

    def format(self, value: Any) -> str:
        return str(value)

    def describe(self) -> str:
        shown = ", ".join(o if o else '"" (empty)' for o in self.options)
        return f"one of {shown}"


class Bool(Kind):
    """yes/true/y/1/on or no/false/n/0/off, case-insensitive ('t' and 'f' are rejected on purpose)."""

    type_name = "bool"
    py_type = bool

    def parse(self, text: str) -> bool:
        s = _unquote(text.strip()).lower()
        if s in TRUE_WORDS:
            return True
        if s in FALSE_WORDS:
            return False
        raise self.fail()

    def format(self, value: Any) -> str:
        return "True" if value else "False"

    def describe(self) -> str:
        return f"a boolean: one of {', '.join(TRUE_WORDS)} or {', '.join(FALSE_WORDS)} (case-insensitive)"


class _Number(Kind):
    noun = "number"

    def __init__(self, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False):
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open

    def _convert(self, s: str) -> Any:
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        s = _unquote(text.strip())
        try:
            value = self._convert(s)
        except (ValueError, OverflowError):
            raise self.fail() from None
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise self.fail()
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            raise self.fail()
        return value

    def _range(self) -> str:
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            if isinstance(self, Int) and not (self.lo_open or self.hi_open):
                return f" in {_g(lo)}..{_g(hi)}"
            return f" in {'(' if self.lo_open else '['}{_g(lo)}, {_g(hi)}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f" {'>' if self.lo_open else '>='} {_g(lo)}"
        if hi is not None:
            return f" {'<' if self.hi_open else '<='} {_g(hi)}"
        return ""

    def describe(self) -> str:
        article = "an" if self.noun[0] in "aeiou" else "a"
        if self.lo == 0 and self.lo_open and self.hi is None:
            return f"a positive {self.noun} ({self.type_name})"
        return f"{article} {self.noun}{self._range()} ({self.type_name})"


class Int(_Number):
    """An integer; ``1e4`` is accepted as 10000 (integral values in float notation)."""

    type_name = "int"
    py_type = int
    noun = "integer"

    def _convert(self, s: str) -> int:
        try:
            return int(s)
        except ValueError:
            pass
        f = float(s)
        if math.isfinite(f) and f.is_integer():
            return int(f)
        raise ValueError(s)

    def format(self, value: Any) -> str:
        return str(int(value))


class Float(_Number):
    """A finite floating-point number."""

    type_name = "float"
    py_type = float
    noun = "number"

    def _convert(self, s: str) -> float:
        value = float(s)
        if not math.isfinite(value):
            raise ValueError(s)
        return value

    def format(self, value: Any) -> str:
        return repr(float(value))


class Array(Kind):
    """A comma-separated list of items of one scalar kind (NiftyNet's ``*_array``)."""

    def __init__(self, item: Kind, *, lengths: Sequence[int] | None = None, distinct: bool = False,
                 post: Callable[[tuple], tuple] | None = None, post_text: str = ""):
        self.item, self.lengths, self.distinct = item, tuple(lengths) if lengths else None, distinct
        self.post, self.post_text = post, post_text
        self.type_name = f"{item.type_name}_array"
        self.py_type = tuple[item.py_type, ...]

    def parse(self, text: str) -> tuple:
        items = split_array(text)
        values = []
        for raw in items:
            try:
                values.append(self.item.parse(raw))
            except ValueError:
                raise ValueError(f'{self.fail()}; bad item "{raw}"') from None
        if self.lengths is not None and len(values) not in self.lengths:
            raise ValueError(f"got {len(values)} values; {self.fail()}")
        if self.distinct and len(set(values)) != len(values):
            raise ValueError(f"values must be distinct; {self.fail()}")
        result = tuple(values)
        return self.post(result) if self.post else result

    def format(self, value: Any) -> str:
        return join_array([self.item.format(v) for v in value])

    def describe(self) -> str:
        if self.lengths is None:
            count = "values"
        else:
            count = " or ".join(str(n) for n in self.lengths) + " values"
        text = f"a comma-separated list of {count}, each {self.item.describe()}"
        if self.distinct:
            text += ", all distinct"
        return text + (f" ({self.post_text})" if self.post_text else "")


class Spatial(Kind):
    """1 to 3 integers for the 3 spatial axes.

    ``mode="atleast3d"`` (NiftyNet ``spatial_atleast3d``, window sizes): fewer than 3 values are
    padded with 1; empty stays ``()``. ``mode="repeat"`` (``spatialnumarray``, padding/border):
    fewer than 3 values repeat the last; empty means ``(0, 0, 0)``.
    """

    def __init__(self, mode: str, lo: int):
        self.mode, self.lo = mode, lo
        self.type_name = "spatial_atleast3d" if mode == "atleast3d" else "spatialnumarray"
        self.py_type = tuple[int, ...]
        self._array = Array(Int(lo=lo))

    def parse(self, text: str) -> tuple[int, ...]:
        try:
            values = self._array.parse(text)
        except ValueError:
            raise self.fail() from None
        if len(values) > 3:
            raise ValueError(f"got {len(values)} values; {self.fail()}")
        if not values:
            return () if self.mode == "atleast3d" else (0, 0, 0)
        if self.mode == "atleast3d":
            return values + (1,) * (3 - len(values))
        return values + (values[-1],) * (3 - len(values))

    def format(self, value: Any) -> str:
        return join_array([str(int(v)) for v in value])

    def describe(self) -> str:
        bound = "> 0" if self.lo == 1 else f">= {self.lo}"
        if self.mode == "atleast3d":
            return f"1 to 3 integers {bound} ({self.type_name}: fewer than 3 are padded with 1), or empty"
        return f"1 to 3 integers {bound} ({self.type_name}: fewer than 3 repeat the last; empty = 0)"


class PathStr(Str):
    """A path; parsed to ``str``, resolved by the parser to an absolute Path.

    ``base`` is what a relative path is relative to: ``"config"`` (the config file's folder) or
    ``"model_dir"``. ``empty``: ``"model"`` (``<config dir>/model``, for model_dir), ``"base"`` (the
    base folder itself), ``"keep"`` (stays the empty string) or ``"error"``.
    """

    type_name = "path"

    def __init__(self, base: str, empty: str = "error", resolved_type: Any = Path):
        super().__init__()
        self.base, self.empty = base, empty
        self.py_type = resolved_type

    def parse(self, text: str) -> str:
        value = super().parse(text)
        if (not value and self.empty == "error") or "\x00" in value:
            raise self.fail()
        return value

    def describe(self) -> str:
        rel = "the config file's folder" if self.base == "config" else "model_dir"
        return f"a path (relative paths are relative to {rel})"


class PathList(Kind):
    """Comma-separated folders, relative ones resolved against the config file's folder."""

    type_name = "path_array"
    py_type = tuple[Path, ...]

    def parse(self, text: str) -> tuple[str, ...]:
        if "\x00" in text:
            raise self.fail()
        return split_array(text)

    def format(self, value: Any) -> str:
        return join_array([str(v) for v in value])

    def describe(self) -> str:
        return "comma-separated folders (relative ones are relative to the config file's folder)"


# ---- value checks used by several keys ---------------------------------------------------------

def _ordered_range(values: tuple) -> tuple:
    if len(values) == 2 and values[0] > values[1]:
        raise ValueError("expected min, max with min <= max")
    return values


def _increasing(values: tuple) -> tuple:
    if len(values) == 2 and not values[0] < values[1]:
        raise ValueError("expected 2 increasing values (lower, upper)")
    return values


_AXIS_PAIRS = ("LR", "AP", "SI")


def _axcodes(values: tuple) -> tuple:
    if not values:
        return values
    codes = tuple(v.upper() for v in values)
    axes = []
    for code in codes:
        pair = [p for p in _AXIS_PAIRS if code in p and len(code) == 1]
        if not pair:
            raise ValueError(f'"{code}" is not an axis code; expected 3 of L/R, A/P, S/I, e.g. R, A, S')
        axes.append(pair[0])
    if len(codes) != 3 or len(set(axes)) != 3:
        raise ValueError("expected 3 axis codes, one from each of L/R, A/P, S/I, e.g. R, A, S")
    return codes


def _flip_axes(values: tuple) -> tuple:
    if values == (-1,):
        return ()
    if any(v not in (0, 1, 2) for v in values):
        raise ValueError("expected -1 (off) or distinct axes from 0, 1, 2")
    return values


def _probabilities(values: tuple) -> tuple:
    if values and abs(math.fsum(values) - 1.0) > 1e-6:
        raise ValueError(f"expected probabilities summing to 1 (they sum to {math.fsum(values):g})")
    return values


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Key:
    """One INI key: its name, kind, default (as ``kind.parse`` returns it), one-line help text.

    ``used=False``: accepted for NiftyNet compatibility, ignored by uhved_tf (WARNING when set);
    ``note`` says why or what replaces it. ``required``: must be set (the default is never used).
    """

    name: str
    kind: Kind
    default: Any
    help: str
    used: bool = True
    required: bool = False
    note: str = ""

    def default_text(self) -> str:
        if self.required:
            return "required"
        text = self.kind.format(self.default)
        return text if text else "(empty)"


K = Key
INPUT = "INPUT"  # schema name of input sections ([T1], [label], ...); not a section name
FIXED_SECTIONS = ("SYSTEM", "NETWORK", "TRAINING", "INFERENCE", "EVALUATION", "DATASET")
TASK_SECTION = "MULTIMODAL"
TASK_SECTION_ALIASES = ("MULTIMODAL", "SEGMENTATION")
FIXED_AND_TASK = (*FIXED_SECTIONS, TASK_SECTION)
OTHER_TASK_SECTIONS = ("REGRESSION", "CLASSIFICATION", "AUTOENCODER", "GAN", "REGISTRATION")

_NP_PAD_MODES = ("constant", "edge", "minimum", "maximum", "mean", "median", "reflect", "symmetric", "wrap")
_ACTIVATIONS = ("relu", "leakyrelu", "prelu", "elu", "selu", "softplus", "sigmoid", "tanh")
_INITIALIZERS = ("he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "lecun_normal",
                 "lecun_uniform", "orthogonal", "truncated_normal", "random_normal", "random_uniform",
                 "variance_scaling", "zeros", "ones")
_STR_ARRAY = Array(Str(quoted=False))
_NIFTYNET_ONLY = "NiftyNet feature not implemented"
#: The optimisers the trainer builds (:mod:`uhved_tf.training.optimizer`, which takes this list):
#: any other [TRAINING] optimiser is refused when the config is read, not when training starts.
OPTIMISERS = ("adam", "sgd", "momentum", "rmsprop", "adagrad")
#: The training window samplers (NiftyNet's resize and patch samplers are not windows U-HVED trains on).
WINDOW_SAMPLERS = ("uniform", "balanced", "weighted")

INPUT_KEYS: tuple[Key, ...] = (
    K("csv_file", PathStr("config", empty="keep", resolved_type=str), "",
      "CSV of subject_id,path rows listing this section's files; used instead of searching when the file exists"),
    K("path_to_search", PathList(), (),
      "Folder(s) searched recursively for this section's NIfTI files"),
    K("filename_contains", _STR_ARRAY, (),
      "Substrings a file name must all contain (removed to form the subject id); required for sections "
      "named in the task section"),
    K("filename_not_contains", _STR_ARRAY, (),
      "Files whose name contains any of these substrings are excluded (e.g. _t1ce for the T1 section)"),
    K("filename_removefromid", Regex(), "",
      "Regular expression removed from file names to form the subject id"),
    K("interp_order", Int(0, 3), 1,
      "Spline order used to resample this section's volumes (0 = nearest neighbour: use 0 for labels)"),
    K("pixdim", Array(Float(lo=0, lo_open=True), lengths=(0, 3)), (),
      "Voxel size (mm) to resample to; empty keeps the native spacing"),
    K("axcodes", Array(Str(quoted=False), post=_axcodes, post_text="3 codes, one of L/R, A/P, S/I per axis"), (),
      "Orientation to reorient to (nibabel axis codes, e.g. R, A, S); empty keeps the file's orientation"),
    K("spatial_window_size", Spatial("atleast3d", lo=1), (),
      "Training patch size in voxels; divisible by 2^(levels-1); the same for every modality section"),
    K("loader", Str(), "", "NiftyNet image loader (nibabel, simpleitk, ...)", used=False,
      note="uhved_tf always reads NIfTI with nibabel"),
    K("csv_data_file", Str(), "", "NiftyNet CSV features file for the CSV sampler", used=False,
      note=_NIFTYNET_ONLY),
    K("to_ohe", Bool(), False, "NiftyNet one-hot encoding of CSV features", used=False, note=_NIFTYNET_ONLY),
)

SYSTEM_KEYS: tuple[Key, ...] = (
    K("cuda_devices", Str(), "",
      "Value for CUDA_VISIBLE_DEVICES set by the command line before TensorFlow starts; empty leaves it unchanged"),
    K("num_threads", Int(lo=1), 2, "Parallel threads for reading and preprocessing volumes"),
    K("num_gpus", Int(lo=0), 1, "NiftyNet's number of training GPUs", used=False,
      note="use distribution_strategy = mirrored to train on all visible GPUs"),
    K("model_dir", PathStr("config", empty="model"), "",
      "Folder for checkpoints, logs, the split file and the resolved config; empty = <config dir>/model"),
    K("dataset_split_file", PathStr("model_dir"), f"./{ModelDir.SPLIT}",
      "CSV assigning subjects to Training/Validation/Inference; created from the exclude fractions if missing"),
    K("event_handler", _STR_ARRAY,
      ("model_saver", "model_restorer", "sampler_threading", "apply_gradients", "output_interpreter",
       "console_logger", "tensorboard_logger", "performance_logger"),
      "NiftyNet engine event handlers", used=False, note="the training loop is fixed"),
    K("iteration_generator", Str(), "iteration_generator", "NiftyNet iteration message generator",
      used=False, note="the training loop is fixed"),
    K("seed", Int(lo=0), 0, "Seed of every random choice (split, sampling, subsets, augmentation, init)"),
    K("distribution_strategy", Choice("default", "mirrored", "multi_worker"), "default",
      "tf.distribute strategy: default (one device), mirrored (all visible GPUs), multi_worker"),
    K("mixed_precision", Choice("none", "mixed_float16", "mixed_bfloat16"), "none",
      "Keras mixed-precision policy (none = float32 everywhere)"),
)

NETWORK_KEYS: tuple[Key, ...] = (
    K("name", Str(), "", "Network: a registered name (u_hved, u_hemis, hemis, single) or the original "
      "u_hved.u_hved_net.U_HVED, or extensions.module.Class", required=True),
    K("activation_function", Choice(*_ACTIVATIONS), "relu",
      "Activation of the conv blocks; NiftyNet's default relu is kept, the original U-HVED hard-coded "
      "leakyrelu (config/uhved.ini sets it)"),
    K("batch_size", Int(lo=1), 2, "Patches per training iteration (and per inference step)"),
    K("smaller_final_batch_mode", Choice("pad", "drop", "dynamic"), "pad",
      "Last incomplete batch at inference: pad it, drop it or run a smaller batch", used=False, note='inference batches of any size are supported (dynamic)'),
    K("decay", Float(lo=0), 0.0, "Weight-decay (regularisation) factor on the conv kernels"),
    K("reg_type", Choice("L1", "L2"), "L2", "Weight regulariser type"),
    K("decay_reduction", Choice("mean", "sum"), "mean",
      "How the conv kernels' weight-decay penalties are combined: mean over the kernels (the original "
      "U-HVED code) or sum (Keras' convention, n_kernels times stronger)"),
    K("volume_padding_size", Spatial("repeat", lo=0), (0, 0, 0),
      "Voxels padded on each side of every volume before sampling; removed from outputs"),
    K("volume_padding_mode", Choice(*_NP_PAD_MODES), "minimum", "numpy.pad mode of volume_padding_size", used=False, note='padding outside the image is 0 after whitening'),
    K("volume_padding_to_size", Spatial("repeat", lo=0), (0, 0, 0),
      "NiftyNet: pad volumes up to this size", used=False, note=_NIFTYNET_ONLY),
    K("window_sampling", Choice(*WINDOW_SAMPLERS), "uniform",
      "Training window sampler: uniform, balanced (each label class equally likely at the centre) or weighted (tumour "
      "voxels 10x more likely); NiftyNet's resize and patch are not available"),
    K("force_output_identity_resizing", Bool(), False, "NiftyNet regression output option",
      used=False, note="regression only"),
    K("queue_length", Int(lo=1), 5, "Patches buffered ahead of training (at least 5 x batch_size are used)"),
    K("multimod_foreground_type", Choice("and", "or", "multi"), "and",
      "How per-modality foreground masks are combined for normalisation", used=False, note='each modality uses its own foreground; the crop uses the union'),
    K("histogram_ref_file", PathStr("model_dir"), f"./{ModelDir.HISTOGRAM}",
      "Nyul histogram landmarks file; trained on the training subjects if missing"),
    K("norm_type", Choice("percentile", "quartile"), "percentile", "Nyul landmark type"),
    K("cutoff", Array(Float(0, 1), lengths=(2,), post=_increasing), (0.01, 0.99),
      "Lower and upper intensity percentiles of the Nyul standardisation"),
    K("foreground_type", Choice("otsu_plus", "otsu_minus", "thresh_plus", "thresh_minus", "mean_plus"),
      "otsu_plus", "Foreground mask used for normalisation statistics"),
    K("normalisation", Bool(), False, "Nyul histogram standardisation"),
    K("whitening", Bool(), False, "Zero-mean unit-variance intensity whitening per volume"),
    K("normalise_foreground_only", Bool(), False, "Compute normalisation statistics on the foreground only"),
    K("nan_policy", Choice("error", "zero"), "error",
      "Non-finite (NaN/Inf) voxels in an image file: error (refuse the file) or zero (replace them with 0 "
      "and log a warning); labels are always refused"),
    K("rgb_normalisation", Bool(), False, "NiftyNet 2-D RGB normalisation", used=False, note="2-D RGB only"),
    K("weight_initializer", Choice(*_INITIALIZERS), "he_normal", "Keras initializer of the conv kernels", used=False, note='not implemented yet: convolutions use he_normal'),
    K("bias_initializer", Choice(*_INITIALIZERS), "zeros", "Keras initializer of the biases", used=False, note='not implemented yet: biases start at zero'),
    K("weight_initializer_args", Str(), "", "NiftyNet initializer keyword arguments (YAML dict)",
      used=False, note=_NIFTYNET_ONLY),
    K("bias_initializer_args", Str(), "", "NiftyNet initializer keyword arguments (YAML dict)",
      used=False, note=_NIFTYNET_ONLY),
    K("keep_prob", Float(0, 1, lo_open=True), 1.0, "NiftyNet dropout keep probability", used=False,
      note="U-HVED has no dropout"),
    K("base_width", Int(lo=1), 8, "Channels of the first encoder level (doubled at each level)"),
    K("levels", Int(2, 8), 4, "Number of latent scales (resolution levels) of the encoders/decoders"),
    K("logvar_clip", Float(lo=0, lo_open=True), 50.0,
      "Latent log-variances are clipped to [-logvar_clip, logvar_clip]"),
    K("subset", Array(Str(quoted=False), distinct=True), (),
      "Network single only: the modalities (names from [MULTIMODAL] image) concatenated as its input; "
      "inference needs all of them; empty = all modalities"),
)

_RANGE = Array(Float(), lengths=(0, 2), post=_ordered_range, post_text="min, max")

TRAINING_KEYS: tuple[Key, ...] = (
    K("optimiser", Choice(*OPTIMISERS, aliases={"gradientdescent": "sgd"}), "adam",
      "Optimiser (NiftyNet's gradientdescent = sgd)"),
    K("lr", Float(lo=0, lo_open=True), 0.01, "Initial learning rate"),
    K("loss_type", Str(), "Dice", "NiftyNet loss name", used=False,
      note="the loss is fixed: loss_weight_dice/ce/recon/kl weight its terms"),
    K("sample_per_volume", Int(lo=1), 1, "Training patches drawn from each loaded volume"),
    K("starting_iter", Int(lo=-1), 0, "Iteration to resume from (0 = start, -1 = latest checkpoint)"),
    K("max_iter", Int(lo=0), 10000, "Total number of training iterations"),
    K("save_every_n", Int(lo=0), 500, "Checkpoint every n iterations (0 = only at the end)"),
    K("tensorboard_every_n", Int(), 20, "Write TensorBoard summaries every n iterations (<= 0 = off)"),
    K("max_checkpoints", Int(lo=1), 100, "Checkpoints kept"),
    K("validation_every_n", Int(), -1, "Validate every n iterations (<= 0 = off)"),
    K("validation_max_iter", Int(lo=1), 1, "Validation batches per validation", used=False, note='every validation round segments all validation cases'),
    K("exclude_fraction_for_validation", Float(0, 1, hi_open=True), 0.0,
      "Fraction of subjects put in the validation split when the split file is created"),
    K("exclude_fraction_for_inference", Float(0, 1, hi_open=True), 0.0,
      "Fraction of subjects put in the inference (test) split when the split file is created"),
    K("rotation_angle", _RANGE, (), "Rotation augmentation range in degrees (min, max) about all axes; empty = off"),
    K("rotation_angle_x", _RANGE, (), "Rotation augmentation range in degrees about the x axis; empty = off"),
    K("rotation_angle_y", _RANGE, (), "Rotation augmentation range in degrees about the y axis; empty = off"),
    K("rotation_angle_z", _RANGE, (), "Rotation augmentation range in degrees about the z axis; empty = off"),
    K("scaling_percentage", Array(Float(lo=-100, lo_open=True), lengths=(0, 2), post=_ordered_range,
                                  post_text="min, max"), (),
      "Scaling augmentation range in percent (min, max); empty = off"),
    K("isotropic_scaling", Bool(), False, "Use one scaling factor for all axes"),
    K("antialiasing", Bool(), True, "Gaussian smoothing before down-scaling augmentation", used=False, note='not implemented: scaling augmentation resamples without smoothing'),
    K("random_flipping_axes", Array(Int(lo=-1, hi=2), distinct=True, post=_flip_axes,
                                    post_text="-1 = off, else axes from 0, 1, 2"), (),
      "Axes flipped at random (each with probability 0.5); -1 or empty = off"),
    K("bias_field_range", Array(Float(), lengths=(0, 2), post=_ordered_range), (),
      "NiftyNet bias-field augmentation range", used=False, note=_NIFTYNET_ONLY),
    K("bf_order", Int(lo=0), 3, "NiftyNet bias-field polynomial order", used=False, note=_NIFTYNET_ONLY),
    K("do_elastic_deformation", Bool(), False, "NiftyNet elastic deformation augmentation", used=False,
      note=_NIFTYNET_ONLY),
    K("num_ctrl_points", Int(lo=1), 4, "NiftyNet elastic deformation control points", used=False,
      note=_NIFTYNET_ONLY),
    K("deformation_sigma", Float(lo=0), 15.0, "NiftyNet elastic deformation sigma", used=False,
      note=_NIFTYNET_ONLY),
    K("proportion_to_deform", Float(0, 1), 0.5, "NiftyNet proportion of deformed patches", used=False,
      note=_NIFTYNET_ONLY),
    K("vars_to_restore", Str(), "", "NiftyNet fine-tuning: variables to restore (regex)", used=False,
      note=_NIFTYNET_ONLY),
    K("vars_to_freeze", Str(), "", "NiftyNet fine-tuning: variables to freeze (regex)", used=False,
      note=_NIFTYNET_ONLY),
    K("patience", Int(lo=1), 100, "Early stopping: number of validation rounds looked at (see early_stopping_mode)"),
    K("early_stopping_mode", Choice("mean", "validation_up"), "mean",
      "Early stopping on the validation Dice: mean (the mean of the last `patience` scores is not above "
      "the best before them) or validation_up (the score fell `patience` times in a row); NiftyNet's "
      "other modes are not available"),
    K("lr_decay_factor", Float(lo=1), 4.0,
      "The learning rate is divided by this factor every lr_decay_every iterations"),
    K("lr_decay_every", Int(lo=1), 10000,
      "Iterations between learning-rate decays (the original code's 10 was a typo for 10^4)"),
    K("loss_weight_dice", Float(lo=0), 1.0, "Weight of the Dice loss of the segmentation"),
    K("loss_weight_ce", Float(lo=0), 1.0, "Weight of the cross-entropy loss of the segmentation"),
    K("loss_weight_recon", Float(lo=0), 0.1, "Weight of the L2 reconstruction loss of the modalities"),
    K("loss_weight_kl", Float(lo=0), 0.1, "Weight of the KL divergence of the latent posteriors"),
    K("kl", Choice("original", "paper"), "paper",
      "Form of the KL term: original (the original code's: KL of all 15 subsets' posteriors to N(0, I) / 15 "
      "+ KL of the drawn subset's to each other subset's / 14) or paper (KL of the drawn subset's posterior "
      "to N(0, I) only); docs/losses.md"),
    K("dice", Choice("squared", "plain"), "plain",
      "Form of the soft Dice loss: squared (NiftyNet's: sum p^2 + sum y in the denominator) or plain "
      "(sum p + sum y); docs/losses.md"),
    K("subset_policy", Choice("uniform_size", "uniform_subset", "prior"), "uniform_size",
      "Training modality subsets: uniform_size (size uniform in 1..M, as U-HVED), uniform_subset, or prior"),
    K("subset_prior", Array(Float(lo=0), post=_probabilities, post_text="summing to 1"), (),
      "Probabilities of the 2^M-1 modality subsets, ordered by size then lexicographically by position in "
      "[MULTIMODAL] image (T1; T1c; T2; Flair; T1+T1c; ...); required iff subset_policy = prior"),
    K("validation_subsets", Str(), "full;singles",
      "Modality subsets scored at each validation: all, full, singles or e.g. \"T1c,Flair;T2\" (separated by ;)"),
    K("allow_missing_modalities", Bool(), False,
      "Accept subjects lacking some modality files (only their available modalities are used)"),
)

INFERENCE_KEYS: tuple[Key, ...] = (
    K("spatial_window_size", Spatial("atleast3d", lo=1), (),
      "Inference window in voxels, divisible by 2^(levels-1); empty = the training window"),
    K("border", Spatial("repeat", lo=0), (0, 0, 0), "Voxels cropped from each side of each output window"),
    K("inference_iter", Int(lo=-1), -1,
      "NiftyNet's checkpoint iteration used for inference (-1 = latest); same as checkpoint = N"),
    K("checkpoint", CheckpointChoice(), "latest",
      "Checkpoint used by inference, evaluate and export: latest, best (the best validation score, kept "
      "when validation_every_n > 0) or an iteration N"),
    K("save_seg_dir", PathStr("model_dir", empty="base"), "./output", "Output folder (relative to model_dir)"),
    K("output_postfix", Str(), "_niftynet_out", "Suffix of output file names", used=False, note='outputs are named <id>_seg.nii.gz, <id>_<modality>_synth.nii.gz, <id>_uncertainty.nii.gz'),
    K("output_interp_order", Int(0, 3), 0, "Spline order used to resample outputs back to the input grid", used=False, note='segmentations are resampled with order 0, images with order 1'),
    K("dataset_to_infer", Choice("", "all", "training", "validation", "inference"), "",
      "Subjects to infer: empty = the inference split if any else all, or all/training/validation/inference"),
    K("fill_constant", Float(), 0.0, "Value of output voxels not covered by any window", used=False, note='voxels outside the bounding box of the brain that no window reaches are background (0 in images)'),
    K("samples", Int(lo=0), 10,
      "Posterior samples averaged for the segmentation (0 = decode the posterior mean)"),
    K("modalities", _STR_ARRAY, (),
      "Modalities given to the model at inference (names from [MULTIMODAL] image); empty = all"),
    K("window_overlap", Float(0, 1, hi_open=True), 0.5, "Overlap of neighbouring inference windows (fraction)"),
    K("blend_mode", Choice("gaussian", "constant"), "gaussian", "Weighting of overlapping windows"),
    K("tta", Bool(), False, "Test-time augmentation: average the predictions of the 8 mirrorings of each window (8x the cost)"),
    K("output_prob", Bool(), False,
      "Write class probabilities as well as the label map ([MULTIMODAL] output_prob = True also turns it on)"),
    K("save_uncertainty", Bool(), True, "Write the per-voxel uncertainty of the posterior samples"),
    K("save_synthesis", Bool(), True,
      "Synthesise every modality and write the images (False: the image decoders do not run, and evaluate "
      "reports no synthesis scores)"),
)

EVALUATION_KEYS: tuple[Key, ...] = (
    K("evaluations", _STR_ARRAY, (), "NiftyNet: metrics to compute (e.g. dice, hausdorff95)", used=False,
      note="evaluate always reports Dice, HD95, sensitivity and specificity per region and, for networks that "
           "synthesise, PSNR, SSIM and MAE per modality"),
    K("save_csv_dir", PathStr("model_dir", empty="base"), "./evaluation",
      "Folder of the metrics CSV files (relative to model_dir)"),
    K("et_min_voxels", Int(lo=0), 500,
      "Predicted enhancing tumour smaller than this is removed (BraTS post-processing; 0 = off)"),
)

DATASET_KEYS: tuple[Key, ...] = (
    K("path", PathStr("config", empty="keep", resolved_type=str), "",
      "The dataset folder in the layout of its convention (BraTS: the folder of the cases; msd: Task01_BrainTumour; "
      "nnunet: DatasetNNN_Name); finds every input section's files (their path_to_search stays empty)"),
    K("convention", Choice(*CONVENTIONS), "brats2018",
      "Label convention and file layout: brats2018 (2018-2021: labels 0, 1, 2, 4), brats2023 (2023-2024 GLI: 0, 1, "
      "2, 3, enhancing 3), msd (Task01: 1 oedema, 2 non-enhancing, 3 enhancing), nnunet (labels and regions from "
      "dataset.json) or custom; sets the regions scored and the output file names"),
    K("channels", _STR_ARRAY, (),
      "msd / nnunet: the modality of each image channel (channel 0, 1, ...), e.g. Flair, T1, T1c, T2; empty = the "
      "channel names of dataset.json"),
    K("fold", Int(lo=0, hi=3), 0,
      "Fold 1, 2 or 3 of the paper's 3-fold protocol: a seeded split whose test parts (exclude_fraction_for_inference) "
      "do not overlap between folds; 0 = one split drawn from the exclude fractions"),
    K("regions", Str(quoted=False), "",
      "convention = custom: the regions scored, e.g. whole = 1, 2, 3; core = 1, 3; enhancing = 3"),
    K("enhancing_label", Int(lo=-1), -1,
      "convention = custom: the enhancing-tumour label of the [EVALUATION] et_min_voxels post-processing (-1 = none)"),
)

MULTIMODAL_KEYS: tuple[Key, ...] = (
    K("num_classes", Int(lo=2), -1, "Number of segmentation classes (4 for BraTS); equals the length of label_values",
      required=True),
    K("output_prob", Bool(), False, "NiftyNet spelling of [INFERENCE] output_prob (True turns it on)"),
    K("label_normalisation", Bool(), False, "NiftyNet label mapping", used=False,
      note="superseded by label_values, which always maps labels to 0..num_classes-1"),
    K("softmax", Bool(), True, "Apply softmax to the segmentation logits before the loss", used=False, note='the losses always apply softmax to the logits'),
    K("min_sampling_ratio", Float(lo=0), 0.0, "NiftyNet selective sampler option", used=False, note=_NIFTYNET_ONLY),
    K("compulsory_labels", Array(Int(lo=0)), (0, 1), "NiftyNet selective sampler option", used=False,
      note=_NIFTYNET_ONLY),
    K("rand_samples", Int(lo=0), 0, "NiftyNet selective sampler option", used=False, note=_NIFTYNET_ONLY),
    K("min_numb_labels", Int(lo=1), 1, "NiftyNet selective sampler option", used=False, note=_NIFTYNET_ONLY),
    K("proba_connect", Bool(), True, "NiftyNet selective sampler option", used=False, note=_NIFTYNET_ONLY),
    K("evaluation_units", Choice("foreground", "label", "cc"), "foreground", "Granularity of the evaluation", used=False, note='evaluate reports per region (whole/core/enhancing)'),
    K("do_mixup", Bool(), False, "NiftyNet mixup augmentation", used=False, note=_NIFTYNET_ONLY),
    K("mixup_alpha", Float(lo=0), 0.2, "NiftyNet mixup alpha", used=False, note=_NIFTYNET_ONLY),
    K("mix_match", Bool(), False, "NiftyNet mixup option", used=False, note=_NIFTYNET_ONLY),
    K("image", Array(Str(quoted=False), distinct=True), (),
      "Input sections of the modalities, in channel order (e.g. T1, T1c, T2, Flair)", required=True),
    K("label", Array(Str(quoted=False), lengths=(0, 1)), (), "Input section of the segmentation labels"),
    K("weight", _STR_ARRAY, (), "NiftyNet input section of loss weights", used=False, note=_NIFTYNET_ONLY),
    K("sampler", Array(Str(quoted=False), lengths=(0, 1)), (),
      "Input section of the sampling map (window_sampling = weighted/balanced)", used=False, note='window sampling is set by [NETWORK] window_sampling'),
    K("inferred", _STR_ARRAY, (), "NiftyNet input section of inferred images", used=False, note=_NIFTYNET_ONLY),
    K("value", _STR_ARRAY, (), "NiftyNet input section of regression values", used=False, note=_NIFTYNET_ONLY),
    K("choices", Array(Bool()), (),
      "Original U-HVED: one boolean per image modality, present at inference; used when [INFERENCE] "
      "modalities is empty"),
    K("output_mod", _STR_ARRAY, (), "Original U-HVED: output written by inference (seg, T1, ...)",
      used=False, note="superseded: inference writes the segmentation and every synthesised modality"),
    K("label_values", Array(Int(lo=0), distinct=True), PRESETS["brats2018"].label_values,
      "Values of the label files, mapped to classes 0..num_classes-1 in this order"),
)

#: Schema name -> keys. Input sections use :data:`INPUT`.
SCHEMA: dict[str, tuple[Key, ...]] = {
    INPUT: INPUT_KEYS,
    "SYSTEM": SYSTEM_KEYS,
    "NETWORK": NETWORK_KEYS,
    "TRAINING": TRAINING_KEYS,
    "INFERENCE": INFERENCE_KEYS,
    "EVALUATION": EVALUATION_KEYS,
    "DATASET": DATASET_KEYS,
    TASK_SECTION: MULTIMODAL_KEYS,
}
KEYS_BY_SECTION: dict[str, dict[str, Key]] = {s: {k.name: k for k in keys} for s, keys in SCHEMA.items()}



def default(section: str, key: str):
    """The schema's default of ``[section] key``: settings objects outside the config take their
    defaults from here, so that a default is written once."""
    return KEYS_BY_SECTION[section][key].default


for _section, _keys in SCHEMA.items():  # the schema is data: check it once, at import
    assert len(KEYS_BY_SECTION[_section]) == len(_keys), f"duplicate key in {_section}"


# --------------------------------------------------------------------------------------------
# Section dataclasses, generated from the keys
# --------------------------------------------------------------------------------------------

def _section_class(cls_name: str, section: str, title: str, extra: Sequence[tuple[str, Any, str]] = ()) -> type:
    fields = [(name, typ) for name, typ, _ in extra] + [(k.name, k.kind.py_type) for k in SCHEMA[section]]
    lines = [f"{title} (frozen; built by :func:`uhved_tf.config.load_config`).", "", "Attributes:"]
    lines += [f"    {name}: {text}" for name, _, text in extra]
    for k in SCHEMA[section]:
        flag = "" if k.used else " [ignored by uhved_tf]"
        lines.append(f"    {k.name} ({k.kind.type_name}, default {k.default_text()}): {k.help}{flag}")
    cls = dataclasses.make_dataclass(cls_name, fields, frozen=True)
    cls.__module__ = __name__  # (make_dataclass has no module= argument before Python 3.12)
    cls.__doc__ = "\n".join(lines)
    return cls


SystemConfig = _section_class("SystemConfig", "SYSTEM", "[SYSTEM] section")
NetworkConfig = _section_class("NetworkConfig", "NETWORK", "[NETWORK] section")
TrainingConfig = _section_class("TrainingConfig", "TRAINING", "[TRAINING] section")
InferenceConfig = _section_class("InferenceConfig", "INFERENCE", "[INFERENCE] section")
EvaluationConfig = _section_class("EvaluationConfig", "EVALUATION", "[EVALUATION] section")
DatasetConfig = _section_class("DatasetConfig", "DATASET", "[DATASET] section")
MultimodalConfig = _section_class("MultimodalConfig", TASK_SECTION,
                                  "[MULTIMODAL] task section ([SEGMENTATION] is an alias)")
InputConfig = _section_class("InputConfig", INPUT, "An input-data section ([T1], [label], ...)",
                             extra=[("name", str, "the section name, e.g. T1")])


# --------------------------------------------------------------------------------------------
# Documentation generated from the keys
# --------------------------------------------------------------------------------------------

def key_comment(key: Key) -> str:
    """The comment line written above ``key`` in shipped and resolved INI files."""
    prefix = "" if key.used else "(ignored by uhved_tf, accepted for NiftyNet compatibility) "
    return f"# {prefix}{key.help} [{key.kind.type_name}; default: {key.default_text()}]"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def key_reference_markdown() -> str:
    """Every section and key with its type, default and help text, as Markdown tables."""
    titles = {
        INPUT: "Input sections (`[T1]`, `[T1c]`, `[label]`, ...: every section that is not listed below)",
        "SYSTEM": "`[SYSTEM]`",
        "NETWORK": "`[NETWORK]`",
        "TRAINING": "`[TRAINING]`",
        "INFERENCE": "`[INFERENCE]`",
        "EVALUATION": "`[EVALUATION]`",
        "DATASET": "`[DATASET]` (the dataset's label convention: label values, regions scored)",
        TASK_SECTION: "`[MULTIMODAL]` (task section; `[SEGMENTATION]` is accepted as an alias)",
    }
    out = [
        "# uhved_tf configuration keys",
        "",
        "Generated by `uhved_tf.config.key_reference_markdown()` from `uhved_tf/config/schema.py`.",
        "Keys marked *ignored* are accepted for NiftyNet compatibility and logged as a warning when set.",
        "Booleans: yes/true/y/1/on, no/false/n/0/off. Arrays: `a, b, c`, `(a, b, c)`, `[a, b, c]` or `{a, b, c}`.",
        "",
    ]
    for section, keys in SCHEMA.items():
        out += [f"## {titles[section]}", "", "| key | type | default | description |", "|---|---|---|---|"]
        for k in keys:
            desc = _md(k.help)
            if not k.used:
                desc = f"*ignored* ({_md(k.note)}). " + desc if k.note else "*ignored*. " + desc
            out.append(f"| `{k.name}` | {k.kind.type_name} | `{_md(k.default_text())}` | {desc} |")
        out.append("")
    return "\n".join(out)
