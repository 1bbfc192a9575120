"""``uhved_tf evaluate --compare DIR_A DIR_B``: paired comparison of two evaluation runs.

Each run is a ``per_case.csv`` written by :mod:`uhved_tf.evaluation.report` (one row per subject and
subset). For every subset and region the two runs are paired by subject id (subjects present in
only one run are dropped, and counted), and a two-sided Wilcoxon signed-rank test on the paired
differences decides significance, as in the paper's Table 1 (``*``: p < 0.05).

Test details (:func:`compare`)
    The paired differences ``b - a`` are rounded to :data:`DIFF_DECIMALS` decimals (1e-9) first,
    so that values equal up to float noise (0.3 - 0.1 and 0.2) are tied and equal values give a
    zero difference. Zero differences are dropped (Wilcoxon's original rule, ``zero_method =
    "wilcox"``); if *every* difference is zero the test is undefined and p = 1.0 is reported. The
    method is chosen here, whatever SciPy's default (its ``"auto"`` changed in SciPy 1.15): the
    exact null distribution when there are at most :data:`EXACT_MAX_N` non-zero differences and no
    ties among their absolute values, else the normal approximation (tie-corrected, no continuity
    correction); always two-sided. With fewer than :data:`N_SMALL` non-zero differences the
    p-value is still computed but the entry is flagged ``n_small``: with 5 the smallest two-sided
    exact p is 2/2^5 = 0.0625, so such a test can never reach p < 0.05. ``n`` counts the pairs,
    ``n_nonzero`` the differences the test used. Pairs where either value is not finite are
    dropped (and counted).

    No correction for multiple comparisons is applied (15 subsets x 3 regions = 45 tests), as in
    the paper; the CSV has every p-value for whoever wants Holm or Benjamini-Hochberg.

"Mean" row
    With more than one subset, :func:`compare` adds an entry with subset :data:`MEAN_ROW` per
    region: each subject's value averaged over the subsets paired for that subject, then the same
    test on those per-subject means (subjects are the independent units; pooling all (subject,
    subset) pairs would count each subject up to 15 times).
"""

from __future__ import annotations

import csv
import logging
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy
from scipy import stats

from uhved_tf.errors import DataError, did_you_mean
from uhved_tf.io.atomic import atomic_write_csv
from uhved_tf.subset import Subset

logger = logging.getLogger(__name__)

PER_CASE_FILE = "per_case.csv"
"""File name looked for when :func:`load_per_case` is given a directory."""
N_SMALL = 6
"""Fewer non-zero paired differences than this are flagged ``n_small``."""
DIFF_DECIMALS = 9
"""The paired differences are rounded to this many decimals before the test (float noise is no difference)."""
EXACT_MAX_N = 50
"""Up to this many non-zero differences without ties: the exact test; else the normal approximation."""
# SciPy 1.15 renamed the normal approximation "approx" -> "asymptotic" (and refuses the old name since).
_SCIPY = tuple(int(x) for x in re.findall(r"\d+", scipy.__version__)[:2])
_ASYMPTOTIC = "asymptotic" if _SCIPY >= (1, 15) else "approx"
MEAN_ROW = "Mean"
"""Subset name of the across-subset entry."""
HIGHER_IS_BETTER: dict[str, bool] = {"dice": True, "sensitivity": True, "specificity": True, "hd95": False}
"""Direction of each known metric (the prefix of the per-case CSV column, e.g. ``dice_whole``)."""

RESULT_FIELDS = (
    "subset", "region", "metric", "mean_a", "mean_b", "mean_diff", "n", "n_only_a", "n_only_b",
    "n_dropped_nonfinite", "n_nonzero", "statistic", "p_value", "significant", "better", "n_small",
)
"""Keys of every :func:`compare` entry, in CSV column order. ``mean_diff`` = mean of B - A."""

__all__ = ["PER_CASE_FILE", "N_SMALL", "DIFF_DECIMALS", "EXACT_MAX_N", "MEAN_ROW", "HIGHER_IS_BETTER", "RESULT_FIELDS",
           "load_per_case", "compare", "compare_markdown", "compare_csv"]


