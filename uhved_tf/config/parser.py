"""INI file -> typed, validated :class:`Config`, with NiftyNet's semantics.

Steps (each user error raises :class:`~uhved_tf.errors.ConfigError` naming file, section, key and
value, and what was expected):

1. ``configparser`` (interpolation off, no ``[DEFAULT]`` magic, no inline comments, duplicate
   sections/keys rejected) reads the raw strings. Section names are standardised as in NiftyNet
   (``re.sub('[^0-9a-zA-Z_\\- ]+', '', name.strip())``); ``SYSTEM``, ``NETWORK``, ``TRAINING``,
   ``INFERENCE``, ``EVALUATION`` and the task section ``MULTIMODAL`` (alias ``SEGMENTATION``) are
   matched case-insensitively; every other section is an input section (``[T1]``, ``[label]``).
2. Every key must be known. A key that belongs to exactly one other fixed/task section is moved
   there with a WARNING (NiftyNet accepts misplaced keys; its examples put ``queue_length`` in
   ``[SYSTEM]``). Unknown keys get a did-you-mean error.
3. Command-line overrides replace raw strings, so they are validated like the file:
   NiftyNet-style ``--key value`` / ``--key=value`` for keys of the fixed and task sections, and
   ``SECTION.key=value`` (``--set``) for any key of any section.
4. Each value is typed by its schema :class:`~uhved_tf.config.schema.Kind`; keys ignored by
   uhved_tf log a WARNING when set; relative paths are resolved (``model_dir`` against the config
   file's folder, ``dataset_split_file`` / ``histogram_ref_file`` / ``save_seg_dir`` /
   ``save_csv_dir`` against ``model_dir``, ``path_to_search`` / ``csv_file`` against the config
   file's folder).
5. Cross-field checks: task sections exist, window sizes divisible by ``2**(levels-1)`` and equal
   across modalities, ``num_classes == len(label_values)``, split fractions, subset prior, ...

:meth:`Config.to_ini` writes the fully resolved config (every key, help text as comments); parsing
it again gives an equal :class:`Config`.
"""

from __future__ import annotations

import configparser
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uhved_tf.config import schema as S
from uhved_tf.config.schema import (
    EvaluationConfig,
    InferenceConfig,
    InputConfig,
    MultimodalConfig,
    NetworkConfig,
    SystemConfig,
    TrainingConfig,
)
from uhved_tf.io.atomic import atomic_write_text
from uhved_tf.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "Config",
    "RESOLVED_CONFIG_NAME",
    "annotate_ini",
    "load_config",
    "parse_config_text",
    "standardise_section_name",
]

RESOLVED_CONFIG_NAME = "config_resolved.ini"
_NO_DEFAULT_SECTION = "\n"  # cannot appear in a header line, so configparser's [DEFAULT] magic is off
_SECTION_JUNK = re.compile(r"[^0-9a-zA-Z_\- ]+")
_FIXED_AND_TASK = (*S.FIXED_SECTIONS, S.TASK_SECTION)
_HEADER_LINE = re.compile(r"^\[(?P<name>.+)\]")
_KEY_LINE = re.compile(r"^(?P<key>[A-Za-z0-9_]+)\s*[=:]")
_GENERATED_COMMENT = re.compile(r"^# .* \[[^\[\]]*; default: .*\]$")


def standardise_section_name(name: str) -> str:
    """NiftyNet's section-name standardisation (plus a final strip, so names round-trip)."""
    return _SECTION_JUNK.sub("", name.strip()).strip()


def _schema_of(std_name: str) -> str:
    """Schema name (key of :data:`~uhved_tf.config.schema.SCHEMA`) of a standardised section name."""
    upper = std_name.upper()
    if upper in S.FIXED_SECTIONS:
        return upper
    if upper in S.TASK_SECTION_ALIASES:
        return S.TASK_SECTION
    return S.INPUT


