"""Reader and writers: layer data placed by the affine, and written back exactly."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _geometry import oblique_affine
from medgen3d.phantom import PHANTOM_TABLE, make_phantom
from napari_medgen3d._reader import get_reader
from napari_medgen3d._sample_data import thoracic_phantom
from napari_medgen3d._writer import write_image, write_labels


def _oblique_lps_affine() -> np.ndarray:
    return oblique_affine(15, (0.8, 1.1, 3.0), (40.0, -12.5, 7.25), flips=(-1, -1, 1))


def _layer_meta(kwargs: dict) -> dict:
    """What napari hands a writer: the layer's keyword arguments (scale, metadata, ...)."""
    return {k: v for k, v in kwargs.items() if k in ("scale", "translate", "affine", "metadata")}


def test_reader_ignores_other_files() -> None:
    assert get_reader("volume.tif") is None
    assert get_reader(["a.nii.gz", "b.png"]) is None
    assert get_reader("a.nii.gz") is not None


@pytest.mark.parametrize("oblique", [False, True])
def test_labels_round_trip_through_reader_and_writer(tmp_nifti, tmp_path: Path, oblique) -> None:
    labels = np.zeros((10, 12, 8), dtype=np.uint8)
    labels[2:5, 3:9, 1:6] = 3
    labels[6:9, 1:4, 2:3] = 7
    affine = _oblique_lps_affine() if oblique else np.diag([-0.8, -1.1, 3.0, 1.0])
    path = tmp_nifti(labels, affine, "labels.nii.gz")
    [(data, kwargs, kind)] = get_reader(str(path))(str(path))
    assert kind == "labels"
    assert data.shape == (8, 12, 10)  # (Z, Y, X) of the RAS grid
    assert ("affine" in kwargs) == oblique
    if not oblique:
        assert kwargs["scale"] == pytest.approx((3.0, 1.1, 0.8))

    out = tmp_path / "written.nii.gz"
    [written] = write_labels(str(out), data, _layer_meta(kwargs))
    back = nib.load(written)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), labels)
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    assert back.get_data_dtype() == np.uint8


def test_ct_image_is_read_as_image_and_round_trips(tmp_nifti, tmp_path: Path) -> None:
    hu = np.random.default_rng(0).normal(0, 300, (9, 7, 5)).astype(np.int16)
    path = tmp_nifti(hu, np.diag([0.7, 0.7, 2.5, 1.0]), "ct.nii.gz")
    [(data, kwargs, kind)] = get_reader(str(path))(str(path))
    assert kind == "image" and data.dtype == np.float32
    [written] = write_image(str(tmp_path / "ct_out.nii.gz"), data, _layer_meta(kwargs))
    np.testing.assert_array_equal(np.asanyarray(nib.load(written).dataobj), hu)


def test_world_position_of_a_voxel_matches_the_file(tmp_nifti) -> None:
    labels = np.zeros((6, 5, 4), dtype=np.uint8)
    labels[4, 1, 2] = 1  # file index (i, j, k)
    affine = np.diag([-2.0, 1.5, 3.0, 1.0])
    affine[:3, 3] = [10, 20, 30]
    path = tmp_nifti(labels, affine)
    [(data, kwargs, _)] = get_reader(str(path))(str(path))
    z, y, x = np.argwhere(data == 1)[0]
    world_zyx = np.array(kwargs["scale"]) * (z, y, x) + np.array(kwargs["translate"])
    expected_xyz = (affine @ [4, 1, 2, 1])[:3]
    np.testing.assert_allclose(world_zyx[::-1], expected_xyz)


def test_writer_without_recorded_geometry_uses_scale_and_translate(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    meta = {"scale": (3.0, 2.0, 1.0), "translate": (5.0, 6.0, 7.0), "metadata": {}}
    [written] = write_labels(str(tmp_path / "l.nii.gz"), data, meta)
    img = nib.load(written)
    np.testing.assert_allclose(img.affine[:3, :3], np.diag([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(img.affine[:3, 3], [7.0, 6.0, 5.0])
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data.transpose(2, 1, 0))


def test_sample_data_is_an_aligned_phantom_pair() -> None:
    (image, image_kwargs, image_kind), (labels, label_kwargs, label_kind) = thoracic_phantom()
    assert (image_kind, label_kind) == ("image", "labels")
    assert image.shape == labels.shape
    assert image_kwargs["scale"] == label_kwargs["scale"]
    assert image_kwargs["translate"] == label_kwargs["translate"]
    np.testing.assert_array_equal(labels, make_phantom(seed=0).label.data)
    assert list(label_kwargs["features"]["name"]) == list(PHANTOM_TABLE.names)


def test_labels_of_a_generated_pair_get_the_sidecar_names(tmp_nifti, tmp_path: Path) -> None:
    import json

    labels = np.zeros((6, 6, 6), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 4
    path = tmp_nifti(labels, np.eye(4), "sample_0003_label.nii.gz")
    (tmp_path / "sample_0003.json").write_text(json.dumps({"labels": PHANTOM_TABLE.to_dict()}))
    [(_, kwargs, kind)] = get_reader(str(path))(str(path))
    assert kind == "labels"
    assert list(kwargs["features"]["name"]) == list(PHANTOM_TABLE.names)
    heart = PHANTOM_TABLE.labels[4].rgba
    np.testing.assert_allclose(kwargs["colormap"].color_dict[4], heart)


def test_saving_keeps_the_files_data_type_and_scaling(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ct = rng.integers(-1024, 2000, (12, 10, 8)).astype(np.int16)
    mr = nib.Nifti1Image(rng.integers(0, 256, (12, 10, 8)).astype(np.uint8), np.eye(4))
    mr.header.set_slope_inter(0.5, 10.0)
    nib.save(nib.Nifti1Image(ct, np.eye(4)), tmp_path / "ct_image.nii.gz")
    nib.save(mr, tmp_path / "mr_image.nii.gz")
    for name, dtype, scaling in (("ct", np.int16, (1.0, 0.0)), ("mr", np.uint8, (0.5, 10.0))):
        path = str(tmp_path / f"{name}_image.nii.gz")
        [(data, kwargs, _)] = get_reader(path)(path)
        meta = _layer_meta(kwargs)
        out = tmp_path / f"{name}_saved.nii.gz"
        write_image(str(out), data, meta)
        saved = nib.load(out)
        assert saved.get_data_dtype() == dtype
        assert (saved.dataobj.slope, saved.dataobj.inter) == scaling
        original = nib.load(tmp_path / f"{name}_image.nii.gz")
        np.testing.assert_array_equal(saved.get_fdata(), original.get_fdata())
        # values that no longer fit the stored form are saved as float32
        write_image(str(out), np.asarray(data) + 0.25, meta)
        assert nib.load(out).get_data_dtype() == np.float32
