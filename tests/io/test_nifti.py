"""uhved_tf.io.nifti: exact reorientation round trips, resampling and its inverse, writing, errors."""

import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as nio

from uhved_tf.errors import DataError
from uhved_tf.io import nifti
from uhved_tf.io.nifti import load_volume, read_header_only, save_like, to_original_grid

_WORLD_AXIS = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}


def _rotation(deg_x: float, deg_z: float) -> np.ndarray:
    ax, az = np.deg2rad(deg_x), np.deg2rad(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def make_affine(codes=("L", "P", "S"), spacing=(1.0, 1.0, 1.0), oblique=(9.0, 14.0), origin=(12.5, -30.0, 7.25)):
    """Affine whose array axes point (nearly, when oblique) along ``codes`` with voxel size ``spacing``."""
    direction = np.zeros((3, 3))
    for array_axis, code in enumerate(codes):
        world_axis, sign = _WORLD_AXIS[code]
        direction[world_axis, array_axis] = sign * spacing[array_axis]
    affine = np.eye(4)
    affine[:3, :3] = _rotation(*oblique) @ direction
    affine[:3, 3] = origin
    return affine


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, codes: int = 1) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=codes)
    img.header.set_sform(affine, code=codes)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


def world(affine: np.ndarray, shape) -> np.ndarray:
    """World coordinates (3, *shape) of every voxel centre of a grid."""
    idx = np.indices(shape).reshape(3, -1).astype(np.float64)
    return (affine[:3, :3] @ idx + affine[:3, 3:4]).reshape((3, *shape))


def smooth(xyz: np.ndarray) -> np.ndarray:
    x, y, z = xyz
    return np.sin(x / 6.0) + np.cos(y / 7.0) + z / 10.0


ORIENTATIONS = [("L", "P", "S"), ("P", "S", "R"), ("R", "A", "S"), ("I", "L", "A"), ("A", "I", "L")]


@pytest.mark.parametrize("codes", ORIENTATIONS)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_reorientation_round_trip_is_exact(tmp_path, codes, suffix):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(5, 6, 7)).astype(np.float32)
    affine = make_affine(codes, spacing=(0.9, 1.3, 2.5))
    path = write_nifti(tmp_path / f"img{suffix}", data, affine)

    arr, geom = load_volume(path, axcodes=("R", "A", "S"))
    assert nib.aff2axcodes(geom.working_affine) == ("R", "A", "S")
    assert not geom.resampled
    assert geom.original_shape == (5, 6, 7)
    assert arr.shape == geom.working_shape
    np.testing.assert_allclose(sorted(geom.working_spacing), sorted((0.9, 1.3, 2.5)), rtol=1e-6)
    back = to_original_grid(arr, geom)
    assert back.dtype == np.float32 and back.shape == data.shape
    assert np.array_equal(back, data)
    # trailing channels go back the same way
    stacked = to_original_grid(np.stack([arr, 2 * arr], axis=-1), geom)
    assert np.array_equal(stacked[..., 0], data) and np.array_equal(stacked[..., 1], 2 * data)


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_working_affine_points_at_the_same_voxels(tmp_path, codes):
    shape = (5, 6, 7)
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    affine = make_affine(codes, spacing=(1.1, 0.8, 2.0))
    arr, geom = load_volume(write_nifti(tmp_path / "idx.nii.gz", data, affine), axcodes="RAS")
    xyz = world(geom.working_affine, arr.shape).reshape(3, -1)
    inv = np.linalg.inv(affine)
    ijk = np.rint(inv[:3, :3] @ xyz + inv[:3, 3:4]).astype(int)
    assert np.array_equal(data[tuple(ijk)], arr.reshape(-1))


def test_no_axcodes_keeps_file_axes(tmp_path):
    data = np.random.default_rng(1).normal(size=(4, 5, 6)).astype(np.float32)
    affine = make_affine(("P", "S", "R"))
    arr, geom = load_volume(write_nifti(tmp_path / "a.nii", data, affine))
    assert np.array_equal(arr, data)
    assert np.array_equal(geom.orientation, [[0, 1], [1, 1], [2, 1]])
    np.testing.assert_allclose(geom.working_affine, affine)


