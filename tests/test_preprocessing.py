"""Resampling, intensity windows and crop/pad, on synthetic and on real volumes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from _geometry import oblique_affine
from medgen3d.io import Volume, load_pair
from medgen3d.preprocessing import (
    IntensityWindow,
    Preprocessing,
    preprocess_pair,
    resample_like,
)

SHAPE = (21, 31, 41)  # (Z, Y, X)
AXIS_ALIGNED = np.array(
    [[1.0, 0, 0, -10.0], [0, 1.0, 0, 5.0], [0, 0, 2.5, 20.0], [0, 0, 0, 1]],
)


OBLIQUE = oblique_affine(20, (0.7, 0.9, 2.5), (-12.0, 3.0, 40.0))
GRADIENT = np.array([6.0, -4.0, 3.0])  # HU per mm along world (x, y, z)


def _world(volume: Volume) -> np.ndarray:
    """World (x, y, z) of every voxel, shape (3, Z, Y, X)."""
    z, y, x = np.indices(volume.shape)
    xyz1 = np.stack([x, y, z, np.ones_like(x)]).reshape(4, -1)
    return (volume.affine @ xyz1)[:3].reshape(3, *volume.shape)


def _ramp(affine: np.ndarray, shape=SHAPE) -> Volume:
    """An image whose HU value is a linear function of world position (inside the window)."""
    empty = Volume(np.zeros(shape, np.float32), affine)
    world = _world(empty)
    centre = world.reshape(3, -1).mean(axis=1)
    hu = np.tensordot(GRADIENT, world - centre[:, None, None, None], axes=1)
    return empty.with_data(hu.astype(np.float32))


def _expected_hu(volume: Volume, reference: Volume) -> np.ndarray:
    """The ramp's HU at the voxels of ``volume`` (same formula as :func:`_ramp`)."""
    centre = _world(reference).reshape(3, -1).mean(axis=1)
    return np.tensordot(GRADIENT, _world(volume) - centre[:, None, None, None], axes=1)


def _inside(volume: Volume, reference: Volume) -> np.ndarray:
    """Which voxels of ``volume`` lie within the voxel-centre box of ``reference``."""
    world = _world(volume).reshape(3, -1)
    ijk = (np.linalg.inv(reference.affine) @ np.vstack([world, np.ones(world.shape[1])]))[:3]
    upper = np.asarray(reference.shape[::-1])[:, None] - 1
    inside = ((ijk >= -1e-6) & (ijk <= upper + 1e-6)).all(axis=0)
    return inside.reshape(volume.shape)