# --------------------------------------------------------------------------------------------
# The typed config
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """The whole configuration: one frozen dataclass per section (see :mod:`uhved_tf.config.schema`).

    ``inputs`` maps input-section names to their :class:`InputConfig`, in file order. ``source`` is
    the config file (``None`` when parsed from text); it is not part of equality.
    """

    system: SystemConfig
    network: NetworkConfig
    training: TrainingConfig
    inference: InferenceConfig
    evaluation: EvaluationConfig
    task: MultimodalConfig
    inputs: dict[str, InputConfig]
    source: Path | None = field(default=None, compare=False)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modality (input-section) names in channel order, e.g. ``("T1", "T1c", "T2", "Flair")``."""
        return tuple(self.task.image)

    @property
    def label_section(self) -> str | None:
        """Name of the label input section, or None when no label is configured."""
        return self.task.label[0] if self.task.label else None

    @property
    def modality_inputs(self) -> list[InputConfig]:
        """The modalities' input sections, in channel order."""
        return [self.inputs[name] for name in self.modalities]

    @property
    def label_input(self) -> InputConfig | None:
        """The label input section, or None."""
        return self.inputs[self.label_section] if self.label_section else None

    @property
    def spatial_window_size(self) -> tuple[int, int, int]:
        """The training patch size (common to the modality and label sections)."""
        sections = self.modality_inputs + ([self.label_input] if self.label_input else [])
        return next(s.spatial_window_size for s in sections if s.spatial_window_size)

    @property
    def inference_modalities(self) -> tuple[str, ...]:
        """Modalities given to the model at inference (all of them unless [INFERENCE] modalities says)."""
        return tuple(self.inference.modalities) or self.modalities

    def to_ini(self) -> str:
        """The fully resolved config as INI text: every key, help text as comments.

        Keys ignored by uhved_tf that still have their default value are written commented out, so
        that re-reading the file does not warn about them. ``parse_config_text(cfg.to_ini(), ...)``
        gives a Config equal to ``cfg``.
        """
        lines = [
            "# uhved_tf configuration, fully resolved: every key with the value that was used,",
            "# defaults included, relative paths made absolute.",
            f"# Generated from: {_one_line(str(self.source)) if self.source is not None else '(text)'}",
        ]
        for inp in self.inputs.values():
            lines += _section_lines(inp.name, S.INPUT, inp)
        sections = (self.system, self.network, self.training, self.inference, self.evaluation, self.task)
        for name, values in zip(_FIXED_AND_TASK, sections):
            lines += _section_lines(name, name, values)
        return "\n".join(lines) + "\n"

    def write_resolved(self, model_dir: str | Path | None = None) -> Path:
        """Write :meth:`to_ini` to ``<model_dir>/config_resolved.ini`` (default: system.model_dir)."""
        folder = Path(model_dir) if model_dir is not None else Path(self.system.model_dir)
        target = folder / RESOLVED_CONFIG_NAME
        try:
            atomic_write_text(target, self.to_ini())
        except OSError as exc:
            raise ConfigError(f"cannot write the resolved config to {target}: {exc.strerror or exc}") from None
        logger.info("resolved config written to %s", target)
        return target


def _section_lines(name: str, schema: str, values: Any) -> list[str]:
    lines = ["", f"[{name}]"]
    for key in S.SCHEMA[schema]:
        value = getattr(values, key.name)
        text = key.kind.format(value)
        lines.append(S.key_comment(key))
        if not key.used and value == key.default:
            lines.append(f"# {key.name} = {text}".rstrip())
        else:
            lines.append(f"{key.name} = {text}".rstrip())
    return lines


# --------------------------------------------------------------------------------------------
# Raw sections
# --------------------------------------------------------------------------------------------

@dataclass
class _Raw:
    """One section's raw strings. ``origin[key]`` is "" for the file, else which override set it."""

    name: str
    schema: str
    values: dict[str, str] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)


def _configparser_message(exc: configparser.Error, where: str) -> str:
    if isinstance(exc, configparser.DuplicateOptionError):
        return (f'{where}, line {exc.lineno}: key "{exc.option}" appears twice in [{exc.section}]; '
                f"keep only one")
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"{where}, line {exc.lineno}: section [{exc.section}] appears twice; merge the two"
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return (f"{where}, line {exc.lineno}: {exc.line.strip()!r} comes before the first [SECTION] "
                f"header")
    if isinstance(exc, configparser.ParsingError) and exc.errors:
        lineno, line = exc.errors[0]
        return (f"{where}, line {lineno}: cannot parse {line}: expected \"key = value\", a [SECTION] "
                f"header, or a comment starting with # or ;")
    return f"{where}: {exc}"


