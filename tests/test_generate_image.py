"""Stages 2 and 3 composed: an image for a user's mask in the user's geometry, through
:func:`medgen3d.generate.generate_image` as ``generate --masks`` and the widget call it."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from _geometry import oblique_affine
from _stage_data import LENGTH, tiny_model
from _stage_data import TINY_DATA as DATA  # a model grid unlike the user's file
from medgen3d.errors import InputError
from medgen3d.generate import generate_image, image_for_channels
from medgen3d.io import load_volume, save_volume
from medgen3d.model import GenerativeModel
from medgen3d.progress import Progress, drain
from medgen3d.settings import GenerationSettings, RefineSettings
from medgen3d.stages.images import ImageGenerator, generate_images

REFINED = GenerationSettings(seed=1, refiner=RefineSettings(strength=0.5, steps=2, batch_size=8))


@pytest.fixture(scope="module")
def model() -> GenerativeModel:
    return tiny_model(DATA)


@pytest.fixture(scope="module")
def generator(model: GenerativeModel) -> ImageGenerator:
    return model.stage("images")


def _oblique_lps_affine() -> np.ndarray:
    """Anisotropic voxels (1.7 x 2.1 x 3.3 mm), rotated 20 degrees about z, axes L, P, S."""
    return oblique_affine(20, (1.7, 2.1, 3.3), (40.0, 25.0, -60.0), flips=(-1, -1, 1))


def _user_mask(folder: Path, extra_value: int | None = None) -> Path:
    """A label NIfTI in (x, y, z) file order: body, two lungs, a spine, on 20x18x12 voxels."""
    x, y = np.meshgrid(np.arange(20), np.arange(18), indexing="ij")
    label = np.zeros((20, 18, 12), dtype=np.uint8)
    label[(x - 10) ** 2 / 64 + (y - 9) ** 2 / 49 < 1] = 1
    label[(x - 6) ** 2 + (y - 9) ** 2 < 6] = 2
    label[(x - 14) ** 2 + (y - 9) ** 2 < 6] = 3
    label[(x - 10) ** 2 + (y - 13) ** 2 < 8] = 8
    if extra_value is not None:
        label[0, 0, :] = extra_value
    img = nib.Nifti1Image(label, _oblique_lps_affine())
    img.set_data_dtype(np.uint8)
    path = folder / "user_mask.nii.gz"
    nib.save(img, path)
    return path


def test_image_from_a_user_mask_keeps_the_users_grid_exactly(
    tmp_path: Path, model: GenerativeModel
) -> None:
    path = _user_mask(tmp_path)
    assert nib.aff2axcodes(nib.load(path).affine) == ("L", "P", "S")
    label = load_volume(path, "label")
    reports: list[Progress] = []
    image = drain(generate_image(model, label, REFINED, path), reports.append)
    assert {r.stage for r in reports} == {"images", "refiner"}
    assert image.shape == label.shape
    np.testing.assert_array_equal(image.affine, label.affine)
    assert image.source_axcodes == ("L", "P", "S")
    assert image.data.dtype == np.float32
    assert -1000.0 <= image.data.min() and image.data.max() <= 1000.0

    image_path = save_volume(image, tmp_path / "out" / "case_image.nii.gz")
    label_path = save_volume(label, tmp_path / "out" / "case_label.nii.gz")
    original = nib.load(path)
    written_image, written_label = nib.load(image_path), nib.load(label_path)
    for written in (written_image, written_label):
        assert written.shape == original.shape
        np.testing.assert_array_equal(written.affine, original.affine)
    # the label comes back unchanged, voxel for voxel
    np.testing.assert_array_equal(np.asanyarray(written_label.dataobj), original.get_fdata())


def test_image_lands_on_its_labels_in_the_users_grid(
    tmp_path: Path, model: GenerativeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a generator that paints channel c at HU -1000 + 250 c, each label's voxels in
    the user's grid must get their own intensity: any flip, transpose or shift of the
    image against the mask on the way there and back would mix them."""

    def paint(self, label, context, position, noise):
        return label.float() / 4.0 - 1.0

    monkeypatch.setattr(ImageGenerator, "generate_sequence", paint)
    path = _user_mask(tmp_path)
    image = drain(_image_from_mask_file(path, model))
    channels = DATA.labels.to_channels(load_volume(path, "label").data)
    in_plane = np.ones((1, 3, 3), dtype=bool)  # interior voxels: no interpolation across edges
    for channel in np.unique(channels).tolist():
        interior = ndimage.binary_erosion(channels == channel, in_plane)
        median = np.median(image.data[interior])
        assert median == pytest.approx(-1000.0 + 250.0 * channel, abs=1.0), channel


