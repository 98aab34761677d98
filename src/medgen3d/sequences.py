"""Volumes as overlapping sequences of consecutive axial slices, and back.

The method handles a ``(Z, ...)`` volume as sequences of ``length`` slices; neighbours
share ``overlap`` slices, which is what lets one sequence be generated conditioned on its
neighbour. Each sequence carries its relative position in the volume, ``0`` for the one
that starts at the first (most inferior) slice and ``1`` for the one that ends at the last.
Splitting then assembling gives back the exact input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SliceSequence",
    "assemble_sequences",
    "check_sequence_geometry",
    "relative_position",
    "sequence_starts",
    "split_into_sequences",
]


@dataclass(frozen=True)
class SliceSequence:
    """Consecutive slices: ``data`` is ``volume[start : start + length]``."""

    start: int
    position: float
    data: np.ndarray


def check_sequence_geometry(depth: int, length: int, overlap: int) -> None:
    """Raise ``ValueError`` unless ``0 <= overlap < length <= depth``."""
    if length < 1:
        raise ValueError(f"sequence length must be >= 1, got {length}")
    if not 0 <= overlap < length:
        raise ValueError(f"overlap must be in [0, {length - 1}] for length {length}, got {overlap}")
    if depth < length:
        raise ValueError(f"volume depth {depth} is shorter than the sequence length {length}")


def sequence_starts(depth: int, length: int, overlap: int) -> list[int]:
    """First-slice indices of the sequences that cover ``depth`` slices.

    Consecutive sequences advance by ``length - overlap``; the last one is moved back so it
    ends exactly at the last slice (it may then overlap its neighbour by more than
    ``overlap`` slices).
    """
    check_sequence_geometry(depth, length, overlap)
    stride = length - overlap
    starts = list(range(0, depth - length + 1, stride))
    if starts[-1] != depth - length:
        starts.append(depth - length)
    return starts


def relative_position(start: int, depth: int, length: int) -> float:
    """Where a sequence sits in its volume: ``start / (depth - length)``.

    A sequence spanning the whole volume (``depth == length``) sits in the middle, 0.5.
    """
    if not 0 <= start <= depth - length:
        raise ValueError(f"start {start} is outside [0, {depth - length}]")
    return 0.5 if depth == length else start / (depth - length)


def split_into_sequences(volume: np.ndarray, length: int, overlap: int) -> list[SliceSequence]:
    """Cut a ``(Z, ...)`` array into overlapping sequences (views, not copies)."""
    depth = volume.shape[0]
    return [
        SliceSequence(s, relative_position(s, depth, length), volume[s : s + length])
        for s in sequence_starts(depth, length, overlap)
    ]


def assemble_sequences(sequences: Sequence[SliceSequence], depth: int) -> np.ndarray:
    """Put sequences back into a ``(depth, ...)`` array.

    Later sequences win where they overlap earlier ones, which matches generation order
    when each sequence was conditioned on (and so repeats) its neighbour's slices.

    Raises:
        ValueError: when the sequences leave a slice uncovered or stick out of the volume.
    """
    if not sequences:
        raise ValueError("no sequences to assemble")
    first = sequences[0].data
    out = np.empty((depth, *first.shape[1:]), dtype=first.dtype)
    covered = np.zeros(depth, dtype=bool)
    for seq in sequences:
        end = seq.start + seq.data.shape[0]
        if seq.start < 0 or end > depth:
            raise ValueError(f"sequence [{seq.start}, {end}) lies outside a volume of {depth}")
        out[seq.start : end] = seq.data
        covered[seq.start : end] = True
    if not covered.all():
        raise ValueError(f"slices {np.flatnonzero(~covered).tolist()} are not covered")
    return out
