"""uhved_tf: U-HVED brain-tumour segmentation and modality completion with any subset of MRI modalities.

Importing this package has no side effects: no seeding, no logging handlers, no environment changes.
"""

__version__ = "0.1.0"
