"""Tests of uhved_tf.config: parsing, NiftyNet compatibility, errors that suggest the fix, overrides."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uhved_tf.config import (
    RESOLVED_CONFIG_NAME,
    Config,
    annotate_ini,
    key_reference_markdown,
    load_config,
    parse_config_text,
)
from uhved_tf.config import schema as S
from uhved_tf.errors import ConfigError, close_matches, did_you_mean

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [REPO / "config" / n for n in ("demo.ini", "uhved.ini", "brats2023.ini", "msd.ini", "nnunet.ini")]
PARSER_LOGGER = "uhved_tf.config.parser"

MINIMAL = """
[T1]
path_to_search = data
filename_contains = T1
filename_not_contains = T1c
spatial_window_size = 32, 32, 32
[T1c]
path_to_search = data
filename_contains = T1c
spatial_window_size = 32, 32, 32
[T2]
path_to_search = data
filename_contains = T2
[Flair]
path_to_search = data
filename_contains = Flair
[label]
path_to_search = data
filename_contains = Label
interp_order = 0
[NETWORK]
name = u_hved
[MULTIMODAL]
image = T1, T1c, T2, Flair
label = label
num_classes = 4
"""

# The original U-HVED / NiftyNet style config (ReubenDo/U-HVED), including keys uhved_tf ignores.
ORIGINAL = """
[T1]
path_to_search = ./data/BRATS2018/
filename_contains = T1
filename_not_contains = T1c
spatial_window_size = (112, 112, 112)
pixdim = (1.0, 1.0, 1.0)
axcodes = (R, A, S)
interp_order = 3

[T1c]
path_to_search = ./data/BRATS2018/
filename_contains = T1c
spatial_window_size = (112, 112, 112)
pixdim = (1.0, 1.0, 1.0)
axcodes = (R, A, S)
interp_order = 3

[T2]
path_to_search = ./data/BRATS2018/
filename_contains = T2
spatial_window_size = (112, 112, 112)
pixdim = (1.0, 1.0, 1.0)
axcodes = (R, A, S)
interp_order = 3

[Flair]
path_to_search = ./data/BRATS2018/
filename_contains = Flair
spatial_window_size = (112, 112, 112)
pixdim = (1.0, 1.0, 1.0)
axcodes = (R, A, S)
interp_order = 3

[label_b]
path_to_search = ./data/BRATS2018/
filename_contains = Label
spatial_window_size = (112, 112, 112)
pixdim = (1.0, 1.0, 1.0)
axcodes = (R, A, S)
interp_order = 0

[SYSTEM]
cuda_devices = ""
num_threads = 2
num_gpus = 1
model_dir = ./models/u_hved/
queue_length = 30

[NETWORK]
name = u_hved.u_hved_net.U_HVED
activation_function = relu
batch_size = 1
decay = 1e-5
reg_type = L2
volume_padding_size = 10
histogram_ref_file = hist.txt
norm_type = percentile
cutoff = (0.001, 0.999)
normalisation = True
whitening = True
normalise_foreground_only = True
foreground_type = mean_plus
window_sampling = uniform

[TRAINING]
sample_per_volume = 32
random_flipping_axes = 0,1,2
scaling_percentage = -10.0, 10.0
lr = 0.001
loss_type = Jaccard
starting_iter = 0
save_every_n = 5000
max_iter = 60000
max_checkpoints = 20
exclude_fraction_for_validation = 0.1
exclude_fraction_for_inference = 0.2

[INFERENCE]
border = (8, 8, 8)
inference_iter = 60000
save_seg_dir = ./output
output_interp_order = 0
spatial_window_size = (144, 144, 144)

