"""The procedural thoracic phantom: determinism, geometry, anatomy, HU values, writing."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from medgen3d.errors import OutputExistsError
from medgen3d.io import load_volume
from medgen3d.phantom import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    PHANTOM_TABLE,
    PhantomCase,
    make_phantom,
    write_phantoms,
)

SMALL = (16, 32, 32)
V = {name: PHANTOM_TABLE.value_of(name) for name in PHANTOM_TABLE.names}


@pytest.fixture(scope="module")
def phantom() -> PhantomCase:
    return make_phantom(0)


def _centroid(label: np.ndarray, value: int) -> np.ndarray:
    """Mean ``(z, y, x)`` voxel index of a label."""
    return np.argwhere(label == value).mean(axis=0)


# ---- determinism ----------------------------------------------------------------------------
def test_same_seed_gives_identical_arrays(phantom: PhantomCase) -> None:
    again = make_phantom(0)
    np.testing.assert_array_equal(again.image.data, phantom.image.data)
    np.testing.assert_array_equal(again.label.data, phantom.label.data)
    np.testing.assert_array_equal(again.image.affine, phantom.image.affine)
    np.testing.assert_array_equal(again.label.affine, phantom.label.affine)


def test_different_seeds_give_different_anatomy(phantom: PhantomCase) -> None:
    other = make_phantom(1)
    assert not np.array_equal(other.label.data, phantom.label.data)
    assert not np.array_equal(other.image.data, phantom.image.data)


def test_anatomy_does_not_depend_on_the_grid() -> None:
    """One seed is one patient: a finer grid samples the same shapes, it does not redraw them."""
    coarse = make_phantom(3, (32, 48, 48)).label.data
    fine = make_phantom(3, (64, 96, 96)).label.data
    for name in ("body", "right_lung", "left_lung", "heart", "spine"):
        value = V[name]
        if name != "spine":  # too thin for its volume to agree at a coarse grid
            assert (fine == value).mean() == pytest.approx((coarse == value).mean(), rel=0.1)
        # centroids as fractions of the field of view
        c_coarse = _centroid(coarse, value) / (np.array(coarse.shape) - 1)
        c_fine = _centroid(fine, value) / (np.array(fine.shape) - 1)
        np.testing.assert_allclose(c_fine, c_coarse, atol=0.03, err_msg=name)


# ---- volumes and geometry ---------------------------------------------------------------------
def test_default_phantom_has_every_label(phantom: PhantomCase) -> None:
    assert set(np.unique(phantom.label.data).tolist()) == set(PHANTOM_TABLE.values)


def test_labels_are_table_values_in_uint8(phantom: PhantomCase) -> None:
    assert phantom.label.data.dtype == np.uint8
    PHANTOM_TABLE.check_values(phantom.label.data)
    assert set(PHANTOM_TABLE.values) == set(range(9))


def test_image_is_whole_hu_float32_in_range(phantom: PhantomCase) -> None:
    image = phantom.image.data
    assert image.dtype == np.float32
    assert np.isfinite(image).all()
    assert image.min() >= -1024 and image.max() <= 3000
    np.testing.assert_array_equal(image, np.round(image))


def test_image_and_label_share_the_grid(phantom: PhantomCase) -> None:
    assert phantom.image.shape == phantom.label.shape == DEFAULT_SHAPE
    np.testing.assert_array_equal(phantom.image.affine, phantom.label.affine)
    assert phantom.image.spacing == pytest.approx(DEFAULT_SPACING)
    assert phantom.image.source_axcodes == ("R", "A", "S")


@pytest.mark.parametrize(("shape", "spacing"), [(SMALL, (2.5, 0.8, 0.7)), ((9, 12, 20), (1, 2, 3))])
def test_affine_is_ras_diagonal_centred_on_the_origin(
    shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> None:
    case = make_phantom(5, shape, spacing)
    affine = case.label.affine
    assert case.label.shape == case.image.shape == shape
    assert case.label.spacing == pytest.approx(spacing)
    assert case.image.spacing == pytest.approx(spacing)
    np.testing.assert_allclose(affine[:3, :3], np.diag(spacing[::-1]))
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    centre = [(n - 1) / 2 for n in shape[::-1]]  # voxel (x, y, z) at the middle of the grid
    np.testing.assert_allclose(affine @ [*centre, 1.0], [0, 0, 0, 1], atol=1e-9)
    # spacing is geometry only: the arrays are those of any other spacing
    np.testing.assert_array_equal(case.label.data, make_phantom(5, shape).label.data)


def test_small_grid_keeps_the_anatomy() -> None:
    case = make_phantom(11, SMALL)
    assert case.image.shape == case.label.shape == SMALL
    assert case.image.data.dtype == np.float32 and case.label.data.dtype == np.uint8
    assert set(np.unique(case.label.data).tolist()) == set(PHANTOM_TABLE.values)
    label = case.label.data
    assert _centroid(label, V["right_lung"])[2] > _centroid(label, V["left_lung"])[2]


# ---- anatomy ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_anatomy_is_where_it_belongs(seed: int) -> None:
    label = make_phantom(seed).label.data
    z_mid, _, x_mid = (np.array(label.shape) - 1) / 2
    heart, spine = _centroid(label, V["heart"]), _centroid(label, V["spine"])
    trachea = _centroid(label, V["trachea"])
    # Z grows towards the head: the trachea is above the heart, not at the lung bases.
    assert trachea[0] > heart[0]
    assert np.argwhere(label == V["trachea"])[:, 0].min() > heart[0]
    assert trachea[0] > z_mid
    # RAS: x grows towards the patient's right.
    right, left = _centroid(label, V["right_lung"]), _centroid(label, V["left_lung"])
    assert right[2] > x_mid > left[2]
    assert heart[2] < spine[2]  # the heart leans to the patient's left
    assert _centroid(label, V["aorta"])[2] < spine[2]  # descending aorta left of the spine
    # Y grows towards anterior: spine at the back, heart in front, trachea before esophagus.
    assert spine[1] < heart[1]
    assert _centroid(label, V["esophagus"])[1] < trachea[1]
    assert (label == V["spine"]).any(axis=(1, 2)).all()
    # Lungs shrink towards the diaphragm.
    lung_area = np.isin(label, [V["right_lung"], V["left_lung"]]).sum(axis=(1, 2))
    assert lung_area[label.shape[0] // 2] > lung_area[0]
    assert lung_area[label.shape[0] // 2] > 2 * lung_area[: label.shape[0] // 8].max()


def test_mean_hu_per_label_is_ordered(phantom: PhantomCase) -> None:
    image, label = phantom.image.data, phantom.label.data
    mean = {name: float(image[label == value].mean()) for name, value in V.items()}
    assert mean["background"] < -950
    for name in ("right_lung", "left_lung", "trachea"):
        assert mean[name] < -500, name
    for name in ("body", "heart"):
        assert -500 < mean[name] < mean["aorta"], name
    assert mean["aorta"] < mean["spine"]


# ---- arguments --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape", [(7, 32, 32), (16, 32), (16, 32, 32, 1), (16.0, 32, 32), (True, 32, 32), "abc", 16]
)
def test_bad_shape_is_a_value_error(shape: object) -> None:
    with pytest.raises(ValueError, match="shape"):
        make_phantom(0, shape)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spacing", [(0, 1, 1), (1, -2, 1), (1, 1), (1, 1, math.nan), (1, 1, math.inf), ("1", 1, 1)]
)
def test_bad_spacing_is_a_value_error(spacing: object) -> None:
    with pytest.raises(ValueError, match="spacing"):
        make_phantom(0, SMALL, spacing)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, 1.5, None])
def test_bad_seed_is_a_value_error(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        make_phantom(seed, SMALL)  # type: ignore[arg-type]


def test_numpy_integers_are_accepted() -> None:
    a = make_phantom(np.int64(4), np.array(SMALL), np.array([2.0, 3.0, 3.0]))
    b = make_phantom(4, SMALL, (2.0, 3.0, 3.0))
    np.testing.assert_array_equal(a.image.data, b.image.data)


# ---- writing ----------------------------------------------------------------------------------
def test_write_round_trip(tmp_path) -> None:
    calls: list[tuple[int, int]] = []
    pairs = write_phantoms(
        tmp_path, 2, seed=9, shape=SMALL, progress=lambda i, n: calls.append((i, n))
    )
    assert calls == [(1, 2), (2, 2)]
    assert [(p.name, q.name) for p, q in pairs] == [
        ("phantom_0000_image.nii.gz", "phantom_0000_label.nii.gz"),
        ("phantom_0001_image.nii.gz", "phantom_0001_label.nii.gz"),
    ]
    image_path, label_path = pairs[0]
    assert nib.load(image_path).get_data_dtype() == np.int16
    assert nib.load(label_path).get_data_dtype() == np.uint8
    image, label = load_volume(image_path, "image"), load_volume(label_path, "label")
    case_0000 = make_phantom(int(np.random.SeedSequence([9, 0]).generate_state(1)[0]), SMALL)
    np.testing.assert_array_equal(label.data, case_0000.label.data)
    np.testing.assert_allclose(image.data, case_0000.image.data)
    np.testing.assert_array_equal(image.affine, case_0000.image.affine)
    np.testing.assert_array_equal(label.affine, case_0000.label.affine)
    other = load_volume(pairs[1][1], "label")
    assert not np.array_equal(other.data, label.data)


def test_case_does_not_depend_on_the_number_written(tmp_path) -> None:
    one = write_phantoms(tmp_path / "one", 1, seed=4, shape=SMALL)
    three = write_phantoms(tmp_path / "three", 3, seed=4, shape=SMALL)
    assert len(one) == 1 and len(three) == 3
    for a, b in zip(one[0], three[0], strict=True):
        np.testing.assert_array_equal(load_volume(a).data, load_volume(b).data)


def test_existing_files_are_kept_unless_overwrite(tmp_path) -> None:
    ((image_path, label_path),) = write_phantoms(tmp_path, 1, seed=1, shape=SMALL)
    before = image_path.read_bytes(), label_path.read_bytes()
    with pytest.raises(OutputExistsError):
        write_phantoms(tmp_path, 1, seed=2, shape=SMALL)
    assert (image_path.read_bytes(), label_path.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [image_path.name, label_path.name]
    write_phantoms(tmp_path, 1, seed=2, shape=SMALL, overwrite=True)
    assert image_path.read_bytes() != before[0]


def test_a_clash_anywhere_writes_nothing(tmp_path) -> None:
    """All targets are checked first, so a refused run leaves no partial set behind."""
    clash = tmp_path / "phantom_0002_label.nii.gz"
    clash.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        write_phantoms(tmp_path, 3, seed=0, shape=SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == [clash.name]
    assert clash.read_bytes() == b"keep me"


@pytest.mark.parametrize("n", [0, -1, 2.0])
def test_bad_count_is_a_value_error(tmp_path, n: object) -> None:
    with pytest.raises(ValueError, match="number"):
        write_phantoms(tmp_path, n, seed=0, shape=SMALL)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())
