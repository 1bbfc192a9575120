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

from uhved_tf.errors import UhvedError
from uhved_tf.model_dir import ModelDir
from uhved_tf.subset import Subset, all_subsets


def is_single(cfg) -> bool:
    """Whether ``[NETWORK] name`` is the Single network (or a subclass of it)."""
    from uhved_tf.model.registry import get_network_class
    from uhved_tf.model.single import Single
    cls = get_network_class(cfg.network.name)
    return isinstance(cls, type) and issubclass(cls, Single)


def check_single(cfg) -> None:
    if not is_single(cfg):
        raise UhvedError(f"--all-subsets trains the Single baseline, one network per subset; [NETWORK] name = "
                         f"{cfg.network.name} is hetero-modal (one network for all subsets): use "
                         f"[NETWORK] name = single (e.g. config/single.ini) or drop --all-subsets")


def subset_model_dir(cfg, subset) -> ModelDir:
    return ModelDir.from_config(cfg).subset(Subset(subset, cfg.modalities).name)


def subset_config(cfg, subset):
    """``cfg`` with ``[NETWORK] subset = subset`` and ``[SYSTEM] model_dir = <model_dir>/<subset>``;
    every other value (the split file, histogram file, output folders) is unchanged."""
    ordered = tuple(Subset(subset, cfg.modalities))
    model_dir = subset_model_dir(cfg, ordered).root
    return dataclasses.replace(cfg, system=dataclasses.replace(
        cfg.system, model_dir=str(model_dir) if isinstance(cfg.system.model_dir, str) else model_dir),
        network=dataclasses.replace(cfg.network, subset=ordered))


def holds_per_subset_models(cfg) -> bool:
    """A Single config whose ``model_dir`` has no model of its own but at least one trained
    per-subset directory (as written by ``train --all-subsets``)."""
    root = ModelDir.from_config(cfg)
    if not root.root.is_dir() or root.has_model() or not is_single(cfg):
        return False
    return any(root.subset(s.name).has_model() for s in all_subsets(cfg.modalities))


def check_subset_model(cfg, subset) -> None:
    md = subset_model_dir(cfg, subset)
    if not md.has_model():
        raise UhvedError(f"no Single model for subset {Subset(subset, cfg.modalities).name} in {md}; "
                         f"train it with `uhved_tf train -c CONFIG --all-subsets`")
