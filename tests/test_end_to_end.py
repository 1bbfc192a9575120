"""End to end through the real CLI (subprocesses): demo data -> train -> resume -> inference ->
evaluate, on a tiny synthetic data set and a tiny network (two levels, width 2). Real NIfTI
files, real tf.data, real checkpoints and TensorBoard event files.

Each command that trains, segments or evaluates runs in its own process, once, and its outputs are
shared by the tests that check them (module fixtures). Calls that end early (a refusal, a bad
input), a report from CSV files and a variant of a command already run here in a subprocess run
the CLI's ``main`` in this process (``run_cli_here``): the same exit code and messages, without a
TensorFlow import of their own."""

from __future__ import annotations

import csv
import re

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.slow

from tests.helpers import FAST_INI, run_cli, run_cli_here


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = root / "data"
    from uhved_tf.demo.synthetic import make_demo_dataset
    make_demo_dataset(data, n_subjects=4, shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0), seed=1)
    cfg = root / "tiny.ini"
    cfg.write_text(FAST_INI.format(data=data, model=root / "model"))
    return root, cfg, data


@pytest.fixture(scope="module")
def trained(project):
    root, cfg, data = project
    run_cli("train", "-c", cfg, "-q")
    return project


def test_two_iterations_write_checkpoints_metrics_and_events(trained):
    root, cfg, _ = trained
    model = root / "model"
    assert (model / "checkpoints" / "ckpt-2.index").exists()
    assert (model / "config_resolved.ini").exists()
    assert (model / "metadata.json").exists()
    assert (model / "dataset_split.csv").exists()
    rows = list(csv.DictReader(open(model / "metrics.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["total"])) for r in rows)
    # The subsets each step trained on are logged: batch_size 2 -> two non-empty subsets per row.
    modalities = {"T1", "T1c", "T2", "Flair"}
    for r in rows:
        subsets = r["subsets"].split(";")
        assert len(subsets) == 2 and all(s and set(s.split("+")) <= modalities for s in subsets)
    events = list((model / "logs" / "train").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["tensors"]) | set(acc.Tags()["scalars"])
    assert {"lr", "loss/total", "loss/dice", "loss/ce", "loss/recon", "loss/kl"} <= tags


def test_train_again_without_resume_refuses_to_clobber(trained):
    root, cfg, _ = trained
    proc = run_cli_here("train", "-c", cfg, "-q", check=False)
    assert proc.returncode == 2
    assert "--resume" in proc.stderr and "Traceback" not in proc.stderr
    assert (root / "model" / "checkpoints" / "ckpt-2.index").exists()


def test_resume_continues_at_iteration_two(trained):
    root, cfg, _ = trained
    proc = run_cli_here("train", "-c", cfg, "--resume", "--max_iter", "3", "--set", "TRAINING.save_every_n=0")
    assert "resumed from" in proc.stderr and "iteration 2" in proc.stderr
    rows = list(csv.DictReader(open(root / "model" / "metrics.csv")))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3]
    assert (root / "model" / "checkpoints" / "ckpt-3.index").exists()


def two_modality_case(data):
    """(T1c file, FLAIR file, subject ID the CLI derives from their names) of one demo case."""
    t1c = next(data.rglob("*_t1ce.nii.gz"))
    flair = next(data.rglob("*_flair.nii.gz"))
    return t1c, flair, t1c.name[: -len("_t1ce.nii.gz")]


@pytest.fixture(scope="module")
def inferred(trained, tmp_path_factory):
    """One case segmented from T1c + FLAIR (``-o out``, subject ID from the file names): checked
    by the grid test, and the reference of the oblique test."""
    root, cfg, data = trained
    t1c, flair, _ = two_modality_case(data)
    out = tmp_path_factory.mktemp("inferred") / "out"
    run_cli("inference", "-c", cfg, "--t1c", t1c, "--flair", flair, "-o", out, "-q")
    return out


def test_inference_outputs_land_on_the_input_grid(trained, inferred):
    root, cfg, data = trained
    t1c, flair, sid = two_modality_case(data)
    out = inferred
    ref = nib.load(str(t1c))
    assert not np.allclose(ref.affine, np.eye(4))   # the demo data has non-identity, non-RAS affines
    seg = nib.load(str(out / f"{sid}_seg.nii.gz"))
    assert seg.shape == ref.shape
    np.testing.assert_allclose(seg.affine, ref.affine, atol=1e-5)
    assert nib.aff2axcodes(seg.affine) == nib.aff2axcodes(ref.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
    for m in ("T1", "T1c", "T2", "Flair"):
        synth = nib.load(str(out / f"{sid}_{m}_synth.nii.gz"))
        assert synth.shape == ref.shape
        assert np.all(np.isfinite(synth.get_fdata()))
    assert (out / f"{sid}_uncertainty.nii.gz").exists()
    # Existing outputs are not overwritten without --overwrite.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run_cli_here("inference", "-c", cfg, "--t1c", t1c, "--flair", flair, "-o", out, "-q", check=False)
    assert again.returncode != 0 and "--overwrite" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    """One ``evaluate`` run (two subsets, the figure, checkpoint 1) shared by the two evaluate
    tests (merged: each used to run its own evaluation of the same model)."""
    root, cfg, _ = trained
    ev = tmp_path_factory.mktemp("evaluated") / "ev"
    proc = run_cli_here("evaluate", "-c", cfg, "--subsets", "full;T1c,Flair", "-o", ev, "-q", "--figure",
                   "--checkpoint", "1")
    return ev, proc


def test_evaluate_prints_dice_per_subset(trained, evaluated, tmp_path):
    root, cfg, _ = trained
    ev, proc = evaluated
    assert "T1+T1c+T2+Flair" in proc.stdout and "T1c+Flair" in proc.stdout
    rows = list(csv.DictReader(open(ev / "per_case.csv")))
    assert len(rows) == 2   # 1 inference case x 2 subsets
    for r in rows:
        assert 0.0 <= float(r["dice_whole"]) <= 1.0
    assert (ev / "table.md").read_text().count("●") >= 6
    assert {"psnr_T1", "ssim_Flair", "mae_T2"} <= set(rows[0])          # synthesis quality
    assert "PSNR" in (ev / "synthesis.md").read_text()
    assert list(ev.glob("figure_*.png"))
    # Comparing a model with itself: nothing is significant (a report from the CSV files).
    cmp = run_cli_here("evaluate", "-c", cfg, "--compare", ev, ev, "-o", tmp_path / "cmp", "-q")
    assert (tmp_path / "cmp" / "compare.md").read_text().count("●") >= 6 and "compare.md" in cmp.stdout
    assert all(r["significant"] in ("False", "0", "false") for r in csv.DictReader(open(tmp_path / "cmp" / "compare.csv")))


def test_inference_of_several_subsets_writes_one_folder_each(trained, tmp_path):
    root, cfg, data = trained
    t1c = next(data.rglob("*_t1ce.nii.gz"))
    files = {m: t1c.with_name(t1c.name.replace("_t1ce", s)) for m, s in
             (("t1", "_t1"), ("t1c", "_t1ce"), ("t2", "_t2"), ("flair", "_flair"))}
    flags = [a for m, f in files.items() for a in (f"--{m}", f)]
    sid = t1c.name[: -len("_t1ce.nii.gz")]
    run_cli_here("inference", "-c", cfg, *flags, "--modalities", "all", "-o", tmp_path / "all", "-q")
    folders = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert len(folders) == 15 and "T1c+Flair" in folders and "T1+T1c+T2+Flair" in folders
    assert all((tmp_path / "all" / f / f"{sid}_seg.nii.gz").exists() for f in folders)
    # The CLI's main in this process from here on: a list of subsets, then two refusals.
    proc = run_cli_here("inference", "-c", cfg, *flags, "--modalities", "T1c,Flair;T2", "-o", tmp_path / "two",
                        "--set", "INFERENCE.save_synthesis=False", "--set", "INFERENCE.save_uncertainty=False")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["T1c+Flair", "T2"]
    # Outputs not asked for are not written (nor computed: tests/inference/test_predictor.py).
    assert sorted(p.name for p in (tmp_path / "two" / "T2").iterdir()) == [f"{sid}_seg.nii.gz"]
    line = next(x for x in proc.stderr.splitlines() if "time to first prediction" in x)
    assert re.search(r"time to first prediction [\d.]+ s \(start-up and imports [\d.]+ s, model [\d.]+ s, "
                     r"trace, case loading and first window [\d.]+ s\)", line), line
    # An empty subset is refused (it used to run with all four modalities).
    proc = run_cli_here("inference", "-c", cfg, *flags, "--modalities", "", "-o", tmp_path / "none", check=False)
    assert proc.returncode == 2 and "no modality subset" in proc.stderr and not (tmp_path / "none").exists()
    # A subset naming a modality whose file was not given.
    proc = run_cli_here("inference", "-c", cfg, "--t1c", files["t1c"], "--modalities", "T1c;T2", "-o",
                        tmp_path / "x", check=False)
    assert proc.returncode == 2 and "T2" in proc.stderr


def test_evaluate_chooses_the_checkpoint(trained, evaluated, tmp_path):
    root, cfg, _ = trained
    ev, _ = evaluated                                   # evaluate --checkpoint 1
    import json
    (used,) = json.loads((ev / "models.json").read_text())
    assert used["checkpoint"] == "1" and used["iteration"] == 1
    # No validation ran, so there is no best checkpoint: one clear line, exit 2, nothing written.
    proc = run_cli_here("evaluate", "-c", cfg, "--subsets", "full", "-o", tmp_path / "evb", "-q", "--checkpoint",
                        "best", check=False)
    assert proc.returncode == 2 and "checkpoint = best" in proc.stderr and "validation_every_n" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "evb" / "per_case.csv").exists()
    proc = run_cli_here("inference", "-c", cfg, "-q", "--checkpoint", "2", "--set", "INFERENCE.inference_iter=1",
                        "-o", tmp_path / "inf", check=False)
    assert proc.returncode == 2 and "disagree" in proc.stderr


@pytest.mark.parametrize("case", ["unknown_key", "missing_file", "shape_mismatch"])
def test_bad_inputs_exit_with_one_clear_line(project, tmp_path, case):
    root, cfg, data = project
    text = cfg.read_text()
    if case == "unknown_key":
        bad = tmp_path / "bad.ini"
        bad.write_text(text.replace("lr = 0.001", "lerning_rate = 0.001"))
        proc = run_cli("train", "-c", bad, check=False)
        expected = ['"lerning_rate"', "[TRAINING]"]
    elif case == "missing_file":
        proc = run_cli_here("inference", "-c", cfg, "--t1c", tmp_path / "nope.nii.gz", "-o", tmp_path / "o",
                            check=False)
        expected = ["nope.nii.gz"]
    else:
        t1c = next(data.rglob("*_t1ce.nii.gz"))
        small = tmp_path / "small_flair.nii.gz"
        img = nib.load(str(t1c))
        nib.save(nib.Nifti1Image(np.ones((10, 12, 14), np.float32), img.affine), str(small))
        proc = run_cli_here("inference", "-c", cfg, "--t1c", t1c, "--flair", small, "-o", tmp_path / "o",
                            check=False)
        expected = ["small_flair.nii.gz", "shape"]
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(error_lines) == 1, proc.stderr
    for word in expected:
        assert word in error_lines[0], error_lines[0]


def test_oblique_non_ras_case_lands_voxel_for_voxel_on_its_grid(trained, inferred, tmp_path):
    """The same voxels under an oblique (rotated 7 degrees) affine: the outputs have that exact
    grid and equal the outputs of the original case (``inferred``) voxel for voxel."""
    root, cfg, data = trained
    t1c, flair, sid = two_modality_case(data)
    src = nib.load(str(t1c))
    assert nib.aff2axcodes(src.affine) != ("R", "A", "S")
    theta = np.deg2rad(7.0)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    oblique_affine = rot @ src.affine
    assert nib.aff2axcodes(oblique_affine) == nib.aff2axcodes(src.affine)
    oblique = tmp_path / "oblique"
    oblique.mkdir()
    for f in (t1c, flair):
        img = nib.load(str(f))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), oblique_affine, img.header), str(oblique / f.name))
    out_a, out_b = inferred, tmp_path / "b"
    # The same file names, so the same subject ID as the original case's outputs.
    run_cli_here("inference", "-c", cfg, "--t1c", oblique / t1c.name, "--flair", oblique / flair.name, "-o", out_b,
                 "-q")
    a = nib.load(str(out_a / f"{sid}_seg.nii.gz"))
    b = nib.load(str(out_b / f"{sid}_seg.nii.gz"))
    np.testing.assert_allclose(b.affine, oblique_affine, atol=1e-5)
    assert b.shape == src.shape
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    np.testing.assert_allclose(nib.load(str(out_b / f"{sid}_T2_synth.nii.gz")).get_fdata(),
                               nib.load(str(out_a / f"{sid}_T2_synth.nii.gz")).get_fdata(), rtol=1e-5, atol=1e-5)
