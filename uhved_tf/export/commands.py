"""The ``export`` and ``client`` subcommands (wired into :mod:`uhved_tf.cli` by ``add_parsers`` and
``COMMANDS``)::

    uhved_tf export -c CONFIG [--version N] [--output DIR] [--samples N] [--overwrite]
    uhved_tf client -c CONFIG --server HOST:PORT [--model NAME] [--version N] [--protocol rest|grpc]
                    [--t1 F] [--t1c F] [--t2 F] [--flair F] -o OUTDIR [--metadata PATH] [--overwrite]
"""

from __future__ import annotations

from pathlib import Path

MODALITY_FLAGS = ("t1", "t1c", "t2", "flair")


def add_parsers(subparsers, add_config_args) -> None:
    """Add ``export`` and ``client`` to the CLI's subparsers; ``add_config_args(parser)`` adds
    ``-c/--config``, ``--set``, ``-q``, ``-v`` as for the other commands."""
    from uhved_tf.export.client import DEFAULT_TIMEOUT, PROTOCOLS, SIGNATURES

    p = subparsers.add_parser(
        "export", help="write the trained model as a TensorFlow Serving SavedModel (DIR/<name>/<version>/)")
    add_config_args(p)
    p.add_argument("--output", help="base folder (default: <model_dir>/export); the model goes to <output>/<name>/<version>")
    p.add_argument("--version", type=int, help="version folder (default: 1 + the highest existing version)")
    p.add_argument("--samples", type=int,
                   help="posterior samples averaged for the segmentation, fixed in the graph "
                        "(default: [INFERENCE] samples; 0 = posterior mean)")
    p.add_argument("--model-name", help="TF Serving model name (default: the network name, e.g. uhved)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version folder")

    p = subparsers.add_parser(
        "client", help="segment one case with a model served by TensorFlow Serving (REST or gRPC)")
    add_config_args(p)
    p.add_argument("--server", required=True, metavar="HOST:PORT",
                   help="TensorFlow Serving address, e.g. localhost:8501 (REST) or localhost:8500 (gRPC)")
    p.add_argument("--model", help="served model name (default: the network name, e.g. uhved)")
    p.add_argument("--version", type=int, help="model version (default: the server's latest)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="rest", help="rest (default) or grpc")
    p.add_argument("--signature", choices=SIGNATURES, default=SIGNATURES[0],
                   help="segment_volume (sliding window on the server, default) or serving_default "
                        "(the whole volume as one window)")
    for m in MODALITY_FLAGS:
        p.add_argument(f"--{m}", metavar="NIFTI", help=f"{m.upper()} image (a missing modality is left out)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--subject-id", help="output name (default: from the first file name)")
    p.add_argument("--metadata", help="the export's metadata.json (or its version folder) to check the config "
                                      "against (default: <model_dir>/export/<model>/<version>/assets/metadata.json "
                                      "or <model_dir>/metadata.json)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"how long to wait for the server, per request (default {DEFAULT_TIMEOUT:g} s; REST: for "
                        f"connecting and for each wait for its answer, gRPC: the whole request); raise it for large "
                        f"volumes on a slow server")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def cmd_export(args, cfg) -> int:
    from uhved_tf.application import Application
    from uhved_tf.export.saved_model import export_saved_model
    from uhved_tf.io.atomic import check_folder

    app = Application(cfg)
    check_folder(app.model_dir.root, "[SYSTEM] model_dir")
    if args.output:    # (before the model is built)
        check_folder(args.output, "--output")
    result = export_saved_model(app.load_trained_model(), cfg, app.model_dir, app.metadata(),
                                checkpoint=app.loaded_checkpoint, output=args.output, version=args.version,
                                samples=args.samples, overwrite=args.overwrite, model_name=args.model_name)
    inf = result.metadata["inference"]
    print(f"exported {result.model_name} version {result.version} to {result.path} in {result.seconds:.1f} s "
          f"(signatures serving_default, segment_volume; samples {inf['samples']}, seed {inf['seed']}, "
          f"window {'x'.join(map(str, inf['window']))})")
    print(f"serve: tensorflow_model_server --rest_api_port=8501 --model_name={result.model_name} "
          f"--model_base_path={result.path.parent.resolve()}")
    return 0


def cmd_client(args, cfg) -> int:
    """Prepare the case of the given files, send it to the server, write the outputs."""
    from uhved_tf.application import Application
    from uhved_tf.errors import ConfigError, DataError
    from uhved_tf.export.client import (SIGNATURES, find_metadata, parse_server, preprocess_settings_for,
                                        request_case)
    from uhved_tf.export.saved_model import model_name_for
    from uhved_tf.io.atomic import check_folder
    from uhved_tf.io.discovery import Subject, safe_subject_id, subject_id_for_file
    from uhved_tf.subset import files_from_flags

    app = Application(cfg)
    check_folder(args.output, "-o")     # before the (long) request
    files = files_from_flags({f: getattr(args, f) for f in MODALITY_FLAGS}, cfg.modalities)
    if not files:
        raise DataError(f"no input image: give at least one of --t1, --t1c, --t2, --flair "
                        f"(modalities: {', '.join(cfg.modalities)})")
    if args.signature not in SIGNATURES:
        raise ConfigError(f'--signature "{args.signature}": expected one of {", ".join(SIGNATURES)}')
    model = args.model or model_name_for(cfg.network.name)
    parse_server(args.server)
    meta, source = find_metadata(app.model_dir, model, args.version, args.metadata)
    settings = preprocess_settings_for(cfg, meta, source, now=app.metadata(), config_settings=app.preprocess_settings,
                                       histogram=app.model_dir.histogram)
    first_mod, first = next(iter(files.items()))
    if args.subject_id:
        sid = safe_subject_id(args.subject_id)
    else:
        sid = subject_id_for_file(next(s for s in app.input_specs() if s.name == first_mod), first)
    out_dir = Path(args.output)
    seg = out_dir / app.outputs.seg_file(sid)
    if not args.overwrite and seg.exists():   # before the (long) request
        raise DataError(f"{seg} exists; pass --overwrite to replace the outputs or choose another output folder")
    case = app.load_case(Subject(sid, {m: Path(p) for m, p in files.items()}), settings, with_label=False)
    result = request_case(case, cfg, meta, server=args.server, model=model, version=args.version,
                          protocol=args.protocol, signature=args.signature, timeout=args.timeout)
    written = app.outputs.write(case, result, out_dir, overwrite=args.overwrite)
    print(f"wrote {len(written)} files to {args.output} (modalities {', '.join(files)}; server {args.server}, "
          f"{args.protocol})")
    return 0


COMMANDS = {"export": cmd_export, "client": cmd_client}
