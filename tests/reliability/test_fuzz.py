"""Fuzzing the two doors user data comes in by: INI text and NIfTI files.

Whatever the input, the outcome is a value or a :class:`UhvedError` (ConfigError / DataError) with
a one-line message; never another exception (which the CLI would show as a traceback). The
examples are derandomised so CI sees the same ones every run. tests/config has a line-level
INI fuzzer; here whole configs are mutated key by key (values: huge numbers, paths, unicode,
garbage) and then used the way the application uses them, and NIfTI headers are fuzzed field by
field at the byte level (dims, datatype, pixdim, vox_offset, scaling, qform/sform), then
truncated or bit-flipped.
"""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.helpers import TINY_INI
from uhved_tf.errors import UhvedError



def fuzz(max_examples: int) -> settings:
    """Reproducible fuzzing: the same examples every run, no example database, no deadline."""
    return settings(derandomize=True, deadline=None, database=None, max_examples=max_examples,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------ INI

_BASE_LINES = TINY_INI.format(data="/fuzz/data", model="/fuzz/model").strip().splitlines()
_KEY_LINES = [i for i, line in enumerate(_BASE_LINES) if "=" in line]
_SECTIONS = ["SYSTEM", "NETWORK", "TRAINING", "INFERENCE", "EVALUATION", "MULTIMODAL", "T1", "label",
             "SEGMENTATION", "NEW", "T1c ", "ñ", "[x]", ""]
_KEYS = ["name", "max_iter", "spatial_window_size", "pixdim", "axcodes", "label_values", "num_classes", "image",
         "path_to_search", "filename_contains", "filename_removefromid", "csv_file", "model_dir", "seed",
         "lr", "levels", "base_width", "batch_size", "subset_prior", "validation_subsets", "nan_policy",
         "histogram_ref_file", "cutoff", "border", "random_flipping_axes", "starting_iter", "modalities",
         "dataset_split_file", "rotation_angle", "window_sampling", "samples", "optimiser", "unknown_key", "ü"]
_NASTY = ["", "0", "-1", "1e999", "-1e999", "nan", "inf", "9" * 400, "2**64", "0x10", "1_000", "1e-320",
          "18446744073709551616", "3.5", "(16, 16)", "16, 16, 16, 16", "[1, 2, 3", "1,,2", "../../../etc/passwd",
          "/dev/null", "~", "~nobody/x", "\\\\server\\share", "C:\\data", "a\x00b", "%(here)s", "${HOME}",
          "\u202e\u0645\u0631\u062d\u0628\u0627", "日本語", "\U0001F9E0", "😀, 😀", "(", ")", "*", "[a-", "(?P<",
          "os.system", "extensions.../../x", "__import__('os')", "u_hved", "single", "True", "no", "R, A, X",
          "R, R, S", "T1, T1", "0, 1, 2, 4", "prior", "all", "full;;", "T9", "-0", "+5", " 7 ", '"', "'x'",
          "\t", "1e4", "1024, 1024, 1024", "0, 0, 0", "-16", "1.0, nan, 1.0"]
_value = st.one_of(st.sampled_from(_NASTY), st.text(max_size=12),
                   st.integers(-10**30, 10**30).map(str), st.floats().map(repr))


@st.composite
def _config_text(draw):
    lines = list(_BASE_LINES)
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(["replace", "replace", "delete", "add", "section", "raw"]))
        if action in ("replace", "delete"):
            i = draw(st.sampled_from(_KEY_LINES))
            key = lines[i].split("=", 1)[0].strip() if "=" in lines[i] else "x"
            lines[i] = "" if action == "delete" else f"{key} = {draw(_value)}"
        elif action == "add":
            lines.insert(draw(st.integers(1, len(lines))), f"{draw(st.sampled_from(_KEYS))} = {draw(_value)}")
        elif action == "section":
            lines.insert(draw(st.integers(0, len(lines))), f"[{draw(st.sampled_from(_SECTIONS))}]")
        else:
            lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=30)))
    return "\n".join(lines)


def _use_config(cfg):
    """What the application derives from a config before touching data."""
    from uhved_tf.application import Application
    from uhved_tf.subset import Subset
    from uhved_tf.model.registry import get_network_class

    app = Application(cfg)
    get_network_class(cfg.network.name)
    Subset.parse(cfg.training.validation_subsets, cfg.modalities)
    app.input_specs()
    app.predictor(None)
    if not cfg.network.normalisation:
        app.preprocess_settings()
    cfg.to_ini()


@fuzz(150)
@given(text=_config_text(), as_file=st.booleans())
def test_fuzzed_config_is_a_config_or_a_clean_error(text, as_file, tmp_path):
    from uhved_tf.config import load_config, parse_config_text

    try:
        if as_file:
            path = tmp_path / "fuzz.ini"
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
            cfg = load_config(path)
        else:
            cfg = parse_config_text(text, "/fuzz")
        _use_config(cfg)
    except UhvedError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip(), repr(str(exc))


