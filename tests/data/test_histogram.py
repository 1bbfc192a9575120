"""uhved_tf.data.histogram: Nyul landmarks (learn, apply), NiftyNet's reference file, training."""

from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from uhved_tf.data import histogram as hs
from uhved_tf.errors import DataError
from uhved_tf.io.discovery import Subject

# The original U-HVED models/u_hved/hist.txt, as written by NiftyNet (trailing blank line included).
UHVED_HIST = (
    "T1 0.0 29.567295 46.963665 51.46228 54.814796 59.724537 63.607014 67.198555 70.844765 72.750015 "
    "74.704384 79.08507 100.0\n"
    "T1c 0.0 18.623861 31.1369 33.746063 35.604713 38.38648 40.679466 42.840008 44.997036 46.112373 "
    "47.292706 50.285065 100.0\n"
    "T2 0.0 20.626154 26.824974 28.08165 29.186394 31.342985 33.70432 36.45566 39.93386 42.244335 "
    "45.29694 56.169777 100.0\n"
    "Flair 0.0 15.476687 32.21012 35.765633 38.026333 40.970592 43.22647 45.37804 47.771545 49.20127 "
    "50.96312 57.086826 100.0\n"
    "\n"
)
MODS = ("T1", "T1c", "T2", "Flair")
NORM_TYPES = ("percentile", "quartile")


def brain(rng, shape=(20, 20, 20), a=1.0, b=0.0):
    """A skewed 'brain' intensity distribution inside a ball, zero background, transformed a*x+b."""
    idx = np.indices(shape).astype(np.float64)
    centre = (np.array(shape) - 1)[:, None, None, None] / 2
    inside = ((idx - centre) ** 2).sum(0) < (min(shape) / 2.2) ** 2
    base = rng.gamma(3.0, 20.0, size=shape) + 50.0
    vol = np.where(inside, a * base + b, 0.0)
    return vol, inside


# --- landmarks ---------------------------------------------------------------------------------

def test_landmark_layout_matches_niftynet():
    np.testing.assert_allclose(hs.landmark_percentiles((0.01, 0.99)),
                               [1, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 99])
    np.testing.assert_allclose(hs.percentiles_for("percentile", (0.001, 0.999)),
                               [0.1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99.9])
    np.testing.assert_allclose(hs.percentiles_for("quartile"), [1, 25, 50, 75, 99])
    # NiftyNet widens a cutoff that lies inside the first / last knot and sorts it
    assert hs.standardise_cutoff((0.95, 0.2), "percentile") == (0.09, 0.95)
    assert hs.standardise_cutoff((0.2, 0.7), "quartile") == (0.2, 0.76)
    with pytest.raises(ValueError, match="percentile, quartile"):
        hs.percentiles_for("decile")


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_learned_landmarks_are_reached_by_every_training_volume(rng, norm_type):
    cutoff = (0.01, 0.99)
    pairs = [brain(rng, a=a, b=b) for a, b in [(1.0, 0.0), (3.5, 40.0), (0.2, -7.0), (12.0, 1000.0)]]
    learned = hs.learn_landmarks(iter(pairs), cutoff, norm_type)
    assert learned.shape == (13,)
    assert learned[0] == 0.0 and learned[-1] == 100.0
    assert np.all(np.diff(learned[1:-1]) > 0)
    knots = hs.landmark_indices(norm_type)
    q = hs.percentiles_for(norm_type, cutoff)
    for vol, mask in pairs:
        out = hs.apply_landmarks(vol, learned, cutoff, mask=mask, norm_type=norm_type)
        assert out.dtype == np.float32 and out.shape == vol.shape
        np.testing.assert_allclose(np.percentile(out[mask], q), learned[knots], atol=0.05)


