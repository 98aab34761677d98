"""Training of MC-DPM, the mask-sequence diffusion model.

Every batch item gets its own condition pattern, drawn from the step's random stream, so one
network learns every way the sampler uses it (MCVD-style random masking of conditions):

* **known slices**: none (start a volume), the first ``n`` or the last ``n`` (extend from a
  neighbour; ``n = k`` half of the time, otherwise any ``1 .. L-1``, because the last
  sequence of a volume whose depth is not aligned to the stride shares more than ``k``
  slices), both ends, or a scattered subset (slices a user painted);
* **position**: replaced by :data:`~medgen3d.stages.masks.NO_POSITION` with
  probability ``position_dropout``, so the model also generates without it.

Known slices enter the noisy input exactly as the sampler pins them (their clean values
noised to the step's level), and the loss leaves them out: their target is given away by
the condition channels, and the capacity is better spent on the slices the sampler keeps.
The loss is averaged per sequence first, so the mean over a ``torchrun`` shard, averaged
over shards of equal size, is the mean over the global batch.
"""

from __future__ import annotations

from typing import Any

import torch

from medgen3d.errors import InputError
from medgen3d.recipe import DataSpec, StageRecipe, TrainingSettings
from medgen3d.runtime import Runtime
from medgen3d.stages.masks import (
    NO_POSITION,
    MaskDiffusionModel,
    MaskNetworkConfig,
    label_weights,
    labels_to_signal,
)
from medgen3d.train.bank import CaseBank
from medgen3d.train.loop import OptimisedNetwork, TrainingTask

__all__ = [
    "PATTERNS",
    "MaskTask",
    "build_task",
    "draw_known_slices",
    "masked_mse",
]

# Condition patterns and how often each is drawn.
PATTERNS = {"none": 0.2, "first": 0.25, "last": 0.25, "both_ends": 0.1, "scattered": 0.2}


def build_task(data: DataSpec, stage: StageRecipe, runtime: Runtime) -> MaskTask:
    """The ``masks`` stage's task, as :func:`medgen3d.train.run.train_stage` needs it.

    Raises:
        ValueError: naming the key, for an invalid ``masks.model`` section.
    """
    model = MaskDiffusionModel.build(data, MaskNetworkConfig.from_dict(stage.model))
    return MaskTask(model, stage.training, runtime)


class MaskTask(TrainingTask):
    """Trains one :class:`MaskDiffusionModel` on sequences from a :class:`CaseBank`."""

    stage = "masks"
    inference_networks = ("network",)
    sampling_only = (
        "undo_weighting",
        "label_bias",
        "fill_holes",
        "min_island_voxels",
        "sampling_overlap",
    )

    def __init__(
        self, model: MaskDiffusionModel, settings: TrainingSettings, runtime: Runtime
    ) -> None:
        if model.length < 2:
            raise InputError("MC-DPM needs sequences of at least 2 slices (data.sequence_length)")
        self.model = model
        self.networks = {"network": OptimisedNetwork(model.network, settings, runtime)}

    def make_batch(
        self, bank: CaseBank, batch_size: int, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        model = self.model
        if bank.num_classes != model.num_classes:
            raise InputError(
                f"the data has {bank.num_classes} label channels, the model {model.num_classes}"
            )
        drawn = bank.sample_sequences(batch_size, model.length, rng)
        clean = labels_to_signal(drawn["label"], model.num_classes)
        dropped = torch.rand(batch_size, generator=rng) < model.config.position_dropout
        weights = label_weights(bank.label_frequency, model.config.label_weighting)
        return {
            "clean": clean,
            "weight": weights[drawn["label"]],
            "noise": torch.randn(clean.shape, generator=rng),
            "timesteps": model.diffusion.sample_timesteps(batch_size, rng),
            "known": draw_known_slices(batch_size, model.length, model.overlap, rng),
            "position": torch.where(dropped, NO_POSITION, drawn["position"]),
        }

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        net = self.networks["network"]
        clean, known = batch["clean"], batch["known"]
        noisy, target = self.model.diffusion.training_pair(
            clean, batch["noise"], batch["timesteps"]
        )
        with net.autocast():
            prediction = net.model(noisy, batch["timesteps"], clean, known, batch["position"])
        loss = masked_mse(prediction.float(), target, ~known, batch["weight"])
        net.step(loss)
        return {"mse": loss.detach()}

    def model_config(self) -> dict[str, Any]:
        return self.model.config.to_dict()


def draw_known_slices(
    batch_size: int, length: int, overlap: int, rng: torch.Generator
) -> torch.Tensor:
    """One condition pattern of :data:`PATTERNS` per item, as ``(B, L)`` bool known flags.

    Every random number is drawn for every item whatever its pattern, so the number of
    draws from ``rng`` (and hence the rest of the batch) never depends on them.
    At least one slice is always left unknown.
    """
    weights = torch.tensor(list(PATTERNS.values()))
    pattern = torch.multinomial(weights, batch_size, replacement=True, generator=rng)
    index = torch.arange(length)[None]
    any_count = torch.randint(1, length, (batch_size,), generator=rng)
    use_overlap = torch.rand(batch_size, generator=rng) < 0.5
    count = torch.where(use_overlap & (overlap > 0), overlap, any_count)[:, None]
    end_count = count.clamp(max=(length - 1) // 2)
    density = 0.5 * torch.rand(batch_size, 1, generator=rng)
    scattered = torch.rand(batch_size, length, generator=rng) < density
    scattered &= ~scattered.all(dim=1, keepdim=True)
    options = torch.stack(
        [
            torch.zeros(batch_size, length, dtype=torch.bool),
            index < count,
            index >= length - count,
            (index < end_count) | (index >= length - end_count),
            scattered,
        ],
        dim=1,
    )
    return options[torch.arange(batch_size), pattern]


def masked_mse(
    prediction: torch.Tensor,
    target: torch.Tensor,
    slices: torch.Tensor,
    voxel_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error over the slices where ``slices`` ``(B, L)`` is true, the error of
    every channel at a voxel weighted by that voxel's ``voxel_weight`` ``(B, L, H, W)``.

    Averaged within each sequence first, then over the batch, so shards of equal size
    average to the global mean.
    """
    mask = slices.to(prediction.dtype)[:, None, :, None, None]
    weighted = mask if voxel_weight is None else mask * voxel_weight[:, None].to(mask.dtype)
    squared = (prediction - target) ** 2 * weighted
    counted = mask.expand_as(squared).flatten(1).sum(1).clamp(min=1)
    return (squared.flatten(1).sum(1) / counted).mean()
