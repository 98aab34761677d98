"""Holes within axial slices: found per slice, filled with the nearest labelled value."""

from __future__ import annotations

import numpy as np

from medgen3d.holes import enclosed_in_slices, fill_enclosed


def _ring() -> np.ndarray:
    """Two slices of a ring whose left half is structure 1 and right half structure 2,
    around a 3x4 hole of background; the top and bottom slices are empty."""
    labels = np.zeros((4, 9, 10), dtype=np.uint8)
    labels[1:3, 1:8, 1:9] = 1
    labels[1:3, 1:8, 5:9] = 2
    labels[1:3, 3:6, 3:7] = 0
    return labels


def test_only_background_inside_labels_is_enclosed() -> None:
    labels = _ring()
    holes = enclosed_in_slices(labels)
    assert holes.sum() == 2 * 3 * 4
    assert holes[1:3, 3:6, 3:7].all()
    assert not holes[0].any() and not holes[3].any()


def test_fill_gives_each_hole_voxel_its_nearest_structure() -> None:
    labels = _ring()
    filled = fill_enclosed(labels)
    np.testing.assert_array_equal(filled[1:3, 3:6, 3], 1)  # next to the left wall
    np.testing.assert_array_equal(filled[1:3, 3:6, 6], 2)  # next to the right wall
    outside = ~enclosed_in_slices(labels)
    np.testing.assert_array_equal(filled[outside], labels[outside])
    assert not enclosed_in_slices(filled).any()
    assert labels[1, 4, 4] == 0  # the input is left as it was


def test_an_unlabelled_value_inside_structures_is_a_hole_too() -> None:
    labels = _ring()
    labels[1:3, 3:6, 3:7] = 3  # e.g. "head" inside the brain
    assert not enclosed_in_slices(labels).any()
    filled = fill_enclosed(labels, unlabelled=(0, 3))
    assert not (filled[1:3] == 3).any()
    assert set(np.unique(filled[1:3, 3:6, 3:7])) == {1, 2}


def test_an_open_region_is_not_a_hole() -> None:
    labels = _ring()
    labels[1:3, 4, 6:9] = 0  # a channel from the hole to the outside
    assert not enclosed_in_slices(labels).any()
    np.testing.assert_array_equal(fill_enclosed(labels), labels)