def load_per_case(path) -> list[dict]:
    """Rows of a ``per_case.csv`` (or of ``DIR/per_case.csv`` when ``path`` is a directory).

    Returns:
        one dict per row: ``"subject"`` and ``"subset"`` as strings, every other column as float
        (``inf``/``nan`` allowed; an empty cell becomes NaN).

    Raises:
        DataError: the file is missing, empty, lacks the ``subject`` / ``subset`` columns, has a
            non-numeric metric value or a (subject, subset) pair twice; the message names the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / PER_CASE_FILE
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected the {PER_CASE_FILE} written by `uhved_tf evaluate`")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            raw = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read as CSV ({err})") from err
    if not header:
        raise DataError(f"{path}: empty file; expected a header with subject, subset and metric columns")
    missing = [c for c in ("subject", "subset") if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; the header is {', '.join(header)}")
    rows: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for line, rec in enumerate(raw, start=2):
        if None in rec or any(v is None for v in rec.values()):
            raise DataError(f"{path}, line {line}: {len(header)} columns expected (the header's)")
        key = (rec["subject"], rec["subset"])
        if key in seen:
            raise DataError(f"{path}, line {line}: subject {key[0]!r} with subset {key[1]!r} appears twice")
        seen.add(key)
        row: dict = {"subject": rec["subject"], "subset": rec["subset"]}
        for col in [c for c in header if c not in ("subject", "subset")]:
            text = rec[col].strip()
            try:
                row[col] = float(text) if text else math.nan
            except ValueError:
                raise DataError(f"{path}, line {line}: column {col!r} is not a number: {text!r}") from None
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: has a header but no rows")
    logger.debug("read %d rows from %s", len(rows), path)
    return rows


def _direction(metric: str, higher_is_better: bool | None) -> bool:
    if higher_is_better is not None:
        return bool(higher_is_better)
    if metric in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[metric]
    hint = did_you_mean(metric, HIGHER_IS_BETTER) or "."
    raise ValueError(
        f'Unknown metric "{metric}"{hint} Known: {", ".join(HIGHER_IS_BETTER)} '
        "(or pass higher_is_better=True/False)."
    )


def _wilcoxon(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """(statistic, two-sided p, number of non-zero differences) of the signed-rank test on b - a
    (module docstring: rounded differences, zeros dropped, the method chosen explicitly); (0.0,
    1.0, 0) if all differences are 0, (NaN, NaN, 0) without pairs."""
    d = np.round(b - a, DIFF_DECIMALS)
    if d.size == 0:
        return math.nan, math.nan, 0
    d = d[d != 0]
    n = int(d.size)
    if n == 0:
        return 0.0, 1.0, 0
    ties = np.unique(np.abs(d)).size < n
    method = "exact" if n <= EXACT_MAX_N and not ties else _ASYMPTOTIC
    with warnings.catch_warnings():   # SciPy < 1.15 warns below 10 differences; the rule above is deliberate
        warnings.filterwarnings("ignore", message="Sample size too small for normal approximation")
        res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method=method)
    return float(res.statistic), float(res.pvalue), n


def _entry(subset: str, region: str, metric: str, a: np.ndarray, b: np.ndarray, n_only_a: int, n_only_b: int,
           alpha: float, higher: bool) -> dict:
    finite = np.isfinite(a) & np.isfinite(b)
    dropped = int(np.count_nonzero(~finite))
    a, b = a[finite], b[finite]
    n = int(a.size)
    statistic, p, n_nonzero = _wilcoxon(a, b)
    mean_a = float(np.mean(a)) if n else math.nan
    mean_b = float(np.mean(b)) if n else math.nan
    better = ("A" if (mean_a > mean_b) == higher else "B") if n and mean_a != mean_b else None
    return {"subset": subset, "region": region, "metric": metric, "mean_a": mean_a, "mean_b": mean_b,
            "mean_diff": float(np.mean(b - a)) if n else math.nan, "n": n, "n_only_a": n_only_a,
            "n_only_b": n_only_b, "n_dropped_nonfinite": dropped, "n_nonzero": n_nonzero, "statistic": statistic,
            "p_value": p, "significant": bool(n and p < alpha), "better": better, "n_small": n_nonzero < N_SMALL}


def compare(
    rows_a: Sequence[Mapping],
    rows_b: Sequence[Mapping],
    regions: Sequence[str] = ("whole", "core", "enhancing"),
    metric: str = "dice",
    alpha: float = 0.05,
    *,
    higher_is_better: bool | None = None,
    include_mean: bool = True,
) -> list[dict]:
    """Paired comparison of two runs, per subset and region (see the module docstring for the test).

    Args:
        rows_a, rows_b: per-case rows (:func:`load_per_case`), each with "subject", "subset" and a
            ``f"{metric}_{region}"`` value for every region.
        regions: regions to compare (any suffix of a column, e.g. "enhancing_pp" works too).
        metric: column prefix; its direction comes from :data:`HIGHER_IS_BETTER` unless
            ``higher_is_better`` is given.
        alpha: significance level (significant = p < alpha).
        include_mean: add the :data:`MEAN_ROW` entries when there is more than one subset.

    Returns:
        one dict per (subset, region) with the keys of :data:`RESULT_FIELDS`: subset (name as in the
        CSV, e.g. "T1c+Flair"), region, metric, mean_a / mean_b over the paired cases, mean_diff
        (B - A), n paired cases, n_only_a / n_only_b (subjects of that subset in one run only,
        dropped), n_dropped_nonfinite, n_nonzero (the non-zero rounded differences the test used),
        statistic, p_value (1.0 if all differences are zero, NaN if n = 0), significant, better
        ("A", "B" or None when the means are equal or n = 0, whatever the p-value) and n_small
        (n_nonzero < :data:`N_SMALL`). Subsets in the order first seen in A then B.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha!r}")
    higher = _direction(metric, higher_is_better)
    regions = list(regions)
    keys = [f"{metric}_{region}" for region in regions]
    for name, rows in (("A", rows_a), ("B", rows_b)):
        for row in rows[:1]:
            absent = [k for k in keys if k not in row]
            if absent:
                available = sorted(k for k in row if k not in ("subject", "subset"))
                raise ValueError(f"run {name} has no column(s) {', '.join(absent)}; it has {', '.join(available)}")

    def index(rows: Sequence[Mapping]) -> dict[str, dict[str, Mapping]]:
        out: dict[str, dict[str, Mapping]] = {}
        for r in rows:
            out.setdefault(r["subset"], {})[str(r["subject"])] = r
        return out

    by_a, by_b = index(rows_a), index(rows_b)
    result: list[dict] = []
    # subject -> region -> list of (a, b) over the subsets, for the Mean row
    per_subject: dict[str, dict[str, list[tuple[float, float]]]] = {}
    subset_names = list(dict.fromkeys(r["subset"] for r in [*rows_a, *rows_b]))
    for subset in subset_names:
        sa, sb = by_a.get(subset, {}), by_b.get(subset, {})
        paired = [s for s in sa if s in sb]
        only_a, only_b = len(sa) - len(paired), len(sb) - len(paired)
        if only_a or only_b:
            logger.warning("subset %s: %d subject(s) only in A and %d only in B are not compared",
                           subset, only_a, only_b)
        for region, key in zip(regions, keys):
            a = np.array([float(sa[s][key]) for s in paired], dtype=np.float64)
            b = np.array([float(sb[s][key]) for s in paired], dtype=np.float64)
            result.append(_entry(subset, region, metric, a, b, only_a, only_b, alpha, higher))
            for s, va, vb in zip(paired, a, b):
                if math.isfinite(va) and math.isfinite(vb):
                    per_subject.setdefault(s, {}).setdefault(region, []).append((va, vb))
    if include_mean and len(subset_names) > 1:
        for region in regions:
            subjects = [s for s in per_subject if region in per_subject[s]]
            a = np.array([np.mean([va for va, _ in per_subject[s][region]]) for s in subjects], dtype=np.float64)
            b = np.array([np.mean([vb for _, vb in per_subject[s][region]]) for s in subjects], dtype=np.float64)
            result.append(_entry(MEAN_ROW, region, metric, a, b, 0, 0, alpha, higher))
    return result


