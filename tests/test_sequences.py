"""Overlapping slice sequences: coverage, positions and exact split/assemble round trips."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medgen3d.sequences import (
    SliceSequence,
    assemble_sequences,
    check_sequence_geometry,
    relative_position,
    sequence_starts,
    split_into_sequences,
)

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
    sequences = split_into_sequences(np.zeros((depth, 2, 3)), length, overlap)
    positions = [seq.position for seq in sequences]
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


def _volumes(depth: int) -> list[np.ndarray]:
    rng = np.random.default_rng(depth)
    return [
        rng.integers(0, 300, size=(depth, 5, 6)).astype(np.uint16),
        rng.normal(size=(depth, 5, 6)).astype(np.float32),
        rng.normal(size=(depth, 3, 5, 6)).astype(np.float64),  # (Z, C, H, W)
        rng.integers(0, 9, size=(depth, 4, 4)).astype(np.uint8),
    ]


@pytest.mark.parametrize(("depth", "length", "overlap"), GEOMETRIES)
def test_split_then_assemble_is_bit_identical(depth, length, overlap):
    for volume in _volumes(depth):
        sequences = split_into_sequences(volume, length, overlap)
        assert [seq.start for seq in sequences] == sequence_starts(depth, length, overlap)
        for seq in sequences:
            assert seq.data.shape == (length, *volume.shape[1:])
            np.testing.assert_array_equal(seq.data, volume[seq.start : seq.start + length])
        out = assemble_sequences(sequences, depth)
        assert out.dtype == volume.dtype
        assert out.shape == volume.shape
        assert out.tobytes() == volume.tobytes()


def test_assemble_lets_later_sequences_win_where_they_overlap():
    depth, length = 6, 4
    first = SliceSequence(0, 0.0, np.zeros((length, 2), np.int32))
    second = SliceSequence(2, 1.0, np.ones((length, 2), np.int32))
    out = assemble_sequences([first, second], depth)
    np.testing.assert_array_equal(out[:, 0], [0, 0, 1, 1, 1, 1])


def test_assemble_rejects_gaps_and_overhangs():
    data = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"\[4, 5\]"):
        assemble_sequences([SliceSequence(0, 0.0, data), SliceSequence(6, 1.0, data)], 10)
    with pytest.raises(ValueError, match="outside"):
        assemble_sequences([SliceSequence(0, 0.0, data), SliceSequence(8, 1.0, data)], 10)
    with pytest.raises(ValueError, match="outside"):
        assemble_sequences([SliceSequence(-1, 0.0, data)], 10)
    with pytest.raises(ValueError, match="no sequences"):
        assemble_sequences([], 10)
    # Splitting, then dropping a middle sequence, leaves a gap.
    sequences = split_into_sequences(np.arange(40.0), 8, 2)
    with pytest.raises(ValueError, match="not covered"):
        assemble_sequences(sequences[:1] + sequences[2:], 40)


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
    if depth > 0:
        with pytest.raises(ValueError, match=words):
            split_into_sequences(np.zeros(depth), length, overlap)