def _read_sections(text: str, where: str) -> dict[str, _Raw]:
    parser = configparser.ConfigParser(interpolation=None, default_section=_NO_DEFAULT_SECTION,
                                       strict=True, empty_lines_in_values=False)
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # as a file read in text mode would be
    try:
        parser.read_string(text, source=where)
    except configparser.Error as exc:
        raise ConfigError(_configparser_message(exc, where)) from None

    raws: dict[str, _Raw] = {}
    by_lower: dict[str, str] = {}
    task_seen = None
    for section in parser.sections():
        name = standardise_section_name(section)
        if not name:
            raise ConfigError(f"{where}: section [{section}] has no letters or digits in its name")
        upper = name.upper()
        if upper in S.OTHER_TASK_SECTIONS:
            raise ConfigError(f"{where}: [{section}] is the task section of another NiftyNet application; "
                              f"uhved_tf reads [{S.TASK_SECTION}] (or [SEGMENTATION])")
        schema = _schema_of(name)
        if schema == S.INPUT:
            key = name
        elif schema == S.TASK_SECTION:
            if task_seen is not None:
                raise ConfigError(f"{where} has both [{task_seen}] and [{section}]; keep exactly one task "
                                  f"section ([{S.TASK_SECTION}], or its alias [SEGMENTATION])")
            task_seen = section
            key = upper
        else:
            key = upper
        if key.lower() in by_lower:
            raise ConfigError(f"{where}: sections [{by_lower[key.lower()]}] and [{section}] are the same "
                              f"section once standardised (case and characters other than letters, "
                              f"digits, _ - and space are ignored); merge them")
        by_lower[key.lower()] = section
        raw = _Raw(name=key, schema=schema)
        for option in parser.options(section):
            value = parser.get(section, option, raw=True)
            raw.values[option.strip()] = _one_line(value or "")
            raw.origin[option.strip()] = ""
        raws[key] = raw
    return raws


def _task_name(raws: dict[str, _Raw]) -> str | None:
    return next((name for name, raw in raws.items() if raw.schema == S.TASK_SECTION), None)


def _input_names(raws: dict[str, _Raw]) -> list[str]:
    return [name for name, raw in raws.items() if raw.schema == S.INPUT]


def _sections_listing(names: Sequence[str]) -> str:
    return ", ".join(f"[{n}]" for n in names) if names else "none"


def _check_section_typos(raws: dict[str, _Raw], where: str) -> None:
    """An input section named like a fixed section ([TRAINNG]) and not used by the task is a typo."""
    task = _task_name(raws)
    referenced: set[str] = set()
    if task is not None:
        for group in ("image", "label", "sampler"):
            try:
                referenced.update(n.lower() for n in S.split_array(raws[task].values.get(group, "")))
            except ValueError:
                pass
    known = (*S.FIXED_SECTIONS, *S.TASK_SECTION_ALIASES)
    for name in _input_names(raws):
        if name.lower() in referenced:
            continue
        close = S.close_matches(name, known, n=1, cutoff=0.75)
        if close:
            raise ConfigError(f"{where}: section [{name}] is not a known section and is not named in the "
                              f"task section; did you mean [{close[0]}]?")


def _homes(key: str) -> tuple[list[str], bool]:
    """Fixed/task sections having ``key``, and whether input sections have it."""
    return [s for s in _FIXED_AND_TASK if key in S.KEYS_BY_SECTION[s]], key in S.KEYS_BY_SECTION[S.INPUT]


def _unknown_key_message(key: str, section: str, schema: str, where: str) -> str:
    valid = list(S.KEYS_BY_SECTION[schema])
    match = S.suggest_key(key, valid)
    hint = f'; did you mean "{match}"?' if match else "."
    kind = " (an input section)" if schema == S.INPUT else ""
    return f'Unknown key "{key}" in [{section}]{kind} of {where}{hint} Valid keys: {", ".join(valid)}'


def _target_section(raws: dict[str, _Raw], schema: str) -> _Raw:
    """The raw section of a fixed/task schema name, created empty if the file has none."""
    for raw in raws.values():
        if raw.schema == schema:
            return raw
    raws[schema] = _Raw(name=schema, schema=schema)
    return raws[schema]


