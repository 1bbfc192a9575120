"""A subject's files -> one preprocessed case on the working grid, and back.

Steps (each a pure function from :mod:`preprocessing`, file access only through :mod:`uhved_tf.io`):
read every available modality (reorient to ``axcodes``, resample to ``pixdim``), check that they
share one grid, crop to the brain (non-zero voxels of any modality) grown by
``volume_padding_size`` and to at least the window, whiten each modality over its foreground,
map label values to class indices. Everything needed to undo the crop and the geometry is kept
in the :class:`Case`, so outputs go back to each input file's exact grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from uhved_tf.config.schema import default
from uhved_tf.convention import PRESETS
from uhved_tf.data import preprocessing as pp
from uhved_tf.errors import DataError
from uhved_tf.io.nifti import load_volume

log = logging.getLogger(__name__)


@dataclass
class Case:
    id: str
    image: np.ndarray            # [D, H, W, M] float32, zeros for missing modalities
    data_mask: np.ndarray        # [M] float32, 1 = the file exists
    label: np.ndarray | None     # [D, H, W] int32 class indices, or None
    box: pp.CropBox
    geometry: object             # VolumeGeometry of the reference (first available) modality
    files: dict = field(default_factory=dict)

    @property
    def spacing(self):
        return tuple(float(s) for s in self.geometry.working_spacing)


@dataclass(frozen=True)
class PreprocessSettings:
    modalities: tuple[str, ...]
    label_values: tuple[int, ...] = PRESETS["brats2018"].label_values
    axcodes: tuple[str, ...] | None = None
    pixdim: tuple[float, ...] | None = None
    image_interp_order: int = default("INPUT", "interp_order")
    label_interp_order: int = 0
    whitening: bool = default("NETWORK", "whitening")
    normalise_foreground_only: bool = default("NETWORK", "normalise_foreground_only")
    foreground_type: str = default("NETWORK", "foreground_type")
    volume_padding_size: tuple[int, int, int] = default("NETWORK", "volume_padding_size")
    min_shape: tuple[int, int, int] = (1, 1, 1)
    nan_policy: str = default("NETWORK", "nan_policy")
    landmarks: dict | None = None          # Nyul landmarks per modality (None: not used)
    cutoff: tuple[float, float] = default("NETWORK", "cutoff")
    norm_type: str = default("NETWORK", "norm_type")
    geometry_tolerance: float = 1e-3       # mm, for comparing the modalities' affines

    @classmethod
    def from_config(cls, cfg, landmarks=None) -> "PreprocessSettings":
        first = cfg.modality_inputs[0]
        label_cfg = cfg.inputs.get(cfg.label_section) if cfg.label_section else None
        window = tuple(first.spatial_window_size) if first.spatial_window_size else (1, 1, 1)
        return cls(
            modalities=tuple(cfg.modalities),
            label_values=tuple(cfg.task.label_values),
            axcodes=tuple(first.axcodes) or None,
            pixdim=tuple(first.pixdim) or None,
            image_interp_order=first.interp_order,
            label_interp_order=label_cfg.interp_order if label_cfg is not None else 0,
            whitening=cfg.network.whitening,
            normalise_foreground_only=cfg.network.normalise_foreground_only,
            foreground_type=cfg.network.foreground_type,
            volume_padding_size=tuple(cfg.network.volume_padding_size),
            min_shape=window,
            landmarks=landmarks if cfg.network.normalisation else None,
            cutoff=tuple(cfg.network.cutoff),
            norm_type=cfg.network.norm_type,
            nan_policy=cfg.network.nan_policy,
        )


def load_case(subject_id: str, files: dict, settings: PreprocessSettings, with_label: bool = True,
              label_key: str | None = None) -> Case:
    """``files`` maps modality name (and ``label_key``) to a path; absent modalities are missing."""
    volumes, geoms = {}, {}
    for m in settings.modalities:
        if files.get(m) is not None:
            volumes[m], geoms[m] = load_volume(files[m], axcodes=settings.axcodes, pixdim=settings.pixdim,
                                               interp_order=settings.image_interp_order, nan_policy=settings.nan_policy)
    if not volumes:
        raise DataError(f"subject {subject_id}: none of the modalities {list(settings.modalities)} has a file")
    ref_name = next(iter(volumes))
    ref = geoms[ref_name]
    for m, g in geoms.items():
        _check_same_grid(subject_id, ref_name, ref, m, g, settings.geometry_tolerance)
    label = None
    if with_label and label_key and files.get(label_key) is not None:
        lab, lgeom = load_volume(files[label_key], axcodes=settings.axcodes, pixdim=settings.pixdim,
                                 interp_order=settings.label_interp_order, nan_policy="error")
        _check_same_grid(subject_id, ref_name, ref, "label", lgeom, settings.geometry_tolerance)
        label = pp.map_labels(lab, settings.label_values, source=str(files[label_key]))

    brain = np.zeros(ref.working_shape, bool)
    for vol in volumes.values():
        brain |= vol != 0
    box = pp.brain_box(brain, settings.volume_padding_size, settings.min_shape)
    image = np.zeros(box.shape + (len(settings.modalities),), np.float32)
    data_mask = np.zeros(len(settings.modalities), np.float32)
    for i, m in enumerate(settings.modalities):
        if m not in volumes:
            continue
        vol = volumes[m]
        if np.all(vol == 0):
            raise DataError(f"{files[m]}: image is all zeros (subject {subject_id}, modality {m})")
        if settings.landmarks is not None:
            from uhved_tf.data.histogram import apply_landmarks
            fg = pp.foreground_mask(vol, settings.foreground_type) if settings.normalise_foreground_only else None
            vol = apply_landmarks(vol, settings.landmarks[m], settings.cutoff, mask=fg,
                                  norm_type=settings.norm_type)
        if settings.whitening:
            mask = pp.foreground_mask(vol, settings.foreground_type) if settings.normalise_foreground_only else None
            vol = pp.whiten(vol, mask)
        image[..., i] = pp.crop(vol, box, fill=float(vol.min()) if not settings.whitening else 0.0)
        data_mask[i] = 1.0
    if settings.whitening:
        # Outside the brain every whitened modality is set to 0 so that padding, background and
        # a missing modality look the same to the network.
        inside = pp.crop(brain.astype(np.uint8), box).astype(bool)
        image[~inside] = 0.0
    if label is not None:
        label = pp.crop(label, box, fill=0)
    return Case(subject_id, image, data_mask, label, box, ref, dict(files))


def _check_same_grid(subject_id, ref_name, ref, name, geom, tol):
    if tuple(geom.working_shape) != tuple(ref.working_shape):
        raise DataError(
            f"subject {subject_id}: {name} ({geom.path}) has shape {tuple(geom.original_shape)} but "
            f"{ref_name} ({ref.path}) has {tuple(ref.original_shape)}; all images of a subject must share one grid")
    if not np.allclose(geom.working_affine, ref.working_affine, atol=tol, rtol=0):
        raise DataError(
            f"subject {subject_id}: the affine of {name} ({geom.path}) differs from {ref_name} ({ref.path}) "
            f"by more than {tol} mm; co-register the images first")
