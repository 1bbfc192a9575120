"""INI text and command-line overrides -> raw sections: the strings of each section, by schema.

``configparser`` (interpolation off, no ``[DEFAULT]`` magic, no inline comments, duplicate
sections/keys rejected) reads the text. Section names are standardised as in NiftyNet
(``re.sub('[^0-9a-zA-Z_\\- ]+', '', name.strip())``); ``SYSTEM``, ``NETWORK``, ``TRAINING``,
``INFERENCE``, ``EVALUATION`` and the task section ``MULTIMODAL`` (alias ``SEGMENTATION``) are
matched case-insensitively; every other section is an input section (``[T1]``, ``[label]``).

Every key must be known. A key that belongs to exactly one other fixed/task section is moved there
with a WARNING (NiftyNet accepts misplaced keys; its examples put ``queue_length`` in
``[SYSTEM]``). Command-line overrides replace raw strings, so they are validated like the file:
NiftyNet-style ``--key value`` / ``--key=value`` for keys of the fixed and task sections, and
``SECTION.key=value`` (``--set``) for any key of any section. A key given two different values by
``--key`` overrides, or by a ``--key`` and a ``--set`` override, is refused (which one was meant?);
among ``--set`` overrides the last wins, so that code can put defaults before the user's
(:func:`uhved_tf.zoo.config_for_model_dir`, benchmarks).
"""

from __future__ import annotations

import configparser
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from uhved_tf.config import schema as S
from uhved_tf.errors import ConfigError, close_matches, did_you_mean

#: Every step of parsing logs under the parser's name (which predates the split into modules).
logger = logging.getLogger("uhved_tf.config.parser")

_NO_DEFAULT_SECTION = "\n"  # cannot appear in a header line, so configparser's [DEFAULT] magic is off
_SECTION_JUNK = re.compile(r"[^0-9a-zA-Z_\- ]+")


def standardise_section_name(name: str) -> str:
    """NiftyNet's section-name standardisation (plus a final strip, so names round-trip)."""
    return _SECTION_JUNK.sub("", name.strip()).strip()


def schema_of(std_name: str) -> str:
    """Schema name (key of :data:`~uhved_tf.config.schema.SCHEMA`) of a standardised section name."""
    upper = std_name.upper()
    if upper in S.FIXED_SECTIONS:
        return upper
    return S.TASK_SECTION if upper in S.TASK_SECTION_ALIASES else S.INPUT


@dataclass
class Raw:
    """One section's raw strings. ``origin[key]`` is "" for the file, else which override set it."""

    name: str
    schema: str
    values: dict[str, str] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    by_option: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (value, as written) of a --key

    def override(self, key: str, value: str, written: str, option: bool = False) -> None:
        """A command-line override ``written`` (``option``: a NiftyNet-style ``--key value``) sets
        ``key``; refused when a ``--key`` override gave it another value."""
        value = one_line(value)
        earlier = self.by_option.get(key)
        if earlier is not None and earlier[0] != value:
            raise ConfigError(f'"{earlier[1]}" and "{written}" both set [{self.name}] {key}, to different values '
                              f"({earlier[0]} and {value}); give it once")
        if option:
            self.by_option[key] = (value, written)
        self.values[key] = value
        self.origin[key] = f" (from the command line: {written})"
        logger.info("command line sets [%s] %s = %s", self.name, key, value)


def one_line(value: str) -> str:
    """Values are single lines: continuation lines (and line breaks in overrides) become spaces."""
    return " ".join(value.replace("\r\n", "\n").replace("\r", "\n").split("\n")).strip()


def task_name(raws: dict[str, Raw]) -> str | None:
    return next((name for name, raw in raws.items() if raw.schema == S.TASK_SECTION), None)


def input_names(raws: dict[str, Raw]) -> list[str]:
    return [name for name, raw in raws.items() if raw.schema == S.INPUT]


def sections_listing(names: Sequence[str]) -> str:
    return ", ".join(f"[{n}]" for n in names) if names else "none"


def target_section(raws: dict[str, Raw], schema: str) -> Raw:
    """The raw section of a fixed/task schema name, created empty if the file has none."""
    for raw in raws.values():
        if raw.schema == schema:
            return raw
    raws[schema] = Raw(name=schema, schema=schema)
    return raws[schema]


# --------------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------------

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


