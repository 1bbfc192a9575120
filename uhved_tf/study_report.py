"""The report of a :class:`~uhved_tf.study.Study`: the paper's Table 1 layout for any set of runs.

Reads each run's ``OUT/eval/<run>/per_case.csv`` (``uhved_tf evaluate --subsets all``) and, where
training validated, ``OUT/models/<run>/validation.csv``, and writes into ``OUT``:

* ``NAME.md``: the budget, the machine and the wall times; per subset (rows, ●/○ per modality as in
  the paper) and region, each run's mean Dice (%), bold for the best, ``*`` where a run is
  significantly better than the reference run (two-sided Wilcoxon signed-rank test on the paired
  subjects, p < 0.05, :func:`uhved_tf.evaluation.compare.compare`), ``†`` where it is significantly
  worse; the count of subsets where each run's mean is >= the reference's; Dice by number of
  available modalities; the paper's patterns (Dice rises with the number of modalities; enhancing
  tumour needs T1c); the synthesis of missing modalities (PSNR / SSIM) for runs that synthesise;
  the validation Dice against iterations.
* ``NAME.csv``: one row per run, subset and region (mean Dice, n, p-value against the reference).
* ``NAME_dice_by_modalities.png`` and ``NAME_curves.png``: the plots.

TensorFlow-free (NumPy, SciPy, matplotlib), so a report can be redrawn while trainings run.
"""

from __future__ import annotations

import csv
import math
import os
import platform
from pathlib import Path

import numpy as np

from uhved_tf.io.atomic import atomic_write_csv, atomic_write_text
from uhved_tf.model_dir import ModelDir
from uhved_tf.subset import SEPARATOR

REGIONS = ("whole", "core", "enhancing")
SHORT = {"whole": "WT", "core": "TC", "enhancing": "ET"}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_isa() -> str:
    """The widest x86 vector extension the CPU reports (oneDNN's speed depends on it)."""
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    except OSError:
        return "unknown"
    for name in ("avx512f", "avx2", "avx"):
        if f" {name}" in flags:
            return name.upper().replace("F", "") if name == "avx512f" else name.upper()
    return "no AVX"


def modality_order(rows) -> list[str]:
    widest = max((r["subset"] for r in rows), key=lambda s: len(s.split(SEPARATOR)))
    return widest.split(SEPARATOR)


def ordered_subsets(modalities) -> list[str]:
    from uhved_tf.subset import all_subsets
    return [s.name for s in all_subsets(modalities)]


def means_by_subset(rows, subsets, metric="dice") -> dict:
    out = {}
    for subset in subsets:
        sel = [r for r in rows if r["subset"] == subset]
        if sel:
            out[subset] = {reg: float(np.nanmean([float(r[f"{metric}_{reg}"]) for r in sel])) for reg in REGIONS}
            out[subset]["n"] = len(sel)
    present = [out[s] for s in subsets if s in out]
    if present:
        out["Mean"] = {reg: float(np.mean([v[reg] for v in present])) for reg in REGIONS}
    return out


def by_size(means, subsets) -> dict[int, dict[str, float]]:
    sizes = sorted({len(s.split(SEPARATOR)) for s in subsets})
    return {k: {reg: float(np.mean([means[s][reg] for s in subsets if len(s.split(SEPARATOR)) == k and s in means]))
                for reg in REGIONS} for k in sizes}


def trained_iterations(model_dir: Path) -> str:
    """The newest checkpoint's iteration in a model directory (or in each per-subset one of a Single
    study: their range), from the checkpoint files."""
    have = ModelDir(model_dir).saved_iterations()
    if have:
        return str(have[-1])
    per_subset = [ModelDir(d).saved_iterations() for d in sorted(model_dir.iterdir()) if d.is_dir()] \
        if model_dir.is_dir() else []
    last = sorted({h[-1] for h in per_subset if h})
    if not last:
        return "no"
    return f"{last[0]}" + (f"-{last[-1]}" if len(last) > 1 else "") + f" (x {len(per_subset)} networks)"


