"""The paper's baselines (Dorent et al. 2019, section 4): U-HeMIS, HeMIS and Single, on tiny models
(8^3 windows, base width 2, 3 levels), one model per network per module.

* HeMIS fusion against NumPy's mean / population variance, for every subset, per-sample masks in
  one batch; masked-out values (1e30, inf, NaN) change neither the moments nor their gradients,
  which equal the closed form.
* The networks: output shapes for every subset, outputs independent of masked-out modalities'
  voxels, config round trips, registry names, segmentation-only losses, and 2 training
  iterations through the real Trainer.
* Single: its fixed subset, the refusal of masks lacking it, ``[NETWORK] subset`` validation.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import MODALITIES
from uhved_tf.config import annotate_ini, load_config
from uhved_tf.config import schema as S
from uhved_tf.subset import subset_indices
from uhved_tf.errors import ConfigError
from uhved_tf.losses import LossWeights, total_loss
from uhved_tf.model.decoders import UNetDecoder
from uhved_tf.model.encoders import ModalityEncoder, MultiModalEncoder
from uhved_tf.model.hemis import HeMIS
from uhved_tf.model.hemis_fusion import hemis_abstraction, moments_over_available
from uhved_tf.model.registry import get_network_class, registered_names
from uhved_tf.model.single import MissingModalityError, Single
from uhved_tf.model.u_hemis import UHeMIS
from tests.training.helpers import settings
from uhved_tf.training.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("error")  # warnings as errors

REPO = Path(__file__).resolve().parents[2]
M = len(MODALITIES)
K = 4            # classes
SIZE = 8         # window edge
LEVELS = 3
BASE = 2
BATCH = 2
DECAY = 1e-4     # non-zero, so that the weight-decay term is exercised
SUBSETS = subset_indices(M)
FUSING = ("u_hemis", "hemis")  # the networks with HeMIS fusion
POISONS = (1e30, np.inf, -np.inf, np.nan)


def subset_id(subset):
    return "+".join(MODALITIES[i] for i in subset)


def mask_of(*subsets):
    """One row per subset."""
    m = np.zeros((len(subsets), M), np.float32)
    for row, s in zip(m, subsets):
        row[list(s)] = 1.0
    return m


def other_subset(subset):
    """A different subset for the second sample of a batch (per-sample masks)."""
    return SUBSETS[(SUBSETS.index(subset) + 7) % len(SUBSETS)]


def assert_close(a, b, rtol=1e-5, atol=1e-6, err_msg=""):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol, err_msg=err_msg)


def build(name, **kwargs):
    cls = get_network_class(name)
    if name != "hemis":
        kwargs.setdefault("levels", LEVELS)
    net = cls(MODALITIES, K, base_width=BASE, weight_decay=DECAY, **kwargs)
    net({"image": tf.zeros([1, SIZE, SIZE, SIZE, M]), "modality_mask": tf.ones([1, M])})
    return net


@pytest.fixture(scope="module")
def nets():
    return {"u_hemis": build("u_hemis"), "hemis": build("hemis"),
            "single": build("single", subset=("T1c", "Flair"))}


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(7)
    return rng.standard_normal((BATCH, SIZE, SIZE, SIZE, M)).astype(np.float32)


# --- HeMIS fusion: the maths --------------------------------------------------------------------

def numpy_moments(features, mask):
    """Per sample: mean and population variance (ddof=0) over the available modalities (axis -2)."""
    means, variances = [], []
    for f, m in zip(features.astype(np.float64), mask.astype(bool)):
        chosen = f[..., m, :]
        means.append(chosen.mean(axis=-2))
        variances.append(chosen.var(axis=-2))
    return np.stack(means), np.stack(variances)


@pytest.mark.parametrize("subset", SUBSETS, ids=subset_id)
def test_moments_equal_numpy_for_every_subset(subset):
    rng = np.random.default_rng(SUBSETS.index(subset))
    features = (3.0 * rng.standard_normal((2, 3, 2, 4, M, 5)) + 1.0).astype(np.float32)
    mask = mask_of(subset, other_subset(subset))
    mean, var = moments_over_available(tf.constant(features), tf.constant(mask))
    ref_mean, ref_var = numpy_moments(features, mask)
    assert mean.shape == var.shape == (2, 3, 2, 4, 5) and mean.dtype == tf.float32
    assert_close(mean, ref_mean, rtol=1e-5, atol=1e-5)
    assert_close(var, ref_var, rtol=1e-5, atol=1e-5)
    if len(subset) == 1:
        np.testing.assert_array_equal(var.numpy()[0], 0.0)  # one modality: variance exactly 0
    fused = hemis_abstraction(tf.constant(features), tf.constant(mask))
    assert_close(fused, np.concatenate([ref_mean, ref_var], axis=-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("poison", POISONS, ids=str)
def test_masked_out_values_change_nothing_and_gradients_are_the_closed_form(poison):
    """One batch with one sample per subset; dropped modalities hold ``poison``."""
    rng = np.random.default_rng(1)
    mask = mask_of(*SUBSETS)
    clean = rng.standard_normal((len(SUBSETS), 2, 3, M, 4)).astype(np.float32)
    poisoned = np.where(mask[:, None, None, :, None] > 0, clean, np.float32(poison))
    w_mean = rng.standard_normal((len(SUBSETS), 2, 3, 4)).astype(np.float32)
    w_var = rng.standard_normal((len(SUBSETS), 2, 3, 4)).astype(np.float32)

    def value_and_grad(x):
        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            mean, var = moments_over_available(x, tf.constant(mask))
            objective = tf.reduce_sum(w_mean * mean + w_var * var)
        return mean.numpy(), var.numpy(), tape.gradient(objective, x).numpy()

    mean, var, grad = value_and_grad(poisoned)
    ref_mean, ref_var, ref_grad = value_and_grad(clean)
    for got, ref in ((mean, ref_mean), (var, ref_var), (grad, ref_grad)):
        assert np.all(np.isfinite(got))
        np.testing.assert_array_equal(got, ref)
    # d mean / d x_i = 1/n, d var / d x_i = 2 (x_i - mean) / n for available i; 0 for the others.
    n = mask.sum(axis=1)[:, None, None, None, None]
    m = mask[:, None, None, :, None] > 0
    expected = np.where(m, (w_mean[..., None, :] + 2.0 * w_var[..., None, :] * (clean - mean[..., None, :])) / n,
                        0.0)
    assert_close(grad, expected, rtol=1e-4, atol=1e-5)


def test_all_zero_mask_gives_zero_moments():
    """Not a valid input (no modality), but defined: zeros, not NaN; the other sample unaffected."""
    x = np.random.default_rng(2).standard_normal((2, 3, 3, M, 2)).astype(np.float32)
    mask = np.stack([np.zeros(M, np.float32), mask_of((0, 2))[0]])
    mean, var = moments_over_available(tf.constant(x), tf.constant(mask))
    np.testing.assert_array_equal(mean.numpy()[0], 0.0)
    np.testing.assert_array_equal(var.numpy()[0], 0.0)
    ref_mean, ref_var = numpy_moments(x[1:], mask[1:])
    assert_close(mean[1:], ref_mean)
    assert_close(var[1:], ref_var)


def test_moments_keep_a_float16_input_dtype():
    x = tf.cast(tf.random.stateless_normal([1, 2, 2, 2, M, 3], seed=[1, 2]), tf.float16)
    mean, var = moments_over_available(x, tf.ones([1, M]))
    assert mean.dtype == var.dtype == tf.float16
    ref_mean, ref_var = numpy_moments(x.numpy().astype(np.float32), np.ones((1, M)))
    assert_close(mean, ref_mean, rtol=1e-2, atol=1e-2)
    assert_close(var, ref_var, rtol=1e-2, atol=1e-2)


# --- U-HeMIS and HeMIS --------------------------------------------------------------------------

@pytest.mark.parametrize("name,subset", list(itertools.product(FUSING, SUBSETS)),
                         ids=[f"{n}-{subset_id(s)}" for n, s in itertools.product(FUSING, SUBSETS)])
def test_network_skips_are_the_moments_of_its_modality_features(nets, image, name, subset):
    net = nets[name]
    mask = mask_of(subset, other_subset(subset))
    features = [f.numpy() for f in net.modality_features(image)]
    fused = net.fused_features(image, mask)
    assert len(fused) == len(features) == (LEVELS if name == "u_hemis" else 1)
    for f, got in zip(features, fused):
        assert f.shape[-2] == M
        ref_mean, ref_var = numpy_moments(f, mask)
        assert_close(got, np.concatenate([ref_mean, ref_var], axis=-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,subset", list(itertools.product(FUSING, SUBSETS)),
                         ids=[f"{n}-{subset_id(s)}" for n, s in itertools.product(FUSING, SUBSETS)])
def test_output_shapes_for_every_subset(nets, image, name, subset):
    out = nets[name]({"image": image, "modality_mask": mask_of(subset, subset)}, training=False)
    assert set(out) == {"seg_logits"}  # no recon, no posterior: segmentation-only losses
    assert out["seg_logits"].shape == (BATCH, SIZE, SIZE, SIZE, K)
    assert out["seg_logits"].dtype == tf.float32
    assert np.all(np.isfinite(out["seg_logits"].numpy()))


@pytest.mark.parametrize("name", FUSING)
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_masked_out_modalities_do_not_change_the_outputs(nets, name, training):
    """One batch mixing all 15 subsets; the dropped channels replaced by loud noise, then by NaN."""
    rng = np.random.default_rng(3)
    clean = rng.standard_normal((len(SUBSETS), SIZE, SIZE, SIZE, M)).astype(np.float32)
    masks = mask_of(*SUBSETS)
    kept = masks[:, None, None, None, :] > 0
    noisy = np.where(kept, clean, 1e3 * rng.standard_normal(clean.shape).astype(np.float32))
    nan = np.where(kept, clean, np.float32(np.nan))
    ref = nets[name]({"image": clean, "modality_mask": masks}, training=training, seed=tf.constant([1, 2]))
    for dirty in (noisy, nan):
        out = nets[name]({"image": dirty, "modality_mask": masks}, training=training, seed=tf.constant([1, 2]))
        assert np.all(np.isfinite(out["seg_logits"].numpy()))
        # Not bit-exact: oneDNN may block a batch differently (~1e-6); a leak would be far larger.
        assert_close(out["seg_logits"], ref["seg_logits"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FUSING)
def test_the_mask_is_not_ignored(nets, image, name):
    a = nets[name]({"image": image, "modality_mask": mask_of((0,), (0,))})
    b = nets[name]({"image": image, "modality_mask": mask_of((1, 2), (1, 2))})
    assert not np.allclose(a["seg_logits"], b["seg_logits"])


def test_u_hemis_has_the_original_half_width_encoders_and_one_decoder(nets):
    net = nets["u_hemis"]
    assert isinstance(net.encoder, MultiModalEncoder) and isinstance(net.seg_decoder, UNetDecoder)
    assert not any(isinstance(layer, UNetDecoder) and layer is not net.seg_decoder for layer in net._flatten_layers())
    # The original U-HeMIS (u_hemis_net.py, ResBlock(encoding=True)): each block's second conv is
    # half the block's width, so the features are base * 2^k / 2 and the mean/variance skips base * 2^k.
    widths = [f.shape[-1] for f in net.modality_features(tf.zeros([1, SIZE, SIZE, SIZE, M]))]
    assert widths == [BASE * 2**k // 2 for k in range(LEVELS)]
    skips = [f.shape[-1] for f in net.fused_features(tf.zeros([1, SIZE, SIZE, SIZE, M]), tf.ones([1, M]))]
    assert skips == [BASE * 2**k for k in range(LEVELS)]
    first_block = net.encoder.encoders[0].blocks[0]
    assert [c.filters for c in first_block.convs] == [BASE, BASE // 2]
    assert not net.synthesises and not net.variational


def test_u_hemis_wide_reuses_u_hveds_full_width_encoders():
    from uhved_tf.model.registry import get_network_class
    from uhved_tf.model.u_hemis import UHeMISWide

    assert get_network_class("u_hemis_wide") is UHeMISWide
    net = UHeMISWide(MODALITIES, K, base_width=BASE, levels=LEVELS)
    widths = [f.shape[-1] for f in net.modality_features(tf.zeros([1, SIZE, SIZE, SIZE, M]))]
    assert widths == [BASE * 2**k for k in range(LEVELS)]  # U-HVED's encoder widths


def test_hemis_is_full_resolution_with_moments_of_its_branches(nets):
    net = nets["hemis"]
    (features,) = net.modality_features(tf.zeros([1, SIZE, SIZE, SIZE, M]))
    assert features.shape == (1, SIZE, SIZE, SIZE, M, 6 * BASE)
    assert len(net.branches) == M and net.head.widths == (2 * BASE, 2 * BASE)
    # Any window size works: there is no pooling.
    out = net({"image": tf.zeros([1, 5, 3, 7, M]), "modality_mask": tf.ones([1, M])})
    assert out["seg_logits"].shape == (1, 5, 3, 7, K)
    assert not net.synthesises and not net.variational


# --- Single ---------------------------------------------------------------------------------------

SINGLE_SUBSETS = [("T1",), ("Flair", "T1c"), ("T1", "T2", "Flair"), ()]


@pytest.mark.parametrize("subset", SINGLE_SUBSETS, ids=lambda s: "+".join(s) or "all")
def test_single_shapes_and_input_channels(image, subset):
    net = build("single", subset=subset)
    expected = tuple(m for m in MODALITIES if m in subset) if subset else MODALITIES
    assert net.subset == expected  # channel order, whatever the order in the config
    assert isinstance(net.encoder, ModalityEncoder) and isinstance(net.seg_decoder, UNetDecoder)
    assert net.encoder.stem.kernel.shape == (1, 1, 1, len(expected), BASE)
    out = net({"image": image, "modality_mask": tf.ones([BATCH, M])})
    assert set(out) == {"seg_logits"}
    assert out["seg_logits"].shape == (BATCH, SIZE, SIZE, SIZE, K)
    assert np.all(np.isfinite(out["seg_logits"].numpy()))


def test_single_ignores_the_other_channels_and_the_mask(nets, image):
    net = nets["single"]  # T1c + Flair
    ref = net({"image": image, "modality_mask": tf.ones([BATCH, M])})["seg_logits"].numpy()
    dirty = image.copy()
    dirty[..., MODALITIES.index("T1")] = np.nan
    dirty[..., MODALITIES.index("T2")] = 1e3
    for mask in (np.ones((BATCH, M), np.float32), mask_of((0,), (2,))):
        out = net({"image": dirty, "modality_mask": mask})["seg_logits"].numpy()
        assert_close(out, ref, rtol=1e-4, atol=1e-5)
    changed = image.copy()
    changed[..., MODALITIES.index("Flair")] += 1.0
    assert not np.allclose(net({"image": changed, "modality_mask": tf.ones([BATCH, M])})["seg_logits"], ref)


def test_single_predict_windows_accepts_supersets_of_its_subset(nets, image):
    net = nets["single"]
    exact = net.predict_windows(image, mask_of((1, 3), (1, 3)))
    extra = net.predict_windows(image, mask_of((0, 1, 3), (0, 1, 2, 3)))
    assert set(exact) == {"seg_prob", "uncertainty"}
    assert exact["seg_prob"].shape == (BATCH, SIZE, SIZE, SIZE, K)
    assert_close(extra["seg_prob"], exact["seg_prob"])


@pytest.mark.parametrize("masks,missing", [(((1,), (1,)), "Flair"), (((1, 3), (0, 2, 3)), "T1c"),
                                           (((0, 2), (0, 2)), "T1c, Flair")])
def test_single_predict_windows_refuses_a_mask_lacking_its_modalities(nets, image, masks, missing):
    with pytest.raises(MissingModalityError, match=f"needs {missing}, which the modality mask lacks") as info:
        nets["single"].predict_windows(image, mask_of(*masks))
    assert isinstance(info.value, ValueError) and isinstance(info.value, ConfigError)


def test_single_predict_windows_refuses_at_run_time_inside_a_tf_function(nets, image):
    net = nets["single"]
    fn = tf.function(lambda x, m: net.predict_windows(x, m)["seg_prob"],
                     input_signature=[tf.TensorSpec([None, SIZE, SIZE, SIZE, M]), tf.TensorSpec([None, M])])
    assert fn(image, mask_of((1, 3), (1, 2, 3))).shape == (BATCH, SIZE, SIZE, SIZE, K)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"subset T1c, Flair"):
        fn(image, mask_of((1, 3), (1, 2)))


@pytest.mark.parametrize("subset,match", [
    (("T1c", "Flare"), r'\[NETWORK\] subset = "T1c, Flare": "Flare" is not a modality. Did you mean "Flair"\?'),
    (("PD",), r'"PD" is not a modality\. Valid names \(from \[MULTIMODAL\] image\): T1, T1c, T2, Flair'),
    (("T2", "T2"), r'"T2" is listed twice'),
])
def test_single_subset_names_are_validated(subset, match):
    settings = dataclasses.replace(load_config(REPO / "config" / "single.ini").network, subset=subset)
    with pytest.raises(ConfigError, match=match):
        Single.from_settings(MODALITIES, K, settings)


def test_subset_key_is_in_the_network_schema():
    key = S.KEYS_BY_SECTION["NETWORK"]["subset"]
    assert key.default == () and key.used and "single" in key.help
    assert key.kind.parse("T1c, Flair") == ("T1c", "Flair")
    with pytest.raises(ValueError, match="distinct"):
        key.kind.parse("T1c, T1c")


# --- configs, registry, config round trips ---------------------------------------------------------

@pytest.mark.parametrize("name", ["u_hemis", "hemis", "single"])
def test_shipped_baseline_config_parses_without_warnings_and_builds(name, caplog):
    path = REPO / "config" / f"{name}.ini"
    with caplog.at_level(logging.WARNING, logger="uhved_tf.config.parser"):
        cfg = load_config(path)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert annotate_ini(path.read_text()) == path.read_text()
    assert cfg.network.name == name
    assert cfg.system.model_dir == (REPO / "demo_run" / name).resolve()
    assert cfg.inputs["T1"].path_to_search == ((REPO / "demo_data").resolve(),)
    assert cfg.network.subset == (("T1c", "Flair") if name == "single" else ())
    net = get_network_class(cfg.network.name).from_settings(cfg.modalities, cfg.task.num_classes, cfg.network)
    assert isinstance(net, {"u_hemis": UHeMIS, "hemis": HeMIS, "single": Single}[name])


@pytest.mark.parametrize("name,cls", [("u_hemis", UHeMIS), ("U_HeMIS", UHeMIS), ("u_hemis.u_hemis_net.U_HeMIS", UHeMIS),
                                      ("hemis", HeMIS), ("HeMIS", HeMIS), ("single", Single), (" Single ", Single)])
def test_registry_names_resolve(name, cls):
    assert get_network_class(name) is cls


def test_registered_names_list_every_network():
    assert {"u_hved", "u_hemis", "hemis", "single"} <= set(registered_names())


def test_close_name_suggests_a_baseline():
    with pytest.raises(ConfigError, match='Did you mean "hemis"'):
        get_network_class("hemsi")


@pytest.mark.parametrize("name", ["u_hemis", "hemis", "single"])
def test_config_round_trips(nets, image, name):
    net = nets[name]
    cfg = net.get_config()
    clone = type(net).from_config(json.loads(json.dumps(cfg)))
    assert clone.get_config() == cfg
    inputs = {"image": image, "modality_mask": mask_of((1, 3), (0, 1, 3))}
    clone(inputs)
    clone.set_weights(net.get_weights())
    assert_close(clone(inputs)["seg_logits"], net(inputs)["seg_logits"], rtol=1e-4, atol=1e-5)


# --- losses and training ----------------------------------------------------------------------------

def constant_batch(batch=BATCH):
    rng = np.random.default_rng(11)
    return {
        "image": rng.standard_normal((batch, SIZE, SIZE, SIZE, M)).astype(np.float32),
        "label": rng.integers(0, K, (batch, SIZE, SIZE, SIZE)).astype(np.int32),
        "modality_mask": mask_of((1, 3), (0, 1, 2, 3))[:batch],
        "data_mask": np.ones((batch, M), np.float32),
    }


@pytest.mark.parametrize("name", ["u_hemis", "hemis", "single"])
def test_total_loss_has_only_segmentation_and_weight_decay_terms(nets, name):
    batch = constant_batch()
    net = nets[name]
    outputs = net({"image": batch["image"], "modality_mask": batch["modality_mask"]}, training=True)
    total, terms = total_loss(outputs, batch, K, LossWeights(), net.losses)
    assert set(terms) == {"dice", "ce", "weight_decay", "total"}
    assert np.isfinite(float(total))
    assert_close(terms["total"], terms["dice"] + terms["ce"] + terms["weight_decay"])


@pytest.mark.parametrize("name", ["u_hemis", "hemis", "single"])
def test_two_training_iterations_through_the_trainer(name, tmp_path):
    kwargs = {"subset": ("T1c", "Flair")} if name == "single" else {}
    net = build(name, **kwargs)  # a fresh model: training changes its weights
    before = [w.copy() for w in net.get_weights()]
    dataset = tf.data.Dataset.from_tensors(constant_batch()).repeat()
    trainer = Trainer(net, settings(max_iter=2, lr=1e-3, save_every_n=0, num_classes=K), tmp_path)
    terms = trainer.fit(dataset)
    assert {"dice", "ce", "weight_decay", "total"} <= set(terms) and not {"recon", "kl"} & set(terms)
    assert all(np.isfinite(v) for v in terms.values())
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["total"])) for r in rows) and all(r["kl"] == "" for r in rows)
    assert any(not np.array_equal(a, b) for a, b in zip(before, net.get_weights()))
    assert (tmp_path / "checkpoints" / "ckpt-2.index").exists()


def test_window_predictor_refuses_a_single_network_its_missing_modalities_up_front(nets):
    from uhved_tf.inference.predictor import WindowPredictor

    with pytest.raises(MissingModalityError, match="needs Flair"):
        WindowPredictor(nets["single"], mask_of((1, 3), (1,)), samples=0)
    assert WindowPredictor(nets["single"], mask_of((1, 3), (0, 1, 3)), samples=0).num_subsets == 2
