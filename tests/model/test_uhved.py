"""U-HVED end to end on a tiny model (8^3 windows, base width 2, 3 levels), plus its blocks.

One model is built per module (``model`` fixture) and every test reuses it: outputs for every
subset, masked-out modalities having no effect, seeded sampling, the split inference path
(encode once, fuse per subset) and the building blocks' configs and maths.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import MODALITIES
from uhved_tf.subset import subset_indices
from uhved_tf.model.base import entropy
from uhved_tf.model.blocks import ConvBlock, InstanceNorm, upsample2x_trilinear
from uhved_tf.model.decoders import UNetDecoder
from uhved_tf.model.encoders import ModalityEncoder
from uhved_tf.model.uhved import UHVED

pytestmark = pytest.mark.filterwarnings("error")  # warnings as errors

M = len(MODALITIES)
K = 3            # classes
SIZE = 8         # window edge
LEVELS = 3
BASE = 2
BATCH = 2
SUBSETS = subset_indices(M)
INCOMPLETE = [s for s in SUBSETS if len(s) < M]


def subset_id(subset):
    return "+".join(MODALITIES[i] for i in subset)


def mask_of(subset, batch=BATCH):
    m = np.zeros((batch, M), np.float32)
    m[:, list(subset)] = 1.0
    return tf.constant(m)


@pytest.fixture(scope="module")
def model():
    net = UHVED(MODALITIES, K, base_width=BASE, levels=LEVELS)
    net({"image": tf.zeros([1, SIZE, SIZE, SIZE, M]), "modality_mask": tf.ones([1, M])})
    return net


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(7)
    return tf.constant(rng.standard_normal((BATCH, SIZE, SIZE, SIZE, M)).astype(np.float32))


@pytest.fixture(scope="module")
def encodings(model, image):
    return model.encode(image)


def assert_close(a, b, rtol=1e-6, atol=1e-6, err_msg=""):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol, err_msg=err_msg)


# --- outputs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("subset", SUBSETS, ids=subset_id)
def test_output_shapes_for_every_subset(model, image, subset):
    out = model({"image": image, "modality_mask": mask_of(subset)}, training=False)
    assert out["seg_logits"].shape == (BATCH, SIZE, SIZE, SIZE, K)
    assert out["recon"].shape == (BATCH, SIZE, SIZE, SIZE, M)
    assert out["seg_logits"].dtype == out["recon"].dtype == tf.float32
    assert len(out["posterior_loc"]) == len(out["posterior_logvar"]) == LEVELS
    for k, (loc, logvar) in enumerate(zip(out["posterior_loc"], out["posterior_logvar"])):
        d = SIZE // 2**k
        assert loc.shape == logvar.shape == (BATCH, d, d, d, BASE // 2 * 2**k)
    for value in (out["seg_logits"], out["recon"], *out["posterior_loc"], *out["posterior_logvar"]):
        assert np.all(np.isfinite(value.numpy()))


@pytest.mark.parametrize("subset", INCOMPLETE, ids=subset_id)
def test_masked_out_modalities_do_not_change_inference(model, image, subset):
    """Row 0: the image; row 1: masked-out channels replaced by loud noise; row 2: by NaN. Instance
    norm and convolutions are per sample, so all three rows must give the same outputs."""
    missing = [i for i in range(M) if i not in subset]
    x = np.repeat(image.numpy()[:1], 3, axis=0)
    x[1, ..., missing] = 1e3 * np.random.default_rng(1).standard_normal(x[1, ..., missing].shape)
    x[2, ..., missing] = np.nan
    out = model({"image": tf.constant(x), "modality_mask": mask_of(subset, 3)}, training=False)
    # Not bit-exact: oneDNN may block a batch's rows differently (~1e-6 noise); a leak of the
    # noise (x 1e3) or of a NaN would be orders of magnitude larger.
    for key in ("seg_logits", "recon"):
        value = out[key].numpy()
        assert np.all(np.isfinite(value)), key
        assert_close(value[1], value[0], rtol=1e-4, atol=1e-5, err_msg=key)
        assert_close(value[2], value[0], rtol=1e-4, atol=1e-5, err_msg=key)
    for loc in out["posterior_loc"]:
        assert_close(loc[1], loc[0], rtol=1e-4, atol=1e-5)
        assert_close(loc[2], loc[0], rtol=1e-4, atol=1e-5)


def test_masked_out_modalities_do_not_change_training_samples(model):
    """Training mode, one batch mixing all 15 subsets, same seed: corrupting every sample's
    dropped channels changes nothing."""
    rng = np.random.default_rng(3)
    clean = rng.standard_normal((len(SUBSETS), SIZE, SIZE, SIZE, M)).astype(np.float32)
    masks = np.stack([mask_of(s, 1).numpy()[0] for s in SUBSETS])
    dirty = np.where(masks[:, None, None, None, :] > 0, clean, np.float32(np.nan))
    seed = tf.constant([11, 12])
    a = model({"image": clean, "modality_mask": masks}, training=True, seed=seed)
    b = model({"image": dirty, "modality_mask": masks}, training=True, seed=seed)
    for key in ("seg_logits", "recon"):
        assert np.all(np.isfinite(b[key].numpy())), key
        assert_close(b[key], a[key], err_msg=key)


def test_mask_is_not_ignored(model, image):
    a = model({"image": image, "modality_mask": mask_of((0,))})
    b = model({"image": image, "modality_mask": mask_of((1, 2))})
    assert not np.allclose(a["seg_logits"], b["seg_logits"])


def test_training_mode_is_deterministic_per_seed(model, image):
    inputs = {"image": image, "modality_mask": mask_of((0, 2, 3))}
    a = model(inputs, training=True, seed=tf.constant([1, 2]))
    b = model(inputs, training=True, seed=tf.constant([1, 2]))
    c = model(inputs, training=True, seed=tf.constant([3, 4]))
    mean = model(inputs, training=False)
    for key in ("seg_logits", "recon"):
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
        assert not np.allclose(a[key], c[key]), key
        assert not np.allclose(a[key], mean[key]), key
    # The posterior itself does not depend on the mode or the seed, only z does.
    for x, y in zip(a["posterior_loc"] + a["posterior_logvar"],
                    mean["posterior_loc"] + mean["posterior_logvar"]):
        assert_close(x, y)


# --- the split inference path ----------------------------------------------------------------------

@pytest.mark.parametrize("subset", SUBSETS, ids=subset_id)
def test_encode_once_then_fuse_equals_predict_windows(model, image, encodings, subset):
    mask = mask_of(subset)
    once = model.predict_from_posteriors(model.fuse(encodings, mask))
    direct = model.predict_windows(image, mask)
    assert set(once) == set(direct) == {"seg_prob", "synth", "uncertainty"}
    for key in once:
        assert_close(once[key], direct[key], err_msg=key)
    assert direct["seg_prob"].shape == (BATCH, SIZE, SIZE, SIZE, K)
    assert direct["synth"].shape == (BATCH, SIZE, SIZE, SIZE, M)
    assert direct["uncertainty"].shape == (BATCH, SIZE, SIZE, SIZE)


def test_predict_windows_with_samples_matches_split_path(model, image, encodings):
    mask = mask_of((1, 3))
    seed = tf.constant([8, 9])
    once = model.predict_from_posteriors(model.fuse(encodings, mask), samples=2, seed=seed)
    direct = model.predict_windows(image, mask, samples=2, seed=seed)
    for key in once:
        assert_close(once[key], direct[key], err_msg=key)


def test_posterior_mean_prediction_is_softmax_of_mean_decode(model, encodings):
    posteriors = model.fuse(encodings, mask_of((0, 1, 2)))
    means = [loc for loc, _ in posteriors]
    out = model.predict_from_posteriors(posteriors, samples=0)
    prob = out["seg_prob"].numpy()
    assert_close(prob, tf.nn.softmax(model.decode_seg(means), axis=-1))
    assert_close(out["synth"], model.decode_images(means))
    assert_close(prob.sum(-1), 1.0, atol=1e-5)
    assert np.all(prob >= 0)
    assert_close(out["uncertainty"], entropy(prob), atol=1e-5)
    assert np.all(out["uncertainty"].numpy() >= -1e-6)
    assert np.all(out["uncertainty"].numpy() <= np.log(K) + 1e-5)


def test_sampled_prediction_averages_the_single_sample_decodes(model, encodings):
    """samples=N decodes B*N latents in one batch (window-major: row b*N + k is sample k of
    window b); the result must be the mean of the N per-sample softmaxes, each decoded on its own."""
    n, seed = 3, tf.constant([5, 6])
    posteriors = model.fuse(encodings, mask_of((0, 3)))
    out = model.predict_from_posteriors(posteriors, samples=n, seed=seed)
    prob = out["seg_prob"].numpy()
    zs = model.sample(posteriors, seed, num_samples=n)
    assert [z.shape[0] for z in zs] == [n * BATCH] * LEVELS
    singles = [tf.nn.softmax(model.decode_seg([z[i::n] for z in zs]), axis=-1)
               for i in range(n)]
    assert_close(prob, np.mean(singles, axis=0), rtol=1e-5, atol=1e-6)
    assert_close(prob.sum(-1), 1.0, atol=1e-5)
    # Deterministic per seed, different across seeds; synthesis always uses the posterior mean.
    again = model.predict_from_posteriors(posteriors, samples=n, seed=seed)
    np.testing.assert_array_equal(again["seg_prob"].numpy(), prob)
    other = model.predict_from_posteriors(posteriors, samples=n, seed=tf.constant([7, 8]))
    assert not np.allclose(other["seg_prob"], prob)
    assert_close(other["synth"], model.predict_from_posteriors(posteriors)["synth"])


def test_sampling_a_point_mass_posterior_equals_the_mean_prediction(model, encodings):
    """With (numerically) zero posterior variance every sample is the mean, so the sampled
    prediction must equal the mean one, sample by sample and batch row by batch row (this catches a
    sample/batch axis mix-up in the reshapes, since the two rows have different means)."""
    posteriors = [(loc, tf.fill(tf.shape(logvar), -60.0))
                  for loc, logvar in model.fuse(encodings, mask_of((0, 1, 2, 3)))]
    mean = model.predict_from_posteriors(posteriors, samples=0)["seg_prob"].numpy()
    sampled = model.predict_from_posteriors(posteriors, samples=4, seed=tf.constant([1, 1]))["seg_prob"]
    assert not np.allclose(mean[0], mean[1])
    assert_close(sampled, mean, rtol=1e-5, atol=1e-6)


def test_sample_has_the_posterior_moments():
    rng = np.random.default_rng(0)
    loc = tf.constant(rng.standard_normal((2, 2, 2, 2, 3)).astype(np.float32))
    logvar = tf.constant(rng.uniform(-2, 2, (2, 2, 2, 2, 3)).astype(np.float32))
    n = 4000
    (z,) = UHVED.sample([(loc, logvar)], tf.constant([3, 4]), num_samples=n)
    assert z.shape == (n * 2, 2, 2, 2, 3)
    z = np.moveaxis(z.numpy().reshape((2, n) + tuple(loc.shape[1:])), 1, 0)     # window-major rows
    sigma = np.exp(0.5 * logvar.numpy())
    # 5-sigma bounds on the Monte-Carlo mean and standard deviation (fixed seed: not flaky).
    np.testing.assert_array_less(np.abs(z.mean(0) - loc.numpy()), 5 * sigma / np.sqrt(n))
    np.testing.assert_array_less(np.abs(z.std(0) / sigma - 1.0), 5 / np.sqrt(2 * n))
    (single,) = UHVED.sample([(loc, logvar)], tf.constant([3, 4]))
    assert single.shape == loc.shape


# --- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [10, 6, 9])
def test_window_not_divisible_by_coarsest_scale_is_rejected(model, size):
    """The model does not validate window sizes itself (the config schema does); a window that is
    not divisible by 2^(levels-1) = 4 fails in the decoder's skip concatenation rather than
    producing misaligned outputs."""
    x = tf.zeros([1, size, size, size, M])
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        model({"image": x, "modality_mask": tf.ones([1, M])})


def test_window_divisible_by_coarsest_scale_is_accepted(model):
    out = model({"image": tf.zeros([1, 12, 4, 8, M]), "modality_mask": tf.ones([1, M])})
    assert out["seg_logits"].shape == (1, 12, 4, 8, K)


def test_odd_base_width_is_rejected():
    with pytest.raises(ValueError, match="base_width"):
        UHVED(MODALITIES, K, base_width=3, levels=LEVELS)


def test_model_config_round_trips(model):
    cfg = model.get_config()
    assert cfg["modalities"] == list(MODALITIES)
    assert (cfg["num_classes"], cfg["base_width"], cfg["levels"]) == (K, BASE, LEVELS)
    clone = UHVED.from_config(json.loads(json.dumps(cfg)))
    assert clone.get_config() == cfg


# --- blocks ----------------------------------------------------------------------------------------

def _roundtrip(layer_cls, layer, x):
    y = layer(x)
    cfg = layer.get_config()
    clone = layer_cls.from_config(json.loads(json.dumps(cfg)))
    assert clone.get_config() == cfg
    clone(x)
    clone.set_weights(layer.get_weights())
    assert_close(clone(x), y, rtol=1e-5)
    return clone


def test_conv_block_config_round_trips():
    x = tf.random.stateless_normal([1, 4, 4, 4, 3], seed=[1, 2])
    block = ConvBlock((4, 2), activation="relu", weight_decay=1e-3, reg_type="L1", name="cb")
    clone = _roundtrip(ConvBlock, block, x)
    assert clone.widths == (4, 2) and clone.activation == "relu" and clone.reg_type == "L1"
    assert len(clone.losses) == 2  # the L1 regularisers came back too


def test_instance_norm_config_round_trips_and_normalises():
    x = 5.0 + 3.0 * tf.random.stateless_normal([2, 4, 4, 4, 3], seed=[3, 4])
    norm = InstanceNorm(epsilon=1e-3, name="norm")
    _roundtrip(InstanceNorm, norm, x)
    y = norm(x).numpy()
    assert_close(y.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    var = x.numpy().var(axis=(1, 2, 3))
    assert_close(y.std(axis=(1, 2, 3)), np.sqrt(var / (var + 1e-3)), rtol=1e-4)  # (x - mean) / sqrt(var + eps)


def _norm_and_grads(norm, x, dy):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = norm(x)
    return [y] + tape.gradient(y, [x, norm.gamma, norm.beta], output_gradients=dy)


@pytest.mark.parametrize("batch", [1, 2])
def test_fused_instance_norm_equals_the_moments_formula_with_gradients(batch):
    """The fused kernel (one sample reshaped to [1, D*H, W, C]) against the moments formula:
    outputs and the gradients to the input, gamma and beta, for a static batch of one (direct),
    of two (split, each sample with its own statistics), and a batch unknown when traced (the
    inference predictor's; the moments formula)."""
    x = 5.0 + 3.0 * tf.random.stateless_normal([batch, 6, 4, 5, 3], seed=[3, 9])
    dy = tf.random.stateless_normal(x.shape, seed=[4, 9])
    fused = InstanceNorm(name="fused")
    fused.build(x.shape)
    fused.gamma.assign([0.5, 1.0, 2.0])
    fused.beta.assign([0.1, -0.2, 0.3])
    moments = InstanceNorm(fused=False, name="moments")
    moments.build(x.shape)
    moments.set_weights(fused.get_weights())
    expected = _norm_and_grads(moments, x, dy)
    eager = _norm_and_grads(fused, x, dy)
    dynamic = tf.function(lambda x: _norm_and_grads(fused, x, dy),
                          input_signature=[tf.TensorSpec([None, None, None, None, 3], tf.float32)])(x)
    for got in (eager, dynamic):
        assert got[0].shape == x.shape
        for g, e in zip(got, expected):
            assert_close(g, e, rtol=2e-4, atol=2e-4)
    # each sample is normalised with its own statistics, not the batch's
    y = eager[0].numpy()
    assert_close(y.mean(axis=(1, 2, 3)), [[0.1, -0.2, 0.3]] * batch, atol=1e-5)


def test_encoder_and_decoder_configs_round_trip():
    x = tf.random.stateless_normal([1, 8, 8, 8, 1], seed=[5, 6])
    enc = ModalityEncoder(base_width=2, levels=3, activation="elu", name="enc")
    feats = enc(x)
    assert [f.shape[-1] for f in feats] == [2, 4, 8]
    cfg = enc.get_config()
    assert ModalityEncoder.from_config(json.loads(json.dumps(cfg))).get_config() == cfg
    dec = UNetDecoder(out_channels=3, base_width=2, levels=3, name="dec")
    assert dec(feats).shape == (1, 8, 8, 8, 3)
    cfg = dec.get_config()
    assert UNetDecoder.from_config(json.loads(json.dumps(cfg))).get_config() == cfg


def upsample_reference(x):
    """2x linear interpolation along axes 1-3 with half-pixel centres and clamped edges, NumPy."""
    x = x.astype(np.float64)
    for axis in (1, 2, 3):
        n = x.shape[axis]
        src = (np.arange(2 * n) + 0.5) / 2.0 - 0.5
        lo = np.floor(src).astype(int)
        frac = src - lo
        shape = [1] * x.ndim
        shape[axis] = 2 * n
        frac = frac.reshape(shape)
        x = (np.take(x, np.clip(lo, 0, n - 1), axis=axis) * (1 - frac)
             + np.take(x, np.clip(lo + 1, 0, n - 1), axis=axis) * frac)
    return x


def upsample_with_image_resize(x):
    """Trilinear = bilinear over (D, H) then bilinear over (H, W) with H at scale 1 (identity)."""
    b, d, h, w, c = x.shape
    y = tf.image.resize(tf.reshape(x, [b, d, h, w * c]), [2 * d, 2 * h], method="bilinear")
    y = tf.reshape(y, [b * 2 * d, 2 * h, w, c])
    y = tf.image.resize(y, [2 * h, 2 * w], method="bilinear")
    return tf.reshape(y, [b, 2 * d, 2 * h, 2 * w, c])


@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 3), (1, 1, 2, 1, 2), (1, 4, 4, 4, 1)])
def test_upsample2x_trilinear_matches_references(shape):
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    y = upsample2x_trilinear(tf.constant(x))
    assert y.shape == (shape[0], 2 * shape[1], 2 * shape[2], 2 * shape[3], shape[4])
    assert_close(y, upsample_reference(x), rtol=1e-6, atol=1e-6)
    assert_close(y, upsample_with_image_resize(tf.constant(x)), rtol=1e-5, atol=1e-6)


def test_upsample2x_trilinear_with_unknown_static_shape():
    fn = tf.function(upsample2x_trilinear,
                     input_signature=[tf.TensorSpec([None, None, None, None, 2], tf.float32)])
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 4, 2)).astype(np.float32)
    assert_close(fn(tf.constant(x)), upsample_reference(x), atol=1e-6)


def test_upsample2x_trilinear_on_constants_and_a_ramp():
    x = tf.fill([1, 3, 3, 3, 2], 4.5)
    assert_close(upsample2x_trilinear(x), 4.5)
    # A ramp: interior outputs at half-pixel positions (i + 0.5) / 2 - 0.5, edges clamped.
    ramp = tf.reshape(tf.range(4, dtype=tf.float32), [1, 4, 1, 1, 1])
    out = upsample2x_trilinear(ramp)[0, :, 0, 0, 0].numpy()
    assert_close(out, [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0])


def test_keras_layer_hygiene_no_weights_created_in_call():
    """Sublayers exist before the first call (created in __init__), so tracking is stable."""
    net = UHVED(MODALITIES, K, base_width=BASE, levels=2)
    assert len(net.encoder.encoders) == M and len(net.image_decoders) == M
    assert isinstance(net.seg_decoder, keras.layers.Layer)