def read_validation(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def write_report(study, name: str, reference: str | None, title: str) -> Path:
    from uhved_tf.evaluation.compare import EXACT_MAX_N, compare, load_per_case

    out = study.out
    paths = {run.label: study.eval_dir(run) / "per_case.csv" for run in study.runs}
    rows = {label: load_per_case(path) for label, path in paths.items() if path.exists()}
    missing = [label for label, path in paths.items() if not path.exists()]
    report = out / f"{name}.md"
    if not rows:
        atomic_write_text(report, f"# {title}\n\nNo run has been evaluated yet ({', '.join(missing)}).\n")
        return report
    labels = list(rows)
    modalities = modality_order(next(iter(rows.values())))
    subsets = ordered_subsets(modalities)
    means = {label: means_by_subset(rows[label], subsets) for label in labels}
    ref = reference if reference in rows else None
    tests = {(label, e["subset"], e["region"]): e for label in labels if ref and label != ref
             for e in compare(rows[ref], rows[label], regions=REGIONS)}
    times = study.times()
    iterations = {run.label: trained_iterations(study.model_dir(run)) for run in study.runs}
    n_cases = max((v.get("n", 0) for m in means.values() for v in m.values()), default=0)

    lines = [f"# {title}", ""]
    lines.append("Budget: " + "; ".join(f"{label} {iterations[label]} iterations" for label in labels)
                 + f". Evaluated on {n_cases} held-out subjects, all 15 subsets, checkpoint = {study.checkpoint}.")
    lines.append(f"Machine: {cpu_name()} ({cpu_isa()}), {os.cpu_count()} CPU(s), {platform.platform()}, "
                 f"Python {platform.python_version()}.")
    lines.append("Wall time train / evaluate (s): " + "; ".join(
        f"{label} {times.get(label, {}).get('train_s', 0):.0f} / {times.get(label, {}).get('evaluate_s', 0):.0f}"
        for label in labels) + ".")
    if missing:
        lines.append(f"Not evaluated yet: {', '.join(missing)}.")
    lines.append("")

    # --- the table ---------------------------------------------------------------------------
    head = list(modalities) + [f"{SHORT[reg]} {label}" for reg in REGIONS for label in labels]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(key):
        out_cells = []
        for reg in REGIONS:
            vals = {label: means[label].get(key, {}).get(reg) for label in labels}
            best = max((v for v in vals.values() if v is not None), default=None)
            for label in labels:
                v = vals[label]
                text = _fmt(v)
                if v is not None and best is not None and round(100 * v, 1) == round(100 * best, 1):
                    text = f"**{text}**"
                e = tests.get((label, key if key != "Mean" else "Mean", reg))
                if e and e["significant"]:
                    text += "\\*" if e["better"] == "B" else "†"
                out_cells.append(text)
        return out_cells

    for subset in subsets:
        members = subset.split(SEPARATOR)
        lines.append("| " + " | ".join(["●" if m in members else "○" for m in modalities] + cells(subset)) + " |")
    lines.append("| " + " | ".join(["Mean"] + [""] * (len(modalities) - 1) + cells("Mean")) + " |")
    lines += ["", "Dice (%) per region: WT whole tumour, TC tumour core, ET enhancing tumour. Bold: best."
              + (f" \\* / †: significantly better / worse than {ref} (two-sided Wilcoxon signed-rank test on "
                 f"the paired subjects: exact, or the normal approximation with tied differences or more than "
                 f"{EXACT_MAX_N} non-zero ones; p < 0.05, no correction for multiple comparisons)." if ref else ""), ""]

    # --- counts ------------------------------------------------------------------------------
    if ref:
        lines += [f"## Subsets where each run is >= {ref} (of {len(subsets)})", "",
                  "| run | " + " | ".join(SHORT[r] for r in REGIONS) + " | significantly better / worse |",
                  "|---|---|---|---|---|"]
        for label in labels:
            if label == ref:
                continue
            counts = [sum(1 for s in subsets if s in means[label] and s in means[ref]
                          and round(means[label][s][reg], 6) >= round(means[ref][s][reg], 6)) for reg in REGIONS]
            sig, worse = ([sum(1 for s in subsets if (e := tests.get((label, s, reg))) and e["significant"]
                               and e["better"] == side) for reg in REGIONS] for side in "BA")
            lines.append(f"| {label} | " + " | ".join(map(str, counts)) + " | "
                         + ", ".join(f"{SHORT[r]} {b}/{w}" for r, b, w in zip(REGIONS, sig, worse)) + " |")
        lines.append("")

    # --- by number of modalities and the paper's patterns ------------------------------------
    sizes = {label: by_size(means[label], subsets) for label in labels}
    ks = sorted(next(iter(sizes.values())))
    lines += ["## Mean Dice (%) by number of available modalities", "",
              "| run | " + " | ".join(f"{SHORT[r]} k={k}" for r in REGIONS for k in ks) + " |",
              "|---|" + "---|" * (len(REGIONS) * len(ks))]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(_fmt(sizes[label][k][r]) for r in REGIONS for k in ks) + " |")
    lines += ["", "## The paper's patterns", "",
              "| run | Dice rises with the number of modalities (WT / TC / ET) | ET with T1c | ET without T1c |",
              "|---|---|---|---|"]
    from uhved_tf.subset import canonical_modality
    t1c = next((m for m in modalities if canonical_modality(m) == "t1c"), None)
    for label in labels:
        rises = ["yes" if all(sizes[label][a][r] < sizes[label][b][r] for a, b in zip(ks, ks[1:])) else "no"
                 for r in REGIONS]
        with_t1c = [means[label][s]["enhancing"] for s in subsets if s in means[label] and t1c in s.split(SEPARATOR)]
        without = [means[label][s]["enhancing"] for s in subsets if s in means[label] and t1c not in s.split(SEPARATOR)]
        lines.append(f"| {label} | {' / '.join(rises)} | {_fmt(float(np.mean(with_t1c)) if with_t1c else None)} "
                     f"| {_fmt(float(np.mean(without)) if without else None)} |")
    lines.append("")

    # --- synthesis ---------------------------------------------------------------------------
    synth = [label for label in labels if f"psnr_{modalities[0]}" in rows[label][0]]
    if synth:
        lines += ["## Synthesis of the missing modalities", "",
                  "Mean over the subsets where the modality is missing (the completion), in the normalised "
                  "space the network works in; PSNR and SSIM with data_range = the range (max - min) of the "
                  "reference image inside the brain mask, per case and modality.", "",
                  "| run | " + " | ".join(f"PSNR {m} (dB) | SSIM {m}" for m in modalities) + " |",
                  "|---|" + "---|" * (2 * len(modalities))]
        for label in synth:
            cells_s = []
            for m in modalities:
                sel = [r for r in rows[label] if m not in r["subset"].split(SEPARATOR)]
                for metric in ("psnr", "ssim"):
                    vals = [float(r[f"{metric}_{m}"]) for r in sel if r.get(f"{metric}_{m}") not in (None, "")]
                    vals = [v for v in vals if math.isfinite(v)]
                    cells_s.append(f"{np.mean(vals):.2f}" if metric == "psnr" and vals else
                                   f"{np.mean(vals):.3f}" if vals else "–")
            lines.append(f"| {label} | " + " | ".join(cells_s) + " |")
        lines.append("")

    # --- validation curves -------------------------------------------------------------------
    curves = {run.label: read_validation(ModelDir(study.model_dir(run)).validation_csv) for run in study.runs}
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        lines += ["## Validation Dice against iterations", "",
                  "Mean Dice (%) over the validation subjects and the validation subsets (posterior mean), "
                  "WT / TC / ET, at each validation:", ""]
        its = sorted({int(r["iteration"]) for v in curves.values() for r in v})
        lines += ["| iteration | " + " | ".join(curves) + " |", "|---|" + "---|" * len(curves)]
        for it in its:
            row = []
            for label, rs in curves.items():
                r = next((x for x in rs if int(x["iteration"]) == it), None)
                row.append("–" if r is None else " / ".join(_fmt(r.get(f"dice/{reg}")) for reg in REGIONS))
            lines.append(f"| {it} | " + " | ".join(row) + " |")
        lines.append("")
        keys = [("score", "mean of the regions")] + [(f"dice/{r}", f"{r} tumour") for r in REGIONS]
        _plot(out / f"{name}_curves.png", [(title, {label: [(r["iteration"], 100 * r[key]) for r in rs if key in r]
                                                    for label, rs in curves.items()}) for key, title in keys],
              (4.0, 3.6), "iteration", ".", "validation Dice (%)")
        lines += [f"![validation Dice against iterations]({name}_curves.png)", ""]
    _plot(out / f"{name}_dice_by_modalities.png",
          [(f"{reg} tumour", {label: [(k, 100 * by_k[k][reg]) for k in ks] for label, by_k in sizes.items()})
           for reg in REGIONS], (4.2, 3.8), "available modalities", "o", "mean Dice (%)", xticks=ks)
    lines += [f"![Dice by number of modalities]({name}_dice_by_modalities.png)", ""]
    atomic_write_text(report, "\n".join(lines))
    atomic_write_csv(out / f"{name}.csv",
                     ["run", "subset", "region", "dice", "n", "p_value_vs_reference", "better_than_reference"],
                     [[label, s, reg, means[label].get(s, {}).get(reg, ""), means[label].get(s, {}).get("n", ""),
                       tests.get((label, s, reg), {}).get("p_value", ""), tests.get((label, s, reg), {}).get("better", "")]
                      for label in labels for s in subsets + ["Mean"] for reg in REGIONS])
    return report


def _plot(path: Path, panels, size, xlabel: str, marker: str, ylabel: str, xticks=None) -> None:
    """Side-by-side panels sharing the y axis, one per ``(title, {run: [(x, y), ...]})``; ``size`` per panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(size[0] * len(panels), size[1]), sharey=True)
    for ax, (title, series) in zip(axes, panels):
        for label, pts in series.items():
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=label)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        if xticks is not None:
            ax.set_xticks(xticks)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
