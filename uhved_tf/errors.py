"""User-facing errors.

Anything the user can fix (a config key, a file, a value) raises a subclass of :class:`UhvedError`
with a one-line message naming the file / section / key / value and what was expected. The CLI
prints these as a single line and exits non-zero; anything else is a bug and shows a traceback.
"""


class UhvedError(Exception):
    """An error caused by user input; the message says what was wrong and how to fix it."""


class ConfigError(UhvedError):
    """A bad INI file, section, key or value."""


class DataError(UhvedError):
    """A bad or missing input file, subject or split."""