@fuzz(60)
@given(blob=st.binary(max_size=400))
def test_config_file_of_random_bytes(blob, tmp_path):
    from uhved_tf.config import load_config

    path = tmp_path / "bytes.ini"
    path.write_bytes(blob)
    try:
        load_config(path)
    except UhvedError as exc:
        assert "\n" not in str(exc).strip()


@fuzz(80)
@given(args=st.lists(st.one_of(st.sampled_from(["--max_iter", "--lr", "--levels", "--name", "--seed", "--x", "-",
                                                "--", "--=1", "--spatial_window_size", "--nan_policy"]),
                               _value), max_size=6),
       sets=st.lists(st.builds(lambda s, k, v: f"{s}.{k}={v}", st.sampled_from(_SECTIONS), st.sampled_from(_KEYS),
                               _value), max_size=3))
def test_fuzzed_command_line_overrides(args, sets):
    from uhved_tf.config import parse_config_text

    try:
        _use_config(parse_config_text("\n".join(_BASE_LINES), "/fuzz", args, sets))
    except UhvedError as exc:
        assert "\n" not in str(exc).strip()


# ---------------------------------------------------------------------------------------- NIfTI

_DATATYPES = [2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280, 32, 1792, 128, 2304, 1, 0, 999, 1536, 2048]
_odd_float = st.one_of(st.sampled_from([0.0, -1.0, 1.0, 2.0, 1e-30, 1e30, float("nan"), float("inf"),
                                        -float("inf"), 3.0]),
                       st.floats(-1e6, 1e6, allow_nan=False))


@st.composite
def _nifti_bytes(draw):
    """A valid small NIfTI-1 file, then header fields overwritten with raw values."""
    # Mostly plausible files (so that loading succeeds often enough to exercise everything
    # after the header), with hostile values mixed in.
    shape = tuple(draw(st.one_of(st.lists(st.integers(1, 5), min_size=3, max_size=3),
                                 st.lists(st.integers(1, 5), min_size=3, max_size=3),
                                 st.lists(st.integers(1, 5), min_size=1, max_size=5))))
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.float32, np.float64, np.int32, np.uint16, np.int8]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arr = (rng.normal(size=shape) * 50).astype(dtype)
    if np.issubdtype(dtype, np.floating) and draw(st.booleans()):
        arr.flat[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    zooms = draw(st.one_of(st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=3, max_size=3),
                           st.lists(_odd_float, min_size=3, max_size=3)))
    affine = np.diag([*zooms, 1.0])
    if draw(st.booleans()):
        affine[:3, :3] = rng.normal(size=(3, 3))
    raw = bytearray(nib.Nifti1Image(arr, np.eye(4)).to_bytes())
    hdr = nib.Nifti1Header(binaryblock=bytes(raw[:348]), check=False)
    # The affine goes in raw (nibabel would refuse to build an image with a degenerate one).
    hdr["sform_code"] = 1
    for row, field in enumerate(("srow_x", "srow_y", "srow_z")):
        hdr[field] = affine[row]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 4]))):
        field = draw(st.sampled_from(["dim", "datatype", "bitpix", "pixdim", "vox_offset", "scl_slope", "scl_inter",
                                      "qform_code", "sform_code", "quatern_b", "qoffset_x", "srow_x", "srow_z",
                                      "sizeof_hdr", "magic"]))
        if field == "dim":
            dims = draw(st.lists(st.integers(-2, 40), min_size=8, max_size=8))
            if draw(st.booleans()):
                dims[draw(st.integers(1, 3))] = 32767
            hdr["dim"] = dims
        elif field == "datatype":
            hdr["datatype"] = draw(st.sampled_from(_DATATYPES))
        elif field == "bitpix":
            hdr["bitpix"] = draw(st.sampled_from([0, 1, 8, 16, 32, 64, 128, 7]))
        elif field == "pixdim":
            hdr["pixdim"] = [draw(_odd_float) for _ in range(8)]
        elif field in ("qform_code", "sform_code"):
            hdr[field] = draw(st.sampled_from([0, 1, 2, 3, 4, 5, -1, 32767]))
        elif field in ("srow_x", "srow_z"):
            hdr[field] = [draw(_odd_float) for _ in range(4)]
        elif field == "sizeof_hdr":
            hdr[field] = draw(st.sampled_from([0, 540, 348, 12345]))
        elif field == "magic":
            hdr[field] = draw(st.sampled_from([b"n+1", b"ni1", b"xyz", b"n+2"]))
        else:
            hdr[field] = draw(_odd_float)
    raw[:348] = hdr.binaryblock
    damage = draw(st.sampled_from(["none", "none", "none", "none", "truncate", "flip", "append"]))
    if damage == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif damage == "flip":
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] ^= draw(st.integers(1, 255))
    elif damage == "append":
        raw += bytes(draw(st.binary(max_size=64)))
    return bytes(raw)


def _fresh(tmp_path: Path) -> Path:
    """A new folder per example (hypothesis reuses the test's tmp_path)."""
    return Path(tempfile.mkdtemp(dir=tmp_path))


