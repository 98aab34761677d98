"""Turn a folder of generated pairs into a training-ready nnU-Net or MSD dataset.

Input is what ``medgen3d generate`` writes (``CASE_image.nii.gz``, ``CASE_label.nii.gz``
and a ``CASE.json`` sidecar per sample), or any layout
:func:`medgen3d.datasets.discover_pairs` reads. Each pair is checked (readable, one grid,
label values in the table) before anything is written, files are copied atomically, and
every sidecar is kept under ``provenance/`` so a dataset can always be traced back to the
model, seed and settings that made it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np

from medgen3d import __version__
from medgen3d.datasets import CasePaths, discover_pairs
from medgen3d.errors import InputError
from medgen3d.io import atomic_folder, atomic_output, check_folder_free, load_pair, save_volume
from medgen3d.labels import LabelTable

__all__ = ["EXPORT_FORMATS", "export_dataset", "sidecar_path"]

EXPORT_FORMATS = ("nnunet", "msd", "dicom")
ExportFormat = Literal["nnunet", "msd", "dicom"]


def sidecar_path(case: CasePaths) -> Path:
    """Where the JSON sidecar of a generated pair lives (``CASE.json`` beside the image)."""
    return case.image.with_name(f"{case.name}.json")


def export_dataset(
    source: str | Path,
    out: str | Path,
    export_format: ExportFormat,
    *,
    table: LabelTable | None = None,
    name: str = "MedGen3DSynthetic",
    channel_name: str | None = None,
    label_mapping: Mapping[int, int] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``imagesTr/``, ``labelsTr/``, ``dataset.json`` and ``provenance/`` under ``out``.

    Args:
        source: folder of pairs.
        out: dataset folder; must be absent or empty unless ``overwrite``.
        export_format: ``"nnunet"`` (``CASE_0000.nii.gz`` images; labels renumbered to
            ``0 .. C-1`` when the table's values are not consecutive, as nnU-Net requires),
            ``"msd"`` (``CASE.nii.gz`` images, label values as they are) or ``"dicom"``
            (``CASE/image/*.dcm`` series and ``CASE/seg.dcm``: :mod:`medgen3d.dicom`).
        table: label names; by default the table recorded in the first sidecar.
        name: the dataset's name in ``dataset.json``.
        channel_name: the image channel's name (``CT``, ``T1``...); by default the modality
            recorded in the sidecars.
        label_mapping: translates label maps in another convention onto ``table``; the
            exported label maps hold the table's values.
        overwrite: replace an existing dataset in ``out`` wholly (it is swapped for the new
            one only once that is complete; nothing of the old one is kept).
        progress: ``progress(done, total)`` after each case.

    Returns:
        The path of ``dataset.json`` (for DICOM, of the dataset folder).

    Raises:
        InputError: naming the file, for unreadable or mismatched pairs, label values
            outside the table, no table or channel name to be found, or a non-empty
            ``out``.
    """
    if export_format not in EXPORT_FORMATS:
        raise InputError(f"unknown format {export_format!r}; choose from {EXPORT_FORMATS}")
    out = Path(out)
    check_folder_free(out, overwrite=overwrite)  # before reading any pair
    cases = discover_pairs(source)
    sidecars = {case.name: _read_sidecar(case) for case in cases}
    table = table or _table_from_sidecars(sidecars, Path(source))
    channel_name = channel_name or _modality(sidecars, Path(source))
    renumber = export_format == "nnunet" and table.values != tuple(range(len(table)))
    for case in cases:  # every pair is checked before the first file is written
        _, label = load_pair(case.image, case.label)
        table.translate(label.data, label_mapping, case.label)
    with atomic_folder(out, overwrite=overwrite) as staging:
        for i, case in enumerate(cases):
            if export_format == "dicom":
                _export_dicom_case(case, staging, table, label_mapping, channel_name, name)
            else:
                _export_case(case, staging, export_format, table, renumber, label_mapping)
            if sidecars[case.name] is not None:
                _write_json(staging / "provenance" / f"{case.name}.json", sidecars[case.name])
            if progress is not None:
                progress(i + 1, len(cases))
        if export_format == "dicom":
            return out
        manifest = _dataset_json(cases, export_format, table, renumber, name, channel_name)
        _write_json(staging / "dataset.json", manifest)
    return out / "dataset.json"