def test_pixdim_within_tolerance_does_not_resample(tmp_path):
    data = np.random.default_rng(2).normal(size=(6, 6, 6)).astype(np.float32)
    path = write_nifti(tmp_path / "a.nii.gz", data, make_affine(("L", "P", "S"), spacing=(1.0, 1.0005, 1.0)))
    arr, geom = load_volume(path, axcodes="RAS", pixdim=(1.0, 1.0, 1.0))
    assert not geom.resampled
    assert np.array_equal(to_original_grid(arr, geom), data)


@pytest.mark.parametrize(
    "spacing, shape, expected_shape",
    [((1.0, 1.0, 1.0), (24, 24, 24), (12, 12, 12)), ((1.0, 1.5, 3.0), (24, 20, 10), (12, 15, 15))],
)
def test_resampling_follows_world_coordinates_and_inverts(tmp_path, spacing, shape, expected_shape):
    affine = make_affine(("L", "P", "S"), spacing=spacing)
    data = smooth(world(affine, shape)).astype(np.float32)
    arr, geom = load_volume(write_nifti(tmp_path / "s.nii.gz", data, affine), axcodes="RAS", pixdim=(2, 2, 2))

    assert geom.resampled
    assert geom.working_shape == expected_shape
    assert geom.working_spacing == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(nib.affines.voxel_sizes(geom.working_affine), 2.0, rtol=1e-9)
    assert nib.aff2axcodes(geom.working_affine) == ("R", "A", "S")
    # the working grid has the same centre in world space
    centre = lambda aff, shp: aff[:3, :3] @ ((np.array(shp) - 1) / 2) + aff[:3, 3]  # noqa: E731
    np.testing.assert_allclose(centre(geom.working_affine, geom.working_shape), centre(affine, shape), atol=1e-9)
    # resampled values are the function at the working voxels' world positions
    expected = smooth(world(geom.working_affine, geom.working_shape))
    np.testing.assert_allclose(arr[1:-1, 1:-1, 1:-1], expected[1:-1, 1:-1, 1:-1], atol=0.05)
    # and the inverse mapping lands back on the file's voxels
    back = to_original_grid(arr, geom, interp_order=1)
    assert back.shape == shape
    np.testing.assert_allclose(back[2:-2, 2:-2, 2:-2], data[2:-2, 2:-2, 2:-2], atol=0.06)
    assert np.max(np.abs(back - data)) < 0.25  # borders: nearest-edge extrapolation only


@pytest.mark.parametrize(
    "spacing, block",
    [((1.0, 1.0, 1.0), (2, 2, 2)), ((1.0, 1.0, 2.0), (2, 2, 1)), ((0.5, 1.0, 1.0), (4, 2, 2))],
)
@pytest.mark.parametrize("codes", [("L", "P", "S"), ("P", "S", "R")])
def test_labels_survive_resampling_round_trip_exactly(tmp_path, spacing, block, codes):
    rng = np.random.default_rng(3)
    blocks = rng.choice(np.array([0, 1, 2, 4], dtype=np.uint8), size=(4, 5, 3))
    labels = np.kron(blocks, np.ones(block, dtype=np.uint8))
    affine = make_affine(codes, spacing=spacing)
    path = write_nifti(tmp_path / "seg.nii.gz", labels, affine)

    arr, geom = load_volume(path, axcodes="RAS", pixdim=(2, 2, 2), interp_order=0, dtype=np.int16)
    assert geom.resampled and arr.dtype == np.int16
    assert np.array_equal(arr, nio.apply_orientation(blocks, geom.orientation))
    back = to_original_grid(arr, geom, interp_order=0)
    assert back.dtype == np.int16
    assert np.array_equal(back, labels)

    out = save_like(arr, geom, tmp_path / "out" / "seg_pred.nii.gz", dtype=np.uint8)
    written = nib.load(str(out))
    assert np.array_equal(np.asanyarray(written.dataobj), labels)
    assert written.get_data_dtype() == np.uint8


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_save_like_keeps_grid_header_and_values(tmp_path, suffix):
    data = np.random.default_rng(4).normal(size=(5, 6, 7)).astype(np.float32)
    affine = make_affine(("P", "S", "R"), spacing=(0.9, 1.2, 2.5))
    src = write_nifti(tmp_path / f"src{suffix}", data, affine, codes=1)
    arr, geom = load_volume(src, axcodes="RAS")

    out = save_like(arr * 3, geom, tmp_path / f"out{suffix}")
    img = nib.load(str(out))
    assert img.shape == data.shape
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    np.testing.assert_allclose(img.header.get_zooms(), nib.load(str(src)).header.get_zooms())
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert np.array_equal(np.asanyarray(img.dataobj), data * 3)


