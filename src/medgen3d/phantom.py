"""A procedural thoracic CT phantom: paired HU images and label maps drawn from a seed.

Tests, demos and smoke runs need image/mask pairs whose anatomy is plausible enough for a
model to learn, yet real thoracic CT with expert masks cannot ship with the package. This
module draws such pairs from a seed with numpy alone, in a fraction of a second, with the
labels of :data:`PHANTOM_TABLE` (body, both lungs, heart, aorta, trachea, esophagus, spine).

Geometry. Volumes are ``(Z, Y, X)`` on a RAS grid: ``Z`` grows towards superior (slice 0
lies at the lung bases, the last slice in the neck), ``Y`` towards anterior and ``X``
towards the patient's right, so the right lung sits at larger ``x`` than the left one.
Anatomy is defined in normalised coordinates that span the field of view, ``u, v`` in
``[-1, 1]`` across ``X, Y`` and ``t = z / (Z - 1)`` in ``[0, 1]``, so it always fills the
same fraction of the grid: ``shape`` sets the resolution, ``spacing`` only the voxel size
written into the affine. The random draws that shape a patient do not depend on the grid
either, so one seed gives the same anatomy at any resolution; only the voxel noise differs.

Images hold whole Hounsfield units (float32 with integer values, within
[-1024, 3000]): air -1000, body a fat/muscle mix from -100 to 50, lungs about -850 with
vessels, heart 40, contrast-filled aorta 180, trachea -1000, esophagus 25 (with the odd
air bubble), spine 350 with a 700 cortical rim. :func:`write_phantoms` stores them as
int16, which is lossless for whole HU and what scanners write.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from scipy import ndimage

from medgen3d.errors import InputError, OutputExistsError
from medgen3d.io import Volume, save_volume
from medgen3d.labels import LabelTable, bundled_table

__all__ = [
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "PHANTOM_TABLE",
    "PhantomCase",
    "make_phantom",
    "write_phantoms",
]

PHANTOM_TABLE: LabelTable = bundled_table("thorax_phantom")
DEFAULT_SHAPE = (64, 64, 64)
DEFAULT_SPACING = (5.0, 6.0, 6.0)

_MIN_SIZE = 8
_HU_RANGE = (-1024.0, 3000.0)
_AIR_HU = -1000.0
# Converts a length in u/v units into t units, as on the default grid (one unit of u is
# half the 384 mm field of view, one unit of t the whole 320 mm): keeps the arch round.
_T_PER_UV = 192.0 / 320.0
# Partial volume: the blur, in voxels, that softens every boundary before noise is added.
_BLUR_SIGMA = 0.6


@dataclass(frozen=True)
class PhantomCase:
    """One phantom: a CT image and its label map on the same grid.

    Attributes:
        image: Hounsfield units, float32 ``(Z, Y, X)``.
        label: values of :data:`PHANTOM_TABLE` (0..8), uint8, same shape and affine.
    """

    image: Volume
    label: Volume


def make_phantom(
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
) -> PhantomCase:
    """Draw one thoracic phantom.

    Args:
        seed: non-negative integer; the same seed gives bit-identical arrays.
        shape: grid size ``(Z, Y, X)``, each at least 8.
        spacing: voxel size in mm along ``(Z, Y, X)``, all positive.

    Returns:
        The image and label volumes, sharing a diagonal RAS affine centred on the origin.
        ``spacing`` changes only that affine: the anatomy spans a fixed fraction of the
        field of view, so the arrays depend on ``seed`` and ``shape`` alone.

    Raises:
        InputError: (a ``ValueError``) for a bad seed, shape or spacing.
    """
    seed = _check_seed(seed)
    shape = _check_shape(shape)
    spacing = _check_spacing(spacing)
    rng = np.random.default_rng(seed)
    canvas = _Canvas(shape)
    _paint_anatomy(_Frame.draw(shape, rng), rng, canvas)
    image = _render(canvas.hu, rng)
    affine = _centred_affine(shape, spacing)
    return PhantomCase(Volume(image, affine), Volume(canvas.label, affine.copy()))


def write_phantoms(
    out_dir: str | Path,
    n: int,
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[Path, Path]]:
    """Write ``n`` phantoms as ``phantom_0000_image.nii.gz`` / ``phantom_0000_label.nii.gz``.

    Case ``i`` uses a seed derived from ``(seed, i)``, so it is the same whatever ``n``:
    a dataset can be grown without changing the cases it already has. Images are written
    as int16 (lossless: they hold whole HU), labels as uint8.

    Args:
        out_dir: destination folder, created when missing.
        n: number of cases, at least 1.
        seed: non-negative integer seeding the whole set.
        shape: grid size ``(Z, Y, X)`` of every case.
        spacing: voxel size in mm along ``(Z, Y, X)``.
        overwrite: replace existing files; otherwise an existing file is an error.
        progress: called as ``progress(i + 1, n)`` after each case is written.

    Returns:
        ``(image_path, label_path)`` per case, in order.

    Raises:
        InputError: for bad arguments.
        OutputExistsError: when a target exists and ``overwrite`` is false; checked for
            every case before anything is written, so no partial set is left behind.
    """
    if not isinstance(n, Integral) or isinstance(n, bool) or n < 1:
        raise InputError(f"the number of phantoms must be an integer >= 1, got {n!r}")
    seed = _check_seed(seed)
    shape = _check_shape(shape)
    spacing = _check_spacing(spacing)
    out_dir = Path(out_dir)
    pairs = [
        (out_dir / f"phantom_{i:04d}_image.nii.gz", out_dir / f"phantom_{i:04d}_label.nii.gz")
        for i in range(n)
    ]
    if not overwrite:
        for path in (p for pair in pairs for p in pair):
            if path.exists():
                raise OutputExistsError(path)
    for i, (image_path, label_path) in enumerate(pairs):
        case_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        case = make_phantom(case_seed, shape, spacing)
        save_volume(case.image, image_path, overwrite=overwrite, dtype=np.int16)
        save_volume(case.label, label_path, overwrite=overwrite, dtype=np.uint8)
        if progress is not None:
            progress(i + 1, n)
    return pairs


# ---- argument checks ----------------------------------------------------------------------
def _check_seed(seed: int) -> int:
    if not isinstance(seed, Integral) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    dims = tuple(shape) if isinstance(shape, Sequence | np.ndarray) else ()
    if len(dims) != 3 or not all(
        isinstance(d, Integral) and not isinstance(d, bool) and d >= _MIN_SIZE for d in dims
    ):
        raise InputError(
            f"shape must be three integers (Z, Y, X), each >= {_MIN_SIZE}; got {shape!r}"
        )
    return int(dims[0]), int(dims[1]), int(dims[2])


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    steps = tuple(spacing) if isinstance(spacing, Sequence | np.ndarray) else ()
    if len(steps) != 3 or not all(
        isinstance(s, Real) and not isinstance(s, bool) and math.isfinite(s) and s > 0
        for s in steps
    ):
        raise InputError(f"spacing must be three positive sizes in mm (Z, Y, X); got {spacing!r}")
    return float(steps[0]), float(steps[1]), float(steps[2])


def _centred_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Diagonal RAS affine in nibabel ``(x, y, z)`` order with the grid centre at 0 mm."""
    sizes = np.array(shape[::-1], dtype=float)
    steps = np.array(spacing[::-1], dtype=float)
    affine = np.diag([*steps, 1.0])
    affine[:3, 3] = -(sizes - 1) / 2 * steps
    return affine


