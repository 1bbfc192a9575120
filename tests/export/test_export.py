"""SavedModel export round trip: a tiny model trained for one iteration is
exported, loaded in a FRESH process with ``tf.saved_model.load``, and both signatures are compared
with the live model's Python inference path (``WindowPredictor`` / ``predict_volume``) for
several subsets and batch sizes, with the posterior mean (samples 0) and with posterior samples
(samples 2, same stateless seeds). Tolerance: 1e-5 absolute on probabilities, syntheses and
uncertainty (measured: 0 for ``segment_volume``, ~1e-6 for ``serving_default`` batches of 2
against single-window calls, from the batch size the convolutions see). Test-time mirroring with
posterior samples is checked on an untrained network saved with its whole-volume signature only.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from uhved_tf.data.subsets import subset_masks

ATOL = 1e-5
MODALITIES = ("T1", "T1c", "T2", "Flair")
SUBSETS = {"T1": (1, 0, 0, 0), "Flair": (0, 0, 0, 1), "T1c+Flair": (0, 1, 0, 1), "all": (1, 1, 1, 1)}

EXPORT_INI = """
[T1]
path_to_search = {data}
filename_contains = _t1
filename_not_contains = _t1ce
spatial_window_size = 8, 8, 8
axcodes = R, A, S
[T1c]
path_to_search = {data}
filename_contains = _t1ce
spatial_window_size = 8, 8, 8
axcodes = R, A, S
[T2]
path_to_search = {data}
filename_contains = _t2
spatial_window_size = 8, 8, 8
axcodes = R, A, S
[Flair]
path_to_search = {data}
filename_contains = _flair
spatial_window_size = 8, 8, 8
axcodes = R, A, S
[label]
path_to_search = {data}
filename_contains = _seg
interp_order = 0
spatial_window_size = 8, 8, 8
axcodes = R, A, S
[SYSTEM]
model_dir = {model}
seed = 5
[NETWORK]
name = {network}
activation_function = leakyrelu
batch_size = 2
base_width = 2
levels = 2
whitening = True
normalisation = {normalisation}
histogram_ref_file = {model}/hist.txt
normalise_foreground_only = True
foreground_type = mean_plus
volume_padding_size = 1
queue_length = 2
[TRAINING]
lr = 0.001
max_iter = 1
save_every_n = 1
sample_per_volume = 1
exclude_fraction_for_inference = 0.34
[INFERENCE]
spatial_window_size = 8, 8, 8
window_overlap = 0.5
samples = 2
[MULTIMODAL]
image = T1, T1c, T2, Flair
label = label
num_classes = 4
label_values = 0, 1, 2, 4
"""

# Runs in a fresh interpreter: load the SavedModels, call both signatures, save the outputs.
FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
spec = json.load(open(sys.argv[1]))
data = np.load(spec["inputs"])
names = spec["names"]
out = {}
def call(fn, image, mask):
    feeds = {n: tf.constant(image[..., i]) for i, n in enumerate(names)}
    return fn(modality_mask=tf.constant(mask), **feeds)
for version, path in spec["exports"].items():
    loaded = tf.saved_model.load(path)
    sd, sv = loaded.signatures["serving_default"], loaded.signatures["segment_volume"]
    for subset, mask in spec["subsets"].items():
        m = np.asarray(mask, np.float32)
        runs = {"sd1": call(sd, data["windows"][:1], m[None]),
                "sd2": call(sd, data["windows"], np.stack([m, m])),
                "odd": call(sd, data["odd"], m[None]),
                "vol": call(sv, data["volume"], m)}
        for run, res in runs.items():
            for key, value in res.items():
                out[f"{version}/{subset}/{run}/{key}"] = value.numpy()
    for i, mask in enumerate(spec["all15"]):   # every one of the 15 subsets, whole-volume signature
        for key, value in call(sv, data["volume"], np.asarray(mask, np.float32)).items():
            out[f"{version}/all15/{i}/vol/{key}"] = value.numpy()
    mixed = np.asarray([spec["subsets"]["T1"], spec["subsets"]["all"]], np.float32)
    for key, value in call(sd, data["windows"], mixed).items():
        out[f"{version}/mixed/sd2/{key}"] = value.numpy()
np.savez(spec["outputs"], **out)
"""

