"""Writing results (issue #8, items 2 and 3): a full disk, an unwritable output folder, a broken
case in a folder run, and outputs or model directories that must not be clobbered.

Writing is tested in-process on a real case with made-up network outputs (no TensorFlow needed);
the command line is used twice: a folder run with one broken case, and a single case whose
output folder cannot be created.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import run_cli_here
from tests.reliability.helpers import (
    assert_one_line,
    error_lines,
    snapshot,
    subject_file,
    tiny_config,
    write_config,
)
from uhved_tf.errors import ConfigError, DataError, UhvedError

# ----------------------------------------------------------------------------- in-process writing


def _fake_result(case, seed: int = 0) -> dict:
    """Network outputs of the case's shape (what predict_case returns), made up."""
    rng = np.random.default_rng(seed)
    shape = case.image.shape[:3]
    return {"seg_prob": rng.random(shape + (4,)).astype(np.float32),
            "synth": rng.normal(size=shape + (4,)).astype(np.float32),
            "uncertainty": rng.random(shape).astype(np.float32)}


@pytest.fixture
def earlier(data, tmp_path):
    """An output folder holding one case's earlier results, and what is needed to write again."""
    from uhved_tf.application import Application

    folder, _ = data
    # Every kind of output on: segmentation, 4 synthesised modalities, uncertainty, probabilities.
    cfg = tiny_config(folder, tmp_path / "model", "--save_uncertainty", "True",
                      set_overrides=["INFERENCE.output_prob=True"])
    app = Application(cfg)
    case = app.load_case(app.discover(need_label=False)[0], with_label=False)
    out = tmp_path / "out"
    written = app.outputs.write(case, _fake_result(case), out)
    assert len(written) == 7   # seg, 4 synth, uncertainty, prob
    return app, case, out


