"""Training a user can trust: the original U-HVED config trains with only its paths changed,
a killed run resumes onto the uninterrupted loss curve, Ctrl-C saves a checkpoint.

Runs that are killed or interrupted, and the runs under test, are subprocesses of the real CLI;
the uninterrupted reference run, a refusal and the default run that leaves an incomplete subject
out run the CLI's ``main`` in this process (``run_cli_here``), without a TensorFlow import of their
own."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import FAST_INI, run_cli, run_cli_here

pytestmark = pytest.mark.slow

# The original ReubenDo/U-HVED extensions/u_hved/config.ini (NiftyNet), verbatim but for the
# data and model paths.
ORIGINAL_CONFIG = """[T1]
path_to_search = {data}
filename_contains = T1
filename_not_contains = T1c
pixdim = 1.0, 1.0, 1.0
spatial_window_size = (112, 112, 112)
interp_order = 3
axcodes = (R, A, S)


[T1c]
path_to_search = {data}
filename_contains = T1c
filename_not_contains = 
pixdim = 1.0, 1.0, 1.0
spatial_window_size = (112, 112, 112)
interp_order = 3
axcodes = (R, A, S)


[Flair]
path_to_search = {data}
filename_contains = Flair
filename_not_contains = 
pixdim = 1.0, 1.0, 1.0
spatial_window_size = (112, 112, 112)
interp_order = 3
axcodes = (R, A, S)


[T2]
path_to_search = {data}
filename_contains = T2
filename_not_contains =
pixdim = 1.0, 1.0, 1.0
spatial_window_size = (112, 112, 112)
interp_order = 3
axcodes = (R, A, S)



[label_b]
path_to_search = {data}
filename_contains = Label
filename_not_contains =
pixdim = 1.0, 1.0, 1.0
spatial_window_size = (112, 112, 112)
interp_order = 0
axcodes = (R, A, S)


[SYSTEM]
cuda_devices = ""
num_threads = 2
num_gpus = 1
model_dir = {model}

[NETWORK]
name = u_hved.u_hved_net.U_HVED
batch_size = 1
activation_function = relu
volume_padding_size = 10

whitening = True
normalisation = True
normalise_foreground_only=True
foreground_type = mean_plus
histogram_ref_file = hist.txt
cutoff = (0.001, 0.999)
window_sampling = uniform
queue_length = 30
reg_type = L2
decay = 1e-5

[TRAINING]
sample_per_volume = 32
lr = 0.001
loss_type = Jaccard
starting_iter = 0
save_every_n = 5000
max_iter = 60000
max_checkpoints = 20
random_flipping_axes = 0,1,2
scaling_percentage =-10.0,10.0

exclude_fraction_for_validation = 0.1
exclude_fraction_for_inference = 0.2


[INFERENCE]
border = 10
inference_iter = 60000
save_seg_dir = ./output
output_interp_order = 0
spatial_window_size = (140, 140, 140)