# ---- geometry helpers ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Frame:
    """Normalised patient coordinates: ``u, v`` of shape ``(1, Y, X)``, ``t`` ``(Z, 1, 1)``.

    ``u`` points to the patient's right and ``v`` to anterior, both after a small random
    shift and in-plane rotation of the patient on the table; ``t`` is ``z / (Z - 1)``.
    Keeping ``u, v`` two-dimensional lets structures that do not change along ``Z`` be
    computed once for all slices.
    """

    u: np.ndarray
    v: np.ndarray
    t: np.ndarray

    @classmethod
    def draw(cls, shape: tuple[int, int, int], rng: np.random.Generator) -> _Frame:
        t = np.linspace(0.0, 1.0, shape[0], dtype=np.float32)[:, None, None]
        v = np.linspace(-1.0, 1.0, shape[1], dtype=np.float32)[None, :, None]
        u = np.linspace(-1.0, 1.0, shape[2], dtype=np.float32)[None, None, :]
        shift_u, shift_v = rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)
        angle = rng.uniform(-0.07, 0.07)
        du, dv = u - shift_u, v - shift_v
        cos, sin = math.cos(angle), math.sin(angle)
        return cls(u=cos * du + sin * dv, v=cos * dv - sin * du, t=t)


@dataclass(frozen=True)
class _Wobble:
    """Radius factor ``1 + sum_k a_k cos(k theta + phi_k + omega_k t)`` for ``k = 2, 3, 4``.

    Turns ellipses into organ-like outlines whose shape drifts smoothly from slice to slice.
    """

    amplitude: np.ndarray
    phase: np.ndarray
    drift: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, size: float) -> _Wobble:
        return cls(
            amplitude=(size * rng.uniform(0.3, 1.0, 3)).astype(np.float32),
            phase=rng.uniform(0.0, 2 * np.pi, 3).astype(np.float32),
            drift=rng.uniform(-3.0, 3.0, 3).astype(np.float32),
        )

    def __call__(self, p: np.ndarray, q: np.ndarray, rho: np.ndarray, t: np.ndarray) -> np.ndarray:
        # cos/sin of k*theta by angle addition from p/rho and q/rho: no arctan2 on the volume,
        # and the per-slice phase enters through (Z, 1, 1) coefficients only.
        cos1, sin1 = p / (rho + 1e-6), q / (rho + 1e-6)
        cos_k, sin_k = cos1, sin1
        factor = np.float32(1.0)
        for k in range(2, 5):
            cos_k, sin_k = cos_k * cos1 - sin_k * sin1, sin_k * cos1 + cos_k * sin1
            phase = self.phase[k - 2] + self.drift[k - 2] * t
            a = self.amplitude[k - 2]
            factor = factor + (a * np.cos(phase)) * cos_k - (a * np.sin(phase)) * sin_k
        return factor


