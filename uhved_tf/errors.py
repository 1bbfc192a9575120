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


def close_matches(word: str, candidates, n: int = 3, cutoff: float = 0.6, aliases=None) -> list[str]:
    """Candidates close to ``word`` (case-insensitive, difflib ratio), best first, original spelling.

    ``aliases`` maps other names to candidates (``{"learning_rate": "lr"}``): a word close to the
    alias of a candidate suggests that candidate."""
    import difflib

    candidates = [str(c) for c in candidates]
    by_lower: dict[str, str] = {}
    for c in candidates + [a for a, target in (aliases or {}).items() if target in candidates]:
        by_lower.setdefault(c.lower(), c)
    found = [by_lower[m] for m in difflib.get_close_matches(str(word).lower(), list(by_lower), n=n, cutoff=cutoff)]
    return list(dict.fromkeys(c if c in candidates else aliases[c] for c in found))


def did_you_mean(word: str, candidates, cutoff: float = 0.6, aliases=None) -> str:
    """``'; did you mean "x"?'`` for the closest candidate, or ``""``: the one suggestion helper of
    every "unknown name" message."""
    close = close_matches(word, candidates, n=1, cutoff=cutoff, aliases=aliases)
    return f'; did you mean "{close[0]}"?' if close else ""
