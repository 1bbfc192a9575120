"""Cross-field checks of the typed sections: one function per group of rules.

Task sections exist and are used, window sizes divisible by ``2**(levels-1)`` and equal across
modalities, ``num_classes == len(label_values)``, split fractions, subset prior, inference
modalities. Some fill in derived values (the task groups' section spelling, the inference window
and modalities, ``output_prob``). Each user error raises :class:`~uhved_tf.errors.ConfigError`.
"""

from __future__ import annotations

from typing import Any

from uhved_tf.config import schema as S
from uhved_tf.config.reading import logger, sections_listing
from uhved_tf.errors import ConfigError, close_matches, did_you_mean

Values = dict[str, Any]


def cross_check(sections: dict[str, Values], inputs: dict[str, Values], task: str, where: str) -> None:
    """Checks that involve several keys; fills in derived values (modalities, inference window)."""
    net, train, infer = sections["NETWORK"], sections["TRAINING"], sections["INFERENCE"]
    tv = sections[S.TASK_SECTION]
    _check_task_groups(tv, net, inputs, task, where)
    _check_inputs(tv, inputs, task, sections["DATASET"], where)
    _check_windows(tv, net["levels"], infer, inputs, where)
    _check_labels(tv, task, where)
    _check_convention(sections["DATASET"], tv, where)
    _check_split_fractions(train, where)
    _check_subset_prior(train, len(tv["image"]), where)
    _choose_inference_modalities(tv, infer, task, where)
    # [MULTIMODAL] output_prob is NiftyNet's spelling of [INFERENCE] output_prob.
    infer["output_prob"] = bool(infer["output_prob"] or tv["output_prob"])


def _resolve_group(task: str, group: str, names: tuple[str, ...], inputs: dict[str, Values],
                   where: str) -> tuple[str, ...]:
    """Section names of a task group (image, label, ...) with the spelling of the section headers."""
    by_lower = {n.lower(): n for n in inputs}
    out = []
    for name in names:
        if name.lower() not in by_lower:
            close = close_matches(name, list(inputs), n=1)
            hint = f" Did you mean [{close[0]}]?" if close else ""
            raise ConfigError(f"[{task}] {group} names section [{name}], which is not in {where}.{hint} "
                              f"Input sections present: {sections_listing(list(inputs))}")
        out.append(name if name in inputs else by_lower[name.lower()])
    return tuple(out)


def _check_task_groups(tv: Values, net: Values, inputs: dict[str, Values], task: str, where: str) -> None:
    """The task groups name existing input sections, each at most once."""
    for group in ("image", "label", "sampler"):
        tv[group] = _resolve_group(task, group, tv[group], inputs, where)
    lowered = [n.lower() for n in tv["image"]]
    if len(set(lowered)) != len(lowered):
        raise ConfigError(f"[{task}] image in {where} names the same section twice: {', '.join(tv['image'])}")
    if tv["label"] and tv["label"][0] in tv["image"]:
        raise ConfigError(f"[{task}] in {where}: section [{tv['label'][0]}] is both an image and the label")
    if net["window_sampling"] in ("weighted", "balanced") and not tv["label"]:
        # uhved_tf samples balanced / weighted windows from the label (NiftyNet took a separate
        # sampling map in [task] sampler; that key is accepted and ignored).
        raise ConfigError(f"[NETWORK] window_sampling = {net['window_sampling']} in {where} samples "
                          f"from the label: set [{task}] label")


