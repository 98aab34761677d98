"""A label for the anatomy that a dataset's label maps leave unlabelled.

Brain parcellations label the inside of the skull only: scalp, skull, face and neck are
"background" together with the air around the head. A generator trained on such masks
cannot know where the head ends, and draws a featureless box around the brain. Head-and-neck
CT sets solve the same problem with a derived "body" label (threshold, largest component,
holes filled); :class:`ForegroundFill` derives it the same way for any recipe, from the
image on the model grid, so it is in every training and evaluation case and a generated
mask outlines the whole head.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["ForegroundFill"]


@dataclass(frozen=True)
class ForegroundFill:
    """Unlabelled voxels inside the subject get ``value``.

    Attributes:
        value: the label-table value of the derived structure (e.g. ``head``).
        threshold: where the subject starts, as a fraction of the model's intensity window
            (0 = its low end, 1 = its high end); the largest connected region above it,
            with holes filled slice by slice, is the subject.
    """

    value: int
    threshold: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ForegroundFill:
        return cls(int(d["value"]), float(d.get("threshold", 0.1)))

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "threshold": self.threshold}

    def subject(self, image: np.ndarray) -> np.ndarray:
        """Boolean mask of the subject in ``image`` (``(Z, H, W)``, model units [-1, 1])."""
        above = image > -1.0 + 2.0 * self.threshold
        components, count = ndimage.label(above)
        if count == 0:
            return above
        sizes = np.bincount(components.ravel())[1:]
        largest = components == 1 + int(np.argmax(sizes))
        return np.stack([ndimage.binary_fill_holes(s) for s in largest])

    def apply(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``labels`` with its unlabelled voxels inside the subject set to ``value``."""
        filled = labels.copy()
        filled[(labels == 0) & self.subject(image)] = self.value
        return filled
