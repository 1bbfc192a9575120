"""Input safety: the reviewers' findings on absurd NIfTI headers, tracebacks, silent and misleading
command lines, one row per case (the unit tests of each check live next to the code's tests:
tests/io/test_nifti.py, tests/io/test_discovery.py, tests/config/test_config.py,
tests/export/test_client.py; this file is the index).

* ``LOADS``: a damaged file of a two-subject demo data set is read through the application
  (discovery, then the case) in this process: a one-line :class:`DataError` naming the file, the
  declared shape and why, before any voxel is read (these used to be a MemoryError, or an attempt
  to allocate terabytes), and nothing written.
* ``COMMANDS``: a command line through the CLI's ``main`` in this process: exit code 2, exactly one
  error line with the expected fragments (and none of the misleading ones it used to have), no
  traceback, nothing written and the file in the way untouched.
* Below the matrices: a bug's traceback no longer leaves the process running, a model directory's
  own paths give way to the user's overrides, and (slow) inference of a case with an absurd header
  through ``python -m uhved_tf``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import nifti_declaring, run_cli_here
from tests.reliability.helpers import (
    REPO,
    assert_one_line,
    error_lines,
    run_cli,
    snapshot,
    subject_file,
    tiny_config,
    write_config,
)
from uhved_tf.errors import DataError

# ------------------------------------------------------------------------- absurd headers, read in-process
_BIG = 2**62


def _replace(ctx, sid, section, name_suffix, shape, nifti2=False):
    """Replace the ``section`` file of ``sid`` by a file whose header declares ``shape``."""
    old = subject_file(ctx["data"], sid, section)
    old.unlink()
    return nifti_declaring(old.with_name(old.name.replace(".nii.gz", name_suffix)), shape, nifti2=nifti2)


def _nifti1_32767_cubed(ctx, sid):
    path = _replace(ctx, sid, "T1", ".nii.gz", (32767,) * 3)
    return [f"{path}: the header declares shape (32767, 32767, 32767) (3.52e+13 voxels of int16)", "2^31"]


def _nifti2_absurd(ctx, sid):
    path = _replace(ctx, sid, "T2", ".nii.gz", (_BIG,) * 3, nifti2=True)
    return [f"{path}: the header declares shape ({_BIG}, {_BIG}, {_BIG}) (9.81e+55 voxels", "2^31"]


def _more_than_the_file(ctx, sid):
    path = _replace(ctx, sid, "Flair", ".nii", (512,) * 3)
    return [str(path), "(268435456 bytes of voxels from byte 352) but the file has only 480 bytes", "truncated"]


def _more_than_decompressed(ctx, sid):
    path = _replace(ctx, sid, "label", ".nii.gz", (512,) * 3)
    return [str(path), "but the decompressed file has only 480 bytes"]


LOADS = {
    "nifti1_header_of_32767_cubed": _nifti1_32767_cubed,
    "nifti2_header_of_1e55_voxels": _nifti2_absurd,
    "nii_declaring_more_than_the_file": _more_than_the_file,
    "nii_gz_declaring_more_than_decompressed": _more_than_decompressed,
}


@pytest.mark.parametrize("row", sorted(LOADS))
def test_absurd_header_matrix(row, data, tmp_path):
    from uhved_tf.application import Application

    folder, ids = data
    ctx = {"data": folder}
    sid = ids[-1]
    fragments = LOADS[row](ctx, sid)
    app = Application(tiny_config(folder, tmp_path / "model"))
    before = snapshot(folder, tmp_path / "model")
    subject = next(s for s in app.discover(need_label=True) if s.id == sid)
    with pytest.raises(DataError) as info:
        app.load_case(subject)
    assert_one_line(str(info.value), *fragments)
    assert snapshot(folder, tmp_path / "model") == before


# ------------------------------------------------------------------------------ command lines, in-process
# Each function prepares ``ctx`` (data, model, root, config, blocker: a file where a folder should
# be) and returns ``(arguments after the command, fragments the error line must have, fragments it
# must not have)``.


def _model_dir_is_a_file(ctx):
    ctx["config"] = write_config(ctx["root"] / "file_model.ini", ctx["data"], ctx["blocker"])
    return ["train", "-c", ctx["config"], "-q"], ["[SYSTEM] model_dir", f"{ctx['blocker']} is a file, not a folder"], []


def _split_folder_is_a_file(ctx):
    split = ctx["blocker"] / "split.csv"
    return (["train", "-c", ctx["config"], "-q", "--set", f"SYSTEM.dataset_split_file={split}"],
            [f"cannot write split file {split}", f"{ctx['blocker']} is a file, not a folder"], [])


def _output_is_a_file(command, flag="-o", *extra):
    def prepare(ctx):
        return ([command, "-c", ctx["config"], "-q", *extra, flag, ctx["blocker"]],
                [f"{flag} {ctx['blocker']} is a file, not a folder"], ["free space", "permissions"])
    return prepare


def _output_under_a_file(ctx):
    t1c = subject_file(ctx["data"], ctx["sid"], "T1c")
    return (["inference", "-c", ctx["config"], "-q", "--t1c", t1c, "-o", ctx["blocker"] / "out"],
            [f"-o {ctx['blocker'] / 'out'} cannot be created: {ctx['blocker']} is a file, not a folder"],
            ["free space"])


def _client_output_is_a_file(ctx):
    t1c = subject_file(ctx["data"], ctx["sid"], "T1c")
    return (["client", "-c", ctx["config"], "-q", "--server", "127.0.0.1:9", "--t1c", t1c, "-o", ctx["blocker"]],
            [f"-o {ctx['blocker']} is a file, not a folder"], ["TensorFlow Serving"])


def _empty_modalities(ctx):
    return (["inference", "-c", ctx["config"], "-q", "--modalities", "", "-o", ctx["root"] / "out"],
            ['no modality subset in ""'], [])


def _key_and_set_disagree(ctx):
    return (["train", "-c", ctx["config"], "-q", "--set", "TRAINING.max_iter=1", "--max_iter", "2"],
            ['"--max_iter 2" and "--set TRAINING.max_iter=1" both set [TRAINING] max_iter', "(2 and 1)"], [])


def _key_twice(ctx):
    return (["inference", "-c", ctx["config"], "-q", "--window_overlap", "0", "--window_overlap=0.5"],
            ['"--window_overlap 0" and "--window_overlap=0.5" both set [INFERENCE] window_overlap'], [])


def _trained_model_split(ctx, lines):
    """A model directory that has been trained (metadata.json) with this split."""
    ctx["model"].mkdir()
    (ctx["model"] / "metadata.json").write_text(json.dumps({"network": "u_hved"}))
    split = ctx["model"] / "dataset_split.csv"
    split.write_text("".join(f"{line}\n" for line in lines))
    return split


def _label_missing_for_evaluate(ctx):
    """evaluate said the split lists subjects "not found ... delete it to create a new split"."""
    split = _trained_model_split(ctx, [f"{i},Inference" for i in ctx["ids"]])
    subject_file(ctx["data"], ctx["sid"], "label").unlink()
    return (["evaluate", "-c", ctx["config"], "-q", "--subsets", "full", "-o", ctx["root"] / "eval"],
            [f"split file {split} lists 1 subject whose files are missing (no [label] file for {ctx['sid']})",
             "restore the missing files", f"keep the split file: the model in {ctx['model']} was trained with it"],
            ["delete", "not found"])


def _unknown_subject_in_a_trained_split(ctx):
    split = _trained_model_split(ctx, [*(f"{i},Training" for i in ctx["ids"]), "ghost_subject,Inference"])
    return (["evaluate", "-c", ctx["config"], "-q", "--subsets", "full", "-o", ctx["root"] / "eval"],
            [str(split), "1 subject that was not found: ghost_subject", "keep the split file"], ["delete"])


COMMANDS = {
    "model_dir_is_a_file": _model_dir_is_a_file,
    "split_file_folder_is_a_file": _split_folder_is_a_file,
    "inference_output_is_a_file": _output_is_a_file("inference", "-o", "--dataset", "all"),
    "inference_output_under_a_file": _output_under_a_file,
    "evaluate_output_is_a_file": _output_is_a_file("evaluate", "-o", "--subsets", "full"),
    "evaluate_compare_output_is_a_file": _output_is_a_file("evaluate", "-o", "--compare", "a", "b"),
    "export_output_is_a_file": _output_is_a_file("export", "--output"),
    "client_output_is_a_file": _client_output_is_a_file,
    "inference_empty_modalities": _empty_modalities,
    "key_and_set_override_disagree": _key_and_set_disagree,
    "key_override_given_twice": _key_twice,
    "evaluate_label_file_missing": _label_missing_for_evaluate,
    "unknown_subject_in_a_trained_models_split": _unknown_subject_in_a_trained_split,
}


@pytest.mark.parametrize("row", sorted(COMMANDS))
def test_command_line_matrix(row, data, tmp_path):
    folder, ids = data
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    ctx = {"data": folder, "ids": ids, "sid": ids[-1], "root": tmp_path, "model": tmp_path / "model",
           "blocker": blocker}
    ctx["config"] = write_config(tmp_path / "tiny.ini", folder, ctx["model"])
    args, fragments, misleading = COMMANDS[row](ctx)
    before = snapshot(tmp_path)
    proc = run_cli_here(*args, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"uhved_tf {args[0]}: error: "), proc.stderr[-3000:]
    assert_one_line(lines[0], *fragments)
    for words in misleading:
        assert words not in lines[0], lines[0]
    assert snapshot(tmp_path) == before, "files were written or changed"


# ------------------------------------------------------------------------------------------- the rest


def test_a_bug_prints_its_traceback_and_the_process_exits_at_once():
    """An unexpected exception (here the MemoryError an absurd header used to cause) after
    TensorFlow was loaded: the traceback was printed and then tf.data's threads kept the process
    alive for ever. The stand-ins: a non-daemon thread, and TensorFlow marked as loaded."""
    code = textwrap.dedent("""
        import sys, threading, time, types
        sys.modules.setdefault("tensorflow", types.ModuleType("tensorflow"))
        threading.Thread(target=time.sleep, args=(600,)).start()
        import uhved_tf.cli as cli
        def main(argv=None):
            raise MemoryError("Unable to allocate 64.0 TiB for an array")
        cli.main = main
        cli.run()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" in proc.stderr and "MemoryError: Unable to allocate 64.0 TiB" in proc.stderr