def _move_misplaced_keys(raws: dict[str, _Raw], where: str) -> None:
    for raw in list(raws.values()):
        for key in list(raw.values):
            if key in S.KEYS_BY_SECTION[raw.schema]:
                continue
            homes, in_input = _homes(key)
            if not homes and not in_input:
                raise ConfigError(_unknown_key_message(key, raw.name, raw.schema, where))
            if len(homes) != 1 or in_input:
                places = [f"[{h}]" for h in homes] + (["the input sections ([T1], [label], ...)"] if in_input else [])
                raise ConfigError(f"key {key} in [{raw.name}] of {where} belongs to {' or '.join(places)}, "
                                  f"not [{raw.name}]; move it there")
            target = _target_section(raws, homes[0])
            if key in target.values:
                raise ConfigError(f"key {key} is set in both [{raw.name}] and [{target.name}] of {where}; "
                                  f"keep only the one in [{target.name}]")
            logger.warning("key %s in [%s] of %s belongs to [%s]; using it there (move it to [%s] to "
                           "silence this warning)", key, raw.name, where, target.name, target.name)
            target.values[key] = raw.values.pop(key)
            target.origin[key] = raw.origin.pop(key)


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------

def _one_line(value: str) -> str:
    """Values are single lines: continuation lines (and line breaks in overrides) become spaces."""
    return " ".join(value.replace("\r\n", "\n").replace("\r", "\n").split("\n")).strip()


def _split_cli(args: Sequence[str]) -> list[tuple[str, str, str]]:
    """["--max_iter", "3", "--lr=0.01"] -> [(key, value, as written), ...]."""
    if isinstance(args, str):
        raise TypeError("overrides must be a sequence of strings, e.g. ['--max_iter', '3'], not one string")
    out = []
    i = 0
    while i < len(args):
        arg = str(args[i])
        if not arg.startswith("--") or len(arg) == 2 or arg[2:].startswith("="):
            raise ConfigError(f'unexpected command-line argument "{arg}": expected --key value or --key=value '
                              f"(NiftyNet style), or --set SECTION.key=value")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
            written = arg
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"command-line option --{body} needs a value: --{body} VALUE or --{body}=VALUE")
            key, value = body, str(args[i + 1])
            written = f"{arg} {value}"
            i += 2
        out.append((key.strip().lower().replace("-", "_"), value, written))
    return out


def _apply_cli_overrides(raws: dict[str, _Raw], args: Sequence[str], where: str) -> None:
    inputs = _input_names(raws)
    for key, value, written in _split_cli(args):
        homes, in_input = _homes(key)
        example_input = inputs[0] if inputs else "T1"
        if not homes and not in_input:
            all_keys = sorted({k for s in _FIXED_AND_TASK for k in S.KEYS_BY_SECTION[s]})
            match = S.suggest_key(key, all_keys)
            hint = f" did you mean --{match}?" if match else ""
            raise ConfigError(f'unknown command-line option "{written}":{hint} (--key value sets a key of '
                              f"{_sections_listing(_FIXED_AND_TASK)}; use --set SECTION.key=value for any key)")
        if not homes:
            raise ConfigError(f'command-line option "{written}": {key} is a key of the input sections '
                              f"({_sections_listing(inputs)}), which --key cannot set; use "
                              f"--set {example_input}.{key}={value} for each section")
        if len(homes) > 1 or in_input:
            places = [f"[{h}]" for h in homes]
            places += [f"the input sections ({_sections_listing(inputs)})"] if in_input else []
            raise ConfigError(f'command-line option "{written}" is ambiguous: {key} is a key of '
                              f"{' and '.join(places)}; use --set SECTION.{key}={value}, e.g. "
                              f"--set {homes[0]}.{key}={value}")
        target = _target_section(raws, homes[0])
        target.values[key] = _one_line(value)
        target.origin[key] = f" (from the command line: {written})"
        logger.info("command line sets [%s] %s = %s", target.name, key, value)


def _find_section(raws: dict[str, _Raw], name: str, written: str, where: str) -> _Raw:
    std = standardise_section_name(name)
    schema = _schema_of(std) if std else S.INPUT
    if std and schema != S.INPUT:
        return _target_section(raws, schema)
    for raw in raws.values():
        if raw.schema == S.INPUT and raw.name.lower() == std.lower() and std:
            return raw
    names = [r.name for r in raws.values() if r.schema == S.INPUT] + list(_FIXED_AND_TASK)
    close = S.close_matches(std or name, names, n=1)
    hint = f" did you mean [{close[0]}]?" if close else ""
    raise ConfigError(f'"{written}": {where} has no section [{name}];{hint} sections: '
                      f"{_sections_listing(names)}")


