"""Synthetic BraTS-like demo data (see :mod:`uhved_tf.demo.synthetic`)."""

from uhved_tf.demo.synthetic import (
    MODALITIES,
    SyntheticSubject,
    make_demo_dataset,
    subject_ids,
    synthesize_subject,
)

__all__ = ["MODALITIES", "SyntheticSubject", "make_demo_dataset", "subject_ids", "synthesize_subject"]
