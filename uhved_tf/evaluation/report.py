"""``uhved_tf evaluate``: segment the split's cases with ground truth for every requested subset
(encoders run once per window for all subsets), score them in each label file's own grid and
spacing, and write per-case CSV, a per-subset table (CSV + Markdown, the layout of the paper's
Table 1) and a JSON summary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from uhved_tf.data import preprocessing as pp
from uhved_tf.subset import Subset
from uhved_tf.io.atomic import atomic_write_csv, atomic_write_text
from uhved_tf.errors import DataError
from uhved_tf.evaluation.metrics import evaluate_case
from uhved_tf.evaluation.synthesis import synthesis_scores, synthesis_table_markdown
from uhved_tf.io.discovery import subjects_in
from uhved_tf.io.nifti import to_original_grid

log = logging.getLogger(__name__)

REGION_KEYS = ("whole", "core", "enhancing")


def _read_reference(path) -> tuple[np.ndarray, tuple]:
    import nibabel as nib
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return np.rint(data).astype(np.int32), tuple(float(z) for z in img.header.get_zooms()[:3])


def evaluate_subjects(app, subsets, phase="Inference", out_dir=None, progress=True, figure: bool = False) -> dict:
    """Segmentation metrics (in the label file's grid and spacing) and, for networks that
    synthesise, PSNR / SSIM / MAE of every synthesised modality against the real one inside the
    brain (in the normalised space the network works in), per case and subset. ``figure``: also
    draw the paper's Fig. 3 for the first case."""
    from uhved_tf.training.progress import Progress

    cfg = app.cfg
    subsets = [Subset(s, cfg.modalities) for s in subsets]
    subjects = app.discover(need_label=True)
    split = app.split(subjects)
    ids = set(subjects_in(split, phase))
    chosen = [s for s in subjects if s.id in ids]
    if not chosen:
        raise DataError(f"no {phase} subjects with labels in {cfg.system.dataset_split_file}")
    # One model for every subset, or one Single network per subset (train --all-subsets).
    groups = [(a, a.load_trained_model(), group) for a, group in app.models_for_subsets(subsets)]
    settings = app.preprocess_settings()
    out_dir = Path(out_dir or cfg.evaluation.save_csv_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    figure_rows_done = False
    bar = Progress(len(chosen), desc="evaluate", enabled=progress)
    for subject in chosen:
        case = app.load_case(subject, settings, with_label=False)
        ref, spacing = _read_reference(subject.files[cfg.label_section])
        by_subset = {}
        for a, model, group in groups:
            by_subset.update(zip(group, a.predict_case(model, case, group)))
        results = [by_subset[s] for s in subsets]
        brain = np.any(case.image != 0, axis=-1)
        figure_rows = []
        for subset, res in zip(subsets, results):
            classes = np.argmax(res["seg_prob"], axis=-1).astype(np.int32)
            labels = pp.unmap_labels(pp.uncrop(classes, case.box, fill=0), cfg.task.label_values, dtype=np.int32)
            pred = to_original_grid(labels, case.geometry, interp_order=0)
            scores = evaluate_case(pred, ref, spacing, et_min_voxels=cfg.evaluation.et_min_voxels)
            if "synth" in res:
                present = [m for m, on in zip(cfg.modalities, case.data_mask) if on]
                synth = synthesis_scores(res["synth"][..., [cfg.modalities.index(m) for m in present]],
                                         case.image[..., [cfg.modalities.index(m) for m in present]],
                                         brain, present)
                scores.update(synth)
            rows.append({"subject": subject.id, "subset": subset.name, **scores})
            if figure and not figure_rows_done:
                figure_rows.append((subset, {"synth": res.get("synth", np.zeros(case.image.shape, np.float32)),
                                             "seg": np.asarray(cfg.task.label_values)[classes]}))
        if figure and not figure_rows_done and figure_rows:
            from uhved_tf.evaluation.figure import figure3
            inputs = {m: case.image[..., i] for i, m in enumerate(cfg.modalities)}
            show = tuple(m for m in ("Flair", "T1") if m in cfg.modalities) or tuple(cfg.modalities[:2])
            path = figure3(inputs, figure_rows, cfg.modalities, out_dir / f"figure_{subject.id}.png", show=show)
            log.info("figure written to %s", path)
            figure_rows_done = True
        bar.update(1, subject.id)
    bar.close()
    summary = summarise(rows, subsets)
    write_reports(rows, summary, subsets, cfg.modalities, out_dir)
    # Which trained weights were scored (checkpoint = latest | best | N).
    models = [{"model_dir": str(a.model_dir), "subsets": [s.name for s in group],
               **{k: v for k, v in (getattr(a, "loaded_checkpoint", None) or {}).items() if k != "path"}}
              for a, _, group in groups]
    atomic_write_text(out_dir / "models.json", json.dumps(models, indent=2) + "\n")
    return {"rows": rows, "summary": summary, "out_dir": str(out_dir)}


def summarise(rows, subsets) -> dict:
    out = {}
    for subset in subsets:
        name = subset.name
        sel = [r for r in rows if r["subset"] == name]
        keys = [k for k in sel[0] if k not in ("subject", "subset")] if sel else []
        out[name] = {k: float(np.mean([r[k] for r in sel])) for k in keys}
        out[name]["cases"] = len(sel)
    return out


def write_reports(rows, summary, subsets, modalities, out_dir: Path) -> None:
    """Every report file written atomically (an interrupted run never leaves half a table)."""
    if rows:
        fields = list(rows[0])
        atomic_write_csv(out_dir / "per_case.csv", fields, [[r.get(k, "") for k in fields] for r in rows])
    keys = sorted({k for v in summary.values() for k in v})
    atomic_write_csv(out_dir / "per_subset.csv", ["subset", *keys],
                     [[name, *[vals.get(k, "") for k in keys]] for name, vals in summary.items()])
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(out_dir / "table.md", markdown_table(summary, subsets, modalities))
    if any(k.startswith("psnr_") for v in summary.values() for k in v):
        atomic_write_text(out_dir / "synthesis.md", synthesis_table_markdown(summary, subsets, modalities))


def markdown_table(summary, subsets, modalities) -> str:
    """Rows = subsets with ●/○ per modality, columns = Dice (%) per region, plus the mean row."""
    head = "| " + " | ".join(modalities) + " | Dice whole | Dice core | Dice enhancing | HD95 whole (mm) |"
    sep = "|" + "---|" * (len(modalities) + 4)
    lines = [head, sep]
    for subset in subsets:
        v = summary[Subset(subset, modalities).name]
        marks = ["●" if m in subset else "○" for m in modalities]
        lines.append("| " + " | ".join(marks) + f" | {100 * v['dice_whole']:.1f} | {100 * v['dice_core']:.1f} | "
                     f"{100 * v['dice_enhancing']:.1f} | {v['hd95_whole']:.1f} |")
    if len(subsets) > 1:
        mean = {k: np.mean([summary[Subset(s, modalities).name][k] for s in subsets])
                for k in ("dice_whole", "dice_core", "dice_enhancing", "hd95_whole")}
        lines.append("| " + " | ".join(["Mean"] + [""] * (len(modalities) - 1)) +
                     f" | {100 * mean['dice_whole']:.1f} | {100 * mean['dice_core']:.1f} | "
                     f"{100 * mean['dice_enhancing']:.1f} | {mean['hd95_whole']:.1f} |")
    return "\n".join(lines) + "\n"
