"""Stage 3: the semantic diffusion refiner, a mask-conditioned diffusion model over slices.

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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import SPADEDiffusionModelUNet

from medgen3d.checkpoint import Checkpoint
from medgen3d.diffusion import Diffusion
from medgen3d.models._config import check_keys
from medgen3d.recipe import DataSpec

__all__ = ["RefinerConfig", "SemanticRefiner", "build_refiner_network", "label_map"]


@dataclass(frozen=True)
class RefinerConfig:
    """The recipe's ``refiner.model`` section.

    Attributes:
        channels: U-Net channels per level (multiples of ``norm_num_groups``).
        attention_levels: self-attention per level (costly on CPU; off by default).
        num_res_blocks: residual blocks per level.
        norm_num_groups: group-norm groups.
        num_head_channels: channels per attention head (levels with attention must be
            multiples of it).
        spade_channels: hidden channels of the SPADE label convolutions.
        null_probability: how often training drops the label map (classifier-free guidance).
        diffusion: :class:`~medgen3d.diffusion.Diffusion` as a dict.
    """

    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, False)
    num_res_blocks: int = 1
    norm_num_groups: int = 16
    num_head_channels: int = 32
    spade_channels: int = 32
    null_probability: float = 0.1
    diffusion: Diffusion = field(default_factory=Diffusion)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RefinerConfig:
        """Parse and check the section.

        Raises:
            ValueError: naming the key, for unknown keys or invalid values.
        """
        check_keys(d, set(cls.__dataclass_fields__), "refiner")
        defaults = cls()
        channels = tuple(d.get("channels", defaults.channels))
        attention = tuple(d.get("attention_levels", (False,) * len(channels)))
        config = cls(
            channels=channels,
            attention_levels=tuple(bool(a) for a in attention),
            num_res_blocks=d.get("num_res_blocks", defaults.num_res_blocks),
            norm_num_groups=d.get("norm_num_groups", defaults.norm_num_groups),
            num_head_channels=d.get("num_head_channels", defaults.num_head_channels),
            spade_channels=d.get("spade_channels", defaults.spade_channels),
            null_probability=float(d.get("null_probability", defaults.null_probability)),
            diffusion=_diffusion(d.get("diffusion", {})),
        )
        config._check()
        return config

    def _check(self) -> None:
        if not self.channels or not all(isinstance(c, int) and c > 0 for c in self.channels):
            raise ValueError(f"refiner 'channels' must be positive integers, got {self.channels}")
        if len(self.attention_levels) != len(self.channels):
            raise ValueError("refiner 'attention_levels' needs one entry per level of 'channels'")
        if any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(
                f"refiner 'channels' {self.channels} must be multiples of "
                f"'norm_num_groups' ({self.norm_num_groups})"
            )
        for key in ("num_res_blocks", "num_head_channels", "spade_channels"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"refiner {key!r} must be an integer >= 1, got {value!r}")
        attended = [c for c, a in zip(self.channels, self.attention_levels, strict=True) if a]
        if any(c % self.num_head_channels for c in attended):
            raise ValueError(
                f"refiner 'num_head_channels' ({self.num_head_channels}) must divide the "
                "channels of every level with attention"
            )
        if not 0.0 <= self.null_probability < 1.0:
            raise ValueError(
                f"refiner 'null_probability' must be in [0, 1), got {self.null_probability}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": list(self.channels),
            "attention_levels": list(self.attention_levels),
            "num_res_blocks": self.num_res_blocks,
            "norm_num_groups": self.norm_num_groups,
            "num_head_channels": self.num_head_channels,
            "spade_channels": self.spade_channels,
            "null_probability": self.null_probability,
            "diffusion": self.diffusion.to_dict(),
        }


def _diffusion(d: Mapping[str, Any]) -> Diffusion:
    try:
        return Diffusion.from_dict(d)
    except TypeError as exc:  # an unknown keyword
        raise ValueError(f"refiner 'diffusion': {exc}") from None


def build_refiner_network(config: RefinerConfig, num_classes: int) -> SPADEDiffusionModelUNet:
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
    one_hot = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()
    if null is not None:
        one_hot = one_hot * (~null.bool()).float().view(-1, 1, 1, 1)
    return one_hot


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
        config: RefinerConfig,
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
        config = RefinerConfig.from_dict(checkpoint.config["model"])
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