[MULTIMODAL]
image = T1, T1c, T2, Flair
label = label_b
output_prob = False
num_classes = 4
label_normalisation = True
choices = True, True, True, True
output_mod = seg
"""


def parse(text: str = MINIMAL, tmp: Path | None = None, overrides=(), set_overrides=()) -> Config:
    return parse_config_text(text, tmp or Path("/cfg"), overrides, set_overrides, source="/cfg/test.ini")


def with_key(text: str, section: str, line: str) -> str:
    """Add ``line`` right after the ``[section]`` header (or a new section at the end)."""
    header = f"[{section}]\n"
    if header in text:
        return text.replace(header, header + line + "\n", 1)
    return text + f"\n{header}{line}\n"


def error_of(text: str, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# Shipped configs, schema, documentation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_parses_without_warnings(path, caplog):
    with caplog.at_level(logging.WARNING, logger=PARSER_LOGGER):
        cfg = load_config(path)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert cfg.modalities == ("T1", "T1c", "T2", "Flair")
    assert cfg.label_section == "label"
    four = (0, 1, 2, 4) if cfg.dataset.convention == "brats2018" else (0, 1, 2, 3)
    assert cfg.task.num_classes == 4 and cfg.task.label_values == four
    assert cfg.network.name == "u_hved"
    assert cfg.source == path


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_every_key_has_its_help_comment(path):
    text = path.read_text()
    assert annotate_ini(text) == text, "regenerate with uhved_tf.config.annotate_ini"
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_0-9]+\s*=", line):
            assert lines[i - 1].startswith("# "), line


def test_uhved_recipe_values():
    cfg = load_config(REPO / "config" / "uhved.ini")
    assert cfg.spatial_window_size == (112, 112, 112)
    assert cfg.network.batch_size == 1 and cfg.network.decay == 1e-5
    assert cfg.training.lr == 0.001 and cfg.training.max_iter == 60000
    assert (cfg.training.lr_decay_factor, cfg.training.lr_decay_every) == (4.0, 10000)
    assert cfg.inference.spatial_window_size == (144, 144, 144) and cfg.inference.border == (8, 8, 8)
    assert cfg.network.cutoff == (0.001, 0.999)
    assert cfg.training.random_flipping_axes == (0, 1, 2)
    assert [i.interp_order for i in cfg.modality_inputs] == [3, 3, 3, 3]
    assert cfg.label_input.interp_order == 0
    assert cfg.inputs["T1"].filename_not_contains == ("_t1ce",)
    assert cfg.network.histogram_ref_file == cfg.system.model_dir / "hist.txt"


@pytest.mark.parametrize("section", list(S.SCHEMA))
def test_schema_defaults_round_trip_through_their_kind(section):
    for key in S.SCHEMA[section]:
        assert key.help and "\n" not in key.help
        if not key.required:
            assert key.kind.parse(key.kind.format(key.default)) == key.default, key.name


def test_key_reference_markdown_lists_every_key():
    doc = key_reference_markdown()
    for keys in S.SCHEMA.values():
        for key in keys:
            assert f"`{key.name}`" in doc
    assert "*ignored*" in doc


def test_section_dataclasses_are_frozen_and_follow_the_schema():
    cfg = parse()
    assert [f.name for f in dataclasses.fields(cfg.training)] == [k.name for k in S.TRAINING_KEYS]
    assert [f.name for f in dataclasses.fields(cfg.inputs["T1"])] == ["name"] + [k.name for k in S.INPUT_KEYS]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.training.lr = 1.0


# ---------------------------------------------------------------------------------------------
# NiftyNet / U-HVED compatibility
# ---------------------------------------------------------------------------------------------

def test_original_uhved_config_parses_with_warnings_for_ignored_keys(tmp_path, caplog):
    path = tmp_path / "original.ini"
    path.write_text(ORIGINAL)
    with caplog.at_level(logging.WARNING, logger=PARSER_LOGGER):
        cfg = load_config(path)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for key, section in [("num_gpus", "SYSTEM"), ("loss_type", "TRAINING"), ("output_mod", "MULTIMODAL"),
                         ("label_normalisation", "MULTIMODAL")]:
        assert any(f"key {key} in [{section}] is accepted for NiftyNet compatibility but ignored by uhved_tf" in m
                   for m in messages), (key, messages)
    # queue_length sits in [SYSTEM] in NiftyNet's examples: moved to [NETWORK], with a warning.
    assert cfg.network.queue_length == 30
    assert any("queue_length in [SYSTEM]" in m and "[NETWORK]" in m for m in messages)
    assert cfg.network.name == "u_hved.u_hved_net.U_HVED"
    assert cfg.modalities == ("T1", "T1c", "T2", "Flair") and cfg.label_section == "label_b"
    assert cfg.inputs["T1"].filename_contains == ("T1",) and cfg.inputs["T1"].filename_not_contains == ("T1c",)
    assert cfg.inputs["T1"].axcodes == ("R", "A", "S") and cfg.inputs["T1"].pixdim == (1.0, 1.0, 1.0)
    assert cfg.system.cuda_devices == ""
    assert cfg.system.model_dir == tmp_path / "models" / "u_hved"
    assert cfg.training.scaling_percentage == (-10.0, 10.0)
    assert cfg.training.exclude_fraction_for_inference == 0.2
    assert cfg.task.choices == (True, True, True, True)
    assert cfg.inference_modalities == cfg.modalities
    assert cfg.network.volume_padding_size == (10, 10, 10)


def test_segmentation_section_is_an_alias_of_multimodal():
    cfg = parse(MINIMAL.replace("[MULTIMODAL]", "[SEGMENTATION]"))
    assert cfg.modalities == ("T1", "T1c", "T2", "Flair")
    both = MINIMAL + "\n[SEGMENTATION]\nnum_classes = 4\n"
    assert "keep exactly one task section" in error_of(both)


def test_choices_define_the_inference_subset():
    cfg = parse(with_key(MINIMAL, "MULTIMODAL", "choices = True, false, yes, 0"))
    assert cfg.task.choices == (True, False, True, False)
    assert cfg.inference.modalities == ("T1", "T2")
    cfg = parse(with_key(MINIMAL, "INFERENCE", "modalities = t1c, FLAIR"))
    assert cfg.inference.modalities == ("T1c", "Flair")  # canonical spelling
    msg = error_of(with_key(MINIMAL, "INFERENCE", "modalities = Flar"))
    assert '"Flar" is not one of the modalities' in msg and 'did you mean "Flair"' in msg
    assert "one boolean per image modality" in error_of(with_key(MINIMAL, "MULTIMODAL", "choices = True, True"))


def test_task_output_prob_turns_on_inference_output_prob():
    assert parse(with_key(MINIMAL, "MULTIMODAL", "output_prob = True")).inference.output_prob is True
    assert parse().inference.output_prob is False


# ---------------------------------------------------------------------------------------------
# Errors that suggest the fix
# ---------------------------------------------------------------------------------------------

def test_unknown_key_suggests_the_right_one_and_names_section_and_file():
    msg = error_of(with_key(MINIMAL, "TRAINING", "lerning_rate = 0.1"))
    assert 'Unknown key "lerning_rate" in [TRAINING] of /cfg/test.ini; did you mean "lr"?' in msg
    assert "Valid keys:" in msg and "max_iter" in msg
    msg = error_of(with_key(MINIMAL, "T1", "filename_contain = T1"))
    assert '[T1]' in msg and 'did you mean "filename_contains"' in msg


def test_suggestions_follow_aliases_to_what_they_stand_for():
    msg = error_of(with_key(MINIMAL, "TRAINING", "optimiser = gradientdescnt"))
    assert msg.endswith('expected one of adam, sgd, momentum, rmsprop, adagrad; did you mean "sgd"?')
    assert close_matches("learning_rat", ["lr", "max_iter"], aliases=S.KEY_ALIASES) == ["lr"]
    assert close_matches("learning_rat", ["max_iter"], aliases=S.KEY_ALIASES) == []  # lr is not a candidate
    assert did_you_mean("number_of_clases", ["num_classes"], aliases=S.KEY_ALIASES) == '; did you mean "num_classes"?'


def test_bad_value_names_section_key_value_file_and_expectation():
    msg = error_of(with_key(MINIMAL, "TRAINING", "lr = abc"))
    assert msg == '[TRAINING] lr = "abc" in /cfg/test.ini: expected a positive number (float)'
    assert "expected a positive number" in error_of(with_key(MINIMAL, "TRAINING", "lr = 0"))
    msg = error_of(with_key(MINIMAL, "NETWORK", "window_sampling = unifrom"))
    assert '[NETWORK] window_sampling = "unifrom"' in msg and 'did you mean "uniform"' in msg
    assert "balanced" in msg
    msg = error_of(with_key(MINIMAL, "TRAINING", "max_iter = 10  # ten"))
    assert "inline comments are not supported" in msg
    assert "expected an integer in 0..3" in error_of(with_key(MINIMAL, "T1", "interp_order = 5"))


@pytest.mark.parametrize("section, key, value", [("TRAINING", "optimiser", "adamw"), ("TRAINING", "optimiser", "nesterov"),
                                                 ("TRAINING", "optimiser", "adadelta"),
                                                 ("NETWORK", "window_sampling", "resize"),
                                                 ("NETWORK", "window_sampling", "patch")])
def test_values_the_trainer_cannot_use_are_refused_when_the_config_is_read(section, key, value):
    """Not when training starts: the choices are exactly what the trainer builds."""
    msg = error_of(with_key(MINIMAL, section, f"{key} = {value}"))
    expected = {"optimiser": "adam, sgd, momentum, rmsprop, adagrad", "window_sampling": "uniform, balanced, weighted"}
    assert msg.startswith(f'[{section}] {key} = "{value}" in /cfg/test.ini: expected one of {expected[key]}')
    assert "\n" not in msg
    assert parse(with_key(MINIMAL, "TRAINING", "optimiser = GradientDescent")).training.optimiser == "sgd"


def test_evaluations_is_warned_as_ignored_unless_empty(caplog):
    with caplog.at_level(logging.WARNING, logger=PARSER_LOGGER):
        parse(with_key(MINIMAL, "EVALUATION", "evaluations = dice, hausdorff95"))
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("key evaluations in [EVALUATION] is accepted for NiftyNet compatibility but ignored by "
                            "uhved_tf: evaluate always reports Dice, HD95") for m in messages), messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=PARSER_LOGGER):   # the resolved config of an older model
        parse(with_key(MINIMAL, "EVALUATION", "evaluations ="))
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_every_key_uhved_tf_uses_is_read_outside_the_schema():
    """A key not marked ``used=False`` is read by some module (its name appears as an attribute or
    a string outside schema.py): a key that does nothing must warn as ignored or be refused."""
    sources = [p.read_text() for p in (REPO / "uhved_tf").rglob("*.py") if p.name != "schema.py"]
    unread = [f"[{section}] {key.name}" for section, keys in S.SCHEMA.items() for key in keys if key.used
              and not any(re.search(rf"""[."']{re.escape(key.name)}\b""", text) for text in sources)]
    assert not unread


