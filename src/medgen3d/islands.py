"""Islands: small pieces of a structure lying apart from the rest of it.

In 30 brain training masks every deep grey structure (thalamus, lentiform nucleus,
hippocampus-amygdala, brainstem) is one or two 3-D pieces, any second piece at most 1.3% of
the first. Sampled brain masks scatter fragments of a few voxels around them, the fault the
anatomy check finds most often in them ("thalamus_left is in 4 pieces"; its pieces of 3, 2
and 1 voxels beside one of 861). :func:`remove_islands` gives such fragments to their
neighbours: each voxel takes the label of the nearest voxel that is kept. MONAI's
``RemoveSmallObjects`` only empties small pieces, and a voxel emptied inside the brain would
be a hole; it also hands its size to scikit-image, whose threshold became inclusive in 0.26
(a piece of exactly ``min_size`` is kept before and removed after), so the pieces are
counted here with SciPy, as the anatomy check counts them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["PIECES", "remove_islands"]

# What a piece is, here and in the anatomy check: voxels touching by a face, an edge or a
# corner (26-connectivity). Thin oblique structures (airways, vessels) at a few mm per voxel
# often touch only by edges; 6-connectivity would count them as fragments.
PIECES = ndimage.generate_binary_structure(3, 3)


def remove_islands(
    labels: np.ndarray, min_voxels: int, keep: np.ndarray | None = None
) -> np.ndarray:
    """A copy of a ``(Z, H, W)`` map in which every piece of a non-zero value smaller than
    ``min_voxels`` voxels, except the value's largest piece, takes, voxel by voxel, the value
    of the nearest voxel outside such pieces. A small structure is kept whole: a third
    ventricle of a few voxels is still a third ventricle. The background's own pieces are
    left alone (closing them is :mod:`medgen3d.holes`' job).

    Pieces are 26-connected, as the anatomy check counts them. Voxels where ``keep`` (a
    boolean array broadcastable to ``labels``) is true never change: they are what a user
    painted.
    """
    small = np.zeros(labels.shape, dtype=bool)
    for value in np.unique(labels[labels != 0]):
        pieces, _ = ndimage.label(labels == value, PIECES)
        sizes = np.bincount(pieces.ravel())
        too_small = sizes < min_voxels
        too_small[0] = False  # not this structure
        too_small[1 + np.argmax(sizes[1:])] = False  # its body, however small, stays
        small |= too_small[pieces]
    if keep is not None:
        small &= ~np.broadcast_to(keep, labels.shape)
    if not small.any():
        return labels.copy()
    nearest = ndimage.distance_transform_edt(small, return_distances=False, return_indices=True)
    return labels[tuple(nearest)]
