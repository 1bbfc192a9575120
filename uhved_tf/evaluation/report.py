"""``uhved_tf evaluate``: segment the split's cases with ground truth for every requested subset
(encoders run once per window for all subsets), score them in each label file's own grid and
spacing, and write per-case CSV, a per-subset table (CSV + Markdown, the layout of the paper's
Table 1) and a JSON summary.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uhved_tf.data import preprocessing as pp
from uhved_tf.convention import Convention
from uhved_tf.subset import Subset
from uhved_tf.io.atomic import atomic_write_csv, atomic_write_text, check_folder
from uhved_tf.evaluation.metrics import evaluate_case
from uhved_tf.evaluation.synthesis import synthesis_scores, synthesis_table_markdown
from uhved_tf.io.nifti import to_original_grid

log = logging.getLogger(__name__)



def _read_reference(path) -> tuple[np.ndarray, tuple]:
    """A label map on its file's grid and its voxel size, read with every check of
    :func:`~uhved_tf.io.nifti.load_volume` (declared size, gzip integrity, 3-D, finite values)."""
    from uhved_tf.io.nifti import load_volume
    data, geom = load_volume(path, interp_order=0, dtype=np.int32)
    return data, tuple(float(z) for z in geom.working_spacing)


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` scores: the subsets, in which modality order and label map."""

    subsets: tuple
    modalities: tuple
    convention: Convention
    et_min_voxels: int = 0

    @classmethod
    def from_config(cls, cfg, subsets, convention: Convention) -> "Evaluation":
        return cls(tuple(Subset(s, cfg.modalities) for s in subsets), tuple(cfg.modalities), convention,
                   cfg.evaluation.et_min_voxels)

    @property
    def label_values(self) -> tuple:
        return self.convention.label_values

    def score(self, pred, ref, spacing) -> dict:
        c = self.convention
        return evaluate_case(pred, ref, spacing, et_min_voxels=self.et_min_voxels, label_values=c.region_map,
                             core_value=c.core, et_value=c.enhancing)


