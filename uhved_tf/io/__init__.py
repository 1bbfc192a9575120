"""File I/O at the edges: NIfTI volumes (read onto a working grid and back) and subject discovery / splits.

Nothing here imports TensorFlow.
"""

from uhved_tf.io.discovery import (
    PHASES,
    InputSpec,
    Subject,
    find_subjects,
    load_or_create_split,
    safe_subject_id,
    subjects_in,
)
from uhved_tf.io.nifti import (
    NIFTI_SUFFIXES,
    VolumeGeometry,
    is_nifti_path,
    load_volume,
    read_header_only,
    save_like,
    to_original_grid,
)

__all__ = [
    "NIFTI_SUFFIXES",
    "PHASES",
    "InputSpec",
    "Subject",
    "VolumeGeometry",
    "find_subjects",
    "is_nifti_path",
    "load_or_create_split",
    "load_volume",
    "read_header_only",
    "safe_subject_id",
    "save_like",
    "subjects_in",
    "to_original_grid",
]
