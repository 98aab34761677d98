"""Stage 3, the semantic diffusion refiner: a mask-conditioned diffusion model over slices.

The network is MONAI's ``SPADEDiffusionModelUNet``, the design of semantic diffusion
models (SDM, Wang et al. 2022, https://arxiv.org/abs/2207.00050): the noisy image enters
the encoder, the label map enters the decoder through spatially-adaptive normalisation.
It works on single axial slices (one image channel, ``C`` one-hot label channels): the
generator's image already carries the volume's through-plane structure and SDEdit at a
moderate strength keeps it, so slices can be refined independently, in batches, which is
what makes refinement cheap on a CPU.

Classifier-free guidance (Ho & Salimans 2022): training replaces the label map by the null
map (all zeros, which no real one-hot map equals) with probability ``null_probability``;
sampling mixes ``eps_null + w * (eps_mask - eps_null)`` for a guidance scale ``w`` (1 is
plain conditional sampling, at half the cost).

:func:`refine_volume` is SDEdit (Meng et al. 2022, https://arxiv.org/abs/2108.01073) over a
volume: noise the input to level ``strength`` and denoise it with the label map as
condition. Low strengths keep the input's structure and replace its texture with the
refiner's; ``strength = 0`` returns the input itself without running the network. Slices
are refined in batches, yielding after every denoising step so callers can show progress
or stop.

Training: :mod:`medgen3d.train.refiner`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from monai.networks.nets import SPADEDiffusionModelUNet
from monai.networks.utils import one_hot

from medgen3d.checkpoint import Checkpoint
from medgen3d.diffusion import Diffusion
from medgen3d.progress import Progress, ProgressGenerator
from medgen3d.recipe import DataSpec
from medgen3d.settings import RefineSampler, RefineSettings
from medgen3d.stages.config import NetworkConfig, positive_int

__all__ = [
    "RefinerNetworkConfig",
    "SemanticRefiner",
    "build_refiner_network",
    "label_map",
    "refine_volume",
]


@dataclass(frozen=True)
class RefinerNetworkConfig(NetworkConfig):
    """The recipe's ``refiner.model`` section.

    Attributes:
        channels: U-Net channels per level (multiples of ``norm_num_groups``).
        attention_levels: self-attention per level (costly on CPU; default: none).
        num_res_blocks: residual blocks per level.
        norm_num_groups: group-norm groups.
        num_head_channels: channels per attention head (levels with attention must be
            multiples of it).
        spade_channels: hidden channels of the SPADE label convolutions.
        null_probability: how often training drops the label map (classifier-free guidance).
        diffusion: objective and noise schedule.
    """

    SECTION = "refiner"

    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] | None = None
    num_res_blocks: int = 1
    norm_num_groups: int = 16
    num_head_channels: int = 32
    spade_channels: int = 32
    null_probability: float = 0.1
    diffusion: Diffusion = field(default_factory=Diffusion)

    def __post_init__(self) -> None:
        channels = self.channels
        if not isinstance(channels, tuple) or not all(positive_int(c) for c in channels):
            raise ValueError(f"refiner 'channels' must be positive integers, got {channels}")
        levels = (
            (False,) * len(channels) if self.attention_levels is None else self.attention_levels
        )
        object.__setattr__(self, "attention_levels", tuple(bool(a) for a in levels))
        if len(self.attention_levels) != len(channels) or not channels:
            raise ValueError("refiner 'attention_levels' needs one entry per level of 'channels'")
        if not positive_int(self.norm_num_groups) or any(
            c % self.norm_num_groups for c in channels
        ):
            raise ValueError(
                f"refiner 'channels' {channels} must be multiples of "
                f"'norm_num_groups' ({self.norm_num_groups})"
            )
        for key in ("num_res_blocks", "num_head_channels", "spade_channels"):
            value = getattr(self, key)
            if not positive_int(value):
                raise ValueError(f"refiner {key!r} must be an integer >= 1, got {value!r}")
        attended = [c for c, a in zip(channels, self.attention_levels, strict=True) if a]
        if any(c % self.num_head_channels for c in attended):
            raise ValueError(
                f"refiner 'num_head_channels' ({self.num_head_channels}) must divide the "
                "channels of every level with attention"
            )
        if not 0.0 <= self.null_probability < 1.0:
            raise ValueError(
                f"refiner 'null_probability' must be in [0, 1), got {self.null_probability}"
            )


def build_refiner_network(
    config: RefinerNetworkConfig, num_classes: int
) -> SPADEDiffusionModelUNet:
    """The 2D SPADE diffusion U-Net: 1 image channel in and out, ``num_classes`` label maps."""
    return SPADEDiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        label_nc=num_classes,
        num_res_blocks=config.num_res_blocks,
        channels=config.channels,
        attention_levels=config.attention_levels,
        norm_num_groups=config.norm_num_groups,
        num_head_channels=config.num_head_channels,
        spade_intermediate_channels=config.spade_channels,
    )


def label_map(
    labels: torch.Tensor, num_classes: int, null: torch.Tensor | None = None
) -> torch.Tensor:
    """Channel indices ``(B, H, W)`` -> one-hot ``(B, C, H, W)``; rows where ``null`` is
    true become the all-zero null map of classifier-free guidance."""
    encoded = one_hot(labels.long()[:, None], num_classes, dim=1)
    if null is not None:
        encoded = encoded * (~null.bool()).float().view(-1, 1, 1, 1)
    return encoded


class SemanticRefiner:
    """A trained refiner ready for inference.

    Args:
        network: the SPADE diffusion U-Net.
        config: its config (diffusion objective and schedule included).
        data: the data spec it was trained with.
        device: where it runs.
    """

    def __init__(
        self,
        network: SPADEDiffusionModelUNet,
        config: RefinerNetworkConfig,
        data: DataSpec,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.config = config
        self.data = data

    def to(self, device: torch.device | str) -> SemanticRefiner:
        """Move the network to ``device`` (in place); returns ``self``."""
        self.device = torch.device(device)
        self.network.to(self.device)
        return self

    @property
    def diffusion(self) -> Diffusion:
        return self.config.diffusion

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, device: torch.device | str = "cpu"
    ) -> SemanticRefiner:
        """Rebuild from a ``"refiner"`` checkpoint (its inference weights)."""
        data = DataSpec.from_dict(checkpoint.config["data"])
        config = RefinerNetworkConfig.from_dict(checkpoint.config["model"])
        network = build_refiner_network(config, len(data.labels))
        network.load_state_dict(checkpoint.weights["refiner"])
        return cls(network, config, data, device)

    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, t: torch.Tensor, seg: torch.Tensor, guidance: float = 1.0
    ) -> torch.Tensor:
        """The network output for noisy slices ``x`` ``(B, 1, H, W)`` at timesteps ``t``
        with one-hot label maps ``seg`` ``(B, C, H, W)``, guided with scale ``guidance``."""
        if guidance == 1.0:
            return self.network(x, t, seg)
        both = self.network(
            torch.cat([x, x]), torch.cat([t, t]), torch.cat([seg, torch.zeros_like(seg)])
        )
        conditional, unconditional = both.chunk(2)
        return unconditional + guidance * (conditional - unconditional)


def refine_volume(
    refiner: SemanticRefiner,
    image: np.ndarray,
    labels: np.ndarray,
    settings: RefineSettings,
    *,
    seed: int = 0,
) -> ProgressGenerator[np.ndarray]:
    """Refine ``image`` slice by slice, conditioned on ``labels`` (SDEdit).

    Args:
        refiner: the trained refiner (runs on its device).
        image: ``(Z, H, W)`` in [-1, 1].
        labels: ``(Z, H, W)`` channel indices of the refiner's label table.
        settings: strength (0 returns ``image`` without running the network), steps,
            sampler (``auto``: the one the refiner's training objective calls for),
            guidance scale (other values than 1 run the network twice per step) and batch
            size.
        seed: the starting noise of every slice is drawn from this seed for the whole
            volume at once, so the result does not depend on the batch size (for DDIM and
            rectified flow; DDPM's per-step noise is drawn per batch).

    Yields:
        :class:`Progress` of stage ``"refiner"`` after every denoising step of every batch;
        the last step of a batch carries the volume refined so far as preview.

    Returns:
        The refined ``(Z, H, W)`` float32 volume, or ``image`` itself when the strength is 0.

    Raises:
        InputError: for a sampler or step count the refiner does not support.
    """
    if image.shape != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} differ in shape")
    if settings.strength == 0.0:
        return image
    device, diffusion = refiner.device, refiner.diffusion
    sampler = settings.sampler
    if sampler == RefineSampler.AUTO:
        sampler = diffusion.default_sampler
    schedule = diffusion.sampler(sampler, settings.steps, settings.strength, device=device)
    depth = image.shape[0]
    noise = torch.randn((depth, 1, *image.shape[1:]), generator=torch.Generator().manual_seed(seed))
    starts = range(0, depth, settings.batch_size)
    total = len(starts) * len(schedule.timesteps)
    out = image.astype(np.float32, copy=True)
    done = 0
    for start in starts:
        batch = slice(start, min(start + settings.batch_size, depth))
        seg = label_map(torch.from_numpy(labels[batch]).to(device), len(refiner.data.labels))
        clean = torch.from_numpy(out[batch, None]).to(device)
        sample = diffusion.noise_to_start(clean, noise[batch].to(device), schedule)
        ddpm_rng = torch.Generator(device).manual_seed(seed + start)

        def predict(x: torch.Tensor, t: torch.Tensor, seg: torch.Tensor = seg) -> torch.Tensor:
            return refiner.predict(x, t, seg, settings.guidance)

        for step in diffusion.denoise(predict, sample, schedule, ddpm_rng):
            done += 1
            last = step.index == step.total
            if last:
                out[batch] = step.sample[:, 0].clamp(-1, 1).cpu().numpy()
            yield Progress("refiner", done, total, out.copy() if last else None)
    return out