def _new_section(header: str, raws: dict[str, Raw], headers: dict[str, str], where: str) -> Raw:
    """The empty raw section of a header; ``headers`` maps the lower-case names read so far to theirs."""
    name = standardise_section_name(header)
    if not name:
        raise ConfigError(f"{where}: section [{header}] has no letters or digits in its name")
    if name.upper() in S.OTHER_TASK_SECTIONS:
        raise ConfigError(f"{where}: [{header}] is the task section of another NiftyNet application; "
                          f"uhved_tf reads [{S.TASK_SECTION}] (or [SEGMENTATION])")
    schema, task = schema_of(name), task_name(raws)
    if schema == S.TASK_SECTION and task is not None:
        raise ConfigError(f"{where} has both [{headers[task.lower()]}] and [{header}]; keep exactly one task "
                          f"section ([{S.TASK_SECTION}], or its alias [SEGMENTATION])")
    key = name if schema == S.INPUT else name.upper()
    if key.lower() in headers:
        raise ConfigError(f"{where}: sections [{headers[key.lower()]}] and [{header}] are the same "
                          f"section once standardised (case and characters other than letters, "
                          f"digits, _ - and space are ignored); merge them")
    headers[key.lower()] = header
    return Raw(name=key, schema=schema)


def read_sections(text: str, where: str) -> dict[str, Raw]:
    """INI text -> raw sections by name (input sections as written, the others upper case)."""
    parser = configparser.ConfigParser(interpolation=None, default_section=_NO_DEFAULT_SECTION,
                                       strict=True, empty_lines_in_values=False)
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # as a file read in text mode would be
    try:
        parser.read_string(text, source=where)
    except configparser.Error as exc:
        raise ConfigError(_configparser_message(exc, where)) from None
    raws: dict[str, Raw] = {}
    headers: dict[str, str] = {}
    for header in parser.sections():
        raw = _new_section(header, raws, headers, where)
        for option in parser.options(header):
            raw.values[option.strip()] = one_line(parser.get(header, option, raw=True) or "")
            raw.origin[option.strip()] = ""
        raws[raw.name] = raw
    return raws


def check_section_typos(raws: dict[str, Raw], where: str) -> None:
    """An input section named like a fixed section ([TRAINNG]) and not used by the task is a typo."""
    task = task_name(raws)
    referenced: set[str] = set()
    for group in ("image", "label", "sampler") if task is not None else ():
        try:
            referenced.update(n.lower() for n in S.split_array(raws[task].values.get(group, "")))
        except ValueError:
            pass
    for name in input_names(raws):
        close = close_matches(name, (*S.FIXED_SECTIONS, *S.TASK_SECTION_ALIASES), n=1, cutoff=0.75)
        if close and name.lower() not in referenced:
            raise ConfigError(f"{where}: section [{name}] is not a known section and is not named in the "
                              f"task section; did you mean [{close[0]}]?")


def _homes(key: str) -> tuple[list[str], bool]:
    """Fixed/task sections having ``key``, and whether input sections have it."""
    return [s for s in S.FIXED_AND_TASK if key in S.KEYS_BY_SECTION[s]], key in S.KEYS_BY_SECTION[S.INPUT]


def _unknown_key_message(key: str, section: str, schema: str, where: str) -> str:
    valid = list(S.KEYS_BY_SECTION[schema])
    hint = did_you_mean(key, valid, aliases=S.KEY_ALIASES) or "."
    kind = " (an input section)" if schema == S.INPUT else ""
    return f'Unknown key "{key}" in [{section}]{kind} of {where}{hint} Valid keys: {", ".join(valid)}'


def move_misplaced_keys(raws: dict[str, Raw], where: str) -> None:
    """Unknown keys are errors; a key of exactly one other fixed/task section moves there (WARNING)."""
    for raw in list(raws.values()):
        for key in [k for k in raw.values if k not in S.KEYS_BY_SECTION[raw.schema]]:
            homes, in_input = _homes(key)
            if not homes and not in_input:
                raise ConfigError(_unknown_key_message(key, raw.name, raw.schema, where))
            if len(homes) != 1 or in_input:
                places = [f"[{h}]" for h in homes] + (["the input sections ([T1], [label], ...)"] if in_input else [])
                raise ConfigError(f"key {key} in [{raw.name}] of {where} belongs to {' or '.join(places)}, "
                                  f"not [{raw.name}]; move it there")
            target = target_section(raws, homes[0])
            if key in target.values:
                raise ConfigError(f"key {key} is set in both [{raw.name}] and [{target.name}] of {where}; "
                                  f"keep only the one in [{target.name}]")
            logger.warning("key %s in [%s] of %s belongs to [%s]; using it there (move it to [%s] to "
                           "silence this warning)", key, raw.name, where, target.name, target.name)
            target.values[key] = raw.values.pop(key)
            target.origin[key] = raw.origin.pop(key)