def _labels(shape=SHAPE, values=(0, 3, 7, 300)) -> np.ndarray:
    rng = np.random.default_rng(0)
    dtype = np.uint16 if max(values) > 255 else np.uint8
    # Blocks, so that nearest-neighbour resampling keeps every value.
    coarse = rng.choice(np.array(values, dtype=dtype), size=[s // 4 + 1 for s in shape])
    return np.kron(coarse, np.ones((4, 4, 4), dtype=dtype))[: shape[0], : shape[1], : shape[2]]


def _centre(volume: Volume) -> np.ndarray:
    z, y, x = (np.asarray(volume.shape) - 1) / 2
    return (volume.affine @ [x, y, z, 1.0])[:3]


# ---- spacing -------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [AXIS_ALIGNED, OBLIQUE], ids=["axis-aligned", "oblique"])
def test_spacing_resamples_onto_the_target_grid(affine):
    image = _ramp(affine)
    label = Volume(_labels(), affine)
    target = (5.0, 2.0, 1.5)

    out_image, out_label = preprocess_pair(image, label, Preprocessing(spacing=target))

    np.testing.assert_allclose(out_image.spacing, target, rtol=1e-6)
    np.testing.assert_allclose(out_label.spacing, target, rtol=1e-6)
    np.testing.assert_allclose(out_image.affine, out_label.affine)
    assert out_image.shape == out_label.shape
    # The field of view between the first and last voxel centres is kept (+- one voxel).
    old_extent = (np.asarray(SHAPE) - 1) * np.asarray(image.spacing)
    new_extent = (np.asarray(out_image.shape) - 1) * np.asarray(target)
    assert (np.abs(new_extent - old_extent) <= np.asarray(target)).all()
    assert out_image.shape == tuple(
        round(e / t) + 1 for e, t in zip(old_extent, target, strict=True)
    )
    # Direction cosines (orientation) are unchanged; only the voxel size changes.
    old_dirs = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    new_dirs = out_image.affine[:3, :3] / np.linalg.norm(out_image.affine[:3, :3], axis=0)
    np.testing.assert_allclose(new_dirs, old_dirs, atol=1e-6)
    # Each output voxel inside the input's field of view holds the ramp's value at its own
    # world position (outside it, by up to half a voxel, MONAI repeats the border).
    inside = _inside(out_image, image)
    assert inside.mean() > 0.8
    hu = IntensityWindow().to_physical(out_image.data)
    np.testing.assert_allclose(hu[inside], _expected_hu(out_image, image)[inside], atol=0.5)
    # Nearest neighbour: no new label values, dtype kept.
    assert out_label.data.dtype == np.uint16
    assert set(np.unique(out_label.data).tolist()) <= {0, 3, 7, 300}


def test_spacing_of_a_label_map_alone():
    label = Volume(_labels(values=(0, 1, 2)), AXIS_ALIGNED)
    image, out = preprocess_pair(None, label, Preprocessing(spacing=(2.5, 2.0, 2.0)))
    assert image is None
    assert out.data.dtype == np.uint8
    assert out.shape == (21, 16, 21)
    np.testing.assert_array_equal(out.data, label.data[:, ::2, ::2])  # exact subsampling


def test_no_spacing_and_no_size_keeps_the_grid():
    image = _ramp(OBLIQUE)
    out, _ = preprocess_pair(image, None, Preprocessing())
    assert out.shape == image.shape
    np.testing.assert_allclose(out.affine, image.affine)
    assert out.source_axcodes == image.source_axcodes


def test_nothing_to_preprocess_raises():
    with pytest.raises(ValueError, match="image"):
        preprocess_pair(None, None, Preprocessing())


# ---- intensity windows ------------------------------------------------------------------


def test_ct_window_maps_and_clips():
    hu = np.array([-3000, -1000, -500, 0, 250, 1000, 1001, 4000], np.float32)
    image = Volume(np.resize(hu, (2, 2, 8)), np.eye(4))
    out, _ = preprocess_pair(image, None, Preprocessing())
    assert out.data.dtype == np.float32
    np.testing.assert_allclose(out.data[0, 0], [-1, -1, -0.5, 0, 0.25, 1, 1, 1], atol=1e-6)


def test_ct_window_inverse_is_exact_inside_the_window():
    window = IntensityWindow("ct", -160.0, 240.0)
    hu = np.linspace(-160, 240, 4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    out, _ = preprocess_pair(Volume(hu, np.eye(4)), None, Preprocessing(window=window))
    assert out.data.min() == pytest.approx(-1.0)
    assert out.data.max() == pytest.approx(1.0)
    back = window.to_physical(out.data)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, hu, atol=1e-3)
    default = IntensityWindow()
    np.testing.assert_allclose(default.to_physical(np.array([-1.0, 0.0, 1.0])), [-1000, 0, 1000])
    np.testing.assert_allclose(default.to_physical(np.array([-7.0, 3.0])), [-1000, 1000])


def test_mri_window_uses_percentiles():
    values = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    window = IntensityWindow("mri", 1.0, 99.0)
    out, _ = preprocess_pair(Volume(values, np.eye(4)), None, Preprocessing(window=window))
    assert out.data.min() == -1.0
    assert out.data.max() == 1.0
    low, high = np.percentile(values, [1, 99])
    inside = (values > low) & (values < high)
    expected = (values[inside] - low) / (high - low) * 2 - 1
    np.testing.assert_allclose(out.data[inside], expected, atol=1e-5)
    assert (out.data[values <= low] == -1).all()
    assert (out.data[values >= high] == 1).all()
    np.testing.assert_allclose(window.to_physical(np.array([-1.0, 0.0, 1.0])), [0, 0.5, 1])


@pytest.mark.parametrize(
    ("args", "words"),
    [(("pet", 0.0, 1.0), "modality"), (("ct", 100.0, 100.0), "below"), (("mri", 99, 1), "below")],
)
def test_invalid_windows_raise(args, words):
    with pytest.raises(ValueError, match=words):
        IntensityWindow(*args)


# ---- crop / pad -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(20, 30), (40, 50), (31, 41), (8, 60)])
def test_crop_or_pad_gives_the_exact_size_and_keeps_the_centre(size):
    image = _ramp(AXIS_ALIGNED)
    label = Volume(np.full(SHAPE, 3, np.uint8), AXIS_ALIGNED)

    out_image, out_label = preprocess_pair(image, label, Preprocessing(size=size))

    assert out_image.shape == (SHAPE[0], *size)
    assert out_label.shape == (SHAPE[0], *size)
    np.testing.assert_allclose(out_image.affine, out_label.affine)
    np.testing.assert_allclose(out_image.spacing, image.spacing)
    # Centre of the volume stays where it was, to within one voxel.
    shift = np.abs(_centre(out_image) - _centre(image))
    assert (shift <= np.asarray(image.spacing)[::-1] + 1e-9).all()
    # Padding: -1 (air) for images, 0 for labels; data elsewhere sits at its world position.
    padded = out_label.data == 0
    pad_rows = max(size[0] - SHAPE[1], 0) * SHAPE[0] * size[1]
    pad_cols = max(size[1] - SHAPE[2], 0) * SHAPE[0] * size[0]
    overlap = max(size[0] - SHAPE[1], 0) * max(size[1] - SHAPE[2], 0) * SHAPE[0]
    assert padded.sum() == pad_rows + pad_cols - overlap
    assert (out_image.data[padded] == -1.0).all()
    assert (out_label.data[~padded] == 3).all()
    hu = IntensityWindow().to_physical(out_image.data)
    np.testing.assert_allclose(hu[~padded], _expected_hu(out_image, image)[~padded], atol=1e-2)


def test_crop_or_pad_uses_the_window_background_for_mri():
    values = np.arange(4 * 6 * 6, dtype=np.float32).reshape(4, 6, 6)
    window = IntensityWindow("mri", 0.5, 99.5)
    out, _ = preprocess_pair(Volume(values, np.eye(4)), None, Preprocessing(size=(10, 10)))
    assert out.shape == (4, 10, 10)
    assert (out.data[:, :2] == -1).all()
    assert (out.data[:, :, -2:] == -1).all()
    out_mri, _ = preprocess_pair(
        Volume(values, np.eye(4)), None, Preprocessing(size=(10, 10), window=window)
    )
    assert (out_mri.data[:, :2] == -1).all()


# ---- back onto a user's grid --------------------------------------------------------------


def test_resample_like_onto_its_own_grid_is_identity():
    label = Volume(_labels(), OBLIQUE, ("L", "P", "S"))
    out = resample_like(label, label, "label")
    assert out.data.dtype == label.data.dtype
    assert out.data.tobytes() == label.data.tobytes()
    np.testing.assert_array_equal(out.affine, label.affine)
    assert out.source_axcodes == ("L", "P", "S")
    image = _ramp(OBLIQUE)
    out = resample_like(image, image, "image")
    assert out.data.dtype == np.float32
    np.testing.assert_allclose(out.data, image.data, atol=1e-3)


def test_resample_like_returns_to_the_reference_grid():
    reference = Volume(np.zeros(SHAPE, np.float32), OBLIQUE, ("L", "I", "A"))
    image = _ramp(OBLIQUE)
    label = Volume(_labels(), OBLIQUE)
    small_image, small_label = preprocess_pair(image, label, Preprocessing(spacing=(5.0, 1.8, 1.4)))
    assert small_image.shape != SHAPE

    back_image = resample_like(small_image, reference, "image")
    back_label = resample_like(small_label, reference, "label")

    for back in (back_image, back_label):
        assert back.shape == SHAPE
        np.testing.assert_array_equal(back.affine, reference.affine)
        assert back.source_axcodes == ("L", "I", "A")
    hu = IntensityWindow().to_physical(back_image.data)
    np.testing.assert_allclose(hu, image.data, atol=0.5)  # linear data: exact interpolation
    assert back_label.data.dtype == np.uint16
    assert set(np.unique(back_label.data).tolist()) <= {0, 3, 7, 300}
    # Blocks of 4 voxels survive a factor-2 round trip almost everywhere.
    assert (back_label.data == label.data).mean() > 0.5


# ---- real volumes -----------------------------------------------------------------------------

REAL = {
    "ct_thorax": IntensityWindow(),
    "mri_brain_freesurfer": IntensityWindow("mri", 0.5, 99.5),
    "mri_flair_oblique": IntensityWindow("mri", 0.5, 99.5),
}


def _zyx_spacing_from_header(img: nib.Nifti1Image) -> tuple[float, float, float]:
    """Header zooms of the file's axes, put in canonical (Z, Y, X) order."""
    ornt = nib.orientations.io_orientation(img.affine)
    xyz = [0.0, 0.0, 0.0]
    for file_axis, (canonical_axis, _) in enumerate(ornt):
        xyz[int(canonical_axis)] = float(img.header.get_zooms()[file_axis])
    return xyz[2], xyz[1], xyz[0]


@pytest.mark.parametrize("name", list(REAL))
def test_real_volume_loads_and_preprocesses(real_case, name):
    case = real_case(name)
    raw_image = nib.load(case.image)
    raw_label = nib.load(case.label)

    image, label = load_pair(case.image, case.label)

    assert image.source_axcodes == nib.aff2axcodes(raw_image.affine)
    assert label.source_axcodes == nib.aff2axcodes(raw_label.affine)
    np.testing.assert_allclose(image.spacing, _zyx_spacing_from_header(raw_image), rtol=1e-5)
    assert sorted(image.shape) == sorted(raw_image.shape)
    original_values = np.unique(label.data)

    preprocessing = Preprocessing(spacing=(3.0, 3.0, 3.0), size=(64, 64), window=REAL[name])
    out_image, out_label = preprocess_pair(image, label, preprocessing)

    assert out_image.shape[1:] == (64, 64)
    assert out_label.shape == out_image.shape
    expected_depth = image.shape[0] * image.spacing[0] / 3.0
    assert abs(out_image.shape[0] - expected_depth) <= 1
    np.testing.assert_allclose(out_image.spacing, (3.0, 3.0, 3.0), rtol=1e-5)
    np.testing.assert_allclose(out_label.spacing, (3.0, 3.0, 3.0), rtol=1e-5)
    np.testing.assert_allclose(out_image.affine, out_label.affine, atol=1e-6)
    assert out_image.data.dtype == np.float32
    assert out_image.data.min() >= -1.0
    assert out_image.data.max() <= 1.0
    assert out_image.data.max() > out_image.data.min()
    assert out_label.data.dtype == label.data.dtype
    assert np.isin(np.unique(out_label.data), original_values).all()
    assert np.count_nonzero(out_label.data) > 0
    assert out_image.source_axcodes == image.source_axcodes
