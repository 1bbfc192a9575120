"""TensorBoard for a (tiny) demo run: the event files hold the scalars, the validation images of
inputs, syntheses and segmentation, and the graph of the training step (read back with
TensorBoard's own event reader; no screenshots)."""

from __future__ import annotations

import pytest

from tests.helpers import TINY_INI

pytestmark = pytest.mark.slow


def test_event_files_hold_scalars_images_and_the_graph(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from uhved_tf import Trainer
    from uhved_tf.demo.synthetic import make_demo_dataset

    data = tmp_path / "data"
    make_demo_dataset(data, n_subjects=3, shape=(32, 32, 24), spacing=(6.0, 6.0, 6.0), seed=5)
    cfg = tmp_path / "tb.ini"
    cfg.write_text(TINY_INI.format(data=data, model=tmp_path / "model"))
    Trainer.from_config(cfg, set_overrides=[
        "TRAINING.exclude_fraction_for_validation=0.34", "TRAINING.exclude_fraction_for_inference=0",
        "TRAINING.validation_every_n=2", "TRAINING.validation_subsets=full"]).fit()

    acc = EventAccumulator(str(tmp_path / "model" / "logs" / "train"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = set(tags["scalars"]) | set(tags["tensors"])
    assert {"lr", "loss/total", "loss/dice", "loss/ce", "loss/recon", "loss/kl", "validation/score"} <= scalars
    images = set(tags["images"]) | set(tags["tensors"])
    for m in ("T1", "T1c", "T2", "Flair"):
        assert f"input/{m}" in images and f"synth/{m}" in images
    assert {"segmentation/prediction", "segmentation/ground_truth"} <= images
    assert tags["graph"], "no graph of the training step in the event file"
    graph = acc.Graph()
    assert len(graph.node) > 100