def _cell(value: float, metric: str) -> str:
    if value is None or math.isnan(value):
        return "–"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if metric in ("dice", "sensitivity", "specificity"):
        return f"{100.0 * value:.1f}"
    return f"{value:.1f}" if metric.startswith("hd") else f"{value:.3f}"


def compare_markdown(
    result: Sequence[Mapping],
    subsets: Sequence[Sequence[str]],
    modalities: Sequence[str],
    name_a: str,
    name_b: str,
) -> str:
    """Side-by-side table in the layout of the paper's Table 1.

    Rows = ``subsets`` (●/○ per modality) then the Mean row if ``result`` has one; per region two
    columns, A | B; the better mean in **bold**, followed by ``\\*`` when the Wilcoxon test is
    significant; "–" for a subset / region not in ``result``; a last column with the number of paired
    cases ("8 (small)" when flagged ``n_small``: fewer than :data:`N_SMALL` non-zero differences).
    Dice, sensitivity and specificity are shown in %, HD95 in mm. A legend line follows the table.
    """
    modalities = list(modalities)
    lookup = {(e["subset"], e["region"]): e for e in result}
    regions = list(dict.fromkeys(e["region"] for e in result))
    metric = result[0]["metric"] if result else "dice"
    unit = "%" if metric in ("dice", "sensitivity", "specificity") else ("mm" if metric.startswith("hd") else "")
    unit_txt = f" ({unit})" if unit else ""

    head = list(modalities)
    for region in regions:
        head += [f"{metric} {region}{unit_txt}: {name_a}", f"{metric} {region}{unit_txt}: {name_b}"]
    head.append("n")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(subset_name: str) -> list[str]:
        out: list[str] = []
        ns: list[tuple[int, bool]] = []
        for region in regions:
            e = lookup.get((subset_name, region))
            if e is None:
                out += ["–", "–"]
                continue
            ns.append((int(e["n"]), bool(e["n_small"])))
            pair = [_cell(e["mean_a"], metric), _cell(e["mean_b"], metric)]
            if e["better"] in ("A", "B"):
                i = 0 if e["better"] == "A" else 1
                pair[i] = f"**{pair[i]}**" + ("\\*" if e["significant"] else "")
            out += pair
        if ns:
            n, small = max(ns)
            out.append(f"{n} (small)" if small else str(n))
        else:
            out.append("0")
        return out

    for subset in subsets:
        marks = ["●" if m in subset else "○" for m in modalities]
        lines.append("| " + " | ".join(marks + cells(Subset(subset, modalities).name)) + " |")
    if any(e["subset"] == MEAN_ROW for e in result):
        lines.append("| " + " | ".join([MEAN_ROW] + [""] * (len(modalities) - 1) + cells(MEAN_ROW)) + " |")
    lines += ["", f"A = {name_a}, B = {name_b}. Bold: better mean over the paired cases; \\*: two-sided Wilcoxon "
              "signed-rank test significant (p < alpha, no multiple-comparison correction); n: paired cases, "
              f"(small): fewer than {N_SMALL} non-zero differences in a region (an exact test cannot reach p < 0.05)."]
    return "\n".join(lines) + "\n"


def compare_csv(result: Sequence[Mapping], path) -> None:
    """Write the :func:`compare` entries to ``path`` (columns :data:`RESULT_FIELDS`; None -> empty cell)."""
    atomic_write_csv(path, list(RESULT_FIELDS),
                     [["" if e.get(k) is None else e.get(k) for k in RESULT_FIELDS] for e in result])
