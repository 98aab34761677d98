"""Where the overlapping sequences of consecutive axial slices of a volume lie.

The method handles a ``(Z, ...)`` volume as sequences of ``length`` slices; neighbours
share ``overlap`` slices, which is what lets one sequence be generated conditioned on its
neighbour. Each sequence carries its relative position in the volume, ``0`` for the one
that starts at the first (most inferior) slice and ``1`` for the one that ends at the last.
The sampler and the image generator walk these starts; each keeps its own arrays.
"""

from __future__ import annotations

__all__ = ["check_sequence_geometry", "relative_position", "sequence_starts"]


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