@pytest.mark.parametrize("word", ["t", "f", "T", "maybe", "2", ""])
def test_bool_rejects_t_f_and_lists_accepted_spellings(word):
    msg = error_of(with_key(MINIMAL, "NETWORK", f"whitening = {word}"))
    assert f'[NETWORK] whitening = "{word}"' in msg
    assert "yes, true, y, 1, on" in msg and "no, false, n, 0, off" in msg


@pytest.mark.parametrize("word, expected", [("yes", True), ("TRUE", True), ("Y", True), ("1", True),
                                            ("On", True), ("no", False), ("False", False), ("n", False),
                                            ("0", False), ("OFF", False)])
def test_bool_spellings(word, expected):
    assert parse(with_key(MINIMAL, "NETWORK", f"whitening = {word}")).network.whitening is expected


def test_missing_task_section_lists_input_sections():
    text = MINIMAL.split("[MULTIMODAL]")[0]
    msg = error_of(text)
    assert "no [MULTIMODAL] section" in msg and "[T1], [T1c], [T2], [Flair], [label]" in msg


def test_task_image_naming_a_missing_section():
    msg = error_of(MINIMAL.replace("image = T1, T1c, T2, Flair", "image = T1, T1c, T2, FLAIRR"))
    assert "[MULTIMODAL] image names section [FLAIRR]" in msg
    assert "Input sections present: [T1], [T1c], [T2], [Flair], [label]" in msg
    assert "Did you mean [Flair]?" in msg