def _fill_disk_at_call(monkeypatch, n: int):
    """nibabel.save (used by save_like) writes a few bytes and fails with ENOSPC on its n-th call."""
    from uhved_tf.io import nifti
    real = nifti.nib.save
    calls = {"n": 0}

    def save(img, filename):
        calls["n"] += 1
        if calls["n"] == n:
            Path(filename).write_bytes(b"\x1f\x8b\x08 half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return real(img, filename)

    monkeypatch.setattr(nifti.nib, "save", save)
    return calls


@pytest.mark.parametrize("failing_call", [1, 3, 7])
def test_full_disk_keeps_earlier_results_intact(earlier, monkeypatch, failing_call):
    app, case, out = earlier
    before = snapshot(out)
    _fill_disk_at_call(monkeypatch, failing_call)
    with pytest.raises(DataError) as info:
        app.outputs.write(case, _fake_result(case, seed=1), out, overwrite=True)
    assert_one_line(str(info.value), str(out), case.id, "No space left on device")
    assert snapshot(out) == before, "earlier outputs changed or temporary files were left"


def test_full_disk_in_a_new_folder_leaves_no_partial_case(earlier, monkeypatch, tmp_path):
    app, case, _ = earlier
    _fill_disk_at_call(monkeypatch, 4)
    with pytest.raises(DataError, match="No space left on device"):
        app.outputs.write(case, _fake_result(case), tmp_path / "new")
    assert snapshot(tmp_path / "new") == {}


@pytest.mark.parametrize("how", ["read_only_folder", "parent_is_a_file"])
def test_unwritable_output_folder_fails_loudly(earlier, tmp_path, how):
    app, case, out = earlier
    if how == "read_only_folder":
        if os.geteuid() == 0:
            pytest.skip("running as root: chmod does not stop root from writing (parent_is_a_file covers it)")
        before = snapshot(out)
        out.chmod(0o555)
        try:
            with pytest.raises(DataError) as info:
                app.outputs.write(case, _fake_result(case, seed=3), out, overwrite=True)
        finally:
            out.chmod(0o755)
        assert_one_line(str(info.value), str(out), "Permission denied")
        assert snapshot(out) == before
    else:
        blocker = tmp_path / "not_a_folder"
        blocker.write_text("a file where the output folder's parent should be")
        with pytest.raises(DataError) as info:
            app.outputs.write(case, _fake_result(case, seed=3), blocker / "out")
        assert_one_line(str(info.value), str(blocker / "out"), case.id)
        assert blocker.read_text().startswith("a file")


def test_existing_outputs_are_not_overwritten_without_overwrite(earlier):
    app, case, out = earlier
    before = snapshot(out)
    with pytest.raises(DataError) as info:
        app.outputs.write(case, _fake_result(case, seed=3), out)
    assert_one_line(str(info.value), str(out / f"{case.id}_seg.nii.gz"), "--overwrite")
    assert snapshot(out) == before
    app.outputs.write(case, _fake_result(case, seed=3), out, overwrite=True)
    assert snapshot(out) != before and len(snapshot(out)) == len(before)


# ------------------------------------------------------------------------ model dirs: never clobber


def test_model_dir_with_checkpoints_or_other_settings_is_not_clobbered(trained, tmp_path):
    _, data, model, _, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    before = snapshot(copy)
    from uhved_tf.application import Application
    with pytest.raises(UhvedError) as info:       # checkpoints there: --resume or --overwrite
        Application(tiny_config(data, copy)).train(progress=False)
    assert_one_line(str(info.value), str(copy), "--resume", "--overwrite")
    with pytest.raises(ConfigError) as info:      # resuming with another network width
        Application(tiny_config(data, copy, "--base_width", "4", "--max_iter", "8")).train(resume=True,
                                                                                              progress=False)
    assert_one_line(str(info.value), "metadata.json", "base_width = 2", "4")
    assert snapshot(copy) == before


def test_damaged_latest_checkpoint_is_refused_with_one_line(trained, tmp_path):
    """Checkpoint checksums are verified on load: bit rot in the weights is a clean error for
    train --resume and for inference, naming the checkpoint (never silently wrong weights)."""
    _, data, model, _, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    data_file = next((copy / "checkpoints").glob("ckpt-20.data-*"))
    raw = bytearray(data_file.read_bytes())
    for i in range(0, len(raw), 256):   # bit rot everywhere: weights and optimiser slots
        raw[i] ^= 0x10
    data_file.write_bytes(bytes(raw))
    before = snapshot(copy / "checkpoints")
    from uhved_tf.application import Application
    with pytest.raises(UhvedError) as info:
        Application(tiny_config(data, copy, "--max_iter", "22")).train(resume=True, progress=False)
    assert_one_line(str(info.value), str(copy / "checkpoints" / "ckpt-20"), "damaged", "checkpoints present: 20")
    with pytest.raises(UhvedError) as info:
        Application(tiny_config(data, copy)).load_trained_model()
    assert_one_line(str(info.value), "ckpt-20", "damaged")
    assert snapshot(copy / "checkpoints") == before


# ----------------------------------------------------------------------------------- the CLI


def test_folder_inference_skips_a_broken_case_and_exits_non_zero(trained, tmp_path):
    _, data, model, _, _ = trained
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    ids = sorted(p.name for p in copy.rglob("Brats18_*") if p.is_dir())
    broken = subject_file(copy, ids[1], "T2")
    broken.write_bytes(broken.read_bytes()[:200])
    cfg = write_config(tmp_path / "tiny.ini", copy, model)
    out = tmp_path / "out"
    proc = run_cli_here("inference", "-c", cfg, "-q", "--dataset", "all", "-o", out, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"wrote outputs for 2 of 3 cases to {out}" in proc.stdout
    failed = [line for line in proc.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith(f"FAILED {ids[1]}: {broken}") and "truncated" in failed[0]
    for sid in ids:
        assert (out / f"{sid}_seg.nii.gz").exists() == (sid != ids[1])
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left"
    seg = nib.load(str(out / f"{ids[0]}_seg.nii.gz"))
    assert seg.shape == nib.load(str(subject_file(copy, ids[0], "T1"))).shape


def test_single_case_into_an_unwritable_folder_exits_2_with_one_line(trained, tmp_path):
    """The subject id given on the command line is sanitised (no escaping the output folder);
    the output folder cannot be created (a file is in its way): one error line naming the folder
    and the file, exit code 2, before the model runs (it said "check the free space and
    permissions" after running it)."""
    _, data, model, _, _ = trained
    cfg = write_config(tmp_path / "tiny.ini", data, model)
    sid = sorted(p.name for p in data.rglob("Brats18_*") if p.is_dir())[0]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli_here("inference", "-c", cfg, "-q", "--t1c", subject_file(data, sid, "T1c"),
                        "--flair", subject_file(data, sid, "Flair"), "--subject-id", "../../escaped",
                        "-o", blocker / "out", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert_one_line(lines[0], f"-o {blocker / 'out'} cannot be created: {blocker} is a file, not a folder")
    assert blocker.read_text() == "x"
    assert not list(tmp_path.parent.glob("escaped*")) and not list(tmp_path.glob("escaped*"))