def _apply_set_overrides(raws: dict[str, _Raw], items: Sequence[str], where: str) -> None:
    if isinstance(items, str):
        raise TypeError("set_overrides must be a sequence of strings, e.g. ['TRAINING.max_iter=10'], not one string")
    for item in items:
        written = f"--set {item}"
        lhs, eq, value = str(item).partition("=")
        section, dot, key = lhs.partition(".")
        key = key.strip().lower()
        if not eq or not dot or not section.strip() or not key:
            raise ConfigError(f'"{written}": expected --set SECTION.key=value, e.g. --set TRAINING.max_iter=10')
        raw = _find_section(raws, section, written, where)
        if key not in S.KEYS_BY_SECTION[raw.schema]:
            homes, in_input = _homes(key)
            elsewhere = [f"--set {h}.{key}={value}" for h in homes]
            elsewhere += [f"--set <input section>.{key}={value}"] if in_input else []
            if elsewhere:
                raise ConfigError(f'"{written}": [{raw.name}] has no key {key}; did you mean '
                                  f"{' or '.join(elsewhere)}?")
            raise ConfigError(f'"{written}": ' + _unknown_key_message(key, raw.name, raw.schema, where))
        raw.values[key] = _one_line(value)
        raw.origin[key] = f" (from the command line: {written})"
        logger.info("command line sets [%s] %s = %s", raw.name, key, value)


# --------------------------------------------------------------------------------------------
# Typing and path resolution
# --------------------------------------------------------------------------------------------

def _bad_value(section: str, key: str, raw: str, origin: str, where: str, detail: str) -> ConfigError:
    hint = ""
    if re.search(r"\s[#;]", raw):
        hint = " (inline comments are not supported: put comments on their own line)"
    return ConfigError(f'[{section}] {key} = "{raw}"{origin} in {where}: {detail}{hint}')


