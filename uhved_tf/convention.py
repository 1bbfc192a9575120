"""Label conventions as data: which values a dataset's label files hold, the regions that are
scored, the enhancing-tumour label of the BraTS post-processing and the figure colours.

Presets (``[DATASET] convention``):

=============  ==============  ====================================================================
preset         label values    regions scored
=============  ==============  ====================================================================
``brats2018``  0, 1, 2, 4      whole {1, 2, 4}, core {1, 4}, enhancing {4}  (BraTS 2018-2021:
                               1 necrotic / non-enhancing core, 2 oedema, 4 enhancing)
``brats2023``  0, 1, 2, 3      whole {1, 2, 3}, core {1, 3}, enhancing {3}  (BraTS 2023-2024 GLI:
                               1 necrotic core, 2 oedema, 3 enhancing)
``msd``        0, 1, 2, 3      whole {1, 2, 3}, core {2, 3}, enhancing {3}  (MSD Task01_BrainTumour:
                               1 oedema, 2 non-enhancing tumour, 3 enhancing tumour)
``custom``     [MULTIMODAL]    ``[DATASET] regions`` (e.g. ``whole = 1, 2, 3; core = 1, 3; enhancing = 3``)
               label_values
=============  ==============  ====================================================================

A model directory's metadata stores the convention it was trained with; validation, evaluation,
the post-processing and the figures read the regions from it. Nothing else in the package names
a label value. Label files holding a value outside the convention stop training and evaluation
with one line naming the file, the values found and the preset that fits (:meth:`check_values`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from uhved_tf.errors import ConfigError, DataError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@dataclass(frozen=True)
class Convention:
    name: str
    label_values: tuple[int, ...]                     # file values of classes 0..K-1
    regions: tuple[tuple[str, tuple[int, ...]], ...]  # (region name, label values), scored in this order
    enhancing: int | None = None                      # enhancing-tumour label (post-processing)
    core: int | None = None                           # what a too-small enhancing tumour becomes
    colours: tuple[tuple[int, tuple[int, int, int]], ...] = field(default=())

    @property
    def region_map(self) -> dict[str, tuple[int, ...]]:
        return dict(self.regions)

    @property
    def colour_map(self) -> dict[int, tuple[int, int, int]]:
        return dict(self.colours)

    def check_values(self, values, where: str) -> None:
        """A :class:`DataError` when label file ``where`` holds values outside this convention."""
        found = sorted(int(v) for v in values)
        extra = [v for v in found if v not in self.label_values]
        if not extra:
            return
        raise DataError(f"{where}: label values {', '.join(map(str, found))} but [DATASET] convention = {self.name} "
                        f"has {', '.join(map(str, self.label_values))} (value {', '.join(map(str, extra))} is not "
                        f"one of them){preset_hint(found)}")

    def to_metadata(self) -> dict:
        return {"name": self.name, "label_values": list(self.label_values),
                "regions": {k: list(v) for k, v in self.regions}, "enhancing": self.enhancing, "core": self.core}

    @classmethod
    def from_metadata(cls, d: dict) -> "Convention":
        """The convention a model directory's metadata stored (:meth:`to_metadata`)."""
        if d["name"] in PRESETS:
            return PRESETS[d["name"]]
        values = tuple(int(v) for v in d["label_values"])
        return cls(str(d["name"]), values, tuple((k, tuple(int(x) for x in v)) for k, v in d["regions"].items()),
                   d.get("enhancing"), d.get("core"), tuple(zip(values[1:], PALETTE)))


def preset_hint(values) -> str:
    """``"; preset brats2023 or msd fits these values: ..."`` for label values a convention refused."""
    fits = [p.name for p in PRESETS.values() if set(int(v) for v in values) <= set(p.label_values)]
    if fits:
        return (f"; preset {' or '.join(fits)} fits these values: set [DATASET] convention = {fits[0]} and "
                f"[MULTIMODAL] label_values = {', '.join(map(str, PRESETS[fits[0]].label_values))}")
    return ("; list the values in [MULTIMODAL] label_values and the regions in [DATASET] regions with "
            "[DATASET] convention = custom")


