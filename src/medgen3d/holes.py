"""Holes within axial slices: unlabelled voxels enclosed by labelled ones.

Training label maps have next to none. Parcellations and organ contours are drawn as solid
regions, and :class:`~medgen3d.foreground.ForegroundFill` fills the subject slice by
slice; the median training case of both bundled sets encloses no background at all. A mask
model samples each voxel, and where it is unsure between neighbouring structures it leaves
background between them: calibrated brain masks enclosed 60-125 ml per volume
(`benchmarks/README.md`). :func:`enclosed_in_slices` measures such holes for the anatomy
check, and :func:`fill_enclosed` closes them in what the mask sampler generates. MONAI's
``FillHoles`` fills only background enclosed by a single label; these holes lie where
structures meet, enclosed by several.

Both work slice by slice, as a reader scrolls: a hole open at the top or bottom of a volume
is still a hole on every slice it crosses.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
from scipy import ndimage

__all__ = ["enclosed_in_slices", "fill_enclosed"]


def enclosed_in_slices(labels: np.ndarray, unlabelled: Collection[int] = (0,)) -> np.ndarray:
    """Which voxels of a ``(Z, H, W)`` map hold one of the ``unlabelled`` values and are
    enclosed, within their axial slice, by voxels holding any other value."""
    return _enclosed(~np.isin(labels, list(unlabelled)))


def fill_enclosed(labels: np.ndarray, unlabelled: Collection[int] = (0,)) -> np.ndarray:
    """A copy of a ``(Z, H, W)`` map in which every voxel :func:`enclosed_in_slices` finds
    takes the value of the nearest voxel of its slice that holds none of ``unlabelled``.

    The nearest labelled voxel splits a hole between the structures around it along its
    midline, as a contour drawn through it would.
    """
    tissue = ~np.isin(labels, list(unlabelled))
    holes = _enclosed(tissue)
    filled = labels.copy()
    for z in np.flatnonzero(holes.any(axis=(1, 2))):
        _, (rows, cols) = ndimage.distance_transform_edt(~tissue[z], return_indices=True)
        hole, plane = holes[z], filled[z]
        plane[hole] = plane[rows[hole], cols[hole]]
    return filled


def _enclosed(tissue: np.ndarray) -> np.ndarray:
    """The voxels outside ``tissue`` that ``tissue`` encloses within their axial slice."""
    return np.stack([ndimage.binary_fill_holes(plane) for plane in tissue]) & ~tissue
