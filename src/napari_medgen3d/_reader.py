"""Open ``.nii`` / ``.nii.gz`` files as an Image or a Labels layer, judged by content."""

from __future__ import annotations

import json
from pathlib import Path

from medgen3d.io import is_nifti_path, load_volume_any, nifti_stem
from medgen3d.labels import LabelTable
from napari_medgen3d._layers import LayerDataTuple, volume_to_layer


def get_reader(path: str | list[str]):
    """napari reader hook: a reader for NIfTI paths, ``None`` for anything else."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(is_nifti_path(p) for p in paths):
        return None
    return read_nifti


def read_nifti(path: str | list[str]) -> list[LayerDataTuple]:
    """Layer data for each file; an unreadable file raises an error naming it."""
    paths = [path] if isinstance(path, str) else list(path)
    layers = []
    for p in paths:
        volume, kind = load_volume_any(p)
        name = nifti_stem(p)
        if kind == "label":
            layers.append(volume_to_layer(volume, "labels", name, _sidecar_table(Path(p))))
        else:
            layers.append(volume_to_layer(volume, "image", name))
    return layers


def _sidecar_table(label_path: Path) -> LabelTable | None:
    """The label table in the JSON sidecar of a generated pair (``CASE.json`` beside
    ``CASE_label.nii.gz``), so its names and colours show; ``None`` when there is none."""
    case = nifti_stem(label_path).removesuffix("_label")
    sidecar = label_path.with_name(f"{case}.json")
    try:
        return LabelTable.from_dict(json.loads(sidecar.read_text())["labels"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