def _check_inputs(tv: Values, inputs: dict[str, Values], task: str, ds: Values, where: str) -> None:
    """The sections used by the task say where their files are, or [DATASET] path does (never
    both); the others are ignored (WARNING)."""
    used = (*tv["image"], *tv["label"], *tv["sampler"])
    if ds["convention"] == "nnunet" and not ds["path"]:
        raise ConfigError(f"[DATASET] convention = nnunet in {where} needs [DATASET] path (the DatasetNNN_Name "
                          f"folder: its dataset.json gives the labels and regions)")
    if ds["path"] and ds["convention"] == "custom":
        raise ConfigError(f"[DATASET] path in {where} finds files by the layout of a convention (brats2018, brats2023, "
                          f"msd, nnunet); convention = custom has none: set path_to_search and filename_contains in "
                          f"the input sections instead")
    for name, values in inputs.items():
        if name not in used:
            logger.warning("input section [%s] of %s is not named in [%s] image/label/sampler; it is ignored",
                           name, where, task)
            continue
        if ds["path"]:
            own = [k for k in ("path_to_search", "csv_file", "filename_contains") if values[k]]
            if own:
                logger.warning("[%s] %s of %s is not used: [DATASET] path = %s finds the files (%s layout)",
                               name, ", ".join(own), where, ds["path"], ds["convention"])
            continue
        if not values["csv_file"] and not values["path_to_search"]:
            raise ConfigError(f"[{name}] in {where}: set path_to_search (folders holding its files) or csv_file")
        if not values["csv_file"] and not values["filename_contains"]:
            raise ConfigError(f"[{name}] filename_contains is required in {where} (the substring identifying "
                              f"this section's files, e.g. _t1); sections named in [{task}] need it")
    if tv["label"] and inputs[tv["label"][0]]["interp_order"] != 0:
        logger.warning("label section [%s] of %s has interp_order = %d; labels should use 0 (nearest neighbour)",
                       tv["label"][0], where, inputs[tv["label"][0]]["interp_order"])


def _shown(sizes) -> str:
    return ", ".join(map(str, sizes))