# --------------------------------------------------------------------------------------------
# Command-line overrides
# --------------------------------------------------------------------------------------------

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
            (key, value), written = body.split("=", 1), arg
        elif i + 1 >= len(args):
            raise ConfigError(f"command-line option --{body} needs a value: --{body} VALUE or --{body}=VALUE")
        else:
            i += 1
            key, value = body, str(args[i])
            written = f"{arg} {value}"
        i += 1
        out.append((key.strip().lower().replace("-", "_"), value, written))
    return out


def apply_cli_overrides(raws: dict[str, Raw], args: Sequence[str]) -> None:
    """NiftyNet-style ``--key value`` / ``--key=value``, for keys of exactly one fixed/task section."""
    inputs = input_names(raws)
    for key, value, written in _split_cli(args):
        homes, in_input = _homes(key)
        if not homes and not in_input:
            all_keys = sorted({k for s in S.FIXED_AND_TASK for k in S.KEYS_BY_SECTION[s]})
            close = close_matches(key, all_keys, n=1, aliases=S.KEY_ALIASES)
            hint = f" did you mean --{close[0]}?" if close else ""
            raise ConfigError(f'unknown command-line option "{written}":{hint} (--key value sets a key of '
                              f"{sections_listing(S.FIXED_AND_TASK)}; use --set SECTION.key=value for any key)")
        if not homes:
            raise ConfigError(f'command-line option "{written}": {key} is a key of the input sections '
                              f"({sections_listing(inputs)}), which --key cannot set; use "
                              f"--set {inputs[0] if inputs else 'T1'}.{key}={value} for each section")
        if len(homes) > 1 or in_input:
            places = [f"[{h}]" for h in homes]
            places += [f"the input sections ({sections_listing(inputs)})"] if in_input else []
            raise ConfigError(f'command-line option "{written}" is ambiguous: {key} is a key of '
                              f"{' and '.join(places)}; use --set SECTION.{key}={value}, e.g. "
                              f"--set {homes[0]}.{key}={value}")
        target_section(raws, homes[0]).override(key, value, written, option=True)


def overridden_keys(args: Sequence[str] = (), items: Sequence[str] = ()) -> set[str]:
    """``SECTION.key`` (fixed and task sections, schema names) of every key that ``--key value``
    overrides ``args`` and ``--set`` overrides ``items`` set; malformed ones are skipped (parsing
    reports them). For code adding defaults that the user's overrides replace."""
    out = set()
    try:
        pairs = [(key, None) for key, _, _ in _split_cli(list(args))]
    except ConfigError:
        pairs = []
    for item in items:
        lhs = str(item).partition("=")[0]
        section, _, key = lhs.partition(".")
        std = standardise_section_name(section)
        if std and schema_of(std) != S.INPUT:
            pairs.append((key.strip().lower(), schema_of(std)))
    for key, section in pairs:
        if section is None:
            homes, in_input = _homes(key)
            section = homes[0] if len(homes) == 1 and not in_input else None
        if section is not None:
            out.add(f"{section}.{key}")
    return out


def _find_section(raws: dict[str, Raw], name: str, written: str, where: str) -> Raw:
    std = standardise_section_name(name)
    if std and schema_of(std) != S.INPUT:
        return target_section(raws, schema_of(std))
    for raw in raws.values():
        if raw.schema == S.INPUT and raw.name.lower() == std.lower() and std:
            return raw
    names = input_names(raws) + list(S.FIXED_AND_TASK)
    close = close_matches(std or name, names, n=1)
    hint = f" did you mean [{close[0]}]?" if close else ""
    raise ConfigError(f'"{written}": {where} has no section [{name}];{hint} sections: '
                      f"{sections_listing(names)}")


def apply_set_overrides(raws: dict[str, Raw], items: Sequence[str], where: str) -> None:
    """``SECTION.key=value`` (``--set``), for any key of any section."""
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
        raw.override(key, value, written)
