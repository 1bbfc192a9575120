"""Command line: ``uhved_tf {train,inference,evaluate,demo-data} -c CONFIG [overrides]``.

Before TensorFlow is imported, the CLI turns oneDNN on for CPU runs unless the user chose
(``TF_ENABLE_ONEDNN_OPTS`` already set): measured 3.7x faster U-HVED training steps on an AVX2
CPU where TensorFlow leaves it off. It also quiets TensorFlow's C++ start-up logging unless
``TF_CPP_MIN_LOG_LEVEL`` is set. Importing :mod:`uhved_tf` itself changes nothing.

User errors (:class:`uhved_tf.errors.UhvedError`) print one line and exit 2; Ctrl-C exits 130
after training saved a checkpoint. Anything else is a bug: its traceback is printed and the
process exits 1 at once (:func:`run`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("uhved_tf")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _prepare_environment() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "TF_ENABLE_ONEDNN_OPTS" not in os.environ:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"


_TF_NOISE = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ")


def _import_tensorflow_quietly(verbose: bool) -> None:
    """Import TensorFlow with its C++ start-up INFO lines (oneDNN notice, 'no CUDA driver')
    filtered out; ``TF_CPP_MIN_LOG_LEVEL`` cannot silence them because absl logs them before it
    is initialised. Anything else TensorFlow prints is passed through."""
    if verbose:
        import tensorflow  # noqa: F401
        return
    import tempfile
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            import tensorflow as tf
            import tensorflow_probability  # noqa: F401
            # Device discovery logs a CUDA 'cuInit' error on machines without a GPU driver.
            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if not line.startswith(_TF_NOISE) and "cuInit" not in line:
                    print(line, file=sys.stderr)


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("-c", "--config", required=required,
                   help="INI configuration file" + ("" if required else " (or --model)"))
    p.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="SECTION.key=value",
                   help="override any key, e.g. --set TRAINING.max_iter=10 (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _checkpoint_arg(text: str) -> str:
    value = text.strip().lower()
    if value in ("latest", "best") or value.isdigit():
        return value
    raise argparse.ArgumentTypeError("expected latest, best or a checkpoint iteration")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uhved_tf",
        description="U-HVED brain-tumour segmentation and modality completion from any subset of "
                    "T1, T1c, T2, FLAIR. NiftyNet-style overrides: any key unique across sections "
                    "can be given as --key value (e.g. --max_iter 10).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a network from the config")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in model_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in a model_dir that has checkpoints (deletes them)")
    p.add_argument("--all-subsets", action="store_true",
                   help="Single baseline: train one network per modality subset, in <model_dir>/<subset>/")
    p.add_argument("--subsets", default=None,
                   help='with --all-subsets: only these subsets, e.g. "T1c,Flair;T2" (default: all 15)')

    p = sub.add_parser("inference", help="segment and synthesise: the config's Inference split, or one case")
    _add_config_args(p, required=False)
    p.add_argument("--model", metavar="NAME|PATH",
                   help="a trained model directory or a zoo entry (`uhved_tf zoo list`), used with its own "
                        "resolved config instead of -c")
    p.add_argument("--modalities", help='modalities given to the model, e.g. T1c,Flair; several subsets '
                   '("T1c,Flair;T2", all, singles) each write into OUTDIR/<subset>/ (default: config)')
    p.add_argument("-o", "--output", help="output folder (default: [INFERENCE] save_seg_dir)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--dataset", choices=["inference", "validation", "training", "all"], default=None,
                   help="which split to segment (default: [INFERENCE] dataset_to_infer or inference)")
    p.add_argument("--subject-id", help="output name for a single case given by modality flags")
    for m in ("t1", "t1c", "t2", "flair"):
        p.add_argument(f"--{m}", metavar="NIFTI", help=f"{m.upper()} image of a single case")

    p = sub.add_parser("evaluate", help="Dice / HD95 per region and subset on a split with labels")
    _add_config_args(p)
    p.add_argument("--subsets", default="all",
                   help='"all" (15 subsets), "full", "singles" or e.g. "T1c,Flair;T2" (default: all)')
    p.add_argument("--dataset", choices=["inference", "validation", "training", "all"], default="inference",
                   help="which split to score (all: every subject with a label; with --predictions)")
    p.add_argument("--predictions", metavar="DIR",
                   help="score the segmentations in DIR (<subject>_seg.nii.gz or <subject>.nii.gz, from this tool or "
                        "any other) against the labels, with the dataset convention's regions; no model is run")
    p.add_argument("-o", "--output", help="report folder (default: [EVALUATION] save_csv_dir)")
    p.add_argument("--figure", action="store_true", help="also draw the paper's Fig. 3 for the first case (PNG)")
    p.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"),
                   help="compare two evaluation folders (per_case.csv) with a Wilcoxon test per subset and region")

    p = sub.add_parser("table1", help="the paper's Table 1: train and evaluate several networks like for like")
    _add_config_args(p)
    p.add_argument("--methods", default="u_hved,u_hemis",
                   help="networks to compare, e.g. u_hved,u_hemis,hemis,single (default u_hved,u_hemis); each "
                        "may name its own config (u_hemis=cfg.ini), which must then differ only in the network")
    p.add_argument("-o", "--output", help="study folder (default: table1/ next to [SYSTEM] model_dir)")
    p.add_argument("--checkpoint", default="latest", type=_checkpoint_arg,
                   help="checkpoint evaluated: latest, best (needs validation) or an iteration (default latest)")
    p.add_argument("--force-eval", action="store_true", help="evaluate again even if the evaluation is current")

    p = sub.add_parser("zoo", help="the bundled trained models (model_zoo/)")
    p.add_argument("action", choices=["list"], help="list: name, network, modalities and summary of each entry")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")

    p = sub.add_parser("demo-data", help="write the synthetic BraTS-like demo data set")
    p.add_argument("output", help="folder to write (BraTS 2018 layout)")
    p.add_argument("--subjects", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    from uhved_tf.export.commands import add_parsers as add_export_parsers
    add_export_parsers(sub, _add_config_args)
    return parser


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("uhved_tf")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _load_config(args, extra):
    from uhved_tf.config import load_config
    from uhved_tf.errors import ConfigError
    model = getattr(args, "model", None)
    if model and args.config:
        raise ConfigError("give either -c CONFIG or --model NAME|PATH, not both (a model directory "
                          "carries its own config; change keys with --set SECTION.key=value)")
    if model:
        from uhved_tf.zoo import config_for_model_dir
        return config_for_model_dir(model, overrides=extra, set_overrides=args.set_overrides)
    if not args.config:
        raise ConfigError(f"{args.command} needs -c CONFIG or --model NAME|PATH")
    return load_config(args.config, overrides=extra, set_overrides=args.set_overrides)


def _cmd_train(args, cfg) -> int:
    from uhved_tf.application import Application
    if args.all_subsets or args.subsets:
        return _train_all_subsets(args, cfg)
    terms = Application(cfg).train(resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if terms:
        print("final losses: " + ", ".join(f"{k} {v:.4f}" for k, v in terms.items()))
    print(f"model directory: {cfg.system.model_dir}")
    return 0


def _train_all_subsets(args, cfg) -> int:
    """``uhved_tf train --all-subsets [--subsets S] [--resume] [--overwrite]``."""
    from uhved_tf.application import Application
    from uhved_tf.errors import UhvedError
    from uhved_tf.subset import Subset

    if not args.all_subsets:
        raise UhvedError("--subsets only goes with --all-subsets (a single network trains on its config's "
                         "[NETWORK] subset)")
    subsets = Subset.parse(args.subsets, cfg.modalities) if args.subsets else None
    results = Application(cfg).train_all_subsets(subsets, resume=args.resume, overwrite=args.overwrite,
                                                 progress=not args.quiet)
    for name, terms in results.items():
        losses = ", ".join(f"{k} {v:.4f}" for k, v in terms.items()) if terms else "nothing left to train"
        print(f"{name}: {losses}")
    print(f"model directories: {cfg.system.model_dir}/<subset> ({len(results)} subsets)")
    return 0


def _cmd_inference(args, cfg) -> int:
    from uhved_tf.application import Application
    from uhved_tf.errors import UhvedError
    from uhved_tf.io.atomic import check_folder
    from uhved_tf.io.discovery import Subject, safe_subject_id, subject_id_for_file, subjects_in
    from uhved_tf.subset import Subset, files_from_flags

    app = Application(cfg)
    out_dir = _output_folder(args.output, "-o", cfg.inference.save_seg_dir, "[INFERENCE] save_seg_dir")
    check_folder(cfg.system.model_dir, "[SYSTEM] model_dir")
    given = files_from_flags({m: getattr(args, m, None) for m in ("t1", "t1c", "t2", "flair")}, cfg.modalities)
    if args.modalities is not None:
        # Several subsets ("T1c,Flair;T2", all, singles): encoded once, each into its own folder.
        subsets = Subset.parse(args.modalities, cfg.modalities)
    elif given:
        subsets = [Subset(given, cfg.modalities)]
    else:
        subsets = [Subset(cfg.inference_modalities, cfg.modalities)]
    if given:
        missing_flags = sorted({m for s in subsets for m in s if m not in given}, key=cfg.modalities.index)
        if missing_flags:
            raise UhvedError(f"--modalities {args.modalities} names {', '.join(missing_flags)} but no file was "
                             f"given for {'it' if len(missing_flags) == 1 else 'them'}")
        first_mod, first = next(iter(given.items()))
        spec = next(s for s in app.input_specs() if s.name == first_mod)
        sid = safe_subject_id(args.subject_id) if args.subject_id else subject_id_for_file(spec, first)
        subjects = [Subject(sid, dict(given))]
    else:
        subjects = app.discover(need_label=False)
        phase = (args.dataset or cfg.inference.dataset_to_infer or "inference").lower()
        if phase != "all":
            split = app.split(subjects)
            ids = set(subjects_in(split, phase))
            subjects = [s for s in subjects if s.id in ids]
        if not subjects:
            raise UhvedError(f"no subjects in the {phase} split ({cfg.system.dataset_split_file})")
    failed = app.run_inference(subjects, subsets, out_dir, overwrite=args.overwrite,
                               progress=not args.quiet, keep_going=not given)
    where = out_dir if len(subsets) == 1 else f"{out_dir}/<subset> ({', '.join(s.name for s in subsets)})"
    print(f"wrote outputs for {len(subjects) - len(failed)} of {len(subjects)} cases to {where}")
    if failed:
        for sid, msg in failed.items():
            print(f"FAILED {sid}: {msg}", file=sys.stderr)
        return 1
    return 0


def _output_folder(given, flag: str, default, key: str) -> Path:
    """The output folder of a command (``-o``, else the config's ``key``), refused at once when it
    is a file (or a file is in its way), before any model work."""
    from uhved_tf.io.atomic import check_folder
    return check_folder(Path(given) if given else Path(default), flag if given else key)


def _cmd_evaluate(args, cfg) -> int:
    from uhved_tf.application import Application
    from uhved_tf.io.atomic import check_folder
    from uhved_tf.subset import Subset
    out_dir = _output_folder(args.output, "-o", cfg.evaluation.save_csv_dir, "[EVALUATION] save_csv_dir")
    if args.compare:
        return _compare(args, cfg, out_dir)
    app = Application(cfg)
    if args.predictions:
        report = app.evaluate_predictions(Path(args.predictions), phase=args.dataset.capitalize(),
                                          out_dir=out_dir, progress=not args.quiet)
        regions = list(app.convention.region_map)
        v = report["summary"]["predictions"]
        print(f"{v['cases']} cases: " + ", ".join(f"Dice {r} {v[f'dice_{r}']:.3f}" for r in regions) +
              f", HD95 {regions[0]} {v[f'hd95_{regions[0]}']:.2f}")
        print(f"reports in {report['out_dir']}")
        return 0
    subsets = Subset.parse(args.subsets, cfg.modalities)
    check_folder(cfg.system.model_dir, "[SYSTEM] model_dir")
    report = app.evaluate(subsets, phase=args.dataset.capitalize(), out_dir=out_dir, progress=not args.quiet,
                          figure=args.figure)
    print(format_summary(report["summary"], subsets, list(app.convention.region_map)))
    print(f"reports in {report['out_dir']}")
    return 0


def _compare(args, cfg, out: Path) -> int:
    from uhved_tf.evaluation.compare import compare, compare_csv, compare_markdown, load_per_case

    dir_a, dir_b = (Path(d) for d in args.compare)
    rows_a, rows_b = load_per_case(dir_a), load_per_case(dir_b)
    result = compare(rows_a, rows_b)
    order = list(dict.fromkeys(r["subset"] for r in rows_a if r["subset"] in {x["subset"] for x in rows_b}))
    from uhved_tf.subset import Subset
    subsets = [Subset.from_name(name, cfg.modalities) for name in order]
    table = compare_markdown(result, subsets, cfg.modalities, dir_a.name or str(dir_a), dir_b.name or str(dir_b))
    out.mkdir(parents=True, exist_ok=True)
    compare_csv(result, out / "compare.csv")
    from uhved_tf.io.atomic import atomic_write_text
    atomic_write_text(out / "compare.md", table)
    print(table)
    print(f"comparison in {out / 'compare.md'} and {out / 'compare.csv'}")
    return 0


def format_summary(summary, subsets, regions) -> str:
    width = max(len(s.name) for s in subsets) + 2
    cols = [(f"Dice {r}", f"dice_{r}", ".3f") for r in regions] + [(f"HD95 {regions[0]}", f"hd95_{regions[0]}", ".2f")]
    lines = [f"{'subset':<{width}} {'cases':>5} " + " ".join(f"{c:>{max(8, len(c))}}" for c, _, _ in cols)]
    for s in subsets:
        v = summary[s.name]
        lines.append(f"{s.name:<{width}} {v['cases']:>5} " +   # (no case had the subset's modalities: -)
                     " ".join(f"{v[k]:>{max(8, len(c))}{f}}" if v["cases"] else f"{'-':>{max(8, len(c))}}"
                              for c, k, f in cols))
    return "\n".join(lines)


def _cmd_zoo(args, cfg) -> int:
    from uhved_tf.zoo import ZOO_DIR, describe, zoo_entries
    entries = zoo_entries()
    if not entries:
        print(f"no models in {ZOO_DIR}")
        return 0
    for folder in entries:
        info = describe(folder)
        print(f"{info['name']:<16} {info['network']:<8} {'+'.join(info['modalities']):<18} "
              f"{info['convention']:<10} {info['summary']}")
    print(f"(in {ZOO_DIR}; use one with `uhved_tf inference --model NAME --t1c A.nii.gz ... -o OUT`)")
    return 0


def _cmd_demo_data(args, cfg) -> int:
    from uhved_tf.demo.synthetic import make_demo_dataset
    ids = make_demo_dataset(args.output, n_subjects=args.subjects, seed=args.seed, overwrite=args.overwrite)
    print(f"demo data: {len(ids)} subjects in {args.output}")
    return 0


def _cmd_table1(args, cfg, extra=()) -> int:
    from uhved_tf.study import table1_command
    return table1_command(args, cfg, extra)


def _export_commands():
    from uhved_tf.export.commands import COMMANDS as export_commands   # no TensorFlow import
    return export_commands


COMMANDS = {"train": _cmd_train, "inference": _cmd_inference, "evaluate": _cmd_evaluate,
            "demo-data": _cmd_demo_data, "zoo": _cmd_zoo, "table1": _cmd_table1, **_export_commands()}


NO_CONFIG_COMMANDS = ("demo-data", "zoo")
#: Commands that pass the command-line overrides on to the processes they start.
PASS_OVERRIDES_COMMANDS = ("table1",)


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command in NO_CONFIG_COMMANDS:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    _setup_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
    from uhved_tf.errors import UhvedError
    try:
        cfg = None
        if args.command not in NO_CONFIG_COMMANDS:
            # The config is pure Python: read it before TensorFlow so that [SYSTEM] cuda_devices
            # and the oneDNN switch take effect.
            cfg = _load_config(args, extra)
            if cfg.system.cuda_devices and "CUDA_VISIBLE_DEVICES" not in os.environ:
                os.environ["CUDA_VISIBLE_DEVICES"] = cfg.system.cuda_devices
        _prepare_environment()
        if cfg is not None:
            _import_tensorflow_quietly(getattr(args, "verbose", False))
        if args.command in PASS_OVERRIDES_COMMANDS:
            return COMMANDS[args.command](args, cfg, extra)
        return COMMANDS[args.command](args, cfg)
    except UhvedError as exc:
        print(f"uhved_tf {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"uhved_tf {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def exit_with(code: int) -> None:
    """Exit with ``code``. After an error, once TensorFlow is loaded, the process ends at once
    (``os._exit`` after flushing the output and the logs): a background thread of the input
    pipeline (tf.data prefetch, a reader blocked on a damaged file) must not keep a process that
    has printed its one-line error alive. Everything the command wrote is already closed."""
    if code and "tensorflow" in sys.modules:
        import logging
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def run() -> None:
    """The ``uhved_tf`` console script. An unexpected exception (a bug, or e.g. a MemoryError)
    prints its traceback and exits 1 at once, like a user error: without this the traceback was
    printed and the input pipeline's threads kept the process alive."""
    try:
        code = main()
    except Exception:
        import traceback
        traceback.print_exc()
        code = 1
    exit_with(code)


if __name__ == "__main__":
    run()