def test_required_keys():
    assert "[NETWORK] name is required" in error_of(MINIMAL.replace("name = u_hved", ""))
    assert "[NETWORK] name" in error_of(MINIMAL.replace("name = u_hved", "name ="))
    assert "[MULTIMODAL] num_classes is required" in error_of(MINIMAL.replace("num_classes = 4", ""))
    assert "expected an integer >= 2" in error_of(MINIMAL.replace("num_classes = 4", "num_classes = -1"))
    msg = error_of(MINIMAL.replace("num_classes = 4", "num_classes = 3"))
    assert "label_values has 4 values" in msg
    assert "filename_contains is required" in error_of(MINIMAL.replace("filename_contains = T2\n", ""))


def test_duplicate_keys_and_sections_and_syntax_errors_name_the_line():
    assert 'key "max_iter" appears twice in [TRAINING]' in error_of(
        MINIMAL + "[TRAINING]\nmax_iter = 1\nmax_iter = 2\n")
    assert "section [T1] appears twice" in error_of(MINIMAL + "[T1]\n")
    assert "line 2" in error_of("\nthis is not ini\n[T1]\n")
    msg = error_of(MINIMAL + "[training]\nlr = 0.1\n[TRAINING]\nmax_iter = 1\n")
    assert "same section once standardised" in msg


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "nope.ini"))):
        load_config(tmp_path / "nope.ini")


def test_misspelt_fixed_section_is_reported():
    assert "did you mean [TRAINING]?" in error_of(MINIMAL + "\n[TRAINNG]\nlr = 0.1\n")


