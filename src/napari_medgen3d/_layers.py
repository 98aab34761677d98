"""Engine volumes <-> napari layer data, with geometry kept in layer metadata.

A layer shows ``Volume.data`` (``(Z, Y, X)``) placed in world space by its affine:
``scale``/``translate`` for axis-aligned grids, a full ``affine`` for oblique ones. The
volume's own affine, source orientation and NIfTI header ride along in
``metadata["medgen3d"]`` so that writing the layer back restores the file's geometry.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medgen3d.io import Volume
from medgen3d.labels import LabelTable

GEOMETRY_KEY = "medgen3d"

LayerDataTuple = tuple[np.ndarray, dict[str, Any], str]


def placement(volume: Volume) -> dict[str, Any]:
    """``scale``/``translate`` (or ``affine`` when oblique) for a layer showing ``volume``."""
    zyx = volume.zyx_affine
    linear = zyx[:3, :3]
    if np.allclose(linear, np.diag(np.diag(linear))):
        return {"scale": tuple(np.diag(linear)), "translate": tuple(zyx[:3, 3])}
    return {"affine": zyx}


def volume_to_layer(
    volume: Volume, kind: str, name: str, table: LabelTable | None = None
) -> LayerDataTuple:
    """A napari layer-data tuple for ``volume`` as an ``"image"`` or ``"labels"`` layer."""
    kwargs: dict[str, Any] = {
        "name": name,
        "metadata": {GEOMETRY_KEY: geometry_metadata(volume)},
        **placement(volume),
    }
    if kind == "labels" and table is not None:
        kwargs.update(labels_style(table))
    if kind == "image":
        kwargs["colormap"] = "gray"
    return volume.data, kwargs, kind


def geometry_metadata(volume: Volume) -> dict[str, Any]:
    return {
        "affine": volume.affine.copy(),
        "source_axcodes": volume.source_axcodes,
        "header": volume.header,
    }


def labels_style(table: LabelTable) -> dict[str, Any]:
    """Fixed colours per label value and the label names as layer features."""
    from napari.utils.colormaps import DirectLabelColormap

    colours = {label.value: label.rgba for label in table.labels}
    colours[0] = (0.0, 0.0, 0.0, 0.0)
    colours[None] = (0.0, 0.0, 0.0, 0.0)
    features = {"index": list(table.values), "name": list(table.names)}
    return {"colormap": DirectLabelColormap(color_dict=colours), "features": features}


def layer_to_volume(data: Any, meta: dict[str, Any]) -> Volume:
    """Rebuild a volume from a layer's data and ``meta`` (as napari passes to writers).

    The geometry recorded in ``metadata`` wins when its shape still fits; otherwise the
    layer's ``scale`` and ``translate`` define an axis-aligned RAS grid.
    """
    array = np.asarray(data)
    if array.ndim != 3:
        raise ValueError(f"only 3D layers can be saved as NIfTI volumes, got {array.ndim}D")
    geometry = (meta.get("metadata") or {}).get(GEOMETRY_KEY)
    if geometry is not None:
        return Volume(
            array,
            np.asarray(geometry["affine"]),
            tuple(geometry["source_axcodes"]),
            geometry.get("header"),
        )
    scale = np.asarray(meta.get("scale", (1.0, 1.0, 1.0)), dtype=float)
    translate = np.asarray(meta.get("translate", (0.0, 0.0, 0.0)), dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(scale[::-1])
    affine[:3, 3] = translate[::-1]
    return Volume(array, affine)
