"""Affines for geometry tests, shared so every test builds oblique grids the same way."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def oblique_affine(
    degrees: float,
    zooms: Sequence[float],
    origin: Sequence[float],
    flips: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """``diag(flips) @ Rz(degrees) @ diag(zooms)`` with ``origin``: anisotropic voxels rotated
    about z; ``flips=(-1, -1, 1)`` makes the file's axes point L, P, S."""
    t = np.deg2rad(degrees)
    rotation = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag(flips) @ rotation @ np.diag(zooms)
    affine[:3, 3] = origin
    return affine
