"""Typed, strict INI configuration with NiftyNet's keys and semantics.

    from uhved_tf.config import load_config
    cfg = load_config("config/uhved.ini", overrides=["--max_iter", "10"], set_overrides=["T1.pixdim=1,1,1"])
    cfg.training.lr, cfg.modalities, cfg.inputs["T1"].path_to_search

Every key, its type, default and help text live in :mod:`uhved_tf.config.schema`; the INI text
and the overrides are read by :mod:`~uhved_tf.config.reading`, typed by :mod:`~uhved_tf.config.parser`
(which also writes the resolved config) and checked across keys by :mod:`~uhved_tf.config.checks`.
Pure Python (no TensorFlow).
"""

from uhved_tf.config.parser import (
    RESOLVED_CONFIG_NAME,
    Config,
    annotate_ini,
    load_config,
    parse_config_text,
)
from uhved_tf.config.schema import (
    DatasetConfig,
    EvaluationConfig,
    InferenceConfig,
    InputConfig,
    MultimodalConfig,
    NetworkConfig,
    SystemConfig,
    TrainingConfig,
    key_reference_markdown,
)

__all__ = [
    "RESOLVED_CONFIG_NAME",
    "Config",
    "DatasetConfig",
    "EvaluationConfig",
    "InferenceConfig",
    "InputConfig",
    "MultimodalConfig",
    "NetworkConfig",
    "SystemConfig",
    "TrainingConfig",
    "annotate_ini",
    "key_reference_markdown",
    "load_config",
    "parse_config_text",
]
