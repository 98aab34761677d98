"""DICOM export: an image series and a DICOM SEG that read back to the NIfTI pair."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from _geometry import oblique_affine
from medgen3d.cli import main
from medgen3d.dicom import MR_LEVELS, write_dicom_pair
from medgen3d.io import Volume, load_volume, save_volume
from medgen3d.phantom import PHANTOM_TABLE, make_phantom

highdicom = pytest.importorskip("highdicom")
dicom2nifti = pytest.importorskip("dicom2nifti")


@pytest.fixture(scope="module")
def pair() -> tuple[Volume, Volume]:
    """A phantom pair on an oblique grid (rotated 20 degrees in-plane), HU with fractions."""
    case = make_phantom(3, shape=(10, 24, 20))
    affine = oblique_affine(20.0, (1.5, 1.2, 2.5), (10.0, -20.0, 30.0))
    return Volume(case.image.data + 0.3, affine), Volume(case.label.data, affine)


def _series(folder: Path) -> list[pydicom.Dataset]:
    slices = [pydicom.dcmread(p) for p in sorted((folder / "image").glob("*.dcm"))]
    return sorted(slices, key=lambda ds: int(ds.InstanceNumber))


def test_the_series_reads_back_with_the_pairs_geometry_and_hu(pair, tmp_path: Path) -> None:
    image, label = pair
    write_dicom_pair(image, label, PHANTOM_TABLE, "ct", tmp_path / "case")
    slices = _series(tmp_path / "case")
    assert len(slices) == image.shape[0]
    first = slices[0]
    assert first.SyntheticData == "YES" and "DERIVED" in first.ImageType
    assert "synthetic" in first.SeriesDescription
    assert len({ds.SeriesInstanceUID for ds in slices}) == 1
    assert first.StudyInstanceUID != first.SeriesInstanceUID
    # dicom2nifti rebuilds the volume from positions and orientation alone
    (tmp_path / "nii").mkdir()
    dicom2nifti.convert_directory(str(tmp_path / "case" / "image"), str(tmp_path / "nii"))
    [converted] = (tmp_path / "nii").glob("*.nii*")
    back = load_volume(converted, "image")
    assert back.shape == image.shape
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-3)
    np.testing.assert_array_equal(back.data, np.rint(image.data))  # HU exact after rescale


def test_the_segmentation_holds_every_label_with_its_name_on_the_right_voxels(
    pair, tmp_path: Path
) -> None:
    image, label = pair
    write_dicom_pair(image, label, PHANTOM_TABLE, "ct", tmp_path / "case")
    seg = highdicom.seg.segread(tmp_path / "case" / "seg.dcm")
    present = [v for v in PHANTOM_TABLE.values[1:] if (label.data == v).any()]
    names = [s.SegmentLabel for s in seg.SegmentSequence]
    assert names == [PHANTOM_TABLE.names[PHANTOM_TABLE.values.index(v)] for v in present]
    assert seg.SyntheticData == "YES"
    slices = _series(tmp_path / "case")
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in slices], combine_segments=True
    )
    # each segment lies exactly where the image series has that label's tissue: compare
    # both in the series' own pixel layout
    pixels = np.stack([ds.pixel_array for ds in slices]).astype(float)
    values = np.zeros(frames.shape, dtype=np.uint8)
    for number, value in enumerate(present, start=1):
        values[frames == number] = value
    for value in present:
        expected = np.rint(image.data[label.data == value])
        np.testing.assert_array_equal(np.sort(pixels[values == value]), np.sort(expected))


def test_mr_is_stored_as_12_bit_integers(pair, tmp_path: Path) -> None:
    image, label = pair
    mr = image.with_data(np.linspace(0.0, 1.0, image.data.size).reshape(image.shape))
    write_dicom_pair(mr, label, PHANTOM_TABLE, "mri", tmp_path / "case")
    slices = _series(tmp_path / "case")
    assert slices[0].Modality == "MR" and slices[0].BitsStored == 12
    stored = np.stack([ds.pixel_array for ds in slices])
    assert stored.min() == 0 and stored.max() == MR_LEVELS


def test_export_dicom_writes_one_study_per_pair(tmp_path: Path) -> None:
    source = tmp_path / "gen"
    for i in range(2):
        case = make_phantom(i, shape=(8, 16, 16))
        save_volume(case.image, source / f"sample_{i:04d}_image.nii.gz")
        save_volume(case.label, source / f"sample_{i:04d}_label.nii.gz")
        meta = {"labels": PHANTOM_TABLE.to_dict(), "modality": "ct"}
        (source / f"sample_{i:04d}.json").write_text(json.dumps(meta))
    out = tmp_path / "dicom"
    assert main(["export", "--in", str(source), "--out", str(out), "--format", "dicom"]) == 0
    for i in range(2):
        assert len(list((out / f"sample_{i:04d}" / "image").glob("*.dcm"))) == 8
        assert (out / f"sample_{i:04d}" / "seg.dcm").is_file()
    studies = {_series(out / f"sample_{i:04d}")[0].StudyInstanceUID for i in range(2)}
    assert len(studies) == 2