def test_misplaced_key_with_two_homes_is_an_error():
    msg = error_of(with_key(MINIMAL, "NETWORK", "spatial_window_size = 32"))
    assert "belongs to [INFERENCE] or the input sections" in msg


# ---------------------------------------------------------------------------------------------
# Types and array syntaxes
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["1.0, 2.0, 3.0", "(1.0, 2.0, 3.0)", "{1, 2, 3}", "[1,2,3]", "1, 2, 3,"])
def test_array_syntaxes(text):
    assert parse(with_key(MINIMAL, "T1", f"pixdim = {text}")).inputs["T1"].pixdim == (1.0, 2.0, 3.0)


def test_empty_arrays_and_bad_arrays():
    assert parse(with_key(MINIMAL, "T1", "pixdim =")).inputs["T1"].pixdim == ()
    assert parse(with_key(MINIMAL, "T1", "pixdim = ()")).inputs["T1"].pixdim == ()
    assert "0 or 3 values" in error_of(with_key(MINIMAL, "T1", "pixdim = 1, 1"))
    assert "bad item" in error_of(with_key(MINIMAL, "T1", "pixdim = 1, x, 1"))
    assert "without empty items" in error_of(with_key(MINIMAL, "T1", "pixdim = 1,,1"))


@pytest.mark.parametrize("text, expected", [("32", (32, 1, 1)), ("32, 16", (32, 16, 1)), ("(32, 16, 8)", (32, 16, 8))])
def test_spatial_atleast3d_pads_with_one(text, expected):
    assert S.Spatial("atleast3d", lo=1).parse(text) == expected
    overrides = [f"INFERENCE.spatial_window_size={text}", "NETWORK.levels=2"]
    # Through the config, a padded 1 is not divisible by 2^(levels-1) = 2: rounded up, with a warning.
    assert parse(set_overrides=overrides).inference.spatial_window_size == tuple(max(2, e) for e in expected)


@pytest.mark.parametrize("text, expected", [("10", (10, 10, 10)), ("4, 2", (4, 2, 2)), ("1, 2, 3", (1, 2, 3)),
                                            ("", (0, 0, 0))])
def test_spatialnumarray_repeats_the_last(text, expected):
    assert parse(with_key(MINIMAL, "NETWORK", f"volume_padding_size = {text}")).network.volume_padding_size == expected
    assert parse(with_key(MINIMAL, "INFERENCE", f"border = {text}")).inference.border == expected


def test_axcodes_and_flipping_axes():
    assert parse(with_key(MINIMAL, "T1", "axcodes = l, p, s")).inputs["T1"].axcodes == ("L", "P", "S")
    assert "one from each of L/R, A/P, S/I" in error_of(with_key(MINIMAL, "T1", "axcodes = R, L, S"))
    assert "not an axis code" in error_of(with_key(MINIMAL, "T1", "axcodes = R, A, X"))
    assert parse(with_key(MINIMAL, "TRAINING", "random_flipping_axes = -1")).training.random_flipping_axes == ()
    assert parse().training.random_flipping_axes == ()
    assert parse(with_key(MINIMAL, "TRAINING", "random_flipping_axes = 0, 2")).training.random_flipping_axes == (0, 2)
    assert "-1 (off)" in error_of(with_key(MINIMAL, "TRAINING", "random_flipping_axes = -1, 0"))


def test_regex_and_ranges_and_cutoff():
    assert "regular expression" in error_of(with_key(MINIMAL, "T1", "filename_removefromid = ([a"))
    assert "min <= max" in error_of(with_key(MINIMAL, "TRAINING", "rotation_angle = 10, -10"))
    assert "increasing" in error_of(with_key(MINIMAL, "NETWORK", "cutoff = 0.9, 0.1"))
    assert parse(with_key(MINIMAL, "TRAINING", "max_iter = 1e4")).training.max_iter == 10000


# ---------------------------------------------------------------------------------------------
# Cross-field checks
# ---------------------------------------------------------------------------------------------

def test_window_not_divisible_gives_nearest_sizes():
    msg = error_of(MINIMAL, set_overrides=["T1.spatial_window_size=17, 32, 32"])
    assert "[T1] spatial_window_size = 17, 32, 32" in msg
    assert "17 is not divisible by 8 (2^(levels-1) with levels=4); use 16 or 24" in msg
    # The inference window only tiles the volume: rounded up to the next valid size, with a warning.
    assert parse(set_overrides=["INFERENCE.spatial_window_size=140, 8, 8"]).inference.spatial_window_size == (144, 8, 8)
    # levels changes the divisor
    assert parse(MINIMAL.replace("32, 32, 32", "20, 20, 20"), set_overrides=["NETWORK.levels=3"])