def _write(tmp_path: Path, raw: bytes, gz: bool, gz_damage: int | None) -> Path:
    path = _fresh(tmp_path) / ("fuzz.nii.gz" if gz else "fuzz.nii")
    if gz:
        blob = bytearray(gzip.compress(raw, compresslevel=1))
        if gz_damage is not None and blob:
            blob = blob[: gz_damage % len(blob)] if gz_damage % 2 else blob
            if gz_damage % 3 == 0 and len(blob) > 20:
                blob[len(blob) // 2] ^= 0x5A
        raw = bytes(blob)
    path.write_bytes(raw)
    return path


@fuzz(150)
@given(raw=_nifti_bytes(), gz=st.booleans(), gz_damage=st.one_of(st.none(), st.none(), st.integers(0, 10**6)),
       axcodes=st.sampled_from([None, "RAS", "LPI", "PSR"]),
       pixdim=st.sampled_from([None, None, (2.0, 2.0, 2.0), (1.0, 3.0, 0.5)]),
       nan_policy=st.sampled_from(["error", "zero"]))
def test_fuzzed_nifti_loads_or_raises_data_error(raw, gz, gz_damage, axcodes, pixdim, nan_policy, tmp_path):
    from uhved_tf.io.nifti import load_volume, read_header_only, save_like

    path = _write(tmp_path, raw, gz, gz_damage)
    try:
        read_header_only(path)
    except UhvedError as exc:
        assert "\n" not in str(exc).strip() and str(path) in str(exc)
    try:
        arr, geom = load_volume(path, axcodes=axcodes, pixdim=pixdim, nan_policy=nan_policy)
    except UhvedError as exc:
        assert "\n" not in str(exc).strip() and str(path) in str(exc)
        return
    assert arr.ndim == 3 and arr.shape == tuple(geom.working_shape)
    assert np.all(np.isfinite(arr))
    # What loads can be written back onto its own grid.
    out = save_like(arr, geom, path.parent / "out" / "back.nii.gz", interp_order=0)
    assert nib.load(str(out)).shape[:3] == geom.original_shape


_GRID_CHANGES = [None, None, None, ("spacing", 2.0), ("spacing", 1.0000001), ("offset", 1e-6), ("offset", 0.5),
                 ("offset", 30.0), ("shape", 1)]


@fuzz(60)
@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
       spacing=st.tuples(*[st.sampled_from([1.0, 2.0, 0.5, 3.0])] * 3),
       change=st.sampled_from(_GRID_CHANGES), changed=st.integers(1, 4),
       label_values=st.one_of(st.lists(st.sampled_from([0, 1, 2, 4]), min_size=1, max_size=4),
                              st.lists(st.sampled_from([0, 1, 2, 4, 3, -1, 0.5, 255, 1e9]), min_size=1, max_size=4)),
       zero_modality=st.sampled_from([None, None, None, 0, 2]),
       missing=st.lists(st.booleans(), min_size=4, max_size=4),
       pixdim=st.sampled_from([None, None, (2.0, 2.0, 2.0)]))
def test_fuzzed_case_loads_or_raises_data_error(shape, spacing, change, changed, label_values, zero_modality,
                                               missing, pixdim, tmp_path):
    """Five files of one subject (4 modalities, some missing, and a label) on a random grid, one
    of them maybe on another grid, random label values, an empty modality: load_case gives a case
    on one grid or a DataError naming the subject or the file."""
    from uhved_tf.data.cases import PreprocessSettings, load_case

    tmp_path = _fresh(tmp_path)
    modalities = ("T1", "T1c", "T2", "Flair")
    rng = np.random.default_rng(sum(shape))
    files = {}
    for i, name in enumerate((*modalities, "label")):
        s, zooms, offset = shape, list(spacing), 0.0
        if change is not None and i == changed:
            kind, amount = change
            if kind == "shape":
                s = (shape[0] + 1, *shape[1:])
            elif kind == "spacing":
                zooms[0] *= amount
            else:
                offset = amount
        if name == "label":
            arr = np.zeros(s, np.float64)
            arr.flat[: len(label_values)] = label_values
        else:
            arr = (rng.random(s) * 100 + 1).astype(np.float32)
            if zero_modality == i:
                arr[:] = 0
        affine = np.diag([*zooms, 1.0])
        affine[:3, 3] = offset
        path = tmp_path / f"sub_{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, affine), str(path))
        if name == "label" or i == 0 or not missing[i]:
            files[name] = path
    settings_ = PreprocessSettings(modalities=modalities, axcodes=("R", "A", "S"), pixdim=pixdim,
                                   min_shape=(4, 4, 4), volume_padding_size=(1, 1, 1))
    try:
        case = load_case("sub-01", files, settings_, label_key="label")
    except UhvedError as exc:
        msg = str(exc)
        assert "\n" not in msg.strip() and ("sub-01" in msg or str(tmp_path) in msg), msg
        return
    assert case.image.shape[:3] == case.label.shape and case.image.shape[:3] >= (4, 4, 4)
    assert np.all(np.isfinite(case.image)) and set(np.unique(case.label)) <= {0, 1, 2, 3}
    assert case.data_mask.tolist() == [1.0 if m in files else 0.0 for m in modalities]
