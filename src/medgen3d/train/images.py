"""Training of stage 2, the image sequence generator: adversarial, with L1 and feature matching.

Each step draws sequences of ``L`` slices from the bank. Their first ``k`` ground-truth
slices are the context, exactly what ``generate_images`` gives at inference, where the first ``k``
slices of a sequence are the last ``k`` of the one generated before it. With probability
``first_probability`` a sample's context is dropped and its "first sequence" flag set, so
the same network also starts a volume.

Losses (pix2pixHD/SPADE style, no pretrained feature network since none can be downloaded
here): a conditional multi-scale PatchGAN (MONAI ``MultiScalePatchDiscriminator``) sees the
image sequence stacked with its one-hot mask; the generator minimises
``l1 * |fake - real| + adversarial * adv(D(fake)) + feature_matching * FM``, where FM is
the L1 distance between the discriminator's intermediate features of the fake and of the
real sequence. The L1 term anchors every label at its tissue's intensity from the first
steps; the adversarial and FM terms add the texture L1 alone would blur away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import MultiScalePatchDiscriminator

from medgen3d.recipe import DataSpec, StageRecipe
from medgen3d.runtime import Runtime
from medgen3d.stages.config import NetworkConfig, positive_int
from medgen3d.stages.images import ImageNetworkConfig, build_image_generator
from medgen3d.train.bank import CaseBank
from medgen3d.train.loop import OptimisedNetwork, TrainingTask

__all__ = ["DiscriminatorConfig", "ImageTrainingConfig", "ImagesTask", "build_task"]


@dataclass(frozen=True)
class DiscriminatorConfig(NetworkConfig):
    """The multi-scale PatchGAN: ``scales`` discriminators of ``layers`` (+1 per scale)
    strided convolutions, ``channels`` filters in the first."""

    SECTION = "discriminator"

    channels: int = 16
    layers: int = 2
    scales: int = 2

    def __post_init__(self) -> None:
        for key in ("channels", "layers", "scales"):
            if not positive_int(getattr(self, key)):
                raise ValueError(f"discriminator {key!r} must be an integer >= 1")

    def build(self, in_channels: int, size: int | None) -> MultiScalePatchDiscriminator:
        """The discriminator for slices of ``size`` pixels (the smaller side; ``None``
        when the recipe fixes no size, and a too small input fails at the first step).

        Raises:
            ValueError: when the deepest scale would shrink ``size`` below the 2x2 maps
                its last normalisation needs.
        """
        depth = self.layers * self.scales
        # each layer halves the map; the last 4x4 convolution (stride 1) takes one more pixel
        if size is not None and size // 2**depth - 1 < 2:
            raise ValueError(
                f"discriminator 'layers' ({self.layers}) x 'scales' ({self.scales}) is too "
                f"deep for {size}-pixel slices; use fewer"
            )
        return MultiScalePatchDiscriminator(
            num_d=self.scales,
            num_layers_d=self.layers,
            spatial_dims=2,
            channels=self.channels,
            in_channels=in_channels,
            norm="INSTANCE",
            minimum_size_im=size if size is not None else 2**depth,
        )


@dataclass(frozen=True)
class ImageTrainingConfig(NetworkConfig):
    """The recipe's ``images.model`` section.

    Attributes:
        generator: the generator network.
        discriminator: the discriminator.
        l1: weight of the L1 loss.
        adversarial: weight of the generator's adversarial loss.
        feature_matching: weight of discriminator feature matching.
        discriminator_learning_rate: overrides the training learning rate for D.
        first_probability: how often a sample is trained as a first sequence (no context).
    """

    SECTION = "images model"

    generator: ImageNetworkConfig = field(default_factory=ImageNetworkConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    l1: float = 10.0
    adversarial: float = 1.0
    feature_matching: float = 10.0
    discriminator_learning_rate: float | None = None
    first_probability: float = 0.25

    def __post_init__(self) -> None:
        for key in ("l1", "adversarial", "feature_matching", "first_probability"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(f"images model {key!r} must be a number >= 0, got {value!r}")
            object.__setattr__(self, key, float(value))
        if self.first_probability > 1:
            raise ValueError(
                f"images model 'first_probability' must be at most 1, got {self.first_probability}"
            )
        lr = self.discriminator_learning_rate
        if lr is not None:
            object.__setattr__(self, "discriminator_learning_rate", float(lr))


class ImagesTask(TrainingTask):
    """The generator (with a weight average for inference) against its discriminator."""

    stage = "images"
    inference_networks = ("generator",)

    def __init__(
        self, data: DataSpec, config: ImageTrainingConfig, stage: StageRecipe, runtime: Runtime
    ) -> None:
        self.data = data
        self.config = config
        generator = build_image_generator(config.generator, data)
        size = data.preprocessing.size
        discriminator = config.discriminator.build(
            2 * data.sequence_length, None if size is None else min(size)
        )
        settings = stage.training
        self.networks = {
            "generator": OptimisedNetwork(generator, settings, runtime),
            "discriminator": OptimisedNetwork(
                discriminator,
                settings,
                runtime,
                learning_rate=config.discriminator_learning_rate,
                ema=False,
            ),
        }
        self.adversarial = PatchAdversarialLoss(criterion="least_squares")

    def model_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    def make_batch(
        self, bank: CaseBank, batch_size: int, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        batch = bank.sample_sequences(batch_size, self.data.sequence_length, rng)
        first = torch.rand(batch_size, generator=rng) < self.config.first_probability
        h, w = batch["image"].shape[2:]
        noise_channels = self.config.generator.noise_channels
        batch["first"] = first.float()
        batch["noise"] = torch.randn((batch_size, noise_channels, h, w), generator=rng)
        return batch

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        gen = self.networks["generator"]
        real, label = batch["image"], batch["label"]
        context = real[:, : self.data.overlap]
        with gen.autocast():
            fake = gen.model(label, context, batch["first"], batch["position"], batch["noise"])
        condition = _label_planes(label, len(self.data.labels))
        loss_d = self._discriminator_step(fake.detach(), real, condition)
        return {**self._generator_step(fake, real, condition), "d_adv": loss_d}

    def _discriminator_step(
        self, fake: torch.Tensor, real: torch.Tensor, condition: torch.Tensor
    ) -> torch.Tensor:
        """Least-squares PatchGAN update: real sequences towards 1, generated towards 0."""
        disc = self.networks["discriminator"]
        with disc.autocast():
            fake_logits, _ = disc.model(torch.cat([fake, condition], dim=1))
            real_logits, _ = disc.model(torch.cat([real, condition], dim=1))
            loss = 0.5 * (
                self.adversarial(fake_logits, target_is_real=False, for_discriminator=True)
                + self.adversarial(real_logits, target_is_real=True, for_discriminator=True)
            )
        disc.step(loss)
        return loss.detach()

    def _generator_step(
        self, fake: torch.Tensor, real: torch.Tensor, condition: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """L1 + adversarial + feature matching update of the generator."""
        gen, disc = self.networks["generator"], self.networks["discriminator"]
        # D is fixed here: its raw module (no DDP) with frozen weights skips the gradient
        # computation and sync of a network whose gradients would be discarded anyway.
        disc.network.requires_grad_(False)
        try:
            with gen.autocast():
                fake_logits, fake_features = disc.network(torch.cat([fake, condition], dim=1))
                with torch.no_grad():
                    _, real_features = disc.network(torch.cat([real, condition], dim=1))
                losses = {
                    "l1": (fake.float() - real).abs().mean(),
                    "g_adv": self.adversarial(
                        fake_logits, target_is_real=True, for_discriminator=False
                    ),
                    "feature_matching": _feature_matching(fake_features, real_features),
                }
                config = self.config
                total = (
                    config.l1 * losses["l1"]
                    + config.adversarial * losses["g_adv"]
                    + config.feature_matching * losses["feature_matching"]
                )
            gen.step(total)
        finally:
            disc.network.requires_grad_(True)
        return {name: loss.detach() for name, loss in losses.items()}


def _label_planes(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The discriminator's view of the mask: each slice's channel index scaled to [-1, 1].

    One plane per slice rather than ``C`` one-hot planes keeps the first convolution, the
    discriminator's most expensive layer, independent of the number of labels; a
    convolution tells the ``C`` discrete levels apart as easily.
    """
    return label.float() * (2.0 / (num_classes - 1)) - 1.0


def _feature_matching(
    fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]]
) -> torch.Tensor:
    """Mean L1 distance between the discriminators' intermediate features (pix2pixHD)."""
    losses = [
        (f.float() - r.float()).abs().mean()
        for fake_scale, real_scale in zip(fake, real, strict=True)
        for f, r in zip(fake_scale, real_scale, strict=True)
    ]
    return torch.stack(losses).mean()


def build_task(data: DataSpec, stage: StageRecipe, runtime: Runtime) -> ImagesTask:
    """The stage-2 training task for ``data`` (called by :func:`medgen3d.train.run.train_stage`).

    Raises:
        ValueError: naming the key, for an invalid ``images.model`` section.
    """
    return ImagesTask(data, ImageTrainingConfig.from_dict(stage.model), stage, runtime)