def test_windows_must_agree_and_exist():
    msg = error_of(MINIMAL, set_overrides=["T1c.spatial_window_size=16, 16, 16"])
    assert "differs between sections" in msg
    assert "set spatial_window_size" in error_of(MINIMAL.replace("spatial_window_size = 32, 32, 32\n", ""))
    cfg = parse()
    assert cfg.inference.spatial_window_size == (32, 32, 32) == cfg.spatial_window_size


def test_inference_border_and_fractions_and_subset_prior():
    assert "2 x border must be smaller" in error_of(with_key(MINIMAL, "INFERENCE", "border = 16"))
    msg = error_of(MINIMAL, set_overrides=["TRAINING.exclude_fraction_for_validation=0.5",
                                           "TRAINING.exclude_fraction_for_inference=0.5"])
    assert "must be < 1" in msg
    assert "needs subset_prior" in error_of(with_key(MINIMAL, "TRAINING", "subset_policy = prior"))
    prior = ", ".join(["0.0625"] * 16)
    assert "expected 15" in error_of(with_key(MINIMAL, "TRAINING", f"subset_policy = prior\nsubset_prior = {prior}"))
    prior15 = ", ".join([repr(1 / 15)] * 15)
    cfg = parse(with_key(MINIMAL, "TRAINING", f"subset_policy = prior\nsubset_prior = {prior15}"))
    assert len(cfg.training.subset_prior) == 15
    tenths = ", ".join(["0.1"] * 15)
    assert "summing to 1" in error_of(with_key(MINIMAL, "TRAINING", f"subset_policy = prior\nsubset_prior = {tenths}"))
    assert "set subset_policy = prior" in error_of(with_key(MINIMAL, "TRAINING", f"subset_prior = {prior15}"))


# ---------------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--max_iter", "3"], ["--max_iter=3"], ["--max-iter", "3"]])
def test_niftynet_style_overrides(args):
    assert parse(overrides=args).training.max_iter == 3


def test_overrides_are_validated_and_reach_the_task_section():
    cfg = parse(overrides=["--lr=0.5", "--queue_length", "7", "--choices", "True,False,True,True"])
    assert cfg.training.lr == 0.5 and cfg.network.queue_length == 7
    assert cfg.inference.modalities == ("T1", "T2", "Flair")
    msg = error_of(MINIMAL, overrides=["--lr", "abc"])
    assert '[TRAINING] lr = "abc" (from the command line: --lr abc)' in msg
    msg = error_of(MINIMAL, overrides=["--lerning_rate", "0.1"])
    assert "did you mean --lr?" in msg
    assert "needs a value" in error_of(MINIMAL, overrides=["--max_iter"])
    assert "unexpected command-line argument" in error_of(MINIMAL, overrides=["max_iter", "3"])


@pytest.mark.parametrize("key, sections", [("spatial_window_size", ["[INFERENCE]", "input sections"]),
                                           ("output_prob", ["[INFERENCE]", "[MULTIMODAL]"])])
def test_ambiguous_override_suggests_set(key, sections):
    msg = error_of(MINIMAL, overrides=[f"--{key}", "1"])
    assert "ambiguous" in msg and "--set SECTION." in msg
    for section in sections:
        assert section in msg


def test_input_key_override_needs_set():
    msg = error_of(MINIMAL, overrides=["--pixdim", "1,1,1"])
    assert "--set T1.pixdim=1,1,1" in msg


def test_set_overrides():
    cfg = parse(set_overrides=["TRAINING.max_iter=10", "T1.pixdim=1,1,1", "training.lr = 0.2",
                               "EVALUATION.et_min_voxels=0", "segmentation.num_classes=4"])
    assert cfg.training.max_iter == 10 and cfg.training.lr == 0.2
    assert cfg.inputs["T1"].pixdim == (1.0, 1.0, 1.0)
    assert cfg.evaluation.et_min_voxels == 0
    assert "has no section [T5]" in error_of(MINIMAL, set_overrides=["T5.pixdim=1"])
    assert 'did you mean "max_iter"' in error_of(MINIMAL, set_overrides=["TRAINING.max_itr=1"])
    assert "did you mean --set NETWORK.batch_size=1?" in error_of(MINIMAL, set_overrides=["TRAINING.batch_size=1"])
    assert "expected --set SECTION.key=value" in error_of(MINIMAL, set_overrides=["max_iter=1"])
    assert "expected a positive number" in error_of(MINIMAL, set_overrides=["TRAINING.lr=-1"])


