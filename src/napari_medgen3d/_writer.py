"""Save Image and Labels layers as NIfTI in the geometry they were read with.

A layer read from a file is saved in that file's data type and scaling while its values
still fit them (an int16 CT stays int16); otherwise images are float32 and labels the
smallest unsigned type. napari's save dialog has already asked before replacing a file,
so these writers overwrite; the write itself is atomic (no partial file on failure).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medgen3d.io import Volume, save_volume, stored_form
from napari_medgen3d._layers import layer_to_volume


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    volume = layer_to_volume(data, meta)
    default = np.uint8 if volume.data.max(initial=0) <= 255 else np.uint16
    return [_save(volume, path, default)]


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    return [_save(layer_to_volume(data, meta), path, np.float32)]


def _save(volume: Volume, path: str, default: type) -> str:
    form = stored_form(volume)
    dtype, scaling = form if form is not None else (default, (1.0, 0.0))
    return str(save_volume(volume, path, overwrite=True, dtype=dtype, scaling=scaling))
