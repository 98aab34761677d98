"""The settings of a generation, each default and each choice written once.

:class:`GenerationSettings` holds what a whole generation needs (seed, depth) and one
settings object per stage that has any (:class:`MaskSettings`, :class:`RefineSettings`;
the image generator has none). The command line's options and the napari widget's
controls take their defaults and choices from :data:`DEFAULTS` and the enums here, and
every generated sample records the settings in its sidecar. The module imports neither
torch nor MONAI, so the widget can build its controls without loading the engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from medgen3d.errors import InputError
from medgen3d.stages.config import positive_int

__all__ = [
    "DEFAULTS",
    "Device",
    "GenerationSettings",
    "MaskSampler",
    "MaskSettings",
    "RefineSampler",
    "RefineSettings",
    "choices",
]


class MaskSampler(StrEnum):
    """Samplers of the mask stage (its objective decides which of them apply)."""

    DDIM = "ddim"
    RFLOW = "rflow"
    DDPM = "ddpm"


class RefineSampler(StrEnum):
    """Samplers of the refiner; ``auto`` is the one its training objective calls for
    (rectified flow for an ``rflow`` refiner, DDIM otherwise)."""

    AUTO = "auto"
    DDIM = "ddim"
    DDPM = "ddpm"
    RFLOW = "rflow"


class Device(StrEnum):
    """Where work runs; ``auto`` prefers CUDA, then Apple MPS, then the CPU."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"


def choices(enum: type[StrEnum]) -> tuple[str, ...]:
    """The values of ``enum``, for argparse ``choices`` and combo boxes."""
    return tuple(member.value for member in enum)


def _member(enum: type[StrEnum], value: str, what: str) -> StrEnum:
    try:
        return enum(value)
    except ValueError:
        raise InputError(f"unknown {what} {value!r}; choose from {choices(enum)}") from None


@dataclass(frozen=True)
class MaskSettings:
    """How stage 1 samples masks.

    Attributes:
        sampler: mask sampler.
        steps: denoising steps per sequence.
        undo_weighting: for a model trained with label weighting, the power of its label
            weights divided out of its estimates, in [0, 1]: lower draws small structures
            larger. ``None`` keeps the model's own (its ``undo_weighting``).
        fill_holes: close the holes sampling leaves inside each generated slice
            (background or the unlabelled subject enclosed by structures). ``None`` keeps
            the model's own (its ``fill_holes``).
        min_island_voxels: give pieces of a structure smaller than this many voxels to
            their neighbours once the volume is generated (0: keep every piece). ``None``
            keeps the model's own (its ``min_island_voxels``).
        overlap: slices each generated sequence shares with those generated before it,
            below the model's sequence length. ``None`` keeps the model's own (its
            ``sampling_overlap``, else its data's overlap).
        redraws: how many times a mask may be drawn again while the anatomy check against
            the model's training masks flags it (:mod:`medgen3d.anatomy_check`); 0 keeps
            the first. Masks completing seeded slices are checked, never drawn again.
    """

    sampler: MaskSampler = MaskSampler.DDIM
    steps: int = 25
    undo_weighting: float | None = None
    fill_holes: bool | None = None
    min_island_voxels: int | None = None
    overlap: int | None = None
    redraws: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampler", _member(MaskSampler, self.sampler, "mask sampler"))
        if self.steps < 1:
            raise InputError(f"mask steps must be at least 1, got {self.steps}")
        if self.undo_weighting is not None and not 0.0 <= self.undo_weighting <= 1.0:
            raise InputError(f"undo weighting must be in [0, 1], got {self.undo_weighting}")
        if self.fill_holes not in (None, True, False):
            raise InputError(f"fill holes must be true, false or unset, got {self.fill_holes!r}")
        islands = self.min_island_voxels
        if islands is not None and not positive_int(islands, 0):
            raise InputError(f"minimum island size must be a whole number >= 0, got {islands!r}")
        if self.overlap is not None and not positive_int(self.overlap, 0):
            raise InputError(f"overlap must be a whole number >= 0, got {self.overlap!r}")
        if not positive_int(self.redraws, 0):
            raise InputError(f"redraws must be a whole number >= 0, got {self.redraws!r}")


@dataclass(frozen=True)
class RefineSettings:
    """How stage 3 refines an image (SDEdit).

    Attributes:
        strength: noise level in [0, 1]; 0 skips refinement.
        steps: denoising steps from that level.
        sampler: refiner sampler (``auto``: the one its objective calls for).
        guidance: classifier-free guidance scale (1: plain conditional sampling; above 1
            follows the masks more closely, at twice the cost per step).
        batch_size: slices per network call.
    """

    strength: float = 0.3
    steps: int = 8
    sampler: RefineSampler = RefineSampler.AUTO
    guidance: float = 1.0
    batch_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampler", _member(RefineSampler, self.sampler, "refiner sampler"))
        if not 0.0 <= self.strength <= 1.0:
            raise InputError(f"refine strength must be in [0, 1], got {self.strength}")
        if self.steps < 1:
            raise InputError(f"refine steps must be at least 1, got {self.steps}")
        if self.guidance < 0.0:
            raise InputError(f"guidance must be >= 0, got {self.guidance}")
        if self.batch_size < 1:
            raise InputError(f"refinement batch size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class GenerationSettings:
    """Every setting of a generation, recorded in each sample's sidecar.

    Attributes:
        seed: seed of this sample (derive per-sample seeds with
            :func:`medgen3d.batch.sample_seed`).
        depth: slices to generate when no seed mask fixes the depth.
        masks: stage 1's settings.
        refiner: stage 3's settings.
    """

    seed: int = 0
    depth: int = 64
    masks: MaskSettings = field(default_factory=MaskSettings)
    refiner: RefineSettings = field(default_factory=RefineSettings)

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise InputError(f"seed must be >= 0, got {self.seed}")
        if self.depth < 1:
            raise InputError(f"depth must be at least 1, got {self.depth}")

    def with_seed(self, seed: int) -> GenerationSettings:
        return dataclasses.replace(self, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (enums as their strings), as sidecars record them."""
        return dataclasses.asdict(self, dict_factory=_plain_dict)


def _plain_dict(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key: value.value if isinstance(value, StrEnum) else value for key, value in items}


DEFAULTS = GenerationSettings()
