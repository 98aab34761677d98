"""Small phantom datasets and recipes shared by the stage-2/3 and pipeline tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medgen3d.labels import bundled_table
from medgen3d.phantom import write_phantoms
from medgen3d.preprocessing import IntensityWindow, Preprocessing
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


# A model grid unlike any file's: 3 mm slices, 2 mm pixels, 16x16 in-plane.
TINY_DATA = DataSpec(
    bundled_table("thorax_phantom"),
    Preprocessing((3.0, 2.0, 2.0), (16, 16), IntensityWindow("ct", -1000.0, 1000.0)),
    LENGTH,
    OVERLAP,
)
TINY_MASKS = {"channels": [8, 8], "attention_levels": [False, False], "norm_num_groups": 4}


def write_tiny_model(
    folder: Path, data: DataSpec = TINY_DATA, provenance: dict[str, Any] | None = None
) -> Path:
    """A three-stage model folder (masks.pt, images.pt, refiner.pt) of untrained tiny networks
    on ``data``: what the CLI and the widget load in tests. ``provenance`` adds to what the
    checkpoints record of their training (e.g. ``label_intensities``)."""
    import torch

    from medgen3d.checkpoint import Checkpoint, save_checkpoint
    from medgen3d.models.image_generator import build_image_generator
    from medgen3d.models.mask_diffusion import MaskDiffusionModel
    from medgen3d.models.refiner import RefinerConfig, build_refiner_network

    torch.manual_seed(0)
    masks = MaskDiffusionModel.build(data, TINY_MASKS)
    refiner = build_refiner_network(RefinerConfig.from_dict(TINY_REFINER), len(TINY_DATA.labels))
    stages = {
        "masks": (masks.network, "network", masks.config),
        "images": (
            build_image_generator(TINY_GENERATOR, data),
            "generator",
            {"generator": TINY_GENERATOR},
        ),
        "refiner": (refiner, "refiner", TINY_REFINER),
    }
    for stage, (network, name, config) in stages.items():
        record = {"steps": 0, **(provenance or {})}
        config = {"data": data.to_dict(), "model": config, "provenance": record}
        checkpoint = Checkpoint(stage, config, {name: network.state_dict()})
        save_checkpoint(checkpoint, folder / f"{stage}.pt", overwrite=True)
    return folder
