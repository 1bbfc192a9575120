"""The Single baseline for every modality subset (Dorent et al. 2019, section 4 and Table 1).

``uhved_tf train -c config/single.ini --all-subsets`` trains one :class:`~uhved_tf.model.single.Single`
network per subset of the modalities (15 for four modalities), sequentially, each in its own model
directory ``<model_dir>/<subset name>/`` (e.g. ``<model_dir>/T1c+Flair/``; names in the channel
order of ``[MULTIMODAL] image``). Every run uses the config as given except ``[NETWORK] subset``
and ``[SYSTEM] model_dir``; the split file and the histogram landmarks stay those of the parent
config (resolved against ``<model_dir>``), so all 15 networks share one split. ``--resume``
continues each run from its latest checkpoint (a finished run is skipped), so an interrupted
``--all-subsets`` run is restarted with the same command plus ``--resume``.

``uhved_tf evaluate`` on such a config (``model_dir`` has no model of its own but per-subset
directories) scores subset S with the network in ``<model_dir>/<S>/``
(:meth:`uhved_tf.application.Application.models_for_subsets`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from uhved_tf.errors import UhvedError

log = logging.getLogger(__name__)

METADATA_NAME = "metadata.json"   # the same as uhved_tf.application.METADATA_NAME (no import cycle)


def is_single(cfg) -> bool:
    """Whether ``[NETWORK] name`` is the Single network (or a subclass of it)."""
    from uhved_tf.model.registry import get_network_class
    from uhved_tf.model.single import Single
    cls = get_network_class(cfg.network.name)
    return isinstance(cls, type) and issubclass(cls, Single)


def subset_dir_name(subset, modalities) -> str:
    """``("Flair", "T1c")`` -> ``"T1c+Flair"`` (channel order)."""
    from uhved_tf.subset import Subset
    return Subset(subset, modalities).name


def subset_model_dir(cfg, subset) -> Path:
    return Path(cfg.system.model_dir) / subset_dir_name(subset, cfg.modalities)


def subset_config(cfg, subset):
    """``cfg`` with ``[NETWORK] subset = subset`` and ``[SYSTEM] model_dir = <model_dir>/<subset>``;
    every other value (the split file, histogram file, output folders) is unchanged."""
    ordered = tuple(m for m in cfg.modalities if m in subset)
    model_dir = subset_model_dir(cfg, ordered)
    if isinstance(cfg.system.model_dir, str):
        model_dir = str(model_dir)
    return dataclasses.replace(cfg, system=dataclasses.replace(cfg.system, model_dir=model_dir),
                               network=dataclasses.replace(cfg.network, subset=ordered))


def holds_per_subset_models(cfg) -> bool:
    """A Single config whose ``model_dir`` has no model of its own but at least one trained
    per-subset directory (as written by ``train --all-subsets``)."""
    root = Path(cfg.system.model_dir)
    if not root.is_dir() or (root / METADATA_NAME).exists() or not is_single(cfg):
        return False
    from uhved_tf.subset import all_subsets
    return any((root / s.name / METADATA_NAME).exists() for s in all_subsets(cfg.modalities))


def check_subset_model(cfg, subset) -> None:
    path = subset_model_dir(cfg, subset)
    if not (path / METADATA_NAME).exists():
        raise UhvedError(f"no Single model for subset {subset_dir_name(subset, cfg.modalities)} in {path}; "
                         f"train it with `uhved_tf train -c CONFIG --all-subsets`")


def train_all_subsets(cfg, subsets=None, resume: bool = False, overwrite: bool = False,
                      progress: bool = True) -> dict[str, dict]:
    """Train one Single network per subset (default: all 2^M - 1), one after the other.

    Returns ``{subset name: final loss terms}`` (empty terms for a run that had nothing left
    to train). Raises :class:`UhvedError` for a network that is not Single."""
    from uhved_tf.application import Application
    from uhved_tf.subset import Subset

    if not is_single(cfg):
        raise UhvedError(f"--all-subsets trains the Single baseline, one network per subset; [NETWORK] name = "
                         f"{cfg.network.name} is hetero-modal (one network for all subsets): use "
                         f"[NETWORK] name = single (e.g. config/single.ini) or drop --all-subsets")
    subsets = list(subsets) if subsets else Subset.parse("all", cfg.modalities)
    if cfg.network.subset:
        log.info("--all-subsets: ignoring [NETWORK] subset = %s", ", ".join(cfg.network.subset))
    out = {}
    for i, subset in enumerate(subsets, 1):
        sub_cfg = subset_config(cfg, subset)
        name = subset_dir_name(subset, cfg.modalities)
        log.info("[%d/%d] Single for %s in %s", i, len(subsets), name, sub_cfg.system.model_dir)
        t0 = time.perf_counter()
        out[name] = Application(sub_cfg).train(resume=resume, overwrite=overwrite, progress=progress)
        log.info("[%d/%d] %s done in %.1f s", i, len(subsets), name, time.perf_counter() - t0)
    return out


def train_all_subsets_cli(args, cfg) -> int:
    """``uhved_tf train --all-subsets [--subsets S] [--resume] [--overwrite]``."""
    from uhved_tf.subset import Subset

    if not args.all_subsets:
        raise UhvedError("--subsets only goes with --all-subsets (a single network trains on its config's "
                         "[NETWORK] subset)")
    subsets = Subset.parse(args.subsets, cfg.modalities) if args.subsets else None
    results = train_all_subsets(cfg, subsets, resume=args.resume, overwrite=args.overwrite,
                                progress=not args.quiet)
    for name, terms in results.items():
        losses = ", ".join(f"{k} {v:.4f}" for k, v in terms.items()) if terms else "nothing left to train"
        print(f"{name}: {losses}")
    print(f"model directories: {cfg.system.model_dir}/<subset> ({len(results)} subsets)")
    return 0