def test_save_like_resets_scaling_so_labels_are_exact(tmp_path):
    labels = np.kron(np.array([0, 1, 2, 4], dtype=np.float32).reshape(1, 2, 2), np.ones((4, 2, 3), np.float32))
    src = tmp_path / "scaled.nii.gz"
    img = nib.Nifti1Image(labels.astype(np.int16), make_affine())
    img.header.set_slope_inter(0.5, 10.0)  # a scaled input must not leak its scaling into outputs
    nib.save(img, str(src))
    arr, geom = load_volume(src, axcodes="RAS", interp_order=0)
    out = save_like(np.zeros_like(arr) + 4.0, geom, tmp_path / "lab.nii.gz", dtype=np.uint8)
    written = nib.load(str(out))
    assert written.header.get_slope_inter() in ((None, None), (1.0, 0.0))
    assert np.array_equal(np.asarray(written.dataobj), np.full(labels.shape, 4, np.uint8))


def test_trailing_singleton_dims_are_squeezed(tmp_path):
    data = np.random.default_rng(5).normal(size=(4, 5, 6, 1, 1)).astype(np.float32)
    path = write_nifti(tmp_path / "t.nii.gz", data, make_affine())
    arr, geom = load_volume(path, axcodes="RAS")
    assert geom.original_shape == (4, 5, 6)
    assert np.array_equal(to_original_grid(arr, geom), data[..., 0, 0])
    shape, affine, zooms = read_header_only(path)
    assert shape == (4, 5, 6) and affine.shape == (4, 4) and len(zooms) == 3
    out = save_like(arr, geom, tmp_path / "t_out.nii.gz")
    assert nib.load(str(out)).shape == (4, 5, 6)


def test_read_header_only(tmp_path):
    affine = make_affine(spacing=(0.9, 1.2, 2.5))
    path = write_nifti(tmp_path / "h.nii.gz", np.zeros((3, 4, 5), np.float32), affine)
    shape, aff, zooms = read_header_only(path)
    assert shape == (3, 4, 5)
    np.testing.assert_allclose(aff, affine, atol=1e-5)
    np.testing.assert_allclose(zooms, (0.9, 1.2, 2.5), rtol=1e-5)


def test_to_original_grid_rejects_wrong_shape(tmp_path):
    _, geom = load_volume(write_nifti(tmp_path / "a.nii", np.zeros((3, 4, 5), np.float32), make_affine()))
    with pytest.raises(ValueError, match="working grid"):
        to_original_grid(np.zeros((3, 4, 4)), geom)


# ---------------------------------------------------------------------------------------- errors


def _valid_bytes(tmp_path, suffix):
    data = np.random.default_rng(6).normal(size=(16, 16, 16)).astype(np.float32)
    return write_nifti(tmp_path / f"valid{suffix}", data, make_affine()).read_bytes()


def _missing(tmp_path):
    return tmp_path / "nope_t1.nii.gz"


def _garbage_gz(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"this is not gzip at all" * 50)
    return path


def _garbage_nii(tmp_path):
    path = tmp_path / "garbage.nii"
    path.write_bytes(b"\x00not a nifti header" * 40)
    return path


def _empty(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    return path


def _truncated_gz_data(tmp_path):
    raw = _valid_bytes(tmp_path, ".nii.gz")
    path = tmp_path / "trunc.nii.gz"
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _truncated_gz_header(tmp_path):
    raw = _valid_bytes(tmp_path, ".nii.gz")
    path = tmp_path / "trunc_head.nii.gz"
    path.write_bytes(raw[:60])
    return path


def _truncated_nii(tmp_path):
    raw = _valid_bytes(tmp_path, ".nii")
    path = tmp_path / "trunc.nii"
    path.write_bytes(raw[: len(raw) - 1000])
    return path


def _corrupt_gz(tmp_path):
    data = np.zeros((16, 16, 16), np.float32)
    data[4:8] = 1.0
    raw = bytearray(write_nifti(tmp_path / "ok.nii.gz", data, make_affine()).read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 6] = bytes(b ^ 0xFF for b in raw[middle : middle + 6])  # damage the deflate stream
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(bytes(raw))
    return path


def _four_d(tmp_path):
    return write_nifti(tmp_path / "fourd.nii.gz", np.zeros((4, 4, 4, 2), np.float32), make_affine())


def _two_d(tmp_path):
    return write_nifti(tmp_path / "twod.nii.gz", np.zeros((4, 5), np.float32), make_affine())


def _nan(tmp_path):
    data = np.zeros((4, 4, 4), np.float32)
    data[0, 0, :3] = np.nan
    return write_nifti(tmp_path / "nan.nii.gz", data, make_affine())


def _inf(tmp_path):
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = np.inf
    return write_nifti(tmp_path / "inf.nii.gz", data, make_affine())


def _singular(tmp_path):
    singular = np.eye(4)
    singular[0, 0] = 0.0
    header = nib.Nifti1Header()
    header.set_sform(singular, code=1)  # affine=None below: nibabel writes this header as is
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), None, header=header)
    path = tmp_path / "singular.nii.gz"
    nib.save(img, str(path))
    return path


