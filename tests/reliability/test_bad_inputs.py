"""The bad-input matrix (issue #8, item 1): one row per kind of bad input.

Each row damages a private copy of a two-subject demo data set (or the config), runs the step of
the application that reads it (config parsing, subject discovery, the split, loading a case) in
this process, and checks: the error is a :class:`UhvedError` of the expected class, its message is
one line naming the file / subject / key and what was expected, and nothing in the data or model
folder changed (nothing was written half-way). Rows whose ``expect`` is ``None`` must succeed (the
tolerances of the checks). A few rows go through the real command line (subprocess) to prove the
exit code and the single error line; the unit tests of each check live in tests/io, tests/config
and tests/data, this file is the index.
"""

from __future__ import annotations

import gzip
import logging
from functools import partial

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import run_cli_here
from tests.reliability.helpers import (
    DEMO_SHAPE,
    assert_one_line,
    error_lines,
    rewrite,
    run_cli,
    snapshot,
    subject_file,
    tiny_config,
    write_config,
)
from uhved_tf.errors import ConfigError, DataError, UhvedError

# ------------------------------------------------------------------------------- damaging data
# Each function damages ``data`` (subject ``sid`` unless said otherwise) and returns the strings
# the error message must contain. ``ctx`` holds the folders: data, model, root.


def _truncated(ctx, sid):
    path = subject_file(ctx["data"], sid, "T2")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return [str(path), "truncated"]


def _corrupt(ctx, sid):
    path = subject_file(ctx["data"], sid, "Flair")
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 8] = bytes(b ^ 0xA5 for b in raw[mid:mid + 8])
    path.write_bytes(bytes(raw))
    return [str(path), "corrupt"]


def _not_nifti(ctx, sid):
    path = subject_file(ctx["data"], sid, "T1")
    path.write_bytes(gzip.compress(b"<html>not an image</html>" * 20))
    return [str(path), "cannot read as NIfTI"]


def _four_d(ctx, sid):
    path = subject_file(ctx["data"], sid, "T1c")
    arr = np.asanyarray(nib.load(str(path)).dataobj)
    rewrite(path, np.stack([arr, arr], axis=-1))
    return [str(path), f"expected a 3-D image, got shape {DEMO_SHAPE + (2,)}"]


def _two_d(ctx, sid):
    path = subject_file(ctx["data"], sid, "T1c")
    rewrite(path, np.ones(DEMO_SHAPE[:2], np.int16))
    return [str(path), f"expected a 3-D image, got shape {DEMO_SHAPE[:2]}"]


def _non_finite(value):
    def damage(ctx, sid):
        path = subject_file(ctx["data"], sid, "T2")
        arr = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
        arr[3, 4, 5] = value
        arr[6, 7, 8] = value
        rewrite(path, arr)
        return [str(path), "2 non-finite voxels", "nan_policy"]
    return damage


def _all_zero(ctx, sid):
    path = subject_file(ctx["data"], sid, "T2")
    rewrite(path, np.zeros(DEMO_SHAPE, np.int16))
    return [str(path), "all zeros", sid, "T2"]


def _shape_mismatch(ctx, sid):
    path = subject_file(ctx["data"], sid, "Flair")
    arr = np.asanyarray(nib.load(str(path)).dataobj)
    rewrite(path, arr[:, :, :-4])
    return [sid, str(path), "(32, 32, 20)", "share one grid"]


def _shift_affine(mm):
    def damage(ctx, sid):
        path = subject_file(ctx["data"], sid, "T1")
        affine = nib.load(str(path)).affine.copy()
        affine[0, 3] += mm
        rewrite(path, affine=affine)
        return [sid, str(path), "differs", "by more than 0.001 mm", "co-register"]
    return damage


def _label_values(values):
    def damage(ctx, sid):
        path = subject_file(ctx["data"], sid, "label")
        arr = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
        for i, v in enumerate(values):
            arr[10 + i, 10, 10] = v
        dtype = np.float32 if any(v != int(v) for v in values) else (np.int16 if min(values) < 0 else np.uint8)
        rewrite(path, arr.astype(dtype))
        if any(v != int(v) for v in values):
            return [str(path), "non-integer values", "expected only [0, 1, 2, 4]"]
        return [str(path), f"label values {sorted(set(int(v) for v in values))}", "label_values"]
    return damage


def _missing_label_everywhere(ctx, sid):
    for p in ctx["data"].rglob("*_seg.nii.gz"):
        p.unlink()
    return ["[label]", str(ctx["data"]), "'_seg'"]


