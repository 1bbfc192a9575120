"""Modality names and subsets: the one owner of both.

* :func:`canonical_modality` maps the usual spellings of the four BraTS modalities (T1, T1w, t1n;
  T1c, T1ce, t1gd, T1Gd; T2, T2w; FLAIR, Flair, t2f, fl) to one key; :func:`modality_for` finds the
  configured modality a user's name means. Every place that accepts a modality name (the CLI's
  ``--modalities`` and ``--t1c``-style flags, the Python API, the serving client, evaluate's
  ``--subsets``) goes through them, so they accept the same names and refuse the same way.
* :class:`Subset` is an immutable subset of the configured modalities, kept in channel order. It
  *is* a tuple of modality names (so ``"T1c" in s``, ``len(s)``), with a canonical :attr:`name`
  (``"T1c+Flair"``), a bit :attr:`mask`, a 0/1 :meth:`mask_array` and :meth:`parse` for the text
  forms (``"T1c,Flair;T2"``, ``all``, ``full``, ``singles``). :func:`all_subsets` lists the
  ``2^M - 1`` subsets in the paper's Table 1 order (by size, then by channel position).

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from uhved_tf.errors import ConfigError, did_you_mean

#: Usual spellings -> canonical key (lower case).
MODALITY_ALIASES = {
    "t1": "t1", "t1w": "t1", "t1n": "t1",
    "t1c": "t1c", "t1ce": "t1c", "t1gd": "t1c", "t1-gd": "t1c", "t1_gd": "t1c", "t1wce": "t1c",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "fl": "flair", "t2f": "flair", "t2flair": "flair", "t2-flair": "flair",
}
KEYWORDS = ("all", "full", "singles")
SEPARATOR = "+"


def canonical_modality(name: str) -> str:
    key = str(name).strip().lower()
    return MODALITY_ALIASES.get(key, key)


def modality_for(name: str, modalities: Sequence[str], what: str = "modality") -> str:
    """The configured modality (spelled as in ``[MULTIMODAL] image``) that ``name`` means."""
    wanted = canonical_modality(name)
    for m in modalities:
        if canonical_modality(m) == wanted:
            return m
    raise ConfigError(f'unknown {what} "{name}"{did_you_mean(name, list(modalities))}; expected one of the modalities '
                      f"{', '.join(modalities)} (or another usual spelling, e.g. T1ce, t1gd, T2w, t2f)")


class Subset(tuple):
    """A non-empty subset of ``modalities``, as the tuple of its names in channel order."""

    modalities: tuple[str, ...]

    def __new__(cls, names, modalities: Sequence[str]):
        modalities = tuple(modalities)
        chosen = {modality_for(n, modalities) for n in names}
        if not chosen:
            raise ConfigError("a modality subset needs at least one modality")
        self = super().__new__(cls, tuple(m for m in modalities if m in chosen))
        self.modalities = modalities
        return self

    def __getnewargs__(self):
        return tuple(self), self.modalities

    @property
    def name(self) -> str:
        """``"T1c+Flair"``: the subset's name in folders, CSV rows and tables."""
        return SEPARATOR.join(self)

    @property
    def mask(self) -> int:
        """Bit i set when modality i (channel order) is in the subset."""
        return sum(1 << i for i, m in enumerate(self.modalities) if m in self)

    def mask_array(self, dtype=np.float32) -> np.ndarray:
        return np.array([1 if m in self else 0 for m in self.modalities], dtype)

    def available_in(self, data_mask) -> bool:
        """True when a case has every modality of the subset (``data_mask``: 1 per modality
        present, in channel order, as a preprocessed case holds it)."""
        present = np.asarray(data_mask).ravel() > 0
        return bool(np.all(present[self.mask_array() > 0]))

    def __repr__(self) -> str:
        return f"Subset({self.name})"

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, modalities: Sequence[str]) -> "Subset":
        """From ``"T1c+Flair"`` (the :attr:`name` form)."""
        return cls([p for p in str(name).split(SEPARATOR) if p.strip()], modalities)

    @classmethod
    def from_mask(cls, mask, modalities: Sequence[str]) -> "Subset":
        """From a 0/1 vector over the modalities."""
        return cls([m for m, on in zip(modalities, np.asarray(mask).ravel()) if on > 0], modalities)

    @classmethod
    def parse(cls, text: str, modalities: Sequence[str]) -> list["Subset"]:
        """Subsets separated by ``;``, each ``all`` (the 2^M - 1), ``full``, ``singles`` or a comma
        (or ``+``) list such as ``T1c,Flair``; duplicates removed, order kept. Empty text is an error."""
        modalities = tuple(modalities)
        out: list[Subset] = []
        for part in str(text or "").split(";"):
            names = [p.strip() for p in part.replace(SEPARATOR, ",").split(",") if p.strip()]
            if not names:
                continue
            if len(names) == 1 and names[0].lower() in KEYWORDS:
                found = {"all": all_subsets(modalities), "full": [cls(modalities, modalities)],
                         "singles": [cls([m], modalities) for m in modalities]}[names[0].lower()]
            else:
                try:
                    found = [cls(names, modalities)]
                except ConfigError as exc:
                    raise ConfigError(f'{exc} (in the subset "{part.strip()}"; or all / full / singles)') from None
            out.extend(s for s in found if s not in out)
        if not out:
            raise ConfigError(f'no modality subset in "{text}"; give e.g. "T1c,Flair", "T1c,Flair;T2", "all", '
                              f'"full" or "singles"')
        return out


def subset_indices(num_modalities: int) -> list[tuple[int, ...]]:
    """The ``2^M - 1`` non-empty subsets as channel indices, in the paper's Table 1 order (by size,
    then by channel position): the one enumeration of subsets (training policies, losses, tables)."""
    return [c for k in range(1, num_modalities + 1) for c in itertools.combinations(range(num_modalities), k)]


def subset_masks(num_modalities: int) -> np.ndarray:
    """[2^M - 1, M] float32, row i = the 0/1 availability mask of ``subset_indices(M)[i]``."""
    masks = np.zeros((2 ** num_modalities - 1, num_modalities), np.float32)
    for i, s in enumerate(subset_indices(num_modalities)):
        masks[i, list(s)] = 1.0
    return masks


def all_subsets(modalities: Sequence[str]) -> list[Subset]:
    """Every non-empty subset of ``modalities``, in the order of :func:`subset_indices`."""
    modalities = tuple(modalities)
    return [Subset([modalities[i] for i in c], modalities) for c in subset_indices(len(modalities))]


def files_from_flags(flags: dict, modalities: Sequence[str]) -> dict:
    """``{"t1c": "a.nii.gz", "flair": None, ...}`` (command-line flags) -> ``{configured modality:
    path}`` for the flags given; a flag naming no modality of the model is an error."""
    from pathlib import Path

    out = {}
    for flag, value in flags.items():
        if value:
            try:
                out[modality_for(flag, modalities)] = Path(value)
            except ConfigError:
                raise ConfigError(f"--{flag} is not a modality of this model ({', '.join(modalities)})") from None
    return out