def test_learning_is_the_average_of_the_linearly_mapped_landmarks(rng):
    pairs = [brain(rng, a=a) for a in (1.0, 2.0, 5.0)]
    rows = [hs.volume_landmarks(v, m, (0.02, 0.98)) for v, m in pairs]
    mapped = [100 * (r - r[0]) / (r[-1] - r[0]) for r in rows]
    np.testing.assert_allclose(hs.learn_landmarks(pairs, (0.02, 0.98), "percentile"), np.mean(mapped, 0))


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_affine_intensity_change_is_undone(rng, norm_type):
    vol, mask = brain(rng)
    other = 4.2 * vol + 300.0  # background moves too: the mask is what matters
    lm = np.array(UHVED_HIST.splitlines()[2].split()[1:], float)
    a = hs.apply_landmarks(vol, lm, (0.001, 0.999), mask=mask, norm_type=norm_type)
    b = hs.apply_landmarks(other, lm, (0.001, 0.999), mask=mask, norm_type=norm_type)
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_mapping_is_linear_between_knots_and_extrapolates_outside():
    vol = np.arange(1001, dtype=np.float64)  # percentile p of 0..1000 is 10*p exactly
    lm = np.array([0, 10, 20, 25, 30, 40, 50, 60, 70, 75, 80, 90, 100], float) * 2.0
    cutoff = (0.05, 0.95)
    out = hs.apply_landmarks(vol, lm, cutoff, norm_type="percentile")
    xp = 10 * hs.percentiles_for("percentile", cutoff)  # 50, 100, 200, ..., 900, 950
    fp = lm[hs.landmark_indices("percentile")]
    inner = (vol >= xp[0]) & (vol <= xp[-1])
    np.testing.assert_allclose(out[inner], np.interp(vol[inner], xp, fp), atol=1e-4)
    # below the second / above the second-to-last knot: first / last segment's slope, no clipping
    low, high = vol < xp[1], vol > xp[-2]
    s_lo, s_hi = (fp[1] - fp[0]) / (xp[1] - xp[0]), (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    np.testing.assert_allclose(out[low], fp[0] + s_lo * (vol[low] - xp[0]), atol=1e-4)
    np.testing.assert_allclose(out[high], fp[-1] + s_hi * (vol[high] - xp[-1]), atol=1e-4)
    assert out[0] < 0 and out[-1] > 200


def test_voxels_outside_the_mask_are_mapped_with_the_same_function(rng):
    vol, mask = brain(rng)
    lm = np.array(UHVED_HIST.splitlines()[0].split()[1:], float)
    full = hs.apply_landmarks(vol, lm, mask=mask)
    changed = vol.copy()
    changed[~mask] = rng.uniform(-50, 500, size=int((~mask).sum()))
    out = hs.apply_landmarks(changed, lm, mask=mask)
    np.testing.assert_array_equal(out[mask], full[mask])  # landmarks come from the mask only
    assert np.all(np.isfinite(out)) and not np.allclose(out[~mask], full[~mask])


# --- degenerate inputs ---------------------------------------------------------------------------

LM = np.array(UHVED_HIST.splitlines()[3].split()[1:], float)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("case", ["constant", "constant_in_mask", "empty_mask", "mostly_background", "zeros"])
def test_degenerate_volumes_give_finite_output(rng, case, norm_type):
    vol, mask = brain(rng, shape=(16, 16, 16))
    if case == "constant":
        vol, mask = np.full(vol.shape, 7.0), None
    elif case == "constant_in_mask":
        vol = np.where(mask, 7.0, vol)
    elif case == "empty_mask":
        mask = np.zeros(vol.shape, bool)
    elif case == "mostly_background":
        mask = None  # > 50 % zeros: many repeated percentiles
    else:
        vol, mask = np.zeros(vol.shape), None
    out = hs.apply_landmarks(vol, LM, (0.001, 0.999), mask=mask, norm_type=norm_type)
    assert np.all(np.isfinite(out))
    order = np.argsort(vol, axis=None, kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= 0)


def test_learning_skips_constant_volumes_and_fails_when_all_are(rng, caplog):
    good = brain(rng)
    const = (np.full((8, 8, 8), 3.0), None)
    np.testing.assert_allclose(hs.learn_landmarks([good, const]), hs.learn_landmarks([good]))
    assert "skipped 1 volume" in caplog.text
    with pytest.raises(DataError, match="cannot learn"):
        hs.learn_landmarks([const, const])


def test_decreasing_reference_knots_are_refused():
    bad = LM.copy()
    bad[[1, 2]] = bad[[2, 1]]
    with pytest.raises(DataError, match="not non-decreasing"):
        hs.apply_landmarks(np.arange(100.0), bad)


# --- monotonicity ---------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(
    vol=hnp.arrays(np.float64, st.integers(1, 300),
                   elements=st.one_of(st.floats(-1e4, 1e4), st.sampled_from([0.0, 1.0, 1.0 + 1e-12]))),
    steps=hnp.arrays(np.float64, 12, elements=st.floats(0, 50)),
    start=st.floats(-100, 100),
    norm_type=st.sampled_from(NORM_TYPES),
    cutoff=st.tuples(st.floats(0, 0.3), st.floats(0.7, 1)),
    probe=hnp.arrays(np.float64, 50, elements=st.floats(-2e4, 2e4)),
)
def test_apply_is_non_decreasing_and_finite(vol, steps, start, norm_type, cutoff, probe):
    lm = start + np.concatenate([[0.0], np.cumsum(steps)])
    x = np.sort(np.concatenate([vol, probe]))
    mask = np.zeros(x.shape, bool)
    mask[np.isin(x, vol)] = True
    out = hs.apply_landmarks(x, lm, cutoff, mask=mask, norm_type=norm_type)
    assert np.all(np.isfinite(out))
    assert np.all(np.diff(out) >= 0)


