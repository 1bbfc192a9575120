"""uhved_tf: U-HVED brain-tumour segmentation and modality completion with any subset of MRI modalities.

Importing this package has no side effects: no seeding, no logging handlers, no environment changes.
"""

import time as _time

__version__ = "0.1.0"

IMPORTED_AT = _time.perf_counter()
"""When the package was first imported: the start of a CLI run, for its time-to-first-prediction line."""

__all__ = ["Predictor", "Trainer", "__version__"]


def __getattr__(name):
    # Lazy, so that ``import uhved_tf`` stays free of TensorFlow and side effects.
    if name in ("Predictor", "Trainer"):
        from uhved_tf import api
        return getattr(api, name)
    raise AttributeError(f"module 'uhved_tf' has no attribute {name!r}")