def _regions(**named) -> tuple:
    return tuple((k, tuple(v)) for k, v in named.items())


PRESETS: dict[str, Convention] = {
    "brats2018": Convention("brats2018", (0, 1, 2, 4), _regions(whole=(1, 2, 4), core=(1, 4), enhancing=(4,)),
                            enhancing=4, core=1, colours=((1, RED), (2, GREEN), (4, BLUE))),
    "brats2023": Convention("brats2023", (0, 1, 2, 3), _regions(whole=(1, 2, 3), core=(1, 3), enhancing=(3,)),
                            enhancing=3, core=1, colours=((1, RED), (2, GREEN), (3, BLUE))),
    "msd": Convention("msd", (0, 1, 2, 3), _regions(whole=(1, 2, 3), core=(2, 3), enhancing=(3,)),
                      enhancing=3, core=2, colours=((1, GREEN), (2, RED), (3, BLUE))),
}
NAMES = (*PRESETS, "nnunet", "custom")
PALETTE = (RED, GREEN, BLUE, (255, 255, 0), (255, 0, 255), (0, 255, 255))


def parse_regions(text: str, label_values, where: str = "[DATASET] regions") -> tuple:
    """``"whole = 1, 2, 3; core = 1, 3; enhancing = 3"`` -> regions (values must be labels, not 0)."""
    out = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, sep, values = part.partition("=")
        name = name.strip()
        try:
            labels = tuple(int(v) for v in values.replace(",", " ").split())
        except ValueError:
            labels = ()
        if not sep or not name or not labels or any(v == 0 or v not in label_values for v in labels):
            raise ConfigError(f'{where}: "{part}" is not NAME = LABEL, LABEL... with labels among '
                              f"{', '.join(map(str, label_values))} other than 0 (e.g. whole = 1, 2, 3; core = 1, 3)")
        out.append((name, labels))
    if not out:
        raise ConfigError(f"{where} is empty; [DATASET] convention = custom needs the regions to score, e.g. "
                          f"whole = 1, 2, 3; core = 1, 3; enhancing = 3")
    return tuple(out)


def from_settings(name: str, label_values, regions_text: str = "", enhancing_label: int = -1) -> Convention | None:
    """The convention of ``[DATASET] convention`` (checked against ``[MULTIMODAL] label_values``);
    ``None`` for ``nnunet``, whose labels and regions are its dataset.json's
    (:func:`uhved_tf.io.layouts.nnunet_convention`)."""
    label_values = tuple(int(v) for v in label_values)
    if name == "nnunet":
        return None
    if name != "custom":
        preset = PRESETS[name]
        if label_values != preset.label_values:
            raise ConfigError(
                f"[MULTIMODAL] label_values = {', '.join(map(str, label_values))} but [DATASET] convention = {name} "
                f"has label values {', '.join(map(str, preset.label_values))}; set label_values to those (and "
                f"num_classes = {len(preset.label_values)}) or use convention = custom")
        return preset
    regions = parse_regions(regions_text, label_values)
    if enhancing_label >= 0 and enhancing_label not in label_values[1:]:
        raise ConfigError(f"[DATASET] enhancing_label = {enhancing_label} is not one of [MULTIMODAL] label_values "
                          f"{', '.join(map(str, label_values[1:]))}")
    enhancing = enhancing_label if enhancing_label > 0 else None
    core = next((v for v in label_values[1:] if v != enhancing), None) if enhancing else None
    colours = tuple(zip(label_values[1:], PALETTE))
    return Convention("custom", label_values, regions, enhancing, core, colours)


def from_config(cfg) -> Convention:
    d = cfg.dataset
    return from_settings(d.convention, cfg.task.label_values, d.regions, d.enhancing_label)
