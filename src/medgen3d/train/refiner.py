"""Training of stage 3, the semantic diffusion refiner, on single slices of image/mask pairs.

Each step draws ``batch_size`` random axial slices (sequences of length 1) from the bank,
a timestep and noise per slice, and with probability ``null_probability`` the null label
map (classifier-free guidance). The loss is the mean squared error against the objective's
target (:meth:`medgen3d.diffusion.Diffusion.training_pair`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medgen3d.recipe import DataSpec, StageRecipe
from medgen3d.runtime import Runtime
from medgen3d.stages.refiner import RefinerNetworkConfig, build_refiner_network, label_map
from medgen3d.train.bank import CaseBank
from medgen3d.train.loop import OptimisedNetwork, TrainingTask

__all__ = ["RefinerTask", "build_task"]


class RefinerTask(TrainingTask):
    """Denoising score matching of slices, conditioned on their label maps."""

    stage = "refiner"
    inference_networks = ("refiner",)

    def __init__(
        self, data: DataSpec, config: RefinerNetworkConfig, stage: StageRecipe, runtime: Runtime
    ) -> None:
        self.data = data
        self.config = config
        network = build_refiner_network(config, len(data.labels))
        self.networks = {"refiner": OptimisedNetwork(network, stage.training, runtime)}

    def model_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    def make_batch(
        self, bank: CaseBank, batch_size: int, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        slices = bank.sample_sequences(batch_size, 1, rng)
        clean = slices["image"]
        return {
            "image": clean,
            "label": slices["label"][:, 0],
            "noise": torch.randn(clean.shape, generator=rng),
            "timesteps": self.config.diffusion.sample_timesteps(batch_size, rng),
            "null": torch.rand(batch_size, generator=rng) < self.config.null_probability,
        }

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        net = self.networks["refiner"]
        noisy, target = self.config.diffusion.training_pair(
            batch["image"], batch["noise"], batch["timesteps"]
        )
        seg = label_map(batch["label"], len(self.data.labels), batch["null"])
        with net.autocast():
            output = net.model(noisy, batch["timesteps"], seg)
        loss = F.mse_loss(output.float(), target)
        net.step(loss)
        return {"mse": loss.detach()}


def build_task(data: DataSpec, stage: StageRecipe, runtime: Runtime) -> RefinerTask:
    """The stage-3 training task (called by :func:`medgen3d.train.run.train_stage`).

    Raises:
        ValueError: naming the key, for an invalid ``refiner.model`` section.
    """
    return RefinerTask(data, RefinerNetworkConfig.from_dict(stage.model), stage, runtime)