_CACHE: dict = {}


def write_config(root: Path, network="u_hved", normalisation=True, model="model") -> Path:
    path = root / f"{model}.ini"
    path.write_text(EXPORT_INI.format(data=root / "data", model=root / model, network=network,
                                      normalisation=normalisation))
    return path


def exported_project(tmp_path_factory) -> dict:
    """Train once per session (1 iteration, in this process), export version 1 (samples 0) and
    version 2 (samples 2). Shared with ``test_client.py``."""
    if _CACHE:
        return _CACHE
    import time

    from uhved_tf.application import Application
    from uhved_tf.config import load_config
    from uhved_tf.demo.synthetic import make_demo_dataset
    from uhved_tf.export.saved_model import export_saved_model

    root = tmp_path_factory.mktemp("export")
    make_demo_dataset(root / "data", n_subjects=3, shape=(24, 24, 16), spacing=(8.0, 8.0, 8.0), seed=2)
    cfg_path = write_config(root)
    cfg = load_config(cfg_path)
    app = Application(cfg)
    app.train(progress=False)
    model = app.load_trained_model()
    t0 = time.perf_counter()
    local = (model, cfg, app.model_dir, app.metadata())
    v1 = export_saved_model(*local, checkpoint=app.loaded_checkpoint, samples=0)
    v2 = export_saved_model(*local, checkpoint=app.loaded_checkpoint)   # [INFERENCE] samples = 2, next version
    _CACHE.update(root=root, cfg_path=cfg_path, cfg=cfg, app=app, model=model, v1=v1, v2=v2,
                  export_seconds=time.perf_counter() - t0)
    return _CACHE


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return exported_project(tmp_path_factory)


@pytest.fixture(scope="module")
def fresh_outputs(project):
    """Both exports loaded and called in a fresh Python process; returns (inputs, outputs)."""
    from uhved_tf.export.saved_model import input_names

    root, app = project["root"], project["app"]
    rng = np.random.default_rng(7)
    subjects = app.discover(need_label=False)
    case = app.load_case(subjects[0], with_label=False)
    inputs = {"windows": rng.normal(size=(2, 8, 8, 8, 4)).astype(np.float32),
              "odd": rng.normal(size=(1, 9, 10, 7, 4)).astype(np.float32),
              "volume": case.image.astype(np.float32)}
    np.savez(root / "inputs.npz", **inputs)
    spec = {"inputs": str(root / "inputs.npz"), "outputs": str(root / "outputs.npz"),
            "names": input_names(MODALITIES), "subsets": SUBSETS, "all15": subset_masks(4).tolist(),
            "exports": {"v1": str(project["v1"].path), "v2": str(project["v2"].path)}}
    (root / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(root / "spec.json")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return inputs, dict(np.load(root / "outputs.npz"))


# --------------------------------------------------------------------------------------------
# pure helpers (fast)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [("u_hved", "uhved"), ("U_HeMIS", "uhemis"), ("hemis", "hemis"),
                                            ("u_hved.u_hved_net.U_HVED", "uhved"),
                                            ("extensions.my_net.MyNet", "mynet")])
def test_model_name_is_the_sanitised_network_name(name, expected):
    from uhved_tf.export.saved_model import model_name_for
    assert model_name_for(name) == expected


@pytest.mark.parametrize("window, multiple, ok", [((16, 16, 16), 8, True), ((17, 16, 16), 2, False),
                                                  ((144, 144, 144), 8, True), ((140, 144, 144), 8, False),
                                                  ((9, 9, 9), 1, True)])