def test_subnormal_intensities_are_a_constant_volume_not_an_overflow():
    """Hypothesis found it: knots 1e-308 apart made the slope overflow to inf and the output NaN."""
    vol = np.array([0.0, 1.11253693e-308])
    out = hs.apply_landmarks(vol, np.arange(13.0), (0.0, 1.0), norm_type="percentile")
    assert np.all(np.isfinite(out)) and np.all(np.diff(out) >= 0)


# --- reference file -------------------------------------------------------------------------------

def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_reads_the_original_uhved_file(tmp_path):
    got = hs.read_landmarks(_write(tmp_path / "hist.txt", UHVED_HIST), MODS)
    assert list(got) == list(MODS)
    assert got["T1"].shape == (13,) and got["T1"][1] == pytest.approx(29.567295)
    assert got["Flair"][-1] == 100.0


def test_reading_is_case_insensitive_and_ignores_other_names(tmp_path):
    text = "# comment\n\n" + UHVED_HIST.replace("T1c ", "t1C ") + "foreground 1 2\nPD not numbers at all\n"
    got = hs.read_landmarks(_write(tmp_path / "h.txt", text), ["T1c", "flair"])
    assert list(got) == ["T1c", "flair"]
    assert got["T1c"][1] == pytest.approx(18.623861)


def test_write_read_round_trip_is_exact(tmp_path, rng):
    pairs = [brain(rng, a=a) for a in (1.0, 2.5)]
    lms = {m: hs.learn_landmarks(pairs, (0.001, 0.999)) + i for i, m in enumerate(MODS)}
    path = tmp_path / "sub" / "hist.txt"
    hs.write_landmarks(path, lms)
    lines = path.read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == list(MODS) and all(len(ln.split()) == 14 for ln in lines)
    got = hs.read_landmarks(path, list(reversed(MODS)))
    for m in MODS:
        np.testing.assert_array_equal(got[m], lms[m])
    assert [p.name for p in path.parent.iterdir()] == ["hist.txt"]  # no temporary file left behind
    hs.write_landmarks(path, {"T1": lms["T1"]})  # overwrite
    assert hs.read_landmarks(path, ["T1"])["T1"].tolist() == lms["T1"].tolist()