[MULTIMODAL]
image = T1, T1c, T2, Flair
label = label_b
output_prob = False
num_classes = 4
"""


def niftynet_named_data(root: Path, n=5):
    """Demo subjects renamed NiftyNet-style (HGG001_T1.nii.gz, _T1c, _T2, _Flair, _Label)."""
    from uhved_tf.demo.synthetic import make_demo_dataset
    src = root / "brats"
    make_demo_dataset(src, n_subjects=n, shape=(32, 32, 24), spacing=(2.0, 2.0, 2.0), seed=4)
    out = root / "niftynet"
    out.mkdir()
    names = {"t1": "T1", "t1ce": "T1c", "t2": "T2", "flair": "Flair", "seg": "Label"}
    for i, folder in enumerate(sorted(p for p in src.rglob("Brats18_*") if p.is_dir())):
        for f in folder.glob("*.nii.gz"):
            suffix = f.name[len(folder.name) + 1: -len(".nii.gz")]
            (out / f"HGG{i:03d}_{names[suffix]}.nii.gz").write_bytes(f.read_bytes())
    return out


def test_original_uhved_config_trains_with_only_paths_changed(tmp_path):
    data = niftynet_named_data(tmp_path)
    cfg = tmp_path / "config.ini"
    cfg.write_text(ORIGINAL_CONFIG.format(data=data, model=tmp_path / "model"))
    # CPU-sized run: the config file is the original; only the command line shrinks the job (the
    # network's width and its training window, which inference builds the network with, too).
    net = ["--base_width", "2"] + [
        x for s in ("T1", "T1c", "T2", "Flair", "label_b") for x in ("--set", f"{s}.spatial_window_size=16,16,16")]
    small = ["--max_iter", "2", "--sample_per_volume", "2", "--queue_length", "2", *net]
    proc = run_cli("train", "-c", cfg, *small)
    err = proc.stderr
    assert "ignored by uhved_tf" in err            # e.g. loss_type, num_gpus: said, not silent
    hist = tmp_path / "model" / "hist.txt"        # Nyul landmarks learned on the training set
    lines = hist.read_text().split("\n")
    assert [line.split()[0] for line in lines if line.strip()] == ["T1", "T1c", "T2", "Flair"]
    assert all(len(line.split()) == 14 for line in lines if line.strip())
    assert (tmp_path / "model" / "checkpoints" / "ckpt-2.index").exists()
    # Inference reuses the landmarks; the original 140 window is rounded to 144 with a warning.
    out = tmp_path / "out"
    t1 = next(data.glob("*_T1.nii.gz"))
    failed = run_cli_here("inference", "-c", cfg, "--t1", t1, "-o", out, *net, check=False)
    assert failed.returncode == 2 and "inference_iter = -1" in failed.stderr   # the original asks for 60000
    proc = run_cli_here("inference", "-c", cfg, "--t1", t1, "-o", out, "--samples", "1", "--inference_iter=-1", *net)
    assert "using 144, 144, 144" in proc.stderr
    seg = nib.load(str(out / f"{t1.name[:-len('_T1.nii.gz')]}_seg.nii.gz"))
    assert seg.shape == nib.load(str(t1)).shape


def metrics(model_dir):
    return [(int(r["iteration"]), float(r["total"])) for r in csv.DictReader(open(model_dir / "metrics.csv"))]


def _interruptible():
    # A test run started in the background by a non-interactive shell (`make test &`) has SIGINT
    # ignored, and Python then leaves it ignored in the child: give the child Ctrl-C back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_training(cfg, model_dir, max_iter, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, "-m", "uhved_tf", "train", "-c", str(cfg), "-q",
                             "--max_iter", str(max_iter), "--set", f"SYSTEM.model_dir={model_dir}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_interruptible)


def wait_for(path: Path, proc, timeout=300):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended before {path} appeared: {proc.stderr.read()[-2000:]}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    from uhved_tf.demo.synthetic import make_demo_dataset
    make_demo_dataset(root / "data", n_subjects=4, shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0), seed=5)
    cfg = root / "tiny.ini"
    cfg.write_text(FAST_INI.format(data=root / "data", model=root / "unused"))
    # The uninterrupted run: the same command line, run by the CLI's main in this process.
    reference = root / "reference"
    run_cli_here("train", "-c", cfg, "-q", "--max_iter", "8", "--set", f"SYSTEM.model_dir={reference}")
    return root, cfg, metrics(reference)


def test_killed_run_resumes_onto_the_uninterrupted_loss_curve(tiny):
    root, cfg, reference = tiny
    model = root / "killed"
    proc = start_training(cfg, model, 8, "--save_every_n", "3")
    wait_for(model / "checkpoints" / "ckpt-3.index", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = start_training(cfg, model, 8, "--save_every_n", "3", "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    got = metrics(model)
    assert [i for i, _ in got] == list(range(1, 9))
    np.testing.assert_allclose([v for _, v in got], [v for _, v in reference], rtol=1e-5)


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tiny):
    root, cfg, _ = tiny
    model = root / "interrupted"
    proc = start_training(cfg, model, 10_000, "--save_every_n", "0")
    wait_for(model / "metrics.csv", proc)
    t0 = time.time()
    while len(metrics(model)) < 2 and time.time() - t0 < 300:   # a few iterations done (rows are flushed every 20)
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    from uhved_tf.model_dir import ModelDir
    it = ModelDir(model).latest_iteration()
    assert it is not None and it >= 1
    assert metrics(model)[-1][0] == it


def test_incomplete_subjects_train_with_allow_missing_modalities(tiny, tmp_path):
    """A subject without its T2 file: dropped (with a warning) by default, trained on with
    allow_missing_modalities (its masks never contain T2, its reconstruction loss skips T2)."""
    root, _, _ = tiny
    import shutil
    data = tmp_path / "data"
    shutil.copytree(root / "data", data)
    t2 = sorted(data.rglob("*_t2.nii.gz"))[0]
    t2.unlink()
    cfg = tmp_path / "tiny.ini"
    cfg.write_text(FAST_INI.format(data=data, model=tmp_path / "m1"))
    proc = run_cli_here("train", "-c", cfg)                 # what the default does: said and left out
    assert "have no T2 file" in proc.stderr, proc.stderr
    split = (tmp_path / "m1" / "dataset_split.csv").read_text()
    sid = t2.name[: -len("_t2.nii.gz")]
    assert sid not in split
    proc = run_cli_here("train", "-c", cfg, "--set", f"SYSTEM.model_dir={tmp_path / 'm2'}",
                        "--set", "TRAINING.allow_missing_modalities=True", "--max_iter", "6",
                        "--set", "TRAINING.exclude_fraction_for_inference=0")
    assert sid in (tmp_path / "m2" / "dataset_split.csv").read_text()
    rows = list(csv.DictReader(open(tmp_path / "m2" / "metrics.csv")))
    assert all(np.isfinite(float(r["total"])) for r in rows)
