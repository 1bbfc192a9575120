"""INI file -> typed, validated :class:`Config`, with NiftyNet's semantics; and back to INI text.

Steps (each user error raises :class:`~uhved_tf.errors.ConfigError` naming file, section, key and
value, and what was expected):

1. :mod:`uhved_tf.config.reading`: the text and the command-line overrides become raw strings per
   section (section names standardised, section typos and unknown keys reported, misplaced keys
   moved).
2. Here: each value is typed by its schema :class:`~uhved_tf.config.schema.Kind`; keys ignored by
   uhved_tf log a WARNING when set; relative paths are resolved against what their
   :class:`~uhved_tf.config.schema.PathStr` names (the config file's folder or ``model_dir``).
3. :mod:`uhved_tf.config.checks`: cross-field checks and derived values.

:meth:`Config.to_ini` writes the fully resolved config (every key, help text as comments); parsing
it again gives an equal :class:`Config`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uhved_tf.config import reading as R
from uhved_tf.model_dir import ModelDir
from uhved_tf.config import schema as S
from uhved_tf.config.checks import cross_check
from uhved_tf.errors import ConfigError
from uhved_tf.io.atomic import atomic_write_text

RESOLVED_CONFIG_NAME = ModelDir.CONFIG
_HEADER_LINE = re.compile(r"^\[(?P<name>.+)\]")
_KEY_LINE = re.compile(r"^(?P<key>[A-Za-z0-9_]+)\s*[=:]")
_GENERATED_COMMENT = re.compile(r"^# .* \[[^\[\]]*; default: .*\]$")


# --------------------------------------------------------------------------------------------
# The typed config
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """The whole configuration: one frozen dataclass per section (see :mod:`uhved_tf.config.schema`).

    ``inputs`` maps input-section names to their :class:`InputConfig`, in file order. ``source`` is
    the config file (``None`` when parsed from text); it is not part of equality.
    """

    system: S.SystemConfig
    network: S.NetworkConfig
    training: S.TrainingConfig
    inference: S.InferenceConfig
    evaluation: S.EvaluationConfig
    dataset: S.DatasetConfig
    task: S.MultimodalConfig
    inputs: dict[str, S.InputConfig]
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
    def modality_inputs(self) -> list[S.InputConfig]:
        """The modalities' input sections, in channel order."""
        return [self.inputs[name] for name in self.modalities]

    @property
    def label_input(self) -> S.InputConfig | None:
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
            f"# Generated from: {R.one_line(str(self.source)) if self.source is not None else '(text)'}",
        ]
        for inp in self.inputs.values():
            lines += _section_lines(inp.name, S.INPUT, inp)
        sections = (self.system, self.network, self.training, self.inference, self.evaluation, self.dataset,
                    self.task)
        for name, values in zip(S.FIXED_AND_TASK, sections):
            lines += _section_lines(name, name, values)
        return "\n".join(lines) + "\n"

    def write_resolved(self, model_dir: str | Path | None = None) -> Path:
        """Write :meth:`to_ini` to ``<model_dir>/config_resolved.ini`` (default: system.model_dir)."""
        folder = Path(model_dir) if model_dir is not None else Path(self.system.model_dir)
        target = ModelDir(folder).config
        try:
            atomic_write_text(target, self.to_ini())
        except OSError as exc:
            raise ConfigError(f"cannot write the resolved config to {target}: {exc.strerror or exc}") from None
        R.logger.info("resolved config written to %s", target)
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
# Typing and path resolution
# --------------------------------------------------------------------------------------------

def _type_section(raw: R.Raw, where: str) -> dict[str, Any]:
    """Raw strings -> typed values (defaults for the keys not set)."""
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
            hint = " (inline comments are not supported: put comments on their own line)"
            hint = hint if re.search(r"\s[#;]", text) else ""
            raise ConfigError(f'[{raw.name}] {key.name} = "{text}"{raw.origin.get(key.name, "")} in {where}: '
                              f"{exc}{hint}") from None
        if key.required and value in ("", ()):
            raise ConfigError(f'[{raw.name}] {key.name} = "{text}" in {where}: a value is required: {key.help}')
        if not key.used and text.strip():   # (an empty value sets nothing: older resolved configs have them)
            R.logger.warning("key %s in [%s] is accepted for NiftyNet compatibility but ignored by uhved_tf: "
                             "%s (%s)", key.name, raw.name, key.note or "not implemented", where)
        values[key.name] = value
    return values


def _absolute(path: str, base: Path) -> Path:
    return Path(os.path.normpath(os.path.join(base, os.path.expanduser(path))))


def _resolve_paths(schema: str, values: dict[str, Any], config_dir: Path, model_dir: Path | None) -> Path | None:
    """Relative paths made absolute; returns model_dir (the paths after it are relative to it)."""
    for key in S.SCHEMA[schema]:
        kind, value = key.kind, values[key.name]
        if isinstance(kind, S.PathList):
            values[key.name] = tuple(_absolute(p, config_dir) for p in value)
        elif isinstance(kind, S.PathStr):
            base = config_dir if kind.base == "config" else model_dir
            assert base is not None, "model_dir must be resolved first"
            if value:
                values[key.name] = kind.py_type(_absolute(value, base))
            elif kind.empty != "keep":
                values[key.name] = kind.py_type(config_dir / "model" if kind.empty == "model" else base)
            if key.name == "model_dir":
                model_dir = values[key.name]
    return model_dir


def _typed_sections(raws: dict[str, R.Raw], where: str, config_dir: Path) -> tuple[dict, dict]:
    """Typed values of the fixed and task sections by schema name, and of the input sections by name."""
    sections = {schema: _type_section(R.target_section(raws, schema), where) for schema in S.FIXED_AND_TASK}
    inputs = {name: _type_section(raws[name], where) for name in R.input_names(raws)}
    model_dir = None  # set by [SYSTEM], the first section
    for schema, values in [*sections.items(), *((S.INPUT, values) for values in inputs.values())]:
        model_dir = _resolve_paths(schema, values, config_dir, model_dir)
    return sections, inputs


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
    raws = R.read_sections(text, where)
    R.check_section_typos(raws, where)
    R.move_misplaced_keys(raws, where)
    R.apply_cli_overrides(raws, overrides)
    R.apply_set_overrides(raws, set_overrides, where)
    task = R.task_name(raws)
    if task is None:
        raise ConfigError(f"{where} has no [{S.TASK_SECTION}] section (the task section; [SEGMENTATION] is "
                          f"accepted too). It lists the input sections, e.g. image = T1, T1c, T2, Flair and "
                          f"label = label; input sections present: {R.sections_listing(R.input_names(raws))}")
    config_dir = Path(os.path.abspath(os.path.expanduser(str(base_dir))))
    sections, inputs = _typed_sections(raws, where, config_dir)
    cross_check(sections, inputs, task, where)
    return Config(
        system=S.SystemConfig(**sections["SYSTEM"]),
        network=S.NetworkConfig(**sections["NETWORK"]),
        training=S.TrainingConfig(**sections["TRAINING"]),
        inference=S.InferenceConfig(**sections["INFERENCE"]),
        evaluation=S.EvaluationConfig(**sections["EVALUATION"]),
        dataset=S.DatasetConfig(**sections["DATASET"]),
        task=S.MultimodalConfig(**sections[S.TASK_SECTION]),
        inputs={name: S.InputConfig(name=name, **values) for name, values in inputs.items()},
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
            name = R.standardise_section_name(header.group("name"))
            schema = R.schema_of(name) if name else None
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