def _no_subjects(ctx, sid):
    for p in ctx["data"].rglob("*.nii.gz"):
        p.unlink()
    return ["[T1]", f"no file under {ctx['data']}", "contains '_t1'", "not '_t1ce'", "searched 0 NIfTI files"]


def _missing_folder(ctx, sid):
    import shutil
    shutil.rmtree(ctx["data"])
    return [str(ctx["data"]), "does not exist"]


def _duplicate_ids(ctx, sid):
    first = subject_file(ctx["data"], sid, "T1")
    dup = ctx["data"] / "copies" / first.name
    dup.parent.mkdir()
    dup.write_bytes(first.read_bytes())
    return ["[T1]", str(first), str(dup), f"same subject id {sid!r}"]


def _unknown_in_split(ctx, sid):
    split = ctx["model"] / "dataset_split.csv"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text(f"{sid},Training\nghost_subject,Inference\n")
    return [str(split), "ghost_subject", "not found"]


# stage: where the error must come from. "case" loads subject sid through the application,
# "discover" finds the subjects for training, "split" reads the split file.
# expect: the error class, or None when the input is within tolerance and must load.
MATRIX = {
    "truncated_gz": (_truncated, "case", DataError),
    "corrupt_gz": (_corrupt, "case", DataError),
    "not_nifti": (_not_nifti, "case", DataError),
    "image_4d": (_four_d, "case", DataError),
    "image_2d": (_two_d, "case", DataError),
    "nan_voxels": (_non_finite(np.nan), "case", DataError),
    "inf_voxels": (_non_finite(-np.inf), "case", DataError),
    "all_zero_modality": (_all_zero, "case", DataError),
    "shape_mismatch": (_shape_mismatch, "case", DataError),
    "affine_mismatch": (_shift_affine(1.0), "case", DataError),
    "affine_within_tolerance": (_shift_affine(1e-5), "case", None),
    "label_value_3": (_label_values([3]), "case", DataError),
    "label_negative": (_label_values([-1, 3]), "case", DataError),
    "label_non_integer": (_label_values([0.5]), "case", DataError),
    "no_label_anywhere": (_missing_label_everywhere, "discover", DataError),
    "no_subjects_found": (_no_subjects, "discover", DataError),
    "search_folder_missing": (_missing_folder, "discover", DataError),
    "duplicate_subject_ids": (_duplicate_ids, "discover", DataError),
    "split_names_unknown_subject": (_unknown_in_split, "split", DataError),
}


def _run_stage(stage, cfg, sid):
    from uhved_tf.application import Application

    app = Application(cfg)
    subjects = app.discover(need_label=True)
    if stage == "discover":
        return subjects
    if stage == "split":
        return app.split(subjects)
    subject = next(s for s in subjects if s.id == sid)
    return app.load_case(subject)


@pytest.mark.parametrize("row", sorted(MATRIX))
def test_bad_input_matrix(row, data, tmp_path):
    folder, ids = data
    damage, stage, expect = MATRIX[row]
    ctx = {"data": folder, "model": tmp_path / "model", "root": tmp_path}
    sid = ids[-1]
    fragments = damage(ctx, sid)
    cfg = tiny_config(folder, ctx["model"])
    before = snapshot(folder, ctx["model"])
    if expect is None:
        case = _run_stage(stage, cfg, sid)
        assert case.image.shape[-1] == 4 and np.all(np.isfinite(case.image))
    else:
        with pytest.raises(UhvedError) as info:
            _run_stage(stage, cfg, sid)
        assert type(info.value) is expect, f"{type(info.value).__name__}: {info.value}"
        assert_one_line(str(info.value), *fragments)
    assert snapshot(folder, ctx["model"]) == before, "files were written or changed"


# ------------------------------------------------------------------------- rows with their own shape


def test_nan_policy_zero_cleans_with_a_warning(data, tmp_path, caplog):
    folder, ids = data
    ctx = {"data": folder}
    _non_finite(np.nan)(ctx, ids[0])
    path = subject_file(folder, ids[0], "T2")
    from uhved_tf.application import Application
    cfg = tiny_config(folder, tmp_path / "model", "--nan_policy", "zero")
    assert cfg.network.nan_policy == "zero"
    app = Application(cfg)
    subject = next(s for s in app.discover(need_label=True) if s.id == ids[0])
    with caplog.at_level(logging.WARNING, logger="uhved_tf"):
        case = app.load_case(subject)
    assert np.all(np.isfinite(case.image))
    assert any(str(path) in r.getMessage() and "replaced 2 non-finite" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match=r"nan_policy.*error.*zero"):
        tiny_config(folder, tmp_path / "model", "--nan_policy", "ignore")