def _rho(
    f: _Frame,
    centre: tuple[float | np.ndarray, float | np.ndarray],
    axes: tuple[float | np.ndarray, float | np.ndarray],
    angle: float = 0.0,
    wobble: _Wobble | None = None,
) -> np.ndarray:
    """Normalised elliptical radius about ``centre``: < 1 inside, 1 on the outline.

    ``angle`` turns the first axis from ``+u`` towards ``+v``. Centres and axes may vary per
    slice (``(Z, 1, 1)`` arrays); the result is only as large as they make it.
    """
    du, dv = f.u - centre[0], f.v - centre[1]
    if angle:
        cos, sin = math.cos(angle), math.sin(angle)
        du, dv = cos * du + sin * dv, cos * dv - sin * du
    p, q = du / axes[0], dv / axes[1]
    rho = np.sqrt(p * p + q * q)
    return rho if wobble is None else rho / wobble(p, q, rho, f.t)


def _segment_distance(f: _Frame, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    """In-plane distance from every voxel to the segment ``a``-``b``."""
    su, sv = b[0] - a[0], b[1] - a[1]
    du, dv = f.u - a[0], f.v - a[1]
    s = np.clip((du * su + dv * sv) / (su * su + sv * sv), 0.0, 1.0)
    du, dv = du - s * su, dv - s * sv
    return np.sqrt(du * du + dv * dv)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    s = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return s * s * (3 - 2 * s)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], n_ctrl: int) -> np.ndarray:
    """A smooth random field of zero mean and unit variance.

    A tensor product of Gaussian bumps on an ``n_ctrl``-per-axis lattice that spans the
    field of view, with random weights: the same pattern at any grid size, and far
    cheaper than filtering a full-size noise volume.
    """
    weights = rng.standard_normal((n_ctrl, n_ctrl, n_ctrl)).astype(np.float32)
    centres = np.linspace(0.0, 1.0, n_ctrl, dtype=np.float32)
    bases = [
        np.exp(
            -0.5
            * ((np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None] - centres) * (n_ctrl - 1)) ** 2
        )
        for n in shape
    ]
    field = np.einsum("za,yb,xc,abc->zyx", *bases, weights, optimize=True)
    return (field - field.mean()) / field.std()