@pytest.mark.parametrize("overrides, sets, first, second, values", [
    (["--max_iter", "2"], ["TRAINING.max_iter=1"], "--max_iter 2", "--set TRAINING.max_iter=1", "(2 and 1)"),
    (["--max_iter", "2", "--max-iter=3"], [], "--max_iter 2", "--max-iter=3", "(2 and 3)"),
    (["--lr=0.1"], ["training.lr = 0.2"], "--lr=0.1", "--set training.lr = 0.2", "(0.1 and 0.2)"),
])
def test_one_key_given_two_values_on_the_command_line_is_refused(overrides, sets, first, second, values):
    """It used to take one of them silently (--set, applied after --key, won)."""
    msg = error_of(MINIMAL, overrides=overrides, set_overrides=sets)
    assert msg == (f'"{first}" and "{second}" both set [TRAINING] {"lr" if "lr" in first else "max_iter"}, '
                   f"to different values {values}; give it once")


def test_repeated_overrides_that_agree_and_layered_set_overrides_are_accepted():
    assert parse(overrides=["--max_iter", "2"], set_overrides=["TRAINING.max_iter=2"]).training.max_iter == 2
    assert parse(overrides=["--max_iter", "2", "--max_iter", " 2"]).training.max_iter == 2
    # Among --set overrides the last wins: code puts defaults first (the zoo, benchmarks).
    assert parse(set_overrides=["TRAINING.max_iter=1", "TRAINING.max_iter=4"]).training.max_iter == 4


def test_overridden_keys_names_the_keys_that_overrides_set():
    from uhved_tf.config.reading import overridden_keys

    keys = overridden_keys(["--save_seg_dir", "out", "--max-iter=3", "--unknown_key", "1"],
                           ["evaluation.save_csv_dir=x", "T1.pixdim=1,1,1", "junk", "SEGMENTATION.num_classes=4"])
    assert keys == {"INFERENCE.save_seg_dir", "TRAINING.max_iter", "EVALUATION.save_csv_dir", "MULTIMODAL.num_classes"}
    assert overridden_keys(["not-an-option"]) == set()


# ---------------------------------------------------------------------------------------------
# Paths, round trip, resolved file
# ---------------------------------------------------------------------------------------------

def test_relative_path_resolution(tmp_path):
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    path = cfg_dir / "c.ini"
    path.write_text(with_key(MINIMAL, "SYSTEM", "model_dir = ../runs/m"))
    cfg = load_config(path)
    assert cfg.system.model_dir == tmp_path / "runs" / "m"
    assert cfg.system.dataset_split_file == tmp_path / "runs" / "m" / "dataset_split.csv"
    assert cfg.network.histogram_ref_file == tmp_path / "runs" / "m" / "histogram_ref_file.txt"
    assert cfg.inference.save_seg_dir == tmp_path / "runs" / "m" / "output"
    assert cfg.evaluation.save_csv_dir == tmp_path / "runs" / "m" / "evaluation"
    assert cfg.inputs["T1"].path_to_search == (cfg_dir / "data",)
    # empty model_dir -> <config dir>/model; absolute paths are kept
    path.write_text(with_key(MINIMAL, "INFERENCE", f"save_seg_dir = {tmp_path / 'out'}"))
    cfg = load_config(path)
    assert cfg.system.model_dir == cfg_dir / "model"
    assert cfg.inference.save_seg_dir == tmp_path / "out"
    cfg = parse(MINIMAL, tmp=tmp_path, set_overrides=["T1.path_to_search=a, /abs/b"])
    assert cfg.inputs["T1"].path_to_search == (tmp_path / "a", Path("/abs/b"))


@pytest.mark.parametrize("text", [MINIMAL, ORIGINAL] + [p.read_text() for p in SHIPPED])
def test_to_ini_round_trip(text, tmp_path):
    cfg = parse(text, tmp=tmp_path, overrides=["--max_iter", "7"])
    again = parse_config_text(cfg.to_ini(), Path("/elsewhere"))
    assert again == cfg
    assert again.to_ini().split("\n", 3)[3] == cfg.to_ini().split("\n", 3)[3]


