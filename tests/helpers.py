"""Shared test helpers: the tiny end-to-end config and running the real CLI in a subprocess.

Test modules import these from here (never from another test module)."""

from __future__ import annotations

import os
import subprocess
import sys

TINY_INI = """
[T1]
path_to_search = {data}
filename_contains = _t1
filename_not_contains = _t1ce
spatial_window_size = 16, 16, 16
axcodes = R, A, S
[T1c]
path_to_search = {data}
filename_contains = _t1ce
spatial_window_size = 16, 16, 16
axcodes = R, A, S
[T2]
path_to_search = {data}
filename_contains = _t2
spatial_window_size = 16, 16, 16
axcodes = R, A, S
[Flair]
path_to_search = {data}
filename_contains = _flair
spatial_window_size = 16, 16, 16
axcodes = R, A, S
[label]
path_to_search = {data}
filename_contains = _seg
interp_order = 0
spatial_window_size = 16, 16, 16
axcodes = R, A, S
[SYSTEM]
model_dir = {model}
seed = 3
[NETWORK]
name = u_hved
activation_function = leakyrelu
batch_size = 2
base_width = 4
levels = 3
whitening = True
normalise_foreground_only = True
foreground_type = mean_plus
volume_padding_size = 2
queue_length = 4
[TRAINING]
lr = 0.001
max_iter = 2
save_every_n = 1
sample_per_volume = 2
exclude_fraction_for_inference = 0.25
random_flipping_axes = 0, 1, 2
[INFERENCE]
spatial_window_size = 16, 16, 16
window_overlap = 0.25
samples = 2
[MULTIMODAL]
image = T1, T1c, T2, Flair
label = label
num_classes = 4
"""


def run_cli(*args, check=True, cwd=None):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run([sys.executable, "-m", "uhved_tf", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"uhved_tf {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
