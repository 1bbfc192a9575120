"""Shared test helpers: the tiny end-to-end config (and a faster variant), and running the real CLI
in a subprocess or, for calls that end early, through its ``main`` in this process.

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


def ini_with(text: str, changes: dict[str, dict[str, str]]) -> str:
    """``text`` (an INI) with ``changes[section][key] = value`` set: existing keys replaced in
    place, missing ones added at the end of their section."""
    out, section, pending = [], None, {k: dict(v) for k, v in changes.items()}

    def flush():
        out.extend(f"{k} = {v}" for k, v in pending.pop(section, {}).items())

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            flush()
            section = stripped[1:-1]
        elif "=" in stripped and section in pending:
            key = stripped.split("=", 1)[0].strip()
            if key in pending[section]:
                line = f"{key} = {pending[section].pop(key)}"
        out.append(line)
    flush()
    return "\n".join(out) + "\n"


# TINY_INI with the cheapest U-HVED that still has two latent scales (levels 2, base width 2). A
# tiny run's time goes to building and tracing the network, not to its steps: levels 3 -> 2 halves
# both. For tests of the pipeline, the CLI and the files it writes, not of the network's depth.
FAST_INI = ini_with(TINY_INI, {"NETWORK": {"base_width": "2", "levels": "2"}})


def run_cli(*args, check=True, cwd=None):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run([sys.executable, "-m", "uhved_tf", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"uhved_tf {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def run_cli_here(*args, check=True, cwd=None):
    """``uhved_tf ARGS`` through the CLI's ``main`` in this process: the exit code ``main`` returns
    (``python -m uhved_tf`` exits with it) and everything written to stdout / stderr, at the file
    descriptor level too (so TensorFlow's C++ log lines are caught as in a subprocess).

    For calls where a subprocess would add nothing but its own TensorFlow import (~5 s): an error
    exit, nothing left to do, a report from CSV files, a variant of a command that the same module
    runs in a subprocess. Signals, exit statuses seen by a shell and ``python -m uhved_tf`` itself
    need ``run_cli``. The CLI's logging set-up, the working directory and the environment are
    restored afterwards."""
    import contextlib
    import io
    import logging
    import tempfile

    from uhved_tf.cli import main

    logger = logging.getLogger("uhved_tf")
    saved_logger = (logger.handlers[:], logger.level, logger.propagate)
    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    with tempfile.TemporaryFile() as fd_out, tempfile.TemporaryFile() as fd_err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved_fds = os.dup(1), os.dup(2)
        os.dup2(fd_out.fileno(), 1)
        os.dup2(fd_err.fileno(), 2)
        try:
            if cwd is not None:
                os.chdir(cwd)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main([str(a) for a in args])
                except SystemExit as exc:        # argparse's errors (2) and --help (0)
                    code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
        finally:
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            os.chdir(saved_cwd)
            logger.handlers[:] = saved_logger[0]
            logger.setLevel(saved_logger[1])          # (also clears the loggers' level caches)
            logger.propagate = saved_logger[2]
            os.environ.clear()
            os.environ.update(saved_env)
        fd_out.seek(0)
        fd_err.seek(0)
        stdout = fd_out.read().decode(errors="replace") + out.getvalue()
        stderr = fd_err.read().decode(errors="replace") + err.getvalue()
    proc = subprocess.CompletedProcess(["uhved_tf", *map(str, args)], code or 0, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"uhved_tf {' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