def test_write_resolved(tmp_path, caplog):
    cfg = parse(with_key(MINIMAL, "SYSTEM", "model_dir = run"), tmp=tmp_path)
    target = cfg.write_resolved()
    assert target == tmp_path / "run" / RESOLVED_CONFIG_NAME
    with caplog.at_level(logging.WARNING, logger=PARSER_LOGGER):
        again = load_config(target)
    assert again == cfg
    assert not [r for r in caplog.records if "ignored by uhved_tf" in r.getMessage()]
    assert cfg.write_resolved(tmp_path / "other") == tmp_path / "other" / RESOLVED_CONFIG_NAME


def test_misplaced_key_conflict_and_move():
    cfg = parse(with_key(MINIMAL, "SYSTEM", "batch_size = 3"))
    assert cfg.network.batch_size == 3
    msg = error_of(with_key(with_key(MINIMAL, "SYSTEM", "batch_size = 3"), "NETWORK", "batch_size = 4"))
    assert "set in both [SYSTEM] and [NETWORK]" in msg


def test_unreferenced_input_section_and_label_interp_order_warn(caplog):
    with caplog.at_level(logging.WARNING, logger=PARSER_LOGGER):
        parse(MINIMAL.replace("interp_order = 0", "interp_order = 1") + "\n[extra]\nfilename_contains = x\n")
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "input section [extra]" in messages and "not named in [MULTIMODAL]" in messages
    assert "label section [label]" in messages and "interp_order = 1" in messages


def test_no_print_and_no_tensorflow_import():
    source = "".join(p.read_text() for p in (REPO / "uhved_tf" / "config").glob("*.py"))
    assert "print(" not in source
    assert "import tensorflow" not in source and "import keras" not in source


# ---------------------------------------------------------------------------------------------
# Fuzzing: only Config or ConfigError, never anything else
# ---------------------------------------------------------------------------------------------

_ALL_KEYS = sorted({k.name for keys in S.SCHEMA.values() for k in keys})
_SECTIONS = [*S.FIXED_SECTIONS, "MULTIMODAL", "SEGMENTATION", "T1", "T1c", "T2", "Flair", "label", "training",
             "DEFAULT", "REGRESSION", "x!y", " T1 "]
_VALUES = ["", "0", "1", "-1", "2", "4", "8", "32", "1e4", "0.5", "abc", "True", "t", "yes", "(1, 2, 3)",
           "32, 32, 32", "17", "[a, b", "T1, T1c, T2, Flair", "label", "R, A, S", "u_hved", "nan", "1,,2",
           "../x", "~/y", "~\x00", "0, 1, 2, 4", "%(x)s", '""', "'a'", "{1}", "\\", "prior", "\x00", "\r"]

_line = st.one_of(
    st.builds(lambda s: f"[{s}]", st.one_of(st.sampled_from(_SECTIONS), st.text(max_size=8))),
    st.builds(lambda k, v: f"{k} = {v}", st.one_of(st.sampled_from(_ALL_KEYS), st.text(max_size=8)),
              st.one_of(st.sampled_from(_VALUES), st.text(max_size=12))),
    st.text(max_size=20),
    st.sampled_from(["", "# comment", "  continued", "key", "= x", ": y"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_line, max_size=20), prefix=st.booleans())
def test_fuzz_parse_returns_config_or_raises_config_error(lines, prefix):
    text = (MINIMAL if prefix else "") + "\n".join(lines)
    try:
        cfg = parse_config_text(text, Path("/fuzz"))
    except ConfigError:
        return
    assert isinstance(cfg, Config)
    assert parse_config_text(cfg.to_ini(), Path("/other")) == cfg


_SETTABLE = [(s, k.name) for s in (*S.FIXED_SECTIONS, "MULTIMODAL") for k in S.SCHEMA[s]]
_SETTABLE += [("T1", k.name) for k in S.INPUT_KEYS]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sets=st.lists(st.tuples(st.sampled_from(_SETTABLE), st.one_of(st.sampled_from(_VALUES), st.text(max_size=10))),
                     max_size=4))
def test_fuzz_set_overrides_round_trip(sets, tmp_path):
    items = [f"{section}.{key}={value}" for (section, key), value in sets]
    try:
        cfg = parse_config_text(MINIMAL, Path("/fuzz"), set_overrides=items)
    except ConfigError:
        return
    assert parse_config_text(cfg.to_ini(), Path("/other")) == cfg
    assert load_config(cfg.write_resolved(tmp_path)) == cfg  # through a file too (text-mode newlines)
