"""Export for TensorFlow Serving (:mod:`.saved_model`) and its client (:mod:`.client`); the CLI
subcommands ``export`` and ``client`` are in :mod:`.commands`. Importing this package does not
import TensorFlow."""

from uhved_tf.export.saved_model import (MASK_INPUT, SEGMENT_VOLUME, SERVING_DEFAULT, ExportSettings,
                                         export_saved_model, model_name_for, read_export_metadata)

__all__ = ["MASK_INPUT", "SEGMENT_VOLUME", "SERVING_DEFAULT", "ExportSettings", "export_saved_model",
           "model_name_for", "read_export_metadata"]
