"""Small phantom datasets, recipes and tiny untrained models shared by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgen3d.labels import bundled_table
from medgen3d.phantom import write_phantoms
from medgen3d.preprocessing import IntensityWindow, Preprocessing
from medgen3d.recipe import DataSpec, Recipe, StageRecipe, TrainingSettings

if TYPE_CHECKING:
    from medgen3d.model import GenerativeModel

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


def tiny_stages(data: DataSpec = TINY_DATA) -> dict[str, Any]:
    """The three stages as untrained tiny networks on ``data``, seeded, in memory."""
    import torch

    from medgen3d.stages.images import ImageGenerator, ImageNetworkConfig, build_image_generator
    from medgen3d.stages.masks import MaskDiffusionModel, MaskNetworkConfig
    from medgen3d.stages.refiner import (
        RefinerNetworkConfig,
        SemanticRefiner,
        build_refiner_network,
    )

    torch.manual_seed(0)
    generator = build_image_generator(ImageNetworkConfig.from_dict(TINY_GENERATOR), data)
    refiner = RefinerNetworkConfig.from_dict(TINY_REFINER)
    return {
        "masks": MaskDiffusionModel.build(data, MaskNetworkConfig.from_dict(TINY_MASKS)),
        "images": ImageGenerator(generator, data),
        "refiner": SemanticRefiner(build_refiner_network(refiner, len(data.labels)), refiner, data),
    }


def tiny_model(data: DataSpec = TINY_DATA) -> GenerativeModel:
    """:func:`tiny_stages` as a model, as :func:`medgen3d.model.load_model` returns one."""
    from medgen3d.model import GenerativeModel

    return GenerativeModel(data, tiny_stages(data), {}, "tiny", "0" * 64)


def write_tiny_model(
    folder: Path, data: DataSpec = TINY_DATA, provenance: dict[str, Any] | None = None
) -> Path:
    """A three-stage model folder (masks.pt, images.pt, refiner.pt) of untrained tiny networks
    on ``data``: what the CLI and the widget load in tests. ``provenance`` adds to what the
    checkpoints record of their training (e.g. ``label_intensities``)."""
    from medgen3d.checkpoint import Checkpoint, save_checkpoint

    stages = tiny_stages(data)
    written = {
        "masks": ("network", stages["masks"].config.to_dict()),
        "images": ("generator", {"generator": TINY_GENERATOR}),
        "refiner": ("refiner", TINY_REFINER),
    }
    for stage, (name, config) in written.items():
        record = {"steps": 0, **(provenance or {})}
        config = {"data": data.to_dict(), "model": config, "provenance": record}
        weights = {name: stages[stage].network.state_dict()}
        save_checkpoint(Checkpoint(stage, config, weights), folder / f"{stage}.pt", overwrite=True)
    return folder
