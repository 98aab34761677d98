"""A generated pair as DICOM: an image series and a DICOM SEG object that references it.

Radiologists read images in DICOM viewers (PACS, 3D Slicer, OHIF), not NIfTI. For each pair
this writes, in one folder:

* ``image/IM00001.dcm ...``: one CT or MR Image Storage instance per axial slice, placed
  by Image Position / Orientation (Patient) taken from the volume's affine (converted from
  RAS to DICOM's LPS), with new Study, Series and SOP Instance UIDs. CT values are stored as
  whole Hounsfield units (int16, rescale slope 1, intercept 0); MR values (``[0, 1]`` on
  the model's scale) as 12-bit integers.
* ``seg.dcm``: a binary DICOM Segmentation (highdicom) of every label of the table present
  in the pair, with its name and colour, referencing the image series.

Everything is marked as synthetic: Synthetic Data ``YES``, Image Type ``DERIVED``, a series
description that says so, and a patient name of ``Synthetic^MedGen3D``.
"""

from __future__ import annotations

import datetime
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from medgen3d import __version__
from medgen3d.errors import InputError
from medgen3d.io import Volume, atomic_folder
from medgen3d.labels import LabelTable

__all__ = ["MR_LEVELS", "write_dicom_pair"]

# MR intensities in [0, 1] are stored as integers 0 .. MR_LEVELS (12 bits, as scanners do).
MR_LEVELS = 4095
# RAS (NIfTI, this package) to LPS (DICOM patient coordinates).
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def write_dicom_pair(
    image: Volume,
    label: Volume,
    table: LabelTable,
    modality: str,
    out: str | Path,
    *,
    name: str = "MedGen3D synthetic",
    overwrite: bool = False,
) -> Path:
    """Write ``image`` as a DICOM series and ``label`` as a DICOM SEG into ``out``.

    Args:
        image: the image in physical units (HU for CT, ``[0, 1]`` for MR).
        label: its label map in ``table``'s values, on the image's grid.
        table: names and colours of the segments.
        modality: ``"ct"`` or ``"mri"`` (``"mr"``).
        out: the pair's folder (``image/`` and ``seg.dcm`` go inside); written as a whole
            or not at all.
        name: the series descriptions start with it.
        overwrite: replace an existing folder.

    Returns:
        ``out``.
    """
    ct = modality.lower() == "ct"
    study = _study(name)
    with atomic_folder(out, overwrite=overwrite) as staging:
        slices = _image_series(image, study, ct, name)
        (staging / "image").mkdir()
        for index, dataset in enumerate(slices, start=1):
            dataset.save_as(staging / "image" / f"IM{index:05d}.dcm", enforce_file_format=True)
        _segmentation(slices, label, table, name).save_as(staging / "seg.dcm")
    return Path(out)


def _study(name: str) -> Dataset:
    """Patient and study attributes shared by the series and the segmentation."""
    now = datetime.datetime.now()
    study = Dataset()
    study.PatientName = "Synthetic^MedGen3D"
    study.PatientID = "MEDGEN3D-SYNTHETIC"
    study.PatientBirthDate = ""
    study.PatientSex = "O"
    study.StudyInstanceUID = generate_uid()
    study.StudyDate = now.strftime("%Y%m%d")
    study.StudyTime = now.strftime("%H%M%S")
    study.StudyID = "1"
    study.AccessionNumber = ""
    study.ReferringPhysicianName = ""
    study.StudyDescription = f"{name} (not a patient)"
    study.FrameOfReferenceUID = generate_uid()
    return study


def _lps_view(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """``volume``'s data with its in-plane axes flipped where they run against DICOM's
    patient axes, and the LPS affine of that array (columns: x, y, z, origin).

    Viewers show row 0 at the top and column 0 at the left; with columns running toward the
    patient's left and rows toward posterior, a slice appears in radiological convention.
    """
    data, affine = volume.data, _RAS_TO_LPS @ volume.affine[:3]
    for axis, array_axis in ((0, 2), (1, 1)):  # x is the last array axis, y the middle one
        direction = affine[:, axis]
        if direction[np.argmax(np.abs(direction))] < 0:
            data = np.flip(data, axis=array_axis)
            affine = affine.copy()
            affine[:, 3] += (volume.shape[array_axis] - 1) * direction
            affine[:, axis] = -direction
    return np.ascontiguousarray(data), affine


def _image_series(image: Volume, study: Dataset, ct: bool, name: str) -> list[Dataset]:
    data, affine = _lps_view(image)
    row_direction, column_direction = (affine[:, i] / np.linalg.norm(affine[:, i]) for i in (0, 1))
    spacing_x, spacing_y, spacing_z = (float(np.linalg.norm(affine[:, i])) for i in range(3))
    if ct:
        pixels = np.clip(np.rint(data), -32768, 32767).astype(np.int16)
    else:
        pixels = np.rint(np.clip(data, 0.0, 1.0) * MR_LEVELS).astype(np.uint16)
    series_uid = generate_uid()
    slices = []
    for z in range(image.shape[0]):
        ds = Dataset()
        ds.update(study)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage if ct else MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality = "CT" if ct else "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 1
        ds.SeriesDescription = f"{name} {'CT' if ct else 'MR'} (synthetic)"
        ds.InstanceNumber = z + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SyntheticData = "YES"
        ds.BurnedInAnnotation = "NO"
        ds.Manufacturer = "MedGen3D"
        ds.ManufacturerModelName = "napari-medgen3d"
        ds.SoftwareVersions = __version__
        ds.ImagePositionPatient = [float(v) for v in affine @ [0, 0, z, 1]]
        ds.ImageOrientationPatient = [float(v) for v in (*row_direction, *column_direction)]
        ds.PixelSpacing = [spacing_y, spacing_x]  # between rows, between columns
        ds.SliceThickness = spacing_z
        ds.PositionReferenceIndicator = ""
        ds.Rows, ds.Columns = image.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16 if ct else 12
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if ct else 0
        if ct:
            ds.RescaleIntercept = 0
            ds.RescaleSlope = 1
            ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(pixels[z]).tobytes()
        slices.append(ds)
    return slices


def _segmentation(
    slices: list[Dataset], label: Volume, table: LabelTable, name: str
) -> hd.seg.Segmentation:
    channels = table.to_channels(_lps_view(label)[0])
    present = [c for c in range(1, len(table)) if (channels == c).any()]
    if not present:
        raise InputError("the label map holds no labelled voxel: there is nothing to segment")
    # segment numbers run 1..n over the labels present, in table order
    segments = np.zeros_like(channels)
    for number, channel in enumerate(present, start=1):
        segments[channels == channel] = number
    algorithm = hd.AlgorithmIdentificationSequence(
        name="MedGen3D", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=table.names[channel],
            segmented_property_category=codes.cid7150.AnatomicalStructure,
            segmented_property_type=codes.cid7150.AnatomicalStructure,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(
                *(round(255 * v) for v in table.labels[channel].rgba[:3])
            ),
        )
        for number, channel in enumerate(present, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=[pydicom.dcmread(_as_file(ds)) for ds in slices],
        pixel_array=segments.astype(np.uint8 if len(present) < 256 else np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="MedGen3D",
        manufacturer_model_name="napari-medgen3d",
        software_versions=__version__,
        device_serial_number="0",
        series_description=f"{name} labels (synthetic)",
    )
    seg.SyntheticData = "YES"
    return seg


def _as_file(ds: Dataset) -> BytesIO:
    """``ds`` round-tripped through bytes, as highdicom expects datasets read from files."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return buffer