def evaluate_cases(cases, count: int, predict, ev: Evaluation, models: list, out_dir: Path, progress=True,
                   figure: bool = False) -> dict:
    """Score ``cases`` (``(subject, preprocessed case, label file)`` triples; ``predict(case,
    subsets) -> {subset: result}``): segmentation metrics in the label file's grid and spacing and,
    for networks that synthesise, PSNR / SSIM / MAE of every synthesised modality against the real
    one inside the brain (in the normalised space the network works in), per case and subset; write
    the reports and ``models.json`` (which weights were scored) into ``out_dir``. ``figure``: also
    draw the paper's Fig. 3 for the first case.

    A case is scored only for the subsets it has every modality of (``case.data_mask``; subjects
    with a missing file exist with ``allow_missing_modalities``): the others are skipped for that
    case and said so, and each subset's ``cases`` counts the cases scored (0: no case had it; its
    metrics are NaN in the summary, "–" in the tables). Nothing scored at all is a
    :class:`~uhved_tf.errors.DataError`."""
    from uhved_tf.errors import DataError
    from uhved_tf.training.progress import Progress

    mods = ev.modalities
    check_folder(out_dir, "the report folder").mkdir(parents=True, exist_ok=True)
    rows = []
    bar = Progress(count, desc="evaluate", enabled=progress)
    for subject, case, label_file in cases:
        have = [s for s in ev.subsets if s.available_in(case.data_mask)]
        if len(have) < len(ev.subsets):
            lacking = [m for m, on in zip(mods, case.data_mask) if not on]
            skipped = [s.name for s in ev.subsets if s not in have]
            log.warning("%s has no %s: %d of the %d subsets not scored for it (%s)", subject.id, ", ".join(lacking),
                        len(skipped), len(ev.subsets), ", ".join(skipped))
        if not have:
            bar.update(1, subject.id)
            continue
        ref, spacing = _read_reference(label_file)
        ev.convention.check_values(np.unique(ref), str(label_file))
        by_subset = predict(case, have)
        brain = np.any(case.image != 0, axis=-1)
        figure_rows = []
        for subset in have:
            res = by_subset[subset]
            classes = np.argmax(res["seg_prob"], axis=-1).astype(np.int32)
            labels = pp.unmap_labels(pp.uncrop(classes, case.box, fill=0), ev.label_values, dtype=np.int32)
            pred = to_original_grid(labels, case.geometry, interp_order=0)
            scores = ev.score(pred, ref, spacing)
            if "synth" in res:
                present = [mods.index(m) for m, on in zip(mods, case.data_mask) if on]
                scores.update(synthesis_scores(res["synth"][..., present], case.image[..., present], brain,
                                               [mods[i] for i in present]))
            rows.append({"subject": subject.id, "subset": subset.name, **scores})
            if figure:
                figure_rows.append((subset, {"synth": res.get("synth", np.zeros(case.image.shape, np.float32)),
                                             "seg": np.asarray(ev.label_values)[classes]}))
        if figure_rows:
            from uhved_tf.evaluation.figure import figure3
            inputs = {m: case.image[..., i] for i, m in enumerate(mods)}
            show = tuple(m for m in ("Flair", "T1") if m in mods) or tuple(mods[:2])
            colours = {k: tuple(c / 255.0 for c in rgb) for k, rgb in ev.convention.colours}
            path = figure3(inputs, figure_rows, mods, out_dir / f"figure_{subject.id}.png", show=show, colours=colours)
            log.info("figure written to %s", path)
            figure = False
        bar.update(1, subject.id)
    bar.close()
    if not rows:
        raise DataError(f"none of the {count} cases has every modality of a requested subset "
                        f"({', '.join(s.name for s in ev.subsets)}); nothing to score: choose subsets of the "
                        f"modalities the cases have")
    summary = summarise(rows, ev.subsets)
    counts = {s.name: summary[s.name]["cases"] for s in ev.subsets}
    fewer = [f"{name} {n}" for name, n in counts.items() if 0 < n < count]
    if fewer:
        log.warning("subsets scored on fewer than the %d cases (the others lack one of their modalities): %s",
                    count, ", ".join(fewer))
    if 0 in counts.values():
        log.warning("subsets no case has every modality of, not scored (0 cases, – in table.md): %s",
                    ", ".join(name for name, n in counts.items() if n == 0))
    write_reports(rows, summary, ev.subsets, mods, out_dir, ev.convention.region_map)
    atomic_write_text(out_dir / "models.json", json.dumps(models, indent=2) + "\n")
    return {"rows": rows, "summary": summary, "out_dir": str(out_dir)}


def summarise(rows, subsets) -> dict:
    """``{subset name: {metric: mean over the subset's rows that have it, ..., "cases": rows}}``.
    Every subset has every metric of ``rows`` (NaN where none of its rows has it, e.g. a subset no
    case could provide: ``cases`` 0)."""
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("subject", "subset")))
    out = {}
    for subset in subsets:
        name = subset.name
        sel = [r for r in rows if r["subset"] == name]
        out[name] = {k: float(np.mean(vals)) if (vals := [r[k] for r in sel if k in r]) else float("nan")
                     for k in keys}
        out[name]["cases"] = len(sel)
    return out


def write_reports(rows, summary, subsets, modalities, out_dir: Path, regions=("whole", "core", "enhancing")) -> None:
    """Every report file written atomically (an interrupted run never leaves half a table)."""
    if rows:
        fields = list(dict.fromkeys(k for r in rows for k in r))   # incomplete cases lack some columns
        atomic_write_csv(out_dir / "per_case.csv", fields, [[r.get(k, "") for k in fields] for r in rows])
    keys = sorted({k for v in summary.values() for k in v})
    atomic_write_csv(out_dir / "per_subset.csv", ["subset", *keys],
                     [[name, *[vals.get(k, "") for k in keys]] for name, vals in summary.items()])
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(out_dir / "table.md", markdown_table(summary, subsets, modalities, tuple(regions)))
    if any(k.startswith("psnr_") for v in summary.values() for k in v):
        atomic_write_text(out_dir / "synthesis.md", synthesis_table_markdown(summary, subsets, modalities))