def test_export_refuses_a_window_the_network_would_shrink(window, multiple, ok):
    from uhved_tf.errors import UhvedError
    from uhved_tf.export.saved_model import check_window
    if ok:
        assert check_window(window, multiple) == window
    else:
        with pytest.raises(UhvedError, match="not divisible by") as info:
            check_window(window, multiple)
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# the exported model (slow)
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_layout_metadata_and_assets(project):
    from uhved_tf.data.histogram import read_landmarks

    v1, v2 = project["v1"], project["v2"]
    base = Path(project["cfg"].system.model_dir) / "export" / "uhved"
    assert v1.path == base / "1" and v2.path == base / "2"
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]          # no temporary folders left
    for result in (v1, v2):
        assert (result.path / "saved_model.pb").is_file()
        assert (result.path / "variables" / "variables.index").is_file()
        assert (result.path / "assets" / "hist.txt").read_text() == project["app"].model_dir.histogram.read_text()
    meta = json.loads((v2.path / "assets" / "metadata.json").read_text())
    assert meta["modalities"] == list(MODALITIES)
    assert meta["label_values"] == [0, 1, 2, 4] and meta["num_classes"] == 4
    assert meta["model_name"] == "uhved" and meta["version"] == 2
    assert meta["inference"]["samples"] == 2 and meta["inference"]["seed"] == 5
    assert meta["inference"]["window"] == [8, 8, 8] and meta["inference"]["window_batch_size"] == 2
    assert meta["uhved_tf_version"] and meta["tensorflow_version"]
    assert meta["input_names"] == {"T1": "t1", "T1c": "t1c", "T2": "t2", "Flair": "flair"}
    landmarks = read_landmarks(project["app"].model_dir.histogram, MODALITIES)
    for m in MODALITIES:
        np.testing.assert_allclose(meta["preprocessing"]["landmarks"][m], landmarks[m])
    assert meta["preprocess_settings"]["min_shape"] == [8, 8, 8] and "landmarks" not in meta["preprocess_settings"]
    assert meta["preprocessing"]["landmarks_asset"] == "hist.txt"
    assert json.loads((v1.path / "assets" / "metadata.json").read_text())["inference"]["samples"] == 0
    print(f"export of both versions took {project['export_seconds']:.1f} s")


