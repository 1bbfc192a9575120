"""Run the uhved_tf CLI and SIGKILL it at a chosen point of writing a checkpoint.

    python -m tests.reliability.kill_points POINT N uhved_tf-args...

The process kills itself (``os.kill(os.getpid(), SIGKILL)``: no handler, no cleanup, exactly
what ``kill -9`` does) on the N-th occurrence, in this process, of POINT:

``before_merge``     TensorFlow wrote the checkpoint's shards to ``ckpt-K_temp/`` and is about to
                     merge them into ``ckpt-K.index`` / ``ckpt-K.data-*``.
``torn_files``       the merge is done but ``ckpt-K.index`` and ``ckpt-K.data-*`` are cut to half
                     their size (a write torn by a crash), before the state file names ckpt-K.
``during_sweep``     the state file names ckpt-K and the oldest checkpoint is half deleted
                     (``max_checkpoints`` reached).
``metadata``         ``metadata.json`` is being written (its temporary file half written).

Used by test_kill_resume.py; not a test module itself.
"""

from __future__ import annotations

import os
import signal
import sys

POINTS = ("before_merge", "torn_files", "during_sweep", "metadata")


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, nth: int) -> None:
    seen = {"n": 0}

    def due() -> bool:
        seen["n"] += 1
        return seen["n"] == nth

    if point == "metadata":
        # Killed while metadata.json is being written: the temporary sibling holds half the text
        # and has not replaced the real file yet (uhved_tf.io.atomic, the one atomic writer).
        from uhved_tf.io import atomic
        real_replace = atomic.os.replace

        def replace(src, dst, *args, **kwargs):
            if os.path.basename(str(dst)) == "metadata.json" and due():
                with open(src, "r+b") as f:
                    f.truncate(os.path.getsize(src) // 2)
                _die()
            return real_replace(src, dst, *args, **kwargs)

        atomic.os.replace = replace
        return

    from tensorflow.python.checkpoint import checkpoint_management
    from tensorflow.python.ops import gen_io_ops

    if point in ("before_merge", "torn_files"):
        real_merge = gen_io_ops.merge_v2_checkpoints

        def merge(checkpoint_prefixes, destination_prefix, *args, **kwargs):
            if not due():
                return real_merge(checkpoint_prefixes, destination_prefix, *args, **kwargs)
            if point == "before_merge":
                _die()
            out = real_merge(checkpoint_prefixes, destination_prefix, *args, **kwargs)
            prefix = destination_prefix.numpy().decode()
            folder = os.path.dirname(prefix)
            for name in os.listdir(folder):
                if name.startswith(os.path.basename(prefix) + "."):
                    path = os.path.join(folder, name)
                    with open(path, "r+b") as f:
                        f.truncate(os.path.getsize(path) // 2)
            _die()
            return out

        gen_io_ops.merge_v2_checkpoints = merge
    elif point == "during_sweep":
        real_delete = checkpoint_management._delete_file_if_exists

        def delete(filespec):
            real_delete(filespec)
            if due():
                _die()

        checkpoint_management._delete_file_if_exists = delete
    else:
        raise SystemExit(f"unknown kill point {point!r}; expected one of {POINTS}")


def main(argv: list[str]) -> int:
    point, nth, *cli_args = argv
    if point not in POINTS:
        raise SystemExit(f"unknown kill point {point!r}; expected one of {POINTS}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")   # what the CLI sets before importing TensorFlow
    if point != "metadata":
        import tensorflow  # noqa: F401  (the hooks patch TensorFlow's modules)
    install(point, int(nth))
    from uhved_tf.cli import main as cli_main
    return cli_main(cli_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