@pytest.mark.parametrize("text, modalities, pattern", [
    (UHVED_HIST, ["T1", "PD"], r"hist\.txt: no landmarks for modality PD \(the file has: T1, T1c, T2, Flair\)"),
    (UHVED_HIST.replace("46.963665", "4x6.9"), MODS, r"hist\.txt, line 1: '4x6\.9' is not a number"),
    (UHVED_HIST.replace(" 100.0\nT2", "\nT2"), MODS, r"hist\.txt, line 2: T1c has 12 numbers, expected 13"),
    (UHVED_HIST + "Flair" + UHVED_HIST.splitlines()[3][5:], MODS,
     r"hist\.txt, line 6: .*Flair already given on line 4"),
    (UHVED_HIST.replace("26.824974", "nan"), MODS, r"hist\.txt, line 3: T2 has a non-finite"),
    (UHVED_HIST.replace("38.38648", "99.0"), MODS, r"hist\.txt, line 2: T1c landmarks are not increasing"),
    ("", MODS, r"no landmarks for modality T1, T1c, T2, Flair \(the file has: no modality lines\)"),
])
def test_bad_files_name_the_file_and_line(tmp_path, text, modalities, pattern):
    path = _write(tmp_path / "hist.txt", text)
    with pytest.raises(DataError, match=pattern) as err:
        hs.read_landmarks(path, modalities)
    assert "\n" not in str(err.value)
    assert str(path) in str(err.value)


def test_missing_or_binary_file(tmp_path):
    with pytest.raises(DataError, match="hist.txt: histogram reference file not found"):
        hs.read_landmarks(tmp_path / "hist.txt", MODS)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(DataError, match="bin.txt: not a text file"):
        hs.read_landmarks(tmp_path / "bin.txt", MODS)


def test_write_refuses_bad_names_and_counts(tmp_path):
    with pytest.raises(ValueError, match="cannot be written"):
        hs.write_landmarks(tmp_path / "h.txt", {"T 1": LM})
    with pytest.raises(ValueError, match="expected 13"):
        hs.write_landmarks(tmp_path / "h.txt", {"T1": LM[:5]})
    assert not (tmp_path / "h.txt").exists()


# --- training from subjects -------------------------------------------------------------------------

@pytest.mark.parametrize("foreground_only", [True, False])
def test_train_landmarks_for_subjects(tmp_path, rng, foreground_only):
    affine = np.diag([1.2, 1.2, 2.0, 1.0])
    affine[:3, 3] = (10.0, -4.0, 3.0)
    mods = ("T1", "Flair")
    subjects, arrays = [], {m: [] for m in mods}
    for i, (a, b) in enumerate([(1.0, 0.0), (2.0, 10.0), (0.5, 3.0)]):
        files = {}
        for m in mods:
            if m == "Flair" and i == 1:
                continue  # this subject lacks Flair: skipped for Flair only
            vol, _ = brain(rng, shape=(12, 12, 12), a=a, b=b)
            vol = vol.astype(np.float32)
            path = tmp_path / f"s{i}_{m}.nii.gz"
            nib.save(nib.Nifti1Image(vol, affine), str(path))
            files[m] = path
            arrays[m].append(vol)
        subjects.append(Subject(id=f"s{i}", files=files))
    net = SimpleNamespace(cutoff=(0.01, 0.99), norm_type="percentile", foreground_type="mean_plus",
                          normalise_foreground_only=foreground_only)
    inputs = [SimpleNamespace(name=m, axcodes=(), pixdim=(), interp_order=1) for m in mods]
    hist = tmp_path / "model" / "hist.txt"

    got = hs.train_landmarks_for_subjects(subjects, inputs, net, hist)

    assert list(got) == list(mods)
    from uhved_tf.data.preprocessing import foreground_mask
    for m in mods:
        assert len(arrays[m]) == (3 if m == "T1" else 2)
        pairs = [(v, foreground_mask(v, "mean_plus") if foreground_only else None) for v in arrays[m]]
        np.testing.assert_allclose(got[m], hs.learn_landmarks(pairs, net.cutoff, net.norm_type))
        np.testing.assert_array_equal(hs.read_landmarks(hist, mods)[m], got[m])