def _wrong_suffix(tmp_path):
    path = tmp_path / "image.mgz"
    path.write_bytes(b"")
    return path


def _directory(tmp_path):
    path = tmp_path / "folder.nii.gz"
    path.mkdir()
    return path


ERROR_CASES = {
    "missing": (_missing, "not found"),
    "garbage_gz": (_garbage_gz, "corrupt"),
    "garbage_nii": (_garbage_nii, "cannot read"),
    "empty": (_empty, "cannot read"),
    "truncated_gz_data": (_truncated_gz_data, "truncated"),
    "truncated_gz_header": (_truncated_gz_header, "truncated"),
    "truncated_nii": (_truncated_nii, "truncated"),
    "corrupt_gz": (_corrupt_gz, "corrupt"),
    "four_d": (_four_d, "expected a 3-D image, got shape (4, 4, 4, 2)"),
    "two_d": (_two_d, "expected a 3-D image, got shape (4, 5)"),
    "nan": (_nan, "contains 3 non-finite voxels"),
    "inf": (_inf, "contains 1 non-finite voxels"),
    "singular": (_singular, "not invertible"),
    "wrong_suffix": (_wrong_suffix, ".nii or .nii.gz"),
    "directory": (_directory, "expected a NIfTI file"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_load_errors_name_the_file_on_one_line(tmp_path, case):
    make, fragment = ERROR_CASES[case]
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        load_volume(path, axcodes="RAS")
    message = str(info.value)
    assert str(path) in message
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize("case", ["missing", "garbage_gz", "four_d", "two_d", "singular", "wrong_suffix"])
def test_read_header_only_errors(tmp_path, case):
    make, fragment = ERROR_CASES[case]
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        read_header_only(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_nan_policy_zero_replaces_and_warns(tmp_path, caplog):
    path = _nan(tmp_path)
    with caplog.at_level(logging.WARNING, logger="uhved_tf.io.nifti"):
        arr, _ = load_volume(path, nan_policy="zero")
    assert np.all(np.isfinite(arr)) and np.all(arr == 0)
    assert any("3 non-finite" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------- writing


def _geom(tmp_path):
    data = np.random.default_rng(7).normal(size=(4, 5, 6)).astype(np.float32)
    return load_volume(write_nifti(tmp_path / "src.nii.gz", data, make_affine()), axcodes="RAS")


def test_save_like_refuses_to_overwrite(tmp_path):
    arr, geom = _geom(tmp_path)
    out = tmp_path / "pred" / "sub_seg.nii.gz"
    save_like(arr, geom, out)
    before = out.read_bytes()
    with pytest.raises(DataError) as info:
        save_like(arr * 2, geom, out)
    assert str(out) in str(info.value) and "--overwrite" in str(info.value)
    assert out.read_bytes() == before
    save_like(arr * 2, geom, out, overwrite=True)
    assert np.array_equal(np.asanyarray(nib.load(str(out)).dataobj), to_original_grid(arr * 2, geom))
    assert sorted(p.name for p in out.parent.iterdir()) == ["sub_seg.nii.gz"]


def test_save_like_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    arr, geom = _geom(tmp_path)
    out = tmp_path / "pred" / "sub_seg.nii.gz"
    save_like(arr, geom, out)
    before = out.read_bytes()

    def broken_save(img, filename):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(nifti.nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_like(arr * 2, geom, out, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        save_like(arr, geom, tmp_path / "pred" / "other.nii.gz")
    assert sorted(p.name for p in out.parent.iterdir()) == ["sub_seg.nii.gz"]
    assert out.read_bytes() == before


def test_save_like_rejects_non_nifti_name_and_out_of_range(tmp_path):
    arr, geom = _geom(tmp_path)
    with pytest.raises(DataError, match=r"\.nii or \.nii\.gz"):
        save_like(arr, geom, tmp_path / "out.png")
    with pytest.raises(ValueError, match="do not fit"):
        save_like(np.full(arr.shape, 300.0), geom, tmp_path / "o.nii.gz", dtype=np.uint8)


# ----------------------------------------------------------------------- declared size (absurd headers)
# A header declaring an absurd size used to be read as declared: a MemoryError (or an attempt to
# allocate terabytes) instead of one line. The size is now checked before any voxel is read.
# name: (file name, declared shape, NIfTI-2?, what the message says, read_header_only refuses too?)
_BIG = 2**62
DECLARED = {
    "nifti1_32767_cubed_nii": ("big.nii", (32767,) * 3, False, ["(32767, 32767, 32767)", "3.52e+13 voxels", "2^31"],
                               True),
    "nifti1_32767_cubed_gz": ("big.nii.gz", (32767,) * 3, False, ["(32767, 32767, 32767)", "2^31"], True),
    "nifti2_2e55_voxels_gz": ("big2.nii.gz", (_BIG,) * 3, True, [f"({_BIG}, {_BIG}, {_BIG})", "9.81e+55 voxels"],
                              True),
    "nifti2_1e63_voxels_7d": ("big7.nii", (10**9,) * 7, True, ["1e+63 voxels", "2^31"], True),
    "nifti1_more_than_the_file": ("short.nii", (512,) * 3, False,
                                  ["(512, 512, 512) of int16 (268435456 bytes of voxels from byte 352)",
                                   "the file has only 480 bytes", "truncated"], True),
    "nifti1_more_than_decompressed": ("short.nii.gz", (512,) * 3, False,
                                      ["268435456 bytes of voxels from byte 352",
                                       "the decompressed file has only 480 bytes"], False),
}


@pytest.mark.parametrize("case", sorted(DECLARED))
def test_a_header_declaring_more_than_can_be_read_is_one_line_before_reading(tmp_path, case, monkeypatch):
    from tests.helpers import nifti_declaring

    name, shape, nifti2, fragments, header_refused = DECLARED[case]
    path = nifti_declaring(tmp_path / name, shape, nifti2=nifti2)
    if math.prod(shape) > nifti.MAX_DECLARED_VOXELS:      # refused before decompressing, not after
        def no_decompress(data):
            raise AssertionError("decompressed a file whose header declares an absurd size")
        monkeypatch.setattr(nifti.gzip, "decompress", no_decompress)
    with pytest.raises(DataError) as info:
        load_volume(path)
    message = str(info.value)
    assert message.startswith(f"{path}: the header declares shape ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message
    if header_refused:
        with pytest.raises(DataError) as info:
            read_header_only(path)
        assert str(info.value) == message
    else:   # a .nii.gz is not decompressed for a header check: only load_volume sees its length
        assert read_header_only(path)[0] == shape


def test_a_channel_of_an_absurd_4d_header_is_refused_before_decompressing(tmp_path, monkeypatch):
    from tests.helpers import nifti_declaring
    from uhved_tf.io.nifti import Channel

    path = nifti_declaring(tmp_path / "BRATS_001.nii.gz", (32767, 32767, 32767, 4))
    monkeypatch.setattr(nifti.gzip, "decompress", lambda data: pytest.fail("decompressed"))
    for read in (load_volume, read_header_only):
        with pytest.raises(DataError) as info:
            read(Channel(path, 1))
        assert str(info.value).startswith(f"{path}: the header declares shape (32767, 32767, 32767, 4) (1.41e+14")


def test_the_declared_size_limit_lets_real_volumes_through(tmp_path):
    assert nifti.MAX_DECLARED_VOXELS == 2**31 >= 512 * 512 * 512 * 4
    path = write_nifti(tmp_path / "ok.nii", np.ones((5, 6, 7), np.float32), make_affine())
    assert load_volume(path)[0].shape == (5, 6, 7) and read_header_only(path)[0] == (5, 6, 7)