@pytest.mark.slow
def test_existing_version_is_not_overwritten_without_overwrite(project):
    from uhved_tf.errors import UhvedError
    from uhved_tf.export.commands import COMMANDS, add_parsers
    from uhved_tf.cli import _add_config_args

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"), _add_config_args)
    args = parser.parse_args(["export", "-c", str(project["cfg_path"]), "--version", "1"])
    before = (project["v1"].path / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(UhvedError, match="exists; pass --overwrite") as info:
        COMMANDS["export"](args, project["cfg"])
    assert "\n" not in str(info.value)
    assert (project["v1"].path / "saved_model.pb").stat().st_mtime_ns == before


_PREDICTORS: dict = {}


def _predictor(model, mask, samples, seed):
    """A WindowPredictor reset to its first call (cached: its traced function is reused)."""
    from uhved_tf.inference.predictor import WindowPredictor
    key = (id(model), tuple(np.asarray(mask).tolist()), samples, seed)
    if key not in _PREDICTORS:
        _PREDICTORS[key] = WindowPredictor(model, [mask], samples=samples, seed=seed)
    predictor = _PREDICTORS[key]
    predictor.calls = 0
    return predictor


def _python_window(model, window, mask, samples, seed):
    """The live path for one window: a fresh WindowPredictor's first call."""
    res = _predictor(model, mask, samples, seed)(window[None])
    return {"seg_prob": res["seg_prob/0"][0], "synth": res["synth/0"][0], "uncertainty": res["uncertainty/0"][0, ..., 0]}


def _check(got: dict, prefix: str, ref: dict, label_values=(0, 1, 2, 4)):
    np.testing.assert_allclose(got[f"{prefix}/seg_probabilities"], ref["seg_prob"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(got[f"{prefix}/uncertainty"], ref["uncertainty"], atol=ATOL, rtol=0)
    for i, name in enumerate(("t1", "t1c", "t2", "flair")):
        np.testing.assert_allclose(got[f"{prefix}/{name}_synth"], ref["synth"][..., i], atol=ATOL, rtol=0)
    labels = got[f"{prefix}/seg_labels"]
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, np.asarray(label_values)[np.argmax(got[f"{prefix}/seg_probabilities"], -1)])
    return max(float(np.abs(got[f"{prefix}/seg_probabilities"] - ref["seg_prob"]).max()),
               float(np.abs(got[f"{prefix}/uncertainty"] - ref["uncertainty"]).max()))


@pytest.mark.slow
@pytest.mark.parametrize("version, samples", [("v1", 0), ("v2", 2)])
@pytest.mark.parametrize("subset", list(SUBSETS))
def test_serving_default_in_a_fresh_process_equals_the_window_predictor(project, fresh_outputs, version, samples,
                                                                        subset):
    inputs, got = fresh_outputs
    model, seed = project["model"], project["cfg"].system.seed
    mask = np.asarray(SUBSETS[subset], np.float32)
    worst = 0.0
    ref0 = _python_window(model, inputs["windows"][0], mask, samples, seed)
    worst = max(worst, _check({k: v[0] for k, v in got.items() if k.startswith(f"{version}/{subset}/sd1/")},
                              f"{version}/{subset}/sd1", ref0))
    for b in range(2):      # batch of 2: each sample as its own first call
        ref = _python_window(model, inputs["windows"][b], mask, samples, seed)
        worst = max(worst, _check({k: v[b] for k, v in got.items() if k.startswith(f"{version}/{subset}/sd2/")},
                                  f"{version}/{subset}/sd2", ref))
    print(f"{version} {subset}: max |difference| {worst:.2e}")


@pytest.mark.slow
@pytest.mark.parametrize("version, samples", [("v1", 0), ("v2", 2)])
def test_serving_default_mixed_subsets_in_one_batch(project, fresh_outputs, version, samples):
    inputs, got = fresh_outputs
    model, seed = project["model"], project["cfg"].system.seed
    for b, subset in enumerate(("T1", "all")):
        ref = _python_window(model, inputs["windows"][b], np.asarray(SUBSETS[subset], np.float32), samples, seed)
        _check({k: v[b] for k, v in got.items() if k.startswith(f"{version}/mixed/sd2/")}, f"{version}/mixed/sd2", ref)


@pytest.mark.slow
@pytest.mark.parametrize("version, samples", [("v1", 0), ("v2", 2)])
def test_non_divisible_window_is_padded_and_cropped_back(project, fresh_outputs, version, samples):
    from uhved_tf.inference.sliding_window import pad_to_multiple

    inputs, got = fresh_outputs
    odd = inputs["odd"][0]                         # 9 x 10 x 7: not multiples of 2
    prob = got[f"{version}/all/odd/seg_probabilities"]
    assert prob.shape == (1, 9, 10, 7, 4)
    assert got[f"{version}/all/odd/seg_labels"].shape == (1, 9, 10, 7)
    assert got[f"{version}/all/odd/flair_synth"].shape == (1, 9, 10, 7)
    padded, crop = pad_to_multiple(odd, (2, 2, 2))
    ref = _python_window(project["model"], padded, np.ones(4, np.float32), samples, project["cfg"].system.seed)
    ref = {k: v[crop[:3]] for k, v in ref.items()}
    _check({k: v[0] for k, v in got.items() if k.startswith(f"{version}/all/odd/")}, f"{version}/all/odd", ref)


@pytest.mark.slow
@pytest.mark.parametrize("version, samples", [("v1", 0), ("v2", 2)])
@pytest.mark.parametrize("subset", list(SUBSETS))
def test_segment_volume_in_a_fresh_process_equals_predict_volume(project, fresh_outputs, version, samples, subset):
    from uhved_tf.inference.predictor import predict_volume

    inputs, got = fresh_outputs
    cfg, model = project["cfg"], project["model"]
    mask = np.asarray(SUBSETS[subset], np.float32)
    assert not cfg.inference.tta
    predictor = _predictor(model, mask, samples, cfg.system.seed)
    ref = predict_volume(predictor, inputs["volume"], (8, 8, 8), overlap=cfg.inference.window_overlap,
                         blend_mode=cfg.inference.blend_mode, border=tuple(cfg.inference.border),
                         batch_size=cfg.network.batch_size)[0]
    prefix = f"{version}/{subset}/vol"
    assert got[f"{prefix}/seg_probabilities"].shape == inputs["volume"].shape[:3] + (4,)
    worst = _check({k: v for k, v in got.items() if k.startswith(prefix + "/")}, prefix, ref)
    print(f"segment_volume {version} {subset}: max |difference| {worst:.2e}")


@pytest.mark.slow
@pytest.mark.parametrize("version, samples", [("v1", 0), ("v2", 2)])
def test_segment_volume_agrees_for_every_one_of_the_15_subsets(project, fresh_outputs, version, samples):
    """One encode-once predictor for all 15 subsets (its sample seeds depend on the subset, not
    on its position) against the exported whole-volume signature called per subset."""
    from uhved_tf.inference.predictor import WindowPredictor, predict_volume

    inputs, got = fresh_outputs
    cfg, model = project["cfg"], project["model"]
    masks = subset_masks(4)
    refs = predict_volume(WindowPredictor(model, masks, samples=samples, seed=cfg.system.seed), inputs["volume"],
                          (8, 8, 8), overlap=cfg.inference.window_overlap, blend_mode=cfg.inference.blend_mode,
                          border=tuple(cfg.inference.border), batch_size=cfg.network.batch_size)
    for i, ref in enumerate(refs):
        _check({k: v for k, v in got.items() if k.startswith(f"{version}/all15/{i}/vol/")},
               f"{version}/all15/{i}/vol", ref)


@pytest.mark.slow
def test_saved_model_cli_lists_both_signatures(project):
    cli = Path(sys.executable).parent / "saved_model_cli"
    if not cli.exists():
        pytest.skip("saved_model_cli is not installed next to this Python")
    proc = subprocess.run([str(cli), "show", "--dir", str(project["v2"].path), "--all"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    blocks = dict(re.findall(r"signature_def\['(\w+)'\]:\n(.*?)(?=\nsignature_def\[|\Z)", text, flags=re.S))
    assert {"serving_default", "segment_volume"} <= set(blocks)

    def entry(block, kind, name):
        m = re.search(rf"{kind}\['{name}'\] tensor_info:\s*dtype: (\w+)\s*shape: (\([^)]*\))", block)
        assert m, f"{kind} {name} missing in:\n{block}"
        return m.group(1), m.group(2)

    for sig, lead in (("serving_default", "-1, "), ("segment_volume", "")):
        block = blocks[sig]
        for name in ("t1", "t1c", "t2", "flair"):
            assert entry(block, "inputs", name) == ("DT_FLOAT", f"({lead}-1, -1, -1)")
            assert entry(block, "outputs", f"{name}_synth") == ("DT_FLOAT", f"({lead}-1, -1, -1)")
        assert entry(block, "inputs", "modality_mask") == ("DT_FLOAT", "(-1, 4)" if lead else "(4)")
        assert entry(block, "outputs", "seg_probabilities") == ("DT_FLOAT", f"({lead}-1, -1, -1, 4)")
        assert entry(block, "outputs", "seg_labels") == ("DT_INT32", f"({lead}-1, -1, -1)")
        assert entry(block, "outputs", "uncertainty") == ("DT_FLOAT", f"({lead}-1, -1, -1)")
        assert "Method name is: tensorflow/serving/predict" in block


@pytest.mark.slow
def test_non_variational_network_exports_without_synthesis(project, tmp_path):
    """U-HeMIS (no synthesis, deterministic): the signatures adapt; numbers equal the Python path."""
    import tensorflow as tf

    from uhved_tf.application import Application
    from uhved_tf.config import load_config
    from uhved_tf.export.saved_model import export_saved_model
    from uhved_tf.inference.predictor import WindowPredictor, predict_volume

    cfg = load_config(write_config(project["root"], network="u_hemis", normalisation=False, model="hemis_model"))
    app = Application(cfg)
    model = app.build_model()                     # untrained weights are enough for the round trip
    result = export_saved_model(model, cfg, app.model_dir, app.metadata(), output=tmp_path)
    assert result.path == tmp_path / "uhemis" / "1"
    loaded = tf.saved_model.load(str(result.path))
    volume = np.random.default_rng(3).normal(size=(11, 6, 5, 4)).astype(np.float32)   # smaller than the window
    mask = np.asarray([0, 1, 0, 1], np.float32)
    sv = loaded.signatures["segment_volume"]
    out = sv(modality_mask=tf.constant(mask), **{n: tf.constant(volume[..., i])
                                                 for i, n in enumerate(("t1", "t1c", "t2", "flair"))})
    assert set(out) == {"seg_probabilities", "seg_labels", "uncertainty"}
    ref = predict_volume(WindowPredictor(model, [mask], samples=2, seed=5), volume, (8, 8, 8), overlap=0.5,
                         batch_size=2)[0]
    assert out["seg_probabilities"].shape == (11, 6, 5, 4)
    np.testing.assert_allclose(out["seg_probabilities"].numpy(), ref["seg_prob"], atol=ATOL, rtol=0)
    meta = json.loads((result.path / "assets" / "metadata.json").read_text())
    assert meta["synthesises"] is False and meta["variational"] is False
    assert not (result.path / "assets" / "hist.txt").exists()


@pytest.mark.slow
def test_tta_with_samples_reloaded_savedmodel_equals_local_prediction(tmp_path):
    """Test-time mirroring and posterior samples on: the reloaded SavedModel's whole-volume signature
    equals ``predict_volume`` on the same case (only that signature is saved: ~30 s, not ~50 s)."""
    import tensorflow as tf

    from uhved_tf.export.saved_model import SEGMENT_VOLUME, ExportSettings, ServingModule
    from uhved_tf.inference.core import TTA_FLIPS
    from uhved_tf.inference.predictor import WindowPredictor, predict_volume
    from uhved_tf.model.uhved import UHVED

    tf.keras.utils.set_random_seed(3)
    model = UHVED(MODALITIES, 4, base_width=2, levels=2)
    model({"image": tf.zeros((1, 8, 8, 8, 4)), "modality_mask": tf.ones((1, 4))})
    settings = ExportSettings(modalities=MODALITIES, label_values=(0, 1, 2, 4), window=(8, 8, 8), samples=2, seed=5,
                              window_batch_size=2, tta=True)
    full = ServingModule(model, settings).module
    module = tf.Module()
    module.model_variables, module.segment_volume = full.model_variables, full.segment_volume
    tf.saved_model.save(module, str(tmp_path),
                        signatures={SEGMENT_VOLUME: module.segment_volume.get_concrete_function()})
    volume = np.random.default_rng(11).normal(size=(12, 9, 8, 4)).astype(np.float32)     # 2 x 2 x 1 windows
    mask = np.asarray(SUBSETS["T1c+Flair"], np.float32)
    feeds = {n: tf.constant(volume[..., i]) for i, n in enumerate(("t1", "t1c", "t2", "flair"))}
    out = tf.saved_model.load(str(tmp_path)).signatures[SEGMENT_VOLUME](modality_mask=tf.constant(mask), **feeds)
    local = WindowPredictor(model, [mask], samples=2, seed=5, tta=True)
    assert local.flips == TTA_FLIPS
    ref = predict_volume(local, volume, (8, 8, 8), overlap=0.5, batch_size=2)[0]
    worst = _check({f"vol/{k}": v.numpy() for k, v in out.items()}, "vol", ref)
    print(f"segment_volume with TTA and 2 samples: max |difference| {worst:.2e}")