def _export_dicom_case(
    case: CasePaths,
    out: Path,
    table: LabelTable,
    label_mapping: Mapping[int, int] | None,
    channel_name: str,
    name: str,
) -> None:
    from medgen3d.dicom import write_dicom_pair  # highdicom is only needed here

    image, label = load_pair(case.image, case.label)
    label = label.with_data(table.translate(label.data, label_mapping, case.label))
    modality = "ct" if channel_name.upper() == "CT" else "mr"
    write_dicom_pair(image, label, table, modality, out / case.name, name=name)


def _export_case(
    case: CasePaths,
    out: Path,
    export_format: ExportFormat,
    table: LabelTable,
    renumber: bool,
    label_mapping: Mapping[int, int] | None,
) -> None:
    image_name = f"{case.name}_0000.nii.gz" if export_format == "nnunet" else f"{case.name}.nii.gz"
    _copy(case.image, out / "imagesTr" / image_name)
    label_out = out / "labelsTr" / f"{case.name}.nii.gz"
    if not renumber and label_mapping is None:
        _copy(case.label, label_out)
        return
    _, label = load_pair(case.image, case.label)
    values = table.translate(label.data, label_mapping, case.label)
    if renumber:
        values = table.to_channels(values, case.label)
    dtype = np.uint8 if values.max(initial=0) <= 255 else np.uint16
    save_volume(label.with_data(values), label_out, overwrite=True, dtype=dtype)


def _dataset_json(
    cases: list[CasePaths],
    export_format: ExportFormat,
    table: LabelTable,
    renumber: bool,
    name: str,
    modality: str,
) -> dict:
    provenance = {
        "generator": f"medgen3d {__version__}",
        "label_values_renumbered": renumber,
        "source_label_values": list(table.values),
    }
    if export_format == "nnunet":
        values = range(len(table)) if renumber else table.values
        return {
            "name": name,
            "channel_names": {"0": modality},
            "labels": dict(zip(table.names, values, strict=True)),
            "numTraining": len(cases),
            "file_ending": ".nii.gz",
            "medgen3d": provenance,
        }
    return {
        "name": name,
        "description": "Synthetic image/label pairs generated by medgen3d",
        "tensorImageSize": "3D",
        "modality": {"0": modality},
        "labels": {str(v): n for v, n in zip(table.values, table.names, strict=True)},
        "numTraining": len(cases),
        "numTest": 0,
        "training": [
            {"image": f"./imagesTr/{c.name}.nii.gz", "label": f"./labelsTr/{c.name}.nii.gz"}
            for c in cases
        ],
        "test": [],
        "medgen3d": provenance,
    }


def _read_sidecar(case: CasePaths) -> dict | None:
    path = sidecar_path(case)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable sidecar JSON ({exc})", path) from exc


def _table_from_sidecars(sidecars: dict[str, dict | None], source: Path) -> LabelTable:
    for sidecar in sidecars.values():
        if sidecar is not None and "labels" in sidecar:
            return LabelTable.from_dict(sidecar["labels"])
    raise InputError("no sidecar JSON records a label table; pass --labels TABLE", source)


def _modality(sidecars: dict[str, dict | None], source: Path) -> str:
    for sidecar in sidecars.values():
        if sidecar is not None and sidecar.get("modality"):
            return str(sidecar["modality"]).upper()
    raise InputError(
        "no sidecar JSON records the modality; pass --channel-name (e.g. CT or T1)", source
    )


def _copy(src: Path, dst: Path) -> None:
    with atomic_output(dst, overwrite=True) as tmp:
        shutil.copyfile(src, tmp)


def _write_json(path: Path, content: dict) -> Path:
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n")
    return path