class _Canvas:
    """Label and noise-free HU volumes; later paint wins, which fixes the priority order."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.label = np.zeros(shape, dtype=np.uint8)
        self.hu = np.full(shape, _AIR_HU, dtype=np.float32)

    def paint(self, mask: np.ndarray, name: str, hu: float | np.ndarray) -> None:
        mask = np.broadcast_to(mask, self.label.shape)
        self.label[mask] = PHANTOM_TABLE.value_of(name)
        self.hu[mask] = np.broadcast_to(np.asarray(hu, dtype=np.float32), mask.shape)[mask]


# ---- anatomy ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Midline:
    """Positions the mediastinal structures are placed relative to."""

    spine_centre: tuple[float, float]
    spine_axes: tuple[float, float]
    esophagus_centre: tuple[float, float]


def _paint_anatomy(f: _Frame, rng: np.random.Generator, canvas: _Canvas) -> None:
    """Draw every structure's parameters from ``rng`` and paint them in priority order.

    The number of draws never depends on the grid, so a seed fixes the patient.
    """
    shape = canvas.label.shape
    texture = _smooth_field(rng, shape, 6)
    fat = _smooth_field(rng, shape, 8)
    # Vessels: the peaks of a fine random field, denser and thicker towards the hila.
    vessels = _smooth_field(rng, shape, 40) > 1.1 + 0.9 * np.abs(f.u)

    spine_axes = (rng.uniform(0.085, 0.1), rng.uniform(0.075, 0.09))
    spine_centre = (rng.uniform(-0.02, 0.02), rng.uniform(-0.32, -0.26))
    esophagus_centre = (
        rng.uniform(-0.05, -0.01),
        spine_centre[1] + spine_axes[1] + rng.uniform(0.07, 0.09),
    )
    mid = _Midline(spine_centre, spine_axes, esophagus_centre)

    body, cavity = _paint_body(f, rng, canvas, fat)
    for side in (1.0, -1.0):
        _paint_lung(f, rng, canvas, side, cavity, vessels, texture)
    heart_centre_t, heart_top_t = _paint_heart(f, rng, canvas, cavity, texture)
    arch_t = _paint_aorta(f, rng, canvas, mid, heart_centre_t, heart_top_t, body)
    _paint_esophagus(f, rng, canvas, mid, body)
    _paint_trachea(f, rng, canvas, mid, arch_t, body)
    _paint_spine(f, rng, canvas, mid, body)


def _paint_body(
    f: _Frame, rng: np.random.Generator, canvas: _Canvas, fat: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Elliptical torso narrowing into the neck; returns the body and thoracic-cavity masks."""
    neck = _smoothstep(0.8, 1.0, f.t)
    axes = (
        rng.uniform(0.74, 0.86) * (1 - rng.uniform(0.3, 0.4) * neck),
        rng.uniform(0.5, 0.6) * (1 - rng.uniform(0.15, 0.25) * neck),
    )
    rho = _rho(f, (0.0, rng.uniform(-0.04, 0.0)), axes, wobble=_Wobble.draw(rng, 0.012))
    fat_depth = rng.uniform(0.06, 0.14)  # subcutaneous fat, as a fraction of the radius
    wall = rng.uniform(0.05, 0.08)  # muscle and ribs between the fat and the lungs
    subcutaneous = _smoothstep(1 - fat_depth - 0.02, 1 - fat_depth + 0.02, rho)
    fatness = np.maximum(np.clip(0.35 + 0.3 * fat, 0.0, 1.0), subcutaneous)
    body = rho < 1
    canvas.paint(body, "body", 50.0 - 150.0 * fatness)
    return body, rho < 1 - fat_depth - wall