def test_label_value_outside_the_table_names_the_file(
    tmp_path: Path, model: GenerativeModel
) -> None:
    path = _user_mask(tmp_path, extra_value=42)
    with pytest.raises(InputError, match=r"user_mask\.nii\.gz.*42"):
        drain(_image_from_mask_file(path, model))


def test_a_volume_shorter_than_a_sequence_is_refused(
    tmp_path: Path, model: GenerativeModel
) -> None:
    label = np.zeros((16, 16, 3), dtype=np.uint8)
    path = tmp_path / "thin.nii.gz"
    nib.save(nib.Nifti1Image(label, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    with pytest.raises(InputError, match=r"thin\.nii\.gz.*fewer than one sequence"):
        drain(_image_from_mask_file(path, model))


def test_sequences_continue_their_neighbours_and_the_seed_decides(
    generator: ImageGenerator,
) -> None:
    labels = np.random.default_rng(0).integers(0, 9, (21, 16, 16)).astype(np.uint8)
    reports: list[Progress] = []
    image = drain(generate_images(generator, labels, seed=4), reports.append)
    # 21 slices in sequences of 8 overlapping by 2: starts 0, 6, 12, 13
    assert [(r.stage, r.done, r.total) for r in reports] == [("images", i, 4) for i in (1, 2, 3, 4)]
    assert image.shape == labels.shape and image.dtype == np.float32
    assert np.abs(image).max() <= 1.0
    np.testing.assert_array_equal(reports[-1].preview, image)
    np.testing.assert_array_equal(image, drain(generate_images(generator, labels, seed=4)))
    assert not np.array_equal(image, drain(generate_images(generator, labels, seed=5)))


def test_strength_zero_skips_the_refiner(model: GenerativeModel) -> None:
    labels = np.zeros((LENGTH, 16, 16), dtype=np.uint8)
    reports: list[Progress] = []
    skip = GenerationSettings(refiner=RefineSettings(strength=0.0))
    refined = drain(image_for_channels(model, labels, skip), reports.append)
    assert {r.stage for r in reports} == {"images"}
    without = GenerativeModel(DATA, {"images": model.stage("images")}, {}, "tiny", "0" * 64)
    plain = drain(image_for_channels(without, labels, GenerationSettings()))
    np.testing.assert_array_equal(refined, plain)


def test_regenerating_a_region_keeps_every_other_slice(generator: ImageGenerator) -> None:
    labels = np.random.default_rng(1).integers(0, 9, (21, 16, 16)).astype(np.uint8)
    before = drain(generate_images(generator, labels, seed=4))
    region = np.zeros(21, dtype=bool)
    region[9:12] = True
    reports: list[Progress] = []
    after = drain(
        generate_images(generator, labels, seed=7, previous=before, region=region),
        reports.append,
    )
    np.testing.assert_array_equal(after[~region], before[~region])
    assert not np.array_equal(after[region], before[region])
    # only the sequence at start 6 (of 0, 6, 12, 13) touches slices 9..11
    assert [r.total for r in reports] == [1]


def _image_from_mask_file(path: Path, model: GenerativeModel):
    """What ``generate --masks`` does with one file: load it, and name it in errors."""
    plain = GenerationSettings(refiner=RefineSettings(strength=0.0))
    return generate_image(model, load_volume(path, "label"), plain, source=path)