def test_a_subject_missing_its_label_is_left_out_of_training_with_a_warning(data, tmp_path, caplog):
    """One label file missing: the subject cannot train, so it is dropped, and the warning names it
    (no label anywhere is an error: the matrix row no_label_anywhere)."""
    folder, ids = data
    subject_file(folder, ids[0], "label").unlink()
    from uhved_tf.application import Application
    with caplog.at_level(logging.WARNING, logger="uhved_tf"):
        subjects = Application(tiny_config(folder, tmp_path / "model")).discover(need_label=True)
    assert [s.id for s in subjects] == ids[1:]
    assert any("no label file" in r.getMessage() and ids[0] in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("raw, safe", [("../../escape", "escape"), ("..\\..\\x", "x"), ("a/../../b", "a_____b"),
                                       ("/etc/passwd", "etc_passwd")])
def test_subject_ids_cannot_escape_the_output_folder(data, tmp_path, raw, safe, caplog):
    """Ids from a csv_file (or --subject-id) are made file-name safe, with a warning."""
    folder, ids = data
    sections = ("T1", "T1c", "T2", "Flair", "label")
    extra = []
    for s in sections:
        listing = tmp_path / f"{s}.csv"
        listing.write_text(f"{raw},{subject_file(folder, ids[0], s)}\n")
        extra.append(f"{s}.csv_file={listing}")
    from uhved_tf.application import Application
    with caplog.at_level(logging.WARNING, logger="uhved_tf"):
        subjects = Application(tiny_config(folder, tmp_path / "model", set_overrides=extra)).discover(True)
    assert [s.id for s in subjects] == [safe]
    assert any("made file-name safe" in r.getMessage() for r in caplog.records)
    out = (tmp_path / "out").resolve()
    assert (out / f"{subjects[0].id}_seg.nii.gz").resolve().parent == out


@pytest.mark.parametrize("window, levels, bad", [("18", 3, "18"), ("16, 16, 12", 4, "12"), ("20", 4, "20")])
def test_window_not_divisible_by_the_levels(tmp_path, window, levels, bad):
    sets = [f"{s}.spatial_window_size={window}" for s in ("T1", "T1c", "T2", "Flair", "label")]
    with pytest.raises(ConfigError) as info:
        tiny_config(tmp_path, tmp_path / "model", "--levels", str(levels), set_overrides=sets)
    assert_one_line(str(info.value), "spatial_window_size", f"{bad} is not divisible by {2 ** (levels - 1)}")


# ----------------------------------------------------------------------------- through the CLI


def _cli_train(tmp_path, folder, *extra, run=run_cli):
    cfg = write_config(tmp_path / "tiny.ini", folder, tmp_path / "model")
    return run("train", "-c", cfg, "-q", "--max_iter", "2", *extra)


@pytest.mark.slow   # builds the network before the pipeline reads the file: ~15 s
def test_cli_damaged_training_file_exits_2_with_one_line_and_no_checkpoint(data, tmp_path):
    """The file is read inside the tf.data pipeline: its DataError must still reach the user as
    the one-line message, not as a TensorFlow traceback (a subprocess: every line TensorFlow
    writes to the terminal counts)."""
    folder, ids = data
    fragments = _truncated({"data": folder}, ids[0])
    proc = _cli_train(tmp_path, folder)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert_one_line(lines[0], *fragments)
    assert not list((tmp_path / "model").glob("checkpoints/ckpt-*"))


def test_cli_no_subjects_exits_2_and_writes_nothing(data, tmp_path):
    # The CLI's main in this process: it stops at discovery, before any TensorFlow work.
    folder, ids = data
    fragments = _no_subjects({"data": folder}, ids[0])
    proc = _cli_train(tmp_path, folder, run=partial(run_cli_here, check=False))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(error_lines(proc.stderr)) == 1
    assert_one_line(error_lines(proc.stderr)[0], *fragments)
    assert not (tmp_path / "model").exists()


def test_cli_bad_window_exits_2_before_touching_anything(data, tmp_path):
    folder, _ = data
    sets = [x for s in ("T1", "T1c", "T2", "Flair", "label") for x in ("--set", f"{s}.spatial_window_size=18")]
    proc = _cli_train(tmp_path, folder, "--levels", "3", *sets)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert_one_line(error_lines(proc.stderr)[0], "spatial_window_size", "not divisible by 4")
    assert not (tmp_path / "model").exists()
