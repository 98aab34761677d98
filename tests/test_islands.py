"""Islands: small pieces of a structure go to their neighbours; the rest stays as it was."""

from __future__ import annotations

import numpy as np

from medgen3d.evaluation.anatomy import mask_anatomy
from medgen3d.islands import remove_islands


def _structures() -> np.ndarray:
    """Structure 1 (a 6x8x8 block) holding structure 2 (a 3x3x3 cube) and a 1-voxel
    fragment of 2 near its corner; structure 3 (a 2x2x2 cube) in a corner of the background
    and a 2-voxel fragment of it in another; a background pocket inside structure 1."""
    labels = np.zeros((10, 12, 12), dtype=np.uint8)
    labels[2:8, 2:10, 2:10] = 1
    labels[3:6, 3:6, 3:6] = 2
    labels[4, 8, 8] = 2
    labels[8:10, 10:12, 10:12] = 3
    labels[0, 0, 0:2] = 3
    labels[6, 8, 3] = 0
    return labels


def test_fragments_take_the_label_around_them_and_the_rest_is_unchanged() -> None:
    labels = _structures()
    cleaned = remove_islands(labels, 3)
    assert cleaned[4, 8, 8] == 1  # inside structure 1
    assert (cleaned[0, 0, 0:2] == 0).all()  # out in the background
    changed = cleaned != labels
    assert changed.sum() == 3
    np.testing.assert_array_equal(cleaned[~changed], labels[~changed])
    assert cleaned[6, 8, 3] == 0  # the background's own pieces are not islands
    assert list(mask_anatomy(cleaned, 4, (1.0, 1.0, 1.0)).components) == [1, 1, 1]
    assert labels[4, 8, 8] == 2  # the input is left as it was


def test_pieces_of_the_size_stay_and_a_structure_keeps_its_largest_piece() -> None:
    labels = _structures()
    cleaned = remove_islands(labels, 2)
    assert cleaned[4, 8, 8] == 1  # 1 voxel: smaller
    assert (cleaned[0, 0, 0:2] == 3).all()  # 2 voxels: kept
    tiny = remove_islands(labels, 1000)  # every piece is smaller, the largest still stays
    assert (tiny[3:6, 3:6, 3:6] == 2).all() and (tiny[8:10, 10:12, 10:12] == 3).all()
    assert tiny[4, 8, 8] == 1 and (tiny[0, 0, 0:2] == 0).all()


def test_kept_voxels_never_change() -> None:
    labels = _structures()
    painted = np.zeros((10, 1, 1), dtype=bool)
    painted[4] = True  # the slice holding the fragment of 2
    cleaned = remove_islands(labels, 3, keep=painted)
    assert cleaned[4, 8, 8] == 2
    assert (cleaned[0, 0, 0:2] == 0).all()
