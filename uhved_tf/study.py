"""Comparative studies: several trainings on the same data and split, each scored on all 15 subsets.

Used by ``uhved_tf table1`` (methods that differ only by the network) and by
``benchmarks/ablation.py`` (U-HVED loss variants). A :class:`Study` drives the real command line
(``python -m uhved_tf train`` / ``evaluate`` in subprocesses, so that each training is an ordinary,
resumable run with its own model directory) and then tabulates the evaluations:

    OUT/dataset_split.csv        one split shared by every run (written by the first training)
    OUT/models/<run>/            each run's model directory (checkpoints, validation.csv, ...)
    OUT/eval/<run>/              ``uhved_tf evaluate --subsets all`` of that run
    OUT/study.log                every command and its output
    OUT/times.json               wall time of each training and evaluation

Re-running continues every training with ``--resume`` and skips evaluations whose ``per_case.csv``
exists, so a study can run for hours in the background and survive interruptions.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from uhved_tf.model_dir import ModelDir
from uhved_tf.io.atomic import atomic_write_text


@dataclass
class Run:
    """One training of a study: a label, the config it starts from, its ``--set`` overrides, other
    command-line overrides (``--max_iter 100``) for train and evaluate, and extra train flags."""
    label: str
    config: Path
    sets: dict = field(default_factory=dict)
    extra: list = field(default_factory=list)
    train_flags: list = field(default_factory=list)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.label.lower()).strip("_")


class StudyError(RuntimeError):
    pass


class Study:
    def __init__(self, out, data, runs, subjects: int = 16, quick_data: bool = False, progress=print,
                 checkpoint: str = "latest"):
        """``data`` None keeps each config's input folders; a folder replaces them (demo data is
        generated there if it has none)."""
        self.out = Path(out).resolve()
        self.data = Path(data).resolve() if data is not None else None
        self.checkpoint = checkpoint
        self.runs = list(runs)
        self.subjects = subjects
        self.quick_data = quick_data
        self.progress = progress
        self.log_file = self.out / "study.log"
        self.times_file = self.out / "times.json"

    # --- paths ------------------------------------------------------------------------------
    def model_dir(self, run: Run) -> Path:
        return self.out / "models" / run.slug

    def eval_dir(self, run: Run) -> Path:
        return self.out / "eval" / run.slug

    def overrides(self, run: Run) -> list[str]:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        parser.optionxform = str
        parser.read(run.config)
        sets = {}
        if self.data is not None:
            sets = {f"{section}.path_to_search": str(self.data) for section in parser.sections()
                    if parser.has_option(section, "path_to_search")}
        sets.update({"SYSTEM.model_dir": str(self.model_dir(run)),
                     "SYSTEM.dataset_split_file": str(self.out / ModelDir.SPLIT)})
        sets.update(run.sets)
        return [*run.extra, *(arg for key, value in sets.items() for arg in ("--set", f"{key}={value}"))]

    # --- running ------------------------------------------------------------------------------
    def ensure_data(self) -> None:
        if self.data is None or (self.data / "demo_dataset.json").exists():
            return
        from uhved_tf.demo.synthetic import make_demo_dataset
        self.progress(f"generating {self.subjects} demo subjects in {self.data}")
        quick = {"shape": (32, 32, 24), "spacing": (6.0, 6.0, 6.0)} if self.quick_data else {}
        make_demo_dataset(self.data, n_subjects=self.subjects, **quick, seed=0)

    def cli(self, args) -> float:
        """``python -m uhved_tf ARGS`` with its output appended to the log; returns the wall time."""
        cmd = [sys.executable, "-m", "uhved_tf", *map(str, args)]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        t0 = time.perf_counter()
        with open(self.log_file, "a") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise StudyError(f"`uhved_tf {' '.join(map(str, args[:3]))} ...` failed (exit {proc.returncode}); "
                             f"see {self.log_file}")
        return time.perf_counter() - t0

    def times(self) -> dict:
        try:
            return json.loads(self.times_file.read_text())
        except (OSError, ValueError):
            return {}

    def _add_time(self, run: Run, kind: str, seconds: float) -> None:
        times = self.times()
        entry = times.setdefault(run.label, {})
        entry[kind] = round(entry.get(kind, 0.0) + seconds, 1)
        atomic_write_text(self.times_file, json.dumps(times, indent=2))

    def train(self, run: Run, extra=()) -> None:
        self.progress(f"[{run.label}] training")
        took = self.cli(["train", "-c", run.config, "-q", "--resume", *run.train_flags, *extra,
                         *self.overrides(run)])
        self._add_time(run, "train_s", took)
        self.progress(f"[{run.label}] trained ({took:.0f} s)")

    def evaluated_is_current(self, run: Run) -> bool:
        """True when the evaluation folder scored the checkpoint(s) a new evaluation would load (a
        longer training since, or another ``checkpoint``, makes it stale)."""
        target = self.eval_dir(run)
        try:
            models = json.loads((target / "models.json").read_text())
        except (OSError, ValueError):
            return False
        if not (target / "per_case.csv").exists() or not models:
            return False
        for entry in models:
            have = (ModelDir(entry["model_dir"]).saved_iterations(best=self.checkpoint == "best")
                    if self.checkpoint in ("best", "latest") else [int(self.checkpoint)])
            if not have or entry.get("iteration") != have[-1] or entry.get("checkpoint") != self.checkpoint:
                return False
        return True

    def evaluate(self, run: Run, force: bool = False, extra=()) -> None:
        target = self.eval_dir(run)
        if not force and self.evaluated_is_current(run):
            return
        self.progress(f"[{run.label}] evaluating all 15 subsets")
        took = self.cli(["evaluate", "-c", run.config, "-q", "--subsets", "all", "-o", target,
                         "--set", f"INFERENCE.checkpoint={self.checkpoint}", *extra, *self.overrides(run)])
        self._add_time(run, "evaluate_s", took)
        self.progress(f"[{run.label}] evaluated ({took:.0f} s)")

    def run(self, force_eval: bool = False) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.ensure_data()
        for run in self.runs:
            self.train(run)
            self.evaluate(run, force=force_eval)

    def write_report(self, name: str, reference: str, title: str) -> Path:
        from uhved_tf.study_report import write_report
        return write_report(self, name, reference, title)


# --- uhved_tf table1 ---------------------------------------------------------------------------

#: Display names of the built-in networks in the paper's table.
DISPLAY = {"u_hved": "U-HVED", "u_hemis": "U-HeMIS", "u_hemis_wide": "U-HeMIS (wide)", "hemis": "HeMIS",
           "single": "Single"}


def parse_methods(text: str, default_config: Path) -> list[tuple[str, Path]]:
    """``u_hved,u_hemis`` or ``u_hved=cfg_a.ini,u_hemis=cfg_b.ini`` -> [(network, config)]."""
    from uhved_tf.errors import ConfigError
    from uhved_tf.model.registry import get_network_class

    methods = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, config = item.partition("=")
        name = name.strip()
        get_network_class(name)   # an unknown network is a ConfigError with a suggestion
        config_path = Path(config.strip()) if config.strip() else default_config
        if not config_path.is_file():
            raise ConfigError(f"--methods {item}: no config file {config_path}")
        methods.append((name, config_path))
    if len(methods) < 2:
        raise ConfigError(f"--methods {text!r}: name at least two networks, e.g. u_hved,u_hemis")
    if len({m for m, _ in methods}) != len(methods):
        raise ConfigError(f"--methods {text!r}: a network is named twice")
    return methods


def check_like_for_like(methods, extra, set_overrides) -> None:
    """Refuse methods whose resolved configs differ in anything but ``[NETWORK] name`` (model
    directories aside): the comparison must change the network and nothing else."""
    import difflib

    from uhved_tf.config import load_config
    from uhved_tf.errors import ConfigError

    texts = []
    for name, config in methods:
        cfg = load_config(config, overrides=extra, set_overrides=[*set_overrides, f"NETWORK.name={name}",
                                                                  "SYSTEM.model_dir=/MODEL_DIR"])
        lines = [line for line in cfg.to_ini().splitlines()
                 if not line.startswith("#") and not line.startswith("name =")]
        texts.append((name, config, lines))
    base_name, base_config, base = texts[0]
    for name, config, lines in texts[1:]:
        diff = [d for d in difflib.unified_diff(base, lines, lineterm="", n=0)
                if d[:1] in "+-" and not d.startswith(("+++", "---"))]
        if diff:
            shown = "; ".join(diff[:4]) + (" ..." if len(diff) > 4 else "")
            raise ConfigError(f"--methods: {name} ({config}) and {base_name} ({base_config}) differ in more than "
                              f"the network ({shown}); Table 1 compares networks with everything else equal: "
                              f"use one config for every method")


def table1_command(args, cfg, extra) -> int:
    """``uhved_tf table1 -c CONFIG --methods u_hved,u_hemis[,hemis,single] [--max_iter N] [-o DIR]``."""
    from uhved_tf.errors import UhvedError

    config = Path(args.config)
    methods = parse_methods(args.methods, config)
    check_like_for_like(methods, extra, args.set_overrides)
    out = Path(args.output) if args.output else Path(cfg.system.model_dir).parent / "table1"
    set_args = [arg for s in args.set_overrides for arg in ("--set", s)]
    runs = [Run(DISPLAY.get(name.lower(), name), cfg_path, {"NETWORK.name": name}, extra=[*extra, *set_args],
                train_flags=["--all-subsets"] if name.lower() == "single" else [])
            for name, cfg_path in methods]
    names = [name.lower() for name, _ in methods]
    reference = DISPLAY["u_hemis"] if "u_hemis" in names else runs[1].label
    study = Study(out, None, runs, checkpoint=args.checkpoint,
                  progress=(lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True)))
    try:
        study.run(force_eval=args.force_eval)
    except StudyError as exc:
        raise UhvedError(str(exc)) from None
    title = "Table 1: " + ", ".join(r.label for r in runs) + f" on {cfg.modality_inputs[0].path_to_search[0]}"
    report = study.write_report("table1", reference=reference, title=title)
    print(report.read_text())
    print(f"report in {report}")
    return 0
