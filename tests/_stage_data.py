"""Small phantom datasets and recipes shared by the stage-2/3 and pipeline tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medgen3d.labels import bundled_table
from medgen3d.phantom import write_phantoms
from medgen3d.preprocessing import Preprocessing
from medgen3d.recipe import DataSpec, Recipe, StageRecipe, TrainingSettings

PHANTOM_SHAPE = (24, 32, 32)
LENGTH, OVERLAP = 8, 2

TINY_GENERATOR = {
    "channels": [16, 32],
    "noise_channels": 2,
    "spade_channels": 16,
    "label_channels": 16,
}
TINY_REFINER = {
    "channels": [16, 32],
    "norm_num_groups": 8,
    "spade_channels": 16,
    "diffusion": {"num_train_timesteps": 100},
}


def phantom_spec() -> DataSpec:
    """The phantom's table on its own 32x32 grid, sequences of 8 overlapping by 2."""
    return DataSpec(bundled_table("thorax_phantom"), Preprocessing(), LENGTH, OVERLAP)


def write_small_phantoms(folder: Path, n: int = 3, seed: int = 0) -> Path:
    write_phantoms(folder, n, seed, PHANTOM_SHAPE)
    return folder


def recipe(stage: str, model: dict[str, Any], **training: Any) -> Recipe:
    settings = TrainingSettings(**{"amp": False, "log_every": 1000, **training})
    return Recipe(phantom_spec(), {stage: StageRecipe(model, settings)})