def markdown_table(summary, subsets, modalities, regions=("whole", "core", "enhancing")) -> str:
    """Rows = subsets with ●/○ per modality, columns = Dice (%) per region, the first region's HD95
    and the number of cases scored, plus the mean row (over the subsets scored on at least one
    case). A subset no case had shows "–"; when the subsets were scored on different numbers of
    cases (incomplete subjects) a line under the table says why."""
    keys = [f"dice_{r}" for r in regions] + [f"hd95_{regions[0]}"]
    head = ("| " + " | ".join(modalities) + " | " + " | ".join(f"Dice {r}" for r in regions) +
            f" | HD95 {regions[0]} (mm) | Cases |")
    lines = [head, "|" + "---|" * (len(modalities) + len(keys) + 1)]
    values = [summary[Subset(s, modalities).name] for s in subsets]

    def scored(v) -> bool:
        return v.get("cases", 1) > 0

    def cells(v, cases: str) -> str:
        return " | ".join(f"{(100 if k.startswith('dice') else 1) * v[k]:.1f}" if scored(v) else "–"
                          for k in keys) + f" | {cases} |"
    for subset, v in zip(subsets, values):
        marks = ["●" if m in subset else "○" for m in modalities]
        lines.append("| " + " | ".join(marks) + " | " + cells(v, str(v.get("cases", ""))))
    if len(subsets) > 1:
        done = [v for v in values if scored(v)]
        mean = {k: np.mean([v[k] for v in done]) for k in keys} if done else {"cases": 0}
        lines.append("| " + " | ".join(["Mean"] + [""] * (len(modalities) - 1)) + " | " + cells(mean, ""))
    counts = {v["cases"] for v in values if "cases" in v}
    if len(counts) > 1:
        lines += ["", "Cases: the subjects scored on the subset; a subject is scored only on the subsets it has every "
                  "modality of" + ("; –: no subject had the subset (left out of the Mean row)" if 0 in counts else "")
                  + "."]
    return "\n".join(lines) + "\n"


def score_predictions(pairs, ev: Evaluation, out_dir: Path, missing=(), extra=(), progress=True) -> dict:
    """``evaluate --predictions``: score segmentation files made by anything (this tool, nnU-Net...)
    against the ground truth, in the reference's grid, with the convention's regions; no model.
    ``pairs``: ``(subject id, prediction file, label file)``. The subjects without a prediction
    (``missing``) and the prediction files of no subject (``extra``) are listed in ``summary.json``
    and ``unmatched.txt``, never dropped silently."""
    from uhved_tf.errors import DataError
    from uhved_tf.training.progress import Progress

    check_folder(out_dir, "the report folder").mkdir(parents=True, exist_ok=True)
    rows = []
    bar = Progress(len(pairs), desc="evaluate", enabled=progress)
    for sid, pred_file, label_file in pairs:
        ref, spacing = _read_reference(label_file)
        pred, _ = _read_reference(pred_file)
        if pred.shape != ref.shape:
            raise DataError(f"{pred_file}: shape {pred.shape} but its ground truth {label_file} has {ref.shape}; "
                            f"predictions must be on the label file's grid")
        ev.convention.check_values(np.unique(ref), str(label_file))
        ev.convention.check_values(np.unique(pred), str(pred_file))
        rows.append({"subject": sid, "subset": "predictions", **ev.score(pred, ref, spacing)})
        bar.update(1, sid)
    bar.close()
    summary = {"predictions": {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in
                               ("subject", "subset")} if rows else {}}
    summary["predictions"]["cases"] = len(rows)
    summary["unmatched"] = {"subjects_without_prediction": list(missing), "predictions_without_subject": list(extra)}
    if rows:
        fields = list(dict.fromkeys(k for r in rows for k in r))   # incomplete cases lack some columns
        atomic_write_csv(out_dir / "per_case.csv", fields, [[r[k] for k in fields] for r in rows])
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(out_dir / "unmatched.txt", "".join(f"no prediction: {s}\n" for s in missing) +
                      "".join(f"no subject: {f}\n" for f in extra))
    return {"rows": rows, "summary": summary, "out_dir": str(out_dir)}