def _paint_lung(
    f: _Frame,
    rng: np.random.Generator,
    canvas: _Canvas,
    side: float,
    cavity: np.ndarray,
    vessels: np.ndarray,
    texture: np.ndarray,
) -> None:
    """One lung (``side`` +1 right, -1 left): tapered apex, crescent base over the dome."""
    right = side > 0
    centre = (side * rng.uniform(0.36, 0.42), rng.uniform(-0.06, 0.02))
    axes = (rng.uniform(0.27, 0.32) * (1.0 if right else 0.93), rng.uniform(0.36, 0.44))
    angle = side * rng.uniform(-0.15, 0.15)
    base_t = rng.uniform(0.03, 0.09) + (0.02 if right else 0.0)  # the liver lifts the right
    dome_t = rng.uniform(0.12, 0.2) + (0.03 if right else 0.0)
    apex_t, apex_length = rng.uniform(0.9, 0.97), rng.uniform(0.25, 0.35)
    rho = _rho(f, centre, axes, angle, _Wobble.draw(rng, 0.02))
    size = np.sqrt(np.clip((apex_t - f.t) / apex_length, 0.0, 1.0))
    # The diaphragm domes up in front of the lung's centre, so the base is a crescent that
    # reaches lowest at the back and sides (the costophrenic recesses).
    dome_centre = (centre[0] - side * 0.05, centre[1] + 0.12)
    dome = _rho(f, dome_centre, (1.1 * axes[0], 1.1 * axes[1]))
    diaphragm_t = base_t + dome_t * np.clip(1 - dome**2, 0.0, 1.0)
    lung = (rho < size) & (f.t >= diaphragm_t) & cavity
    dependent = np.clip((centre[1] - f.v) / axes[1], 0.0, 1.0) ** 2  # denser posteriorly
    hu = np.where(vessels, -60.0, -860.0 + 25.0 * texture + 80.0 * dependent)
    canvas.paint(lung, "right_lung" if right else "left_lung", hu)


def _paint_heart(
    f: _Frame, rng: np.random.Generator, canvas: _Canvas, cavity: np.ndarray, texture: np.ndarray
) -> tuple[float, float]:
    """Ellipsoid, anterior and to the left, long axis pointing forward and left.

    Returns the ``t`` of its centre and of its top, where the aorta leaves and arches.
    """
    centre = (rng.uniform(-0.15, -0.08), rng.uniform(0.12, 0.2))
    centre_t, half_height = rng.uniform(0.3, 0.37), rng.uniform(0.16, 0.2)
    axes = (rng.uniform(0.3, 0.36), rng.uniform(0.22, 0.27))
    angle = -np.pi / 4 + rng.uniform(-0.2, 0.2)
    size = np.sqrt(np.clip(1 - ((f.t - centre_t) / half_height) ** 2, 0.0, 1.0))
    rho = _rho(f, centre, axes, angle, _Wobble.draw(rng, 0.015))
    canvas.paint((rho < size) & cavity, "heart", 40.0 + 6.0 * texture)
    return centre_t, centre_t + half_height


def _paint_aorta(
    f: _Frame,
    rng: np.random.Generator,
    canvas: _Canvas,
    mid: _Midline,
    heart_centre_t: float,
    heart_top_t: float,
    body: np.ndarray,
) -> float:
    """Ascending aorta from the heart, arch above it, descending aorta left of the spine.

    Returns the arch's ``t``.
    """
    radius = rng.uniform(0.055, 0.07)
    desc = (rng.uniform(-0.17, -0.12), mid.spine_centre[1] + rng.uniform(0.06, 0.1))
    asc = (rng.uniform(0.0, 0.06), rng.uniform(0.06, 0.12))
    # The arch bends round the left of the trachea: ascending -> left -> back to descending.
    bend = (desc[0] - rng.uniform(0.0, 0.03), asc[1] - rng.uniform(0.0, 0.04))
    arch_t = heart_top_t + rng.uniform(0.03, 0.08)
    below_arch = f.t <= arch_t
    descending = below_arch & (_rho(f, desc, (radius, radius)) < 1)
    ascending = below_arch & (f.t >= heart_centre_t) & (_rho(f, asc, (radius, radius)) < 1)
    arch_half_t = radius * _T_PER_UV
    arch_radius = radius * np.sqrt(np.clip(1 - ((f.t - arch_t) / arch_half_t) ** 2, 0.0, 1.0))
    arch = np.minimum(_segment_distance(f, asc, bend), _segment_distance(f, bend, desc))
    canvas.paint((descending | ascending | (arch < arch_radius)) & body, "aorta", 180.0)
    return arch_t


