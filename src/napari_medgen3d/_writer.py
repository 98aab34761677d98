"""Save Image and Labels layers as NIfTI in the geometry they were read with.

napari's save dialog has already asked before replacing a file, so these writers
overwrite; the write itself is atomic (no partial file on failure).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medgen3d.io import save_volume
from napari_medgen3d._layers import layer_to_volume


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    volume = layer_to_volume(data, meta)
    dtype = np.uint8 if volume.data.max(initial=0) <= 255 else np.uint16
    return [str(save_volume(volume, path, overwrite=True, dtype=dtype))]


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    volume = layer_to_volume(data, meta)
    return [str(save_volume(volume, path, overwrite=True, dtype=np.float32))]