def _training_window(tv: Values, levels: int, inputs: dict[str, Values], where: str) -> tuple[int, ...]:
    """The training window: divisible by 2^(levels-1), equal across the network's inputs."""
    divisor = 2 ** (levels - 1)
    windows = {}
    for name in (*tv["image"], *tv["label"]):
        window = inputs[name]["spatial_window_size"]
        for size in window:
            if size % divisor:
                lower, upper = (size // divisor) * divisor, -(-size // divisor) * divisor
                fix = f"use {lower} or {upper}" if lower > 0 else f"use {upper}"
                raise ConfigError(f"[{name}] spatial_window_size = {_shown(window)} in {where}: {size} is not "
                                  f"divisible by {divisor} (2^(levels-1) with levels={levels}); {fix}")
        if window:
            windows[name] = window
    if not windows:
        raise ConfigError(f"{where}: set spatial_window_size (the training patch size, e.g. 112, 112, 112) in "
                          f"the modality sections {sections_listing(tv['image'])}")
    if len(set(windows.values())) > 1:
        shown = "; ".join(f"[{n}] {_shown(w)}" for n, w in windows.items())
        raise ConfigError(f"spatial_window_size differs between sections in {where} ({shown}); "
                          f"use the same size everywhere (or leave it empty)")
    return next(iter(windows.values()))


def _check_windows(tv: Values, levels: int, infer: Values, inputs: dict[str, Values], where: str) -> None:
    """The training window, and the inference window (default: the training one) with its border."""
    train_window = _training_window(tv, levels, inputs, where)
    window = infer["spatial_window_size"]
    if window:
        # The inference window only tiles the volume: a size the network cannot take (NiftyNet's
        # U-HVED used 140 with 3 poolings) is rounded up, loudly, instead of failing or silently
        # producing a smaller output.
        divisor = 2 ** (levels - 1)
        rounded = tuple(-(-w // divisor) * divisor for w in window)
        if rounded != tuple(window):
            logger.warning("[INFERENCE] spatial_window_size = %s in %s is not divisible by %d (2^(levels-1)); "
                           "using %s", _shown(window), where, divisor, _shown(rounded))
        infer["spatial_window_size"] = rounded
    else:
        infer["spatial_window_size"] = train_window
    for axis, (size, border) in enumerate(zip(infer["spatial_window_size"], infer["border"])):
        if 2 * border >= size:
            raise ConfigError(f"[INFERENCE] border = {_shown(infer['border'])} in {where}: "
                              f"2 x border must be smaller than the inference window "
                              f"({_shown(infer['spatial_window_size'])}) on every axis "
                              f"(axis {axis}: 2 x {border} >= {size})")


def _check_labels(tv: Values, task: str, where: str) -> None:
    if tv["num_classes"] != len(tv["label_values"]):
        raise ConfigError(f"[{task}] num_classes = {tv['num_classes']} in {where} but label_values has "
                          f"{len(tv['label_values'])} values ({_shown(tv['label_values'])}); "
                          f"they must match (BraTS: num_classes = 4, label_values = 0, 1, 2, 4)")


def _check_convention(ds: Values, tv: Values, where: str) -> None:
    from uhved_tf.convention import from_settings
    try:
        from_settings(ds["convention"], tv["label_values"], ds["regions"], ds["enhancing_label"])
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_split_fractions(train: Values, where: str) -> None:
    fv, fi = train["exclude_fraction_for_validation"], train["exclude_fraction_for_inference"]
    if fv + fi >= 1:
        raise ConfigError(f"[TRAINING] exclude_fraction_for_validation + exclude_fraction_for_inference = "
                          f"{fv:g} + {fi:g} in {where}: must be < 1 (some subjects must remain for training)")


def _check_subset_prior(train: Values, n_mod: int, where: str) -> None:
    """subset_prior is set iff subset_policy = prior, with one probability per modality subset."""
    n_subsets = 2 ** n_mod - 1 if n_mod <= 64 else f"2^{n_mod} - 1"  # (no 10^4-digit numbers in messages)
    prior = train["subset_prior"]
    if train["subset_policy"] == "prior" and not prior:
        raise ConfigError(f"[TRAINING] subset_policy = prior in {where} needs subset_prior: {n_subsets} "
                          f"probabilities, one per non-empty subset of the {n_mod} modalities")
    if train["subset_policy"] != "prior" and prior:
        raise ConfigError(f"[TRAINING] subset_prior is set in {where} but subset_policy = "
                          f"{train['subset_policy']}; set subset_policy = prior or remove subset_prior")
    if prior and len(prior) != n_subsets:
        raise ConfigError(f"[TRAINING] subset_prior in {where} has {len(prior)} values; expected {n_subsets} "
                          f"(one per non-empty subset of the {n_mod} modalities)")


def _choose_inference_modalities(tv: Values, infer: Values, task: str, where: str) -> None:
    """[INFERENCE] modalities (names from [task] image), else the original [task] choices."""
    choices, image = tv["choices"], tv["image"]
    if choices and len(choices) != len(image):
        raise ConfigError(f"[{task}] choices in {where} has {len(choices)} values; expected one boolean per "
                          f"image modality ({', '.join(image)})")
    if choices and not any(choices):
        raise ConfigError(f"[{task}] choices in {where}: at least one modality must be True")
    by_lower = {n.lower(): n for n in image}
    chosen = []
    for name in infer["modalities"]:
        canonical = name if name in image else by_lower.get(name.lower())
        if canonical is None:
            raise ConfigError(f'[INFERENCE] modalities in {where}: "{name}" is not one of the modalities '
                              f"{', '.join(image)} ([{task}] image){did_you_mean(name, image)}")
        if canonical in chosen:
            raise ConfigError(f"[INFERENCE] modalities in {where} lists {canonical} twice")
        chosen.append(canonical)
    from_choices = tuple(n for n, c in zip(image, choices) if c)
    if chosen and choices and tuple(chosen) != from_choices:
        logger.warning("[INFERENCE] modalities = %s overrides [%s] choices (%s) in %s", ", ".join(chosen),
                       task, ", ".join(from_choices), where)
    infer["modalities"] = tuple(chosen) or from_choices
