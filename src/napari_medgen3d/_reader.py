"""Open ``.nii`` / ``.nii.gz`` files as an Image or a Labels layer, judged by content."""

from __future__ import annotations

from pathlib import Path

from medgen3d.io import is_nifti_path, load_volume_any
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
        name = Path(p).name.removesuffix(".gz").removesuffix(".nii")
        layers.append(volume_to_layer(volume, "labels" if kind == "label" else "image", name))
    return layers
