"""Overlapping slice sequences: coverage and relative positions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medgen3d.sequences import check_sequence_geometry, relative_position, sequence_starts

# (depth, length, overlap), including depth == length and depth == length + 1
GEOMETRIES = [
    (16, 16, 4),
    (17, 16, 4),
    (17, 16, 0),
    (16, 4, 0),
    (17, 4, 1),
    (40, 8, 3),
    (41, 8, 7),
    (9, 1, 0),
    (100, 16, 8),
    (5, 2, 1),
]


@pytest.mark.parametrize(("depth", "length", "overlap"), GEOMETRIES)
def test_starts_cover_every_slice_with_at_least_the_overlap(depth, length, overlap):
    starts = sequence_starts(depth, length, overlap)
    assert starts[0] == 0
    assert starts[-1] + length == depth
    assert all(0 <= s <= depth - length for s in starts)
    assert starts == sorted(set(starts))  # strictly increasing
    covered = np.zeros(depth, dtype=int)
    for s in starts:
        covered[s : s + length] += 1
    assert (covered >= 1).all()
    for a, b in itertools.pairwise(starts):
        shared = a + length - b
        assert shared >= overlap
        assert b - a <= length - overlap  # never more than one stride apart
    # Only the last step may be shorter than the stride.
    steps = np.diff(starts)
    assert (steps[:-1] == length - overlap).all()


def test_starts_examples():
    assert sequence_starts(16, 16, 4) == [0]
    assert sequence_starts(17, 16, 4) == [0, 1]
    assert sequence_starts(10, 4, 1) == [0, 3, 6]
    assert sequence_starts(11, 4, 1) == [0, 3, 6, 7]


@pytest.mark.parametrize(("depth", "length", "overlap"), GEOMETRIES)
def test_relative_positions_run_from_zero_to_one(depth, length, overlap):
    starts = sequence_starts(depth, length, overlap)
    positions = [relative_position(start, depth, length) for start in starts]
    assert all(0.0 <= p <= 1.0 for p in positions)
    assert positions == sorted(positions)
    if depth > length:
        assert positions[0] == 0.0
        assert positions[-1] == 1.0
        assert len(set(positions)) == len(positions)
    else:
        assert positions == [0.5]


def test_relative_position_values_and_bounds():
    assert relative_position(0, 20, 10) == 0.0
    assert relative_position(5, 20, 10) == 0.5
    assert relative_position(10, 20, 10) == 1.0
    assert relative_position(0, 10, 10) == 0.5
    for start in (-1, 11):
        with pytest.raises(ValueError, match="outside"):
            relative_position(start, 20, 10)


@pytest.mark.parametrize(
    ("depth", "length", "overlap", "words"),
    [
        (10, 0, 0, "length"),
        (10, -2, 0, "length"),
        (10, 4, 4, "overlap"),
        (10, 4, 5, "overlap"),
        (10, 4, -1, "overlap"),
        (3, 4, 1, "shorter"),
        (0, 1, 0, "shorter"),
    ],
)
def test_invalid_geometry_raises(depth, length, overlap, words):
    with pytest.raises(ValueError, match=words):
        check_sequence_geometry(depth, length, overlap)
    with pytest.raises(ValueError, match=words):
        sequence_starts(depth, length, overlap)
