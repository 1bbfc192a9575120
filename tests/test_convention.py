"""Label conventions as data: presets, custom regions, and the refusal of labels that do not fit."""

from pathlib import Path

import numpy as np
import pytest

from uhved_tf.config import load_config
from uhved_tf.convention import PRESETS, from_settings, parse_regions
from uhved_tf.data.preprocessing import map_labels
from uhved_tf.errors import ConfigError, DataError
from uhved_tf.evaluation.metrics import evaluate_case
from uhved_tf.evaluation.report import Evaluation

REPO = Path(__file__).resolve().parents[1]


def _brats2023_reference():
    ref = np.zeros((12, 12, 12), np.int32)
    ref[3:9, 3:9, 3:9] = 2       # oedema
    ref[4:8, 4:8, 4:8] = 1       # necrotic core
    ref[5:7, 5:7, 5:7] = 3       # enhancing tumour (3 in BraTS 2023)
    return ref


def test_brats2023_empty_prediction_scores_zero_for_every_non_empty_region():
    ref, empty = _brats2023_reference(), np.zeros((12, 12, 12), np.int32)
    ev = Evaluation(subsets=(), modalities=("T1",), convention=PRESETS["brats2023"], et_min_voxels=0)
    scores = ev.score(empty, ref, (1.0, 1.0, 1.0))
    assert scores["dice_whole"] == scores["dice_core"] == scores["dice_enhancing"] == 0.0
    perfect = ev.score(ref, ref, (1.0, 1.0, 1.0))
    assert perfect["dice_whole"] == perfect["dice_core"] == perfect["dice_enhancing"] == 1.0
    # The bug this replaces: BraTS 2018 regions on BraTS 2023 labels call an empty prediction perfect.
    wrong = evaluate_case(empty, ref, (1.0, 1.0, 1.0), et_min_voxels=0)
    assert wrong["dice_enhancing"] == 1.0


def test_evaluation_refuses_labels_of_another_convention_naming_file_values_and_preset():
    with pytest.raises(DataError) as info:
        PRESETS["brats2018"].check_values(np.unique(_brats2023_reference()), "case_seg.nii.gz")
    text = str(info.value)
    assert "case_seg.nii.gz: label values 0, 1, 2, 3" in text and "convention = brats2018" in text
    assert "brats2023 or msd fits" in text and "\n" not in text
    PRESETS["brats2023"].check_values([0, 2], "ok.nii.gz")      # a subset of the labels is fine


def test_training_labels_outside_label_values_name_the_preset_that_fits():
    with pytest.raises(DataError, match=r"label values \[3\] are not in label_values \[0, 1, 2, 4\].*"
                                        r"preset brats2023 or msd fits"):
        map_labels(_brats2023_reference(), (0, 1, 2, 4), source="x_seg.nii.gz")


def test_msd_regions_and_custom_regions():
    msd = PRESETS["msd"]
    assert msd.region_map == {"whole": (1, 2, 3), "core": (2, 3), "enhancing": (3,)} and msd.core == 2
    custom = from_settings("custom", (0, 1, 2), "tumour = 1, 2; necrosis = 2", enhancing_label=-1)
    assert custom.region_map == {"tumour": (1, 2), "necrosis": (2,)} and custom.enhancing is None
    scores = evaluate_case(np.zeros((4, 4, 4)), np.ones((4, 4, 4)), (1, 1, 1), label_values=custom.region_map,
                           et_value=custom.enhancing)
    assert set(scores) == {f"{m}_{r}" for m in ("dice", "hd95", "sensitivity", "specificity")
                           for r in ("tumour", "necrosis")}
    for bad in ("whole: 1", "whole = 0, 1", "whole = 5", ""):
        with pytest.raises(ConfigError, match="regions"):
            parse_regions(bad, (0, 1, 2))


def test_the_config_chooses_the_convention_and_checks_it_against_label_values():
    base = REPO / "config" / "demo.ini"
    with pytest.raises(ConfigError, match=r"convention = brats2023 has label values 0, 1, 2, 3"):
        load_config(base, set_overrides=["DATASET.convention=brats2023"])
    cfg = load_config(base, set_overrides=["DATASET.convention=brats2023", "MULTIMODAL.label_values=0,1,2,3"])
    from uhved_tf.application import Application
    meta = Application(cfg).metadata()
    assert meta["convention"]["name"] == "brats2023" and meta["convention"]["regions"]["enhancing"] == [3]
    with pytest.raises(ConfigError, match="did you mean"):
        load_config(base, set_overrides=["DATASET.convention=brats2032"])