def _paint_esophagus(
    f: _Frame, rng: np.random.Generator, canvas: _Canvas, mid: _Midline, body: np.ndarray
) -> None:
    """Flattened tube in front of the spine, swinging left and forward to the stomach."""
    axes = (rng.uniform(0.04, 0.05), rng.uniform(0.028, 0.036))
    abdomen = 1 - _smoothstep(0.0, 0.15, f.t)
    centre = (mid.esophagus_centre[0] - 0.08 * abdomen, mid.esophagus_centre[1] + 0.06 * abdomen)
    rho = _rho(f, centre, axes)
    frequency, phase = rng.uniform(3.0, 6.0), rng.uniform(0.0, 2 * np.pi)
    air = (rho < 0.4) & (np.sin(2 * np.pi * frequency * f.t + phase) > 0.6)
    canvas.paint((rho < 1) & body, "esophagus", np.where(air, -900.0, 25.0))


def _paint_trachea(
    f: _Frame,
    rng: np.random.Generator,
    canvas: _Canvas,
    mid: _Midline,
    arch_t: float,
    body: np.ndarray,
) -> None:
    """Air tube in front of the esophagus from the carina up; main bronchi just below it.

    The carina lies at about the level of the aortic arch, above the heart, so the trachea
    occupies the upper part of the thorax and the neck only.
    """
    carina_t = arch_t + rng.uniform(-0.02, 0.02)
    cu = rng.uniform(-0.02, 0.02)
    cv = mid.esophagus_centre[1] + rng.uniform(0.085, 0.1)
    radius = rng.uniform(0.045, 0.055)
    airway = (f.t >= carina_t) & (_rho(f, (cu, cv), (1.1 * radius, radius)) < 1)
    bronchus_length_t = rng.uniform(0.05, 0.08)
    depth = (carina_t - f.t) / bronchus_length_t  # 0 at the carina, 1 at the hilum
    below = (depth > 0) & (depth <= 1)
    for side in (1.0, -1.0):
        centre = (cu + side * 0.17 * depth, cv - 0.03 * depth)
        airway |= below & (_rho(f, centre, (0.7 * radius, 0.7 * radius)) < 1)
    canvas.paint(airway & body, "trachea", _AIR_HU)


def _paint_spine(
    f: _Frame, rng: np.random.Generator, canvas: _Canvas, mid: _Midline, body: np.ndarray
) -> None:
    """Vertebral bodies (cortical rim, darker discs) and spinous processes, every slice."""
    cu, cv = mid.spine_centre
    rho = _rho(f, mid.spine_centre, mid.spine_axes)
    period_t, phase_t = rng.uniform(0.085, 0.095), rng.uniform(0.0, 1.0)
    cycles = (f.t - phase_t) / period_t
    disc = np.exp(-(((cycles - np.round(cycles)) * period_t / 0.01) ** 2))
    bone = np.where(rho > 0.75, 700.0, 350.0)
    tip = (cu, cv - mid.spine_axes[1] - rng.uniform(0.12, 0.16))
    process = _segment_distance(f, (cu, cv - mid.spine_axes[1]), tip) < 0.03
    hu = np.where(rho < 1, bone * (1 - disc) + 90.0 * disc, 600.0)
    canvas.paint(((rho < 1) | process) & body, "spine", hu)


# ---- image --------------------------------------------------------------------------------
def _render(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Partial-volume blur, scanner noise, clipping to the HU range, whole HU, float32."""
    noise_std = rng.uniform(12.0, 20.0)
    image = ndimage.gaussian_filter(hu, _BLUR_SIGMA)
    image += noise_std * rng.standard_normal(hu.shape, dtype=np.float32)
    return np.round(np.clip(image, *_HU_RANGE)).astype(np.float32)