def test_a_model_directorys_own_paths_give_way_to_the_users_overrides(data, tmp_path):
    """``--model DIR --save_seg_dir OUT``: the directory's own INFERENCE.save_seg_dir (a --set put
    before the user's overrides) silently won over the user's --key; now the user's value is used,
    and it is no conflict."""
    from uhved_tf.zoo import config_for_model_dir

    folder, _ = data
    model = tmp_path / "model"
    tiny_config(folder, model).write_resolved(model)
    (model / "metadata.json").write_text("{}")
    (model / "checkpoints").mkdir()
    out = tmp_path / "elsewhere"
    assert config_for_model_dir(model).inference.save_seg_dir == model.resolve() / "output"
    assert config_for_model_dir(model, overrides=["--save_seg_dir", str(out)]).inference.save_seg_dir == out
    cfg = config_for_model_dir(model, set_overrides=[f"EVALUATION.save_csv_dir={out}"])
    assert cfg.evaluation.save_csv_dir == out and cfg.system.model_dir == model.resolve()


@pytest.mark.slow   # python -m uhved_tf with a trained model: ~10 s
def test_inference_of_a_case_with_an_absurd_header_is_one_line_and_exits(trained, tmp_path):
    """It printed a MemoryError traceback and never exited."""
    _, data, model, _, _ = trained
    cfg = write_config(tmp_path / "tiny.ini", data, model)
    sid = sorted(p.name for p in data.rglob("Brats18_*") if p.is_dir())[0]
    damaged = nifti_declaring(tmp_path / f"{sid}_flair.nii", (32767,) * 3)
    proc = run_cli("inference", "-c", cfg, "-q", "--t1c", subject_file(data, sid, "T1c"), "--flair", damaged,
                   "-o", tmp_path / "out", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert_one_line(lines[0], f"{damaged}: the header declares shape (32767, 32767, 32767)", "2^31")
    assert not (tmp_path / "out").exists()


def test_resolved_config_and_report_files_are_replaced_atomically(tmp_path, monkeypatch):
    """config_resolved.ini, per_case.csv, per_subset.csv, summary.json, table.md and unmatched.txt
    all go through uhved_tf.io.atomic (already so: this guards it): when the final rename fails
    (a full disk), every earlier file is intact and no temporary file is left."""
    from uhved_tf.evaluation.report import score_predictions, summarise, write_reports
    from uhved_tf.errors import ConfigError
    from uhved_tf.io import atomic
    from uhved_tf.subset import Subset

    model, out = tmp_path / "model", tmp_path / "eval"
    cfg = tiny_config(tmp_path / "data", model)
    cfg.write_resolved(model)
    subsets = [Subset(["T1"], cfg.modalities)]

    def reports(dice):
        rows = [{"subject": "a", "subset": "T1", "dice_whole": dice, "dice_core": dice, "dice_enhancing": dice,
                 "hd95_whole": 1.0}]
        write_reports(rows, summarise(rows, subsets), subsets, cfg.modalities, out)

    def unmatched(name):
        score_predictions([], None, out, missing=[name], progress=False)

    reports(0.5)
    unmatched("subject_a")
    before = snapshot(model, out)
    assert {p.rsplit("/", 1)[-1] for p in before} >= {"config_resolved.ini", "per_case.csv", "per_subset.csv",
                                                      "summary.json", "table.md", "unmatched.txt"}

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(atomic.os, "replace", full_disk)
    with pytest.raises(ConfigError, match="No space left on device"):
        tiny_config(tmp_path / "data", model, "--max_iter", "9").write_resolved(model)
    with pytest.raises(OSError):
        reports(0.75)
    with pytest.raises(OSError):
        unmatched("subject_b")
    assert snapshot(model, out) == before
