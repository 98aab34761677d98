"""NIfTI in and out: exact geometry, bit-identical round trips, clear errors, atomic writes."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt

from medgen3d.errors import InputError, OutputExistsError
from medgen3d.io import (
    Volume,
    atomic_output,
    load_pair,
    load_volume,
    load_volume_any,
    save_volume,
)

ORIGIN = (-30.5, 12.25, 40.0)
RAW_SHAPE = (5, 6, 7)  # on-disk (i, j, k); all different so that a wrong permutation shows


def _rotation(axis: str, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(4)
    r[i, i] = r[j, j] = c
    r[i, j], r[j, i] = -s, s
    return r


def _aligned(axcodes: str, zooms: tuple[float, float, float]) -> np.ndarray:
    """Axis-aligned affine whose file axes point along ``axcodes`` with ``zooms`` mm."""
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for i, (axis, sign) in enumerate(axcodes2ornt(tuple(axcodes))):
        affine[int(axis), i] = sign * zooms[i]
    affine[:3, 3] = ORIGIN
    return affine


def _translated(affine: np.ndarray) -> np.ndarray:
    out = affine.copy()
    out[:3, 3] = ORIGIN
    return out


# id -> (affine, expected source axcodes, expected spacing in (Z, Y, X) order)
GEOMETRIES = {
    "LPS": (_aligned("LPS", (0.8, 0.9, 2.0)), ("L", "P", "S"), (2.0, 0.9, 0.8)),
    "LIA": (_aligned("LIA", (1.0, 1.2, 0.7)), ("L", "I", "A"), (1.2, 0.7, 1.0)),
    "RAS": (_aligned("RAS", (0.5, 0.6, 3.0)), ("R", "A", "S"), (3.0, 0.6, 0.5)),
    "oblique": (
        _translated(_rotation("z", 20) @ np.diag([0.7, 0.9, 2.5, 1.0])),
        ("R", "A", "S"),
        (2.5, 0.9, 0.7),
    ),
    "oblique_LIA": (
        _translated(_rotation("x", 20) @ _rotation("z", 20) @ _aligned("LIA", (0.7, 0.9, 2.5))),
        ("L", "I", "A"),
        (0.9, 2.5, 0.7),
    ),
    "oblique_PSL": (
        _translated(_rotation("y", 25) @ _aligned("PSL", (0.7, 0.9, 2.5))),
        ("P", "S", "L"),
        (0.9, 0.7, 2.5),
    ),
}


def _unique_volume(dtype=np.float32) -> np.ndarray:
    return (np.arange(np.prod(RAW_SHAPE)).reshape(RAW_SHAPE) + 1).astype(dtype)


def _homogeneous(indices: np.ndarray) -> np.ndarray:
    return np.vstack([indices, np.ones(indices.shape[1])])


# ---- geometry ---------------------------------------------------------------------------


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_load_maps_every_voxel_to_its_world_position(tmp_nifti, geometry, suffix):
    affine, axcodes, spacing = GEOMETRIES[geometry]
    raw = _unique_volume()
    path = tmp_nifti(raw, affine, f"{geometry}{suffix}")
    disk_affine = nib.load(path).affine  # float32-rounded like any file on disk
    np.testing.assert_allclose(disk_affine, affine, atol=1e-4)

    vol = load_volume(path)

    assert vol.source_axcodes == axcodes
    assert vol.data.dtype == np.float32
    assert vol.shape == tuple(int(s) for s in vol.data.shape)
    np.testing.assert_allclose(vol.spacing, spacing, rtol=1e-6)
    assert sorted(vol.data.shape) == sorted(RAW_SHAPE)
    # Canonical grid: closest to RAS, slice index z grows towards superior.
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.affine[2, 2] > 0
    if not geometry.startswith("oblique"):
        assert np.count_nonzero(vol.affine[:3, :3]) == 3
        assert (np.diag(vol.affine)[:3] > 0).all()
    # Same values, and each one sits at the world position it had in the file.
    np.testing.assert_array_equal(np.sort(vol.data, axis=None), np.sort(raw, axis=None))
    z, y, x = np.indices(vol.shape).reshape(3, -1)
    values = vol.data[z, y, x].astype(np.int64)
    source_index = np.array(np.unravel_index(values - 1, raw.shape))
    np.testing.assert_array_equal(raw[tuple(source_index)], values)
    world_loaded = vol.affine @ _homogeneous(np.vstack([x, y, z]))
    world_source = disk_affine @ _homogeneous(source_index)
    np.testing.assert_allclose(world_loaded, world_source, atol=1e-4)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_save_writes_the_original_array_and_affine_back(tmp_nifti, tmp_path, geometry, suffix):
    affine, axcodes, _ = GEOMETRIES[geometry]
    raw = _unique_volume()
    header = nib.Nifti1Header()
    header["descrip"] = b"medgen3d round trip"
    header.set_xyzt_units("mm", "sec")
    source = tmp_nifti(raw, affine, f"source{suffix}", header=header)
    original = nib.load(source)

    written = save_volume(load_volume(source), tmp_path / f"saved{suffix}")

    assert written == tmp_path / f"saved{suffix}"
    saved = nib.load(written)
    saved_raw = np.asanyarray(saved.dataobj)
    assert saved.get_data_dtype() == original.get_data_dtype()
    assert saved_raw.dtype == raw.dtype
    assert saved_raw.shape == raw.shape
    assert saved_raw.tobytes() == np.asanyarray(original.dataobj).tobytes()
    np.testing.assert_allclose(saved.affine, original.affine, atol=1e-6)
    assert nib.aff2axcodes(saved.affine) == axcodes
    # Both header transforms are set, and agree with the data's geometry.
    assert int(saved.header["sform_code"]) > 0
    assert int(saved.header["qform_code"]) > 0
    np.testing.assert_allclose(saved.header.get_qform(), original.affine, atol=1e-4)
    np.testing.assert_allclose(saved.header.get_zooms(), original.header.get_zooms(), rtol=1e-6)
    assert saved.header.get_xyzt_units()[0] == "mm"
    assert saved.header["descrip"].tobytes().rstrip(b"\0") == b"medgen3d round trip"
    # A second round trip is stable too.
    again = load_volume(written)
    assert again.source_axcodes == axcodes
    np.testing.assert_array_equal(again.data, load_volume(source).data)


def test_saved_gz_is_compressed_and_nii_is_not(tmp_path):
    vol = Volume(np.zeros((3, 4, 5), np.float32), np.eye(4))
    gz = save_volume(vol, tmp_path / "a.nii.gz")
    plain = save_volume(vol, tmp_path / "a.nii")
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
    assert plain.read_bytes()[:2] != b"\x1f\x8b"
    assert gzip.decompress(gz.read_bytes()) == plain.read_bytes()


@pytest.mark.parametrize(
    ("dtype", "values", "geometry"),
    [
        (np.uint8, [0, 1, 5, 255], "LPS"),
        (np.uint16, [0, 2, 7, 300], "LIA"),
        (np.uint16, [0, 1, 65535], "oblique"),
    ],
)
def test_label_round_trip_is_bit_identical(tmp_nifti, tmp_path, dtype, values, geometry):
    affine, axcodes, _ = GEOMETRIES[geometry]
    rng = np.random.default_rng(0)
    raw = rng.choice(np.array(values, dtype=dtype), size=RAW_SHAPE)
    header = nib.Nifti1Header()
    header.set_intent("label")
    source = tmp_nifti(raw, affine, "label.nii.gz", header=header)

    vol = load_volume(source, "label")

    assert vol.data.dtype == dtype
    assert vol.source_axcodes == axcodes
    canonical = nib.as_closest_canonical(nib.load(source))
    np.testing.assert_array_equal(vol.data, np.asanyarray(canonical.dataobj).transpose(2, 1, 0))
    saved = nib.load(save_volume(vol, tmp_path / "saved_label.nii.gz"))
    saved_raw = np.asanyarray(saved.dataobj)
    assert saved_raw.dtype == dtype
    assert saved_raw.tobytes() == raw.tobytes()
    np.testing.assert_allclose(saved.affine, nib.load(source).affine, atol=1e-6)
    assert saved.header.get_intent()[0] == "label"


@pytest.mark.parametrize(
    ("stored", "expected_dtype"),
    [
        (np.array([0, 3, 300], np.int16), np.uint16),
        (np.array([0, 3, 200], np.int32), np.uint8),
        (np.array([0.0, 1.0, 2.0], np.float32), np.uint8),
        (np.array([0.0, 1.0, 256.0], np.float64), np.uint16),
    ],
)
def test_label_values_become_the_smallest_unsigned_type(tmp_nifti, stored, expected_dtype):
    raw = np.resize(stored, RAW_SHAPE)
    vol = load_volume(tmp_nifti(raw, np.eye(4), "lab.nii.gz"), "label")
    assert vol.data.dtype == expected_dtype
    np.testing.assert_array_equal(vol.data, raw.transpose(2, 1, 0))


@pytest.mark.parametrize("kind", ["image", "label"])
def test_4d_with_a_single_volume_is_accepted(tmp_nifti, kind):
    raw = _unique_volume(np.uint16)[..., None]
    assert raw.shape == (*RAW_SHAPE, 1)
    vol = load_volume(tmp_nifti(raw, np.eye(4), "one_volume.nii.gz"), kind)
    assert vol.shape == RAW_SHAPE[::-1]
    np.testing.assert_array_equal(vol.data, raw[..., 0].transpose(2, 1, 0))


def test_5d_with_singleton_trailing_dims_is_accepted(tmp_nifti):
    raw = _unique_volume()[..., None, None]
    vol = load_volume(tmp_nifti(raw, np.eye(4), "five_d.nii.gz"))
    np.testing.assert_array_equal(vol.data, raw[..., 0, 0].transpose(2, 1, 0))


# ---- bad input ----------------------------------------------------------------------------


def _valid_bytes(tmp_path: Path, suffix: str) -> bytes:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(16, 16, 16)).astype(np.float32)  # does not compress
    path = tmp_path / f"valid{suffix}"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path.read_bytes()


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _nifti(tmp_path: Path, name: str, data: np.ndarray) -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


BAD_INPUTS = {
    "text file": (lambda d: _write(d / "notes.txt", b"not an image\n"), "image", "not a NIfTI"),
    "random bytes": (
        lambda d: _write(d / "junk.nii.gz", np.random.default_rng(2).bytes(4096)),
        "image",
        "cannot be read",
    ),
    "random bytes .nii": (
        lambda d: _write(d / "junk.nii", np.random.default_rng(3).bytes(4096)),
        "image",
        "cannot be read",
    ),
    "truncated gz": (
        lambda d: _write(d / "cut.nii.gz", (b := _valid_bytes(d, ".nii.gz"))[: len(b) // 2]),
        "image",
        "cannot be read",
    ),
    "truncated nii": (
        lambda d: _write(d / "cut.nii", (b := _valid_bytes(d, ".nii"))[: len(b) // 2]),
        "image",
        "cannot be read",
    ),
    "4D with 3 volumes": (
        lambda d: _nifti(d, "series.nii.gz", np.zeros((4, 4, 4, 3), np.float32)),
        "image",
        "3 volumes",
    ),
    "2D": (lambda d: _nifti(d, "slice.nii.gz", np.zeros((4, 5), np.float32)), "image", "2D"),
    "NaN": (
        lambda d: _nifti(d, "nan.nii.gz", np.where(np.eye(4)[..., None], np.nan, 1.0)),
        "image",
        "NaN",
    ),
    "Inf": (
        lambda d: _nifti(d, "inf.nii.gz", np.full((4, 4, 4), np.inf, np.float32)),
        "image",
        "infinite",
    ),
    "non-integer label": (
        lambda d: _nifti(d, "frac.nii.gz", np.full((4, 4, 4), 1.5, np.float32)),
        "label",
        "non-integer",
    ),
    "NaN label": (
        lambda d: _nifti(d, "nanlab.nii.gz", np.full((4, 4, 4), np.nan, np.float32)),
        "label",
        "NaN",
    ),
    "negative label": (
        lambda d: _nifti(d, "neg.nii.gz", np.resize(np.array([0, 1, -1], np.int16), (4, 4, 4))),
        "label",
        "negative",
    ),
    "missing file": (lambda d: d / "absent.nii.gz", "image", "no such file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_input_error_naming_the_file(tmp_path, case):
    make, kind, words = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(InputError) as excinfo:
        load_volume(path, kind)
    assert excinfo.value.path == path
    assert path.name in str(excinfo.value)
    assert words in str(excinfo.value)


def test_load_pair_returns_image_and_label_on_one_grid(tmp_nifti):
    affine = GEOMETRIES["LPS"][0]
    image = tmp_nifti(_unique_volume(np.int16), affine, "image.nii.gz")
    label = tmp_nifti(_unique_volume(np.uint8) % 3, affine, "label.nii.gz")
    img, lab = load_pair(image, label)
    assert img.data.dtype == np.float32
    assert lab.data.dtype == np.uint8
    assert img.shape == lab.shape
    np.testing.assert_array_equal(img.affine, lab.affine)


def test_load_pair_tolerates_float32_rounding_of_the_affine(tmp_nifti):
    affine = GEOMETRIES["oblique"][0]
    nudged = affine.copy()
    nudged[:3, :3] *= 1 + 1e-6
    image = tmp_nifti(_unique_volume(), affine, "image.nii.gz")
    label = tmp_nifti(np.zeros(RAW_SHAPE, np.uint8), nudged, "label.nii.gz")
    image_volume, label_volume = load_pair(image, label)
    # accepted, and the pair carries one geometry: the image's
    assert not np.array_equal(load_volume(label, "label").affine, image_volume.affine)
    np.testing.assert_array_equal(label_volume.affine, image_volume.affine)


@pytest.mark.parametrize("difference", ["shape", "affine"])
def test_load_pair_rejects_different_grids(tmp_nifti, difference):
    affine = GEOMETRIES["RAS"][0]
    image = tmp_nifti(_unique_volume(), affine, "image.nii.gz")
    if difference == "shape":
        label_data, label_affine = np.zeros((5, 6, 8), np.uint8), affine
    else:
        label_data, label_affine = np.zeros(RAW_SHAPE, np.uint8), affine.copy()
        label_affine[0, 3] += 0.5  # half a voxel off
    label = tmp_nifti(label_data, label_affine, "label.nii.gz")
    with pytest.raises(InputError) as excinfo:
        load_pair(image, label)
    assert excinfo.value.path == label
    message = str(excinfo.value)
    assert "label.nii.gz" in message
    assert difference in message
    assert "image.nii.gz" in message


# ---- writing ------------------------------------------------------------------------------


def _volume(fill: float) -> Volume:
    return Volume(np.full((3, 4, 5), fill, np.float32), GEOMETRIES["LPS"][0], ("L", "P", "S"))


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    path = save_volume(_volume(1.0), tmp_path / "out.nii.gz")
    before = path.read_bytes()

    with pytest.raises(OutputExistsError) as excinfo:
        save_volume(_volume(2.0), path)

    assert isinstance(excinfo.value, InputError)
    assert excinfo.value.path == path
    assert "out.nii.gz" in str(excinfo.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]

    save_volume(_volume(2.0), path, overwrite=True)
    np.testing.assert_array_equal(load_volume(path).data, np.full((3, 4, 5), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_save_rejects_a_non_nifti_name(tmp_path):
    with pytest.raises(InputError) as excinfo:
        save_volume(_volume(1.0), tmp_path / "out.png")
    assert "out.png" in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_save_with_dtype_converts(tmp_path):
    vol = Volume(np.arange(60, dtype=np.float32).reshape(3, 4, 5), np.eye(4))
    saved = nib.load(save_volume(vol, tmp_path / "u8.nii.gz", dtype=np.uint8))
    assert saved.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), vol.data.transpose(2, 1, 0))


def _failing_save(img, filename, *args, **kwargs):
    with open(filename, "wb") as handle:
        handle.write(b"half a header")
    raise RuntimeError("disk full")


@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_leaves_no_partial_or_temporary_file(tmp_path, monkeypatch, existing):
    folder = tmp_path / "out"
    path = folder / "result.nii.gz"
    before = None
    if existing:
        before = save_volume(_volume(1.0), path).read_bytes()
    monkeypatch.setattr(nib, "save", _failing_save)

    with pytest.raises(RuntimeError, match="disk full"):
        save_volume(_volume(2.0), path, overwrite=True)

    if existing:
        assert [p.name for p in folder.iterdir()] == ["result.nii.gz"]
        assert path.read_bytes() == before
    else:
        assert list(folder.iterdir()) == []


def test_atomic_output_renames_a_temporary_file_on_success(tmp_path):
    path = tmp_path / "nested" / "out.nii.gz"
    with atomic_output(path) as tmp:
        assert tmp.parent == path.parent
        assert tmp.name.startswith(".")
        assert tmp.name.endswith(".nii.gz")  # nibabel picks compression from the suffix
        assert tmp != path
        assert not path.exists()
        tmp.write_bytes(b"payload")
    assert path.read_bytes() == b"payload"
    assert not tmp.exists()
    assert [p.name for p in path.parent.iterdir()] == ["out.nii.gz"]


def test_atomic_output_cleans_up_on_error(tmp_path):
    path = tmp_path / "out.nii"
    with pytest.raises(KeyError), atomic_output(path) as tmp:
        assert tmp.name.endswith(".nii")
        tmp.write_bytes(b"partial")
        raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_refuses_an_existing_file(tmp_path):
    path = tmp_path / "out.nii.gz"
    path.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError), atomic_output(path):
        pytest.fail("the body must not run")
    assert path.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def test_atomic_output_keeps_a_file_that_appeared_while_writing(tmp_path):
    path = tmp_path / "out.nii.gz"
    with pytest.raises(OutputExistsError), atomic_output(path) as tmp:
        tmp.write_bytes(b"mine")
        path.write_bytes(b"someone else's")
    assert path.read_bytes() == b"someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def test_atomic_output_overwrites_when_asked(tmp_path):
    path = tmp_path / "out.nii.gz"
    path.write_bytes(b"old")
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.nii.gz"]


# ---- Volume -------------------------------------------------------------------------------


def test_volume_zyx_affine_matches_zyx_indexing():
    affine = GEOMETRIES["oblique"][0]
    vol = Volume(np.zeros((4, 5, 6), np.float32), affine)
    x, y, z = 5.0, 1.0, 3.0
    world_xyz = affine @ [x, y, z, 1.0]
    world_zyx = vol.zyx_affine @ [z, y, x, 1.0]
    np.testing.assert_allclose(world_zyx[:3], world_xyz[2::-1])


def test_volume_validates_its_data():
    with pytest.raises(ValueError, match="Z, Y, X"):
        Volume(np.zeros((4, 5), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="4x4"):
        Volume(np.zeros((4, 5, 6), np.float32), np.eye(3))
    vol = Volume(np.zeros((4, 5, 6), np.float32), np.eye(4), ("L", "P", "S"))
    other = vol.with_data(np.ones((4, 5, 6), np.uint8))
    assert other.source_axcodes == ("L", "P", "S")
    assert other.data.dtype == np.uint8
    with pytest.raises(ValueError, match="differs"):
        vol.with_data(np.ones((4, 5, 7), np.uint8))


# ---- real volumes ---------------------------------------------------------------------------


# mri_brain_freesurfer (LIA) is left out: compressing its 256^3 labels takes seconds.
@pytest.mark.parametrize("name", ["ct_thorax", "mri_flair_oblique"])
def test_real_label_round_trip_is_bit_identical(real_case, tmp_path, name):
    case = real_case(name)
    original = nib.load(case.label)
    vol = load_volume(case.label, "label")
    saved = nib.load(save_volume(vol, tmp_path / "label.nii.gz"))
    original_raw = np.asanyarray(original.dataobj)
    saved_raw = np.asanyarray(saved.dataobj)
    np.testing.assert_array_equal(saved_raw, original_raw)  # values; dtype may shrink
    assert saved_raw.dtype == vol.data.dtype
    np.testing.assert_allclose(saved.affine, original.affine, atol=1e-5)
    assert nib.aff2axcodes(saved.affine) == nib.aff2axcodes(original.affine)


def test_written_files_get_normal_permissions(tmp_path: Path) -> None:
    import stat

    mask = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o644


def test_an_8_bit_mri_without_a_telling_name_opens_as_an_image(tmp_path, shared_data):
    flair = nib.load(shared_data / "mri_flair_oblique" / "image.nii.gz")
    assert np.asarray(flair.dataobj).dtype == np.uint8  # whole numbers, < 256 values
    nib.save(flair, tmp_path / "scan.nii.gz")
    assert load_volume_any(tmp_path / "scan.nii.gz")[1] == "image"


@pytest.mark.parametrize("name", ["case.nii.gz", "case_seg.nii.gz"])
def test_a_float_typed_label_map_opens_as_labels(tmp_path, name):
    labels = np.zeros((20, 20, 10), np.float32)  # BraTS-2013 style: 0-4 stored as float
    labels[2:18, 3:17, 1:9] = 2.0
    labels[6:12, 6:12, 3:6] = 4.0
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / name)
    volume, kind = load_volume_any(tmp_path / name)
    assert kind == "label" and volume.data.dtype.kind == "u"
    assert set(np.unique(volume.data).tolist()) == {0, 2, 4}


def test_file_names_decide_before_content(tmp_path):
    noisy = np.random.default_rng(0).integers(0, 5, (12, 12, 6)).astype(np.uint8)
    for name, kind in (("x_label.nii.gz", "label"), ("x_image.nii.gz", "image")):
        nib.save(nib.Nifti1Image(noisy, np.eye(4)), tmp_path / name)
        assert load_volume_any(tmp_path / name)[1] == kind
    nib.save(nib.Nifti1Image(noisy, np.eye(4)), tmp_path / "x.nii.gz")
    assert load_volume_any(tmp_path / "x.nii.gz")[1] == "image"  # not piecewise constant
