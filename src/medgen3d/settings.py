"""The settings of a generation, each default and each choice written once.

The command line's options and the napari widget's controls take their defaults and
choices from here, and every generated sample records them in its sidecar. The module
imports neither torch nor MONAI, so the widget can build its controls without loading the
engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

from medgen3d.errors import InputError

__all__ = ["DEFAULTS", "Device", "GenerationSettings", "MaskSampler", "RefineSampler", "choices"]


class MaskSampler(str, Enum):
    """Samplers of the mask stage (its objective decides which of them apply)."""

    DDIM = "ddim"
    RFLOW = "rflow"
    DDPM = "ddpm"


class RefineSampler(str, Enum):
    """Samplers of the refiner; ``auto`` is the one its training objective calls for
    (rectified flow for an ``rflow`` refiner, DDIM otherwise)."""

    AUTO = "auto"
    DDIM = "ddim"
    DDPM = "ddpm"
    RFLOW = "rflow"


class Device(str, Enum):
    """Where work runs; ``auto`` prefers CUDA, then Apple MPS, then the CPU."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"


def choices(enum: type[Enum]) -> tuple[str, ...]:
    """The values of ``enum``, for argparse ``choices`` and combo boxes."""
    return tuple(member.value for member in enum)


@dataclass(frozen=True)
class GenerationSettings:
    """Every setting of a generation, recorded in each sample's sidecar.

    Attributes:
        seed: seed of this sample (derive per-sample seeds with
            :func:`medgen3d.generate.sample_seed`).
        depth: slices to generate when no seed mask fixes the depth.
        sampler: mask sampler.
        steps: mask denoising steps per sequence.
        refine_strength: SDEdit strength of the refiner (0 skips it).
        refine_steps: refiner denoising steps.
        refine_sampler: refiner sampler.
        guidance: classifier-free guidance scale of the refiner (1: plain conditional
            sampling; above 1 follows the masks more closely, at twice the cost per step).
    """

    seed: int = 0
    depth: int = 64
    sampler: str = MaskSampler.DDIM.value
    steps: int = 25
    refine_strength: float = 0.3
    refine_steps: int = 8
    refine_sampler: str = RefineSampler.AUTO.value
    guidance: float = 1.0

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise InputError(f"seed must be >= 0, got {self.seed}")
        if self.steps < 1 or self.refine_steps < 1:
            raise InputError("steps and refine steps must be at least 1")
        if not 0.0 <= self.refine_strength <= 1.0:
            raise InputError(f"refine strength must be in [0, 1], got {self.refine_strength}")
        if self.guidance < 0.0:
            raise InputError(f"guidance must be >= 0, got {self.guidance}")
        for value, enum in ((self.sampler, MaskSampler), (self.refine_sampler, RefineSampler)):
            if value not in choices(enum):
                raise InputError(f"unknown sampler {value!r}; choose from {choices(enum)}")

    def with_seed(self, seed: int) -> GenerationSettings:
        return dataclasses.replace(self, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEFAULTS = GenerationSettings()
