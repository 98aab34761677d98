"""Bring volumes onto a model's grid and intensity scale with MONAI transforms, and back.

Models see every case at one voxel spacing, one in-plane size and intensities in
``[-1, 1]``. :func:`preprocess_pair` does that with MONAI's ``Spacingd`` (images linear,
labels nearest), ``ScaleIntensityRanged`` (CT window) or ``ScaleIntensityRangePercentilesd``
(MRI) and ``ResizeWithPadOrCropd`` (in-plane only). Orientation is already RAS after
:func:`medgen3d.io.load_volume`. :func:`resample_like` takes a generated volume back onto the
grid of a user's file; :meth:`IntensityWindow.to_physical` takes model intensities back to
HU (CT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    ResampleToMatch,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from medgen3d.io import Volume

__all__ = ["IntensityWindow", "Preprocessing", "preprocess_pair", "resample_like"]


@dataclass(frozen=True)
class IntensityWindow:
    """How image intensities map to the model's ``[-1, 1]``.

    Attributes:
        modality: ``"ct"``: ``low``/``high`` are HU, mapped linearly to -1/+1 and clipped;
            the inverse gives HU back. ``"mri"``: ``low``/``high`` are percentiles of each
            volume mapped to -1/+1 (MRI has no absolute unit); the inverse maps to
            ``[0, 1]``.
        low: lower HU or percentile.
        high: upper HU or percentile.
    """

    modality: Literal["ct", "mri"] = "ct"
    low: float = -1000.0
    high: float = 1000.0

    def __post_init__(self) -> None:
        if self.modality not in ("ct", "mri"):
            raise ValueError(f"modality must be 'ct' or 'mri', got {self.modality!r}")
        if not self.low < self.high:
            raise ValueError(f"window low ({self.low}) must be below high ({self.high})")

    def transform(self, key: str):
        """The MONAI dictionary transform that normalises ``key``."""
        if self.modality == "ct":
            return ScaleIntensityRanged(key, self.low, self.high, -1.0, 1.0, clip=True)
        return ScaleIntensityRangePercentilesd(key, self.low, self.high, -1.0, 1.0, clip=True)

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """``image`` (physical units) on the model's ``[-1, 1]`` scale, on its own grid."""
        scaled = self.transform("image")(
            {"image": torch.as_tensor(image[None], dtype=torch.float32)}
        )
        return np.asarray(scaled["image"][0], dtype=np.float32)

    def to_physical(self, normalised: np.ndarray) -> np.ndarray:
        """Model intensities in ``[-1, 1]`` to HU (CT) or ``[0, 1]`` (MRI), float32."""
        unit = (np.clip(normalised, -1.0, 1.0) + 1.0) / 2.0
        if self.modality == "mri":
            return unit.astype(np.float32)
        return (self.low + unit * (self.high - self.low)).astype(np.float32)

    def to_model(self, physical: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_physical`: HU (CT) or ``[0, 1]`` (MRI) to ``[-1, 1]``."""
        unit = (physical - self.low) / (self.high - self.low) if self.modality == "ct" else physical
        return (np.clip(unit, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)

    @property
    def background(self) -> float:
        """The normalised value of empty space (air), used to pad images."""
        return -1.0


@dataclass(frozen=True)
class Preprocessing:
    """A model's input grid and intensity scale.

    Attributes:
        spacing: target voxel size in mm along ``(Z, Y, X)``; ``None`` keeps the file's.
        size: target in-plane size ``(H, W)``, by symmetric crop or pad; ``None`` keeps it.
        window: intensity normalisation.
    """

    spacing: tuple[float, float, float] | None = None
    size: tuple[int, int] | None = None
    window: IntensityWindow = IntensityWindow()


def preprocess_pair(
    image: Volume | None, label: Volume | None, preprocessing: Preprocessing
) -> tuple[Volume | None, Volume | None]:
    """Resample, normalise and crop/pad an image, its label map, or both.

    Args:
        image: float image (any units) or ``None``.
        label: label map or ``None``; resampled with nearest neighbour so no new values
            appear.
        preprocessing: the target grid and window.

    Returns:
        ``(image, label)`` on the target grid, image in ``[-1, 1]`` (float32), label in the
        input's dtype. Absent inputs stay ``None``. The affine of each is the new grid's.
    """
    items = {k: v for k, v in (("image", image), ("label", label)) if v is not None}
    if not items:
        raise ValueError("give an image, a label map or both")
    transforms = []
    if preprocessing.spacing is not None:
        sz, sy, sx = preprocessing.spacing
        modes = ["bilinear" if k == "image" else "nearest" for k in items]
        transforms.append(Spacingd(list(items), (sx, sy, sz), mode=modes, dtype=np.float32))
    if "image" in items:
        transforms.append(preprocessing.window.transform("image"))
    if preprocessing.size is not None:
        h, w = preprocessing.size
        for key, fill in (("image", preprocessing.window.background), ("label", 0)):
            if key in items:
                transforms.append(ResizeWithPadOrCropd(key, (w, h, -1), value=fill))
    out = Compose(transforms)({k: _to_meta(v) for k, v in items.items()})
    dtypes = {"image": np.float32, "label": label.data.dtype if label is not None else None}
    result = {k: _from_meta(out[k], v, dtypes[k]) for k, v in items.items()}
    return result.get("image"), result.get("label")


def resample_like(volume: Volume, reference: Volume, kind: Literal["image", "label"]) -> Volume:
    """Resample ``volume`` onto the grid of ``reference`` (shape, affine, source orientation).

    Used to write a result in the geometry the user gave: the volume was generated on the
    model's grid, the reference is the user's file. Labels use nearest neighbour; images
    are linear, with the border value outside the generated field of view.
    """
    mode = "nearest" if kind == "label" else "bilinear"
    resampled = ResampleToMatch(mode=mode, padding_mode="border", dtype=np.float32)(
        _to_meta(volume), _to_meta(reference)
    )
    dtype = volume.data.dtype if kind == "label" else np.float32
    data = _from_meta(resampled, reference, dtype).data
    return Volume(data, reference.affine.copy(), reference.source_axcodes, reference.header)


def _to_meta(volume: Volume) -> MetaTensor:
    """``(Z, Y, X)`` volume -> channel-first MONAI tensor ``(1, X, Y, Z)`` with its affine."""
    array = np.ascontiguousarray(volume.data.transpose(2, 1, 0)[None])
    tensor = torch.from_numpy(array.astype(np.float32, copy=False))
    return MetaTensor(tensor, affine=torch.as_tensor(volume.affine, dtype=torch.float64))


def _from_meta(tensor: torch.Tensor, template: Volume, dtype: np.dtype | type) -> Volume:
    """Inverse of :func:`_to_meta`, keeping the template's source orientation and header."""
    array = tensor.detach().cpu().numpy()[0].transpose(2, 1, 0)
    if np.dtype(dtype).kind in "ui":
        array = np.rint(array)
    affine = np.asarray(tensor.affine if isinstance(tensor, MetaTensor) else template.affine)
    return Volume(
        np.ascontiguousarray(array.astype(dtype)),
        affine.astype(np.float64),
        template.source_axcodes,
        template.header,
    )