def _type_section(raw: _Raw, where: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key in S.SCHEMA[raw.schema]:
        text = raw.values.get(key.name)
        if text is None:
            if key.required:
                raise ConfigError(f"[{raw.name}] {key.name} is required in {where}: {key.help}")
            values[key.name] = key.default
            continue
        try:
            value = key.kind.parse(text)
        except ValueError as exc:
            raise _bad_value(raw.name, key.name, text, raw.origin.get(key.name, ""), where, str(exc)) from None
        if key.required and value in ("", ()):
            raise ConfigError(f'[{raw.name}] {key.name} = "{text}" in {where}: a value is required: {key.help}')
        if not key.used:
            logger.warning("key %s in [%s] is accepted for NiftyNet compatibility but ignored by uhved_tf: "
                           "%s (%s)", key.name, raw.name, key.note or "not implemented", where)
        values[key.name] = value
    return values


def _absolute(path: str, base: Path) -> Path:
    return Path(os.path.normpath(os.path.join(base, os.path.expanduser(path))))


def _resolve_paths(schema: str, values: dict[str, Any], config_dir: Path, model_dir: Path | None) -> None:
    for key in S.SCHEMA[schema]:
        kind, value = key.kind, values[key.name]
        if isinstance(kind, S.PathList):
            values[key.name] = tuple(_absolute(p, config_dir) for p in value)
        elif isinstance(kind, S.PathStr):
            base = config_dir if kind.base == "config" else model_dir
            assert base is not None, "model_dir must be resolved first"
            if not value:
                if kind.empty == "model":
                    resolved: Any = config_dir / "model"
                elif kind.empty == "base":
                    resolved = base
                else:  # "keep"
                    resolved = ""
            else:
                resolved = _absolute(value, base)
            values[key.name] = kind.py_type(resolved) if resolved != "" else ""
            if key.name == "model_dir":  # [SYSTEM] paths after it are relative to it
                model_dir = values[key.name]


# --------------------------------------------------------------------------------------------
# Cross-field checks
# --------------------------------------------------------------------------------------------

def _nearest_multiples(size: int, divisor: int) -> str:
    lower, upper = (size // divisor) * divisor, -(-size // divisor) * divisor
    return f"use {lower} or {upper}" if lower > 0 else f"use {upper}"


def _check_window(section: str, key: str, window: tuple[int, ...], levels: int, where: str) -> None:
    divisor = 2 ** (levels - 1)
    for size in window:
        if size % divisor:
            shown = ", ".join(map(str, window))
            raise ConfigError(f"[{section}] {key} = {shown} in {where}: {size} is not divisible by {divisor} "
                              f"(2^(levels-1) with levels={levels}); {_nearest_multiples(size, divisor)}")


def _resolve_group(task: str, group: str, names: tuple[str, ...], inputs: dict[str, dict[str, Any]],
                   where: str) -> tuple[str, ...]:
    """Section names of a task group (image, label, ...) with the spelling of the section headers."""
    by_lower = {n.lower(): n for n in inputs}
    out = []
    for name in names:
        if name in inputs:
            out.append(name)
        elif name.lower() in by_lower:
            out.append(by_lower[name.lower()])
        else:
            close = S.close_matches(name, list(inputs), n=1)
            hint = f" Did you mean [{close[0]}]?" if close else ""
            raise ConfigError(f"[{task}] {group} names section [{name}], which is not in {where}.{hint} "
                              f"Input sections present: {_sections_listing(list(inputs))}")
    return tuple(out)


def _cross_check(sections: dict[str, dict[str, Any]], inputs: dict[str, dict[str, Any]], task: str,
                 where: str) -> None:
    """Checks that involve several keys; fills in derived values (modalities, inference window)."""
    net, train, infer = sections["NETWORK"], sections["TRAINING"], sections["INFERENCE"]
    tv = sections[S.TASK_SECTION]

    # Task groups name existing input sections.
    tv["image"] = _resolve_group(task, "image", tv["image"], inputs, where)
    tv["label"] = _resolve_group(task, "label", tv["label"], inputs, where)
    tv["sampler"] = _resolve_group(task, "sampler", tv["sampler"], inputs, where)
    lowered = [n.lower() for n in tv["image"]]
    if len(set(lowered)) != len(lowered):
        raise ConfigError(f"[{task}] image in {where} names the same section twice: {', '.join(tv['image'])}")
    if tv["label"] and tv["label"][0] in tv["image"]:
        raise ConfigError(f"[{task}] in {where}: section [{tv['label'][0]}] is both an image and the label")
    if net["window_sampling"] in ("weighted", "balanced") and not tv["label"]:
        # uhved_tf samples balanced / weighted windows from the label (NiftyNet took a separate
        # sampling map in [task] sampler; that key is accepted and ignored).
        raise ConfigError(f"[NETWORK] window_sampling = {net['window_sampling']} in {where} samples "
                          f"from the label: set [{task}] label")

    used = (*tv["image"], *tv["label"], *tv["sampler"])
    for name, values in inputs.items():
        if name not in used:
            logger.warning("input section [%s] of %s is not named in [%s] image/label/sampler; it is ignored",
                           name, where, task)
            continue
        if not values["csv_file"] and not values["path_to_search"]:
            raise ConfigError(f"[{name}] in {where}: set path_to_search (folders holding its files) or csv_file")
        if not values["csv_file"] and not values["filename_contains"]:
            raise ConfigError(f"[{name}] filename_contains is required in {where} (the substring identifying "
                              f"this section's files, e.g. _t1); sections named in [{task}] need it")
    if tv["label"] and inputs[tv["label"][0]]["interp_order"] != 0:
        logger.warning("label section [%s] of %s has interp_order = %d; labels should use 0 (nearest neighbour)",
                       tv["label"][0], where, inputs[tv["label"][0]]["interp_order"])

    # Windows: divisible by 2^(levels-1), equal across the network's inputs.
    levels = net["levels"]
    windows = {}
    for name in (*tv["image"], *tv["label"]):
        window = inputs[name]["spatial_window_size"]
        if window:
            _check_window(name, "spatial_window_size", window, levels, where)
            windows[name] = window
    if not windows:
        raise ConfigError(f"{where}: set spatial_window_size (the training patch size, e.g. 112, 112, 112) in "
                          f"the modality sections {_sections_listing(tv['image'])}")
    if len(set(windows.values())) > 1:
        shown = "; ".join(f"[{n}] {', '.join(map(str, w))}" for n, w in windows.items())
        raise ConfigError(f"spatial_window_size differs between sections in {where} ({shown}); "
                          f"use the same size everywhere (or leave it empty)")
    train_window = next(iter(windows.values()))
    if infer["spatial_window_size"]:
        # The inference window only tiles the volume: a size the network cannot take (NiftyNet's
        # U-HVED used 140 with 3 poolings) is rounded up, loudly, instead of failing or silently
        # producing a smaller output.
        divisor = 2 ** (levels - 1)
        window = infer["spatial_window_size"]
        rounded = tuple(-(-w // divisor) * divisor for w in window)
        if rounded != tuple(window):
            logger.warning("[INFERENCE] spatial_window_size = %s in %s is not divisible by %d (2^(levels-1)); "
                           "using %s", ", ".join(map(str, window)), where, divisor,
                           ", ".join(map(str, rounded)))
            infer["spatial_window_size"] = rounded
    else:
        infer["spatial_window_size"] = train_window
    for axis, (size, border) in enumerate(zip(infer["spatial_window_size"], infer["border"])):
        if 2 * border >= size:
            raise ConfigError(f"[INFERENCE] border = {', '.join(map(str, infer['border']))} in {where}: "
                              f"2 x border must be smaller than the inference window "
                              f"({', '.join(map(str, infer['spatial_window_size']))}) on every axis "
                              f"(axis {axis}: 2 x {border} >= {size})")

    # Labels.
    if tv["num_classes"] != len(tv["label_values"]):
        raise ConfigError(f"[{task}] num_classes = {tv['num_classes']} in {where} but label_values has "
                          f"{len(tv['label_values'])} values ({', '.join(map(str, tv['label_values']))}); "
                          f"they must match (BraTS: num_classes = 4, label_values = 0, 1, 2, 4)")

    # Splits.
    fv, fi = train["exclude_fraction_for_validation"], train["exclude_fraction_for_inference"]
    if fv + fi >= 1:
        raise ConfigError(f"[TRAINING] exclude_fraction_for_validation + exclude_fraction_for_inference = "
                          f"{fv:g} + {fi:g} in {where}: must be < 1 (some subjects must remain for training)")

    # Modality subsets.
    n_mod = len(tv["image"])
    n_subsets = 2 ** n_mod - 1 if n_mod <= 64 else f"2^{n_mod} - 1"  # (no 10^4-digit numbers in messages)
    prior = train["subset_prior"]
    if train["subset_policy"] == "prior" and not prior:
        raise ConfigError(f"[TRAINING] subset_policy = prior in {where} needs subset_prior: {n_subsets} "
                          f"probabilities, one per non-empty subset of the {n_mod} modalities")
    if train["subset_policy"] != "prior" and prior:
        raise ConfigError(f"[TRAINING] subset_prior is set in {where} but subset_policy = "
                          f"{train['subset_policy']}; set subset_policy = prior or remove subset_prior")
    if prior and len(prior) != n_subsets:
        raise ConfigError(f"[TRAINING] subset_prior in {where} has {len(prior)} values; expected {n_subsets} "
                          f"(one per non-empty subset of the {n_mod} modalities)")

    # Inference modalities ([INFERENCE] modalities, or the original [MULTIMODAL] choices).
    choices = tv["choices"]
    if choices and len(choices) != n_mod:
        raise ConfigError(f"[{task}] choices in {where} has {len(choices)} values; expected one boolean per "
                          f"image modality ({', '.join(tv['image'])})")
    if choices and not any(choices):
        raise ConfigError(f"[{task}] choices in {where}: at least one modality must be True")
    by_lower = {n.lower(): n for n in tv["image"]}
    chosen = []
    for name in infer["modalities"]:
        canonical = name if name in tv["image"] else by_lower.get(name.lower())
        if canonical is None:
            close = S.close_matches(name, tv["image"], n=1)
            hint = f'; did you mean "{close[0]}"?' if close else ""
            raise ConfigError(f'[INFERENCE] modalities in {where}: "{name}" is not one of the modalities '
                              f"{', '.join(tv['image'])} ([{task}] image){hint}")
        if canonical in chosen:
            raise ConfigError(f"[INFERENCE] modalities in {where} lists {canonical} twice")
        chosen.append(canonical)
    from_choices = tuple(n for n, c in zip(tv["image"], choices) if c)
    if chosen and choices and tuple(chosen) != from_choices:
        logger.warning("[INFERENCE] modalities = %s overrides [%s] choices (%s) in %s", ", ".join(chosen),
                       task, ", ".join(from_choices), where)
    infer["modalities"] = tuple(chosen) or from_choices

    # [MULTIMODAL] output_prob is NiftyNet's spelling of [INFERENCE] output_prob.
    infer["output_prob"] = bool(infer["output_prob"] or tv["output_prob"])


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

def parse_config_text(text: str, base_dir: str | Path, overrides: Sequence[str] = (),
                      set_overrides: Sequence[str] = (), *, source: str | Path | None = None) -> Config:
    """Parse INI text into a validated :class:`Config`.

    Args:
        text: the INI text.
        base_dir: folder that relative paths are relative to (the config file's folder).
        overrides: NiftyNet-style command-line leftovers, e.g. ``["--max_iter", "3", "--lr=0.01"]``;
            the key must belong to exactly one of the fixed and task sections.
        set_overrides: ``["TRAINING.max_iter=10", "T1.pixdim=1,1,1"]``, any key of any section.
        source: the file the text came from (for messages and ``Config.source``).

    Raises:
        ConfigError: any problem with the text or the overrides; the message names file, section,
            key and value, and what was expected.
    """
    where = str(source) if source is not None else "<config text>"
    config_dir = Path(os.path.abspath(os.path.expanduser(str(base_dir))))

    raws = _read_sections(text, where)
    _check_section_typos(raws, where)
    _move_misplaced_keys(raws, where)
    _apply_cli_overrides(raws, overrides, where)
    _apply_set_overrides(raws, set_overrides, where)

    task = _task_name(raws)
    if task is None:
        raise ConfigError(f"{where} has no [{S.TASK_SECTION}] section (the task section; [SEGMENTATION] is "
                          f"accepted too). It lists the input sections, e.g. image = T1, T1c, T2, Flair and "
                          f"label = label; input sections present: {_sections_listing(_input_names(raws))}")

    sections: dict[str, dict[str, Any]] = {}
    for schema in _FIXED_AND_TASK:
        raw = _target_section(raws, schema)
        sections[schema] = _type_section(raw, where)
    inputs = {name: _type_section(raws[name], where) for name in _input_names(raws)}

    _resolve_paths("SYSTEM", sections["SYSTEM"], config_dir, None)
    model_dir = sections["SYSTEM"]["model_dir"]
    for schema in _FIXED_AND_TASK:
        if schema != "SYSTEM":
            _resolve_paths(schema, sections[schema], config_dir, model_dir)
    for values in inputs.values():
        _resolve_paths(S.INPUT, values, config_dir, model_dir)

    _cross_check(sections, inputs, task, where)

    return Config(
        system=SystemConfig(**sections["SYSTEM"]),
        network=NetworkConfig(**sections["NETWORK"]),
        training=TrainingConfig(**sections["TRAINING"]),
        inference=InferenceConfig(**sections["INFERENCE"]),
        evaluation=EvaluationConfig(**sections["EVALUATION"]),
        task=MultimodalConfig(**sections[S.TASK_SECTION]),
        inputs={name: InputConfig(name=name, **values) for name, values in inputs.items()},
        source=Path(source) if source is not None else None,
    )


def load_config(path: str | Path, overrides: Sequence[str] = (), set_overrides: Sequence[str] = ()) -> Config:
    """Read and validate an INI config file; relative paths in it are relative to its folder.

    See :func:`parse_config_text` for ``overrides`` and ``set_overrides``.

    Raises:
        ConfigError: the file cannot be read, or anything in it or in the overrides is invalid.
    """
    path = Path(os.path.abspath(os.path.expanduser(str(path))))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder, not an INI file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    return parse_config_text(text, path.parent, overrides, set_overrides, source=path)


def annotate_ini(text: str) -> str:
    """Put each key's schema help comment on the line above it (used for the shipped config/*.ini).

    Other comments are kept; an outdated generated help comment directly above a key is replaced.
    Idempotent: ``annotate_ini(annotate_ini(t)) == annotate_ini(t)``.
    """
    out: list[str] = []
    schema = None
    for line in text.splitlines():
        header = _HEADER_LINE.match(line)
        if header:
            name = standardise_section_name(header.group("name"))
            schema = _schema_of(name) if name else None
            out.append(line)
            continue
        match = _KEY_LINE.match(line)
        key = S.KEYS_BY_SECTION[schema].get(match.group("key").lower()) if (match and schema) else None
        if key is not None:
            comment = S.key_comment(key)
            start = len(out)
            while start > 0 and out[start - 1].startswith(("#", ";")):
                start -= 1
            block = [c for c in out[start:] if c == comment or not _GENERATED_COMMENT.match(c)]
            block = [c for c in block if c != comment] + [comment]
            out[start:] = block
        out.append(line)
    return "\n".join(out) + "\n"
