"""Stage 2: the image sequence generator, masks (and the slices before them) to images.

One forward pass turns a mask sequence of ``L`` slices into the image sequence that goes
with it. Three things condition it:

* the **mask** enters every block through spatially-adaptive normalisation (SPADE, Park
  et al. 2019, https://arxiv.org/abs/1903.07291; MONAI's ``SPADENetResBlock``), so the
  layout modulates features at every scale instead of being washed out after the input;
* the **context**: the first ``k`` slices of the sequence are the last ``k`` slices of the
  sequence generated before it (sequences overlap by ``k``, see :mod:`medgen3d.sequences`).
  They come in as ``k`` image channels plus one "first sequence" flag channel; when the
  flag is set the context is zeros. The pipeline pastes the context back over the first
  ``k`` output slices, so consecutive sequences meet without a seam;
* the **relative position** ``p`` of the sequence in its volume, as a constant channel.

A seeded spatial noise input (``noise_channels`` maps) makes different seeds give
different images for one mask.

Why 2D with slices as channels (ours): the whole sequence is one ``(L, H, W)`` stack whose
slices are channels of a 2D network. On a laptop CPU a 2D network over 64x64 is about an
order of magnitude cheaper than 3D convolutions over ``(16, 64, 64)`` at the same width,
which is what lets the demo model train on 2 cores, and every slice still sees every other
slice of its sequence (and the context) from the first layer on. The price is a fixed
``L`` per model, which the checkpoint records anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets.spade_network import SPADENetResBlock
from torch import nn

from medgen3d.checkpoint import Checkpoint
from medgen3d.models._config import check_keys
from medgen3d.recipe import DataSpec

__all__ = [
    "GeneratorConfig",
    "ImageGenerator",
    "ImageSequenceGenerator",
    "build_image_generator",
    "one_hot_sequence",
]


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters of :class:`ImageSequenceGenerator` (the recipe's ``generator``).

    Attributes:
        channels: feature channels per resolution level; the input is halved between
            levels, so ``H`` and ``W`` must be divisible by ``2 ** (len(channels) - 1)``.
        noise_channels: maps of seeded Gaussian noise fed with the input (0: none, and the
            generator is deterministic).
        spade_channels: hidden channels of the SPADE blocks' label convolutions.
        label_channels: the one-hot mask sequence (``L * C`` channels) is embedded once by
            a 1x1 convolution into this many channels, which every SPADE block reads; it
            keeps the cost of the SPADE convolutions independent of ``L * C``.
    """

    channels: tuple[int, ...] = (32, 64, 64)
    noise_channels: int = 4
    spade_channels: int = 32
    label_channels: int = 32

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GeneratorConfig:
        """Parse and check a config dict.

        Raises:
            ValueError: naming the key, for unknown keys or invalid values.
        """
        check_keys(
            d, {"channels", "noise_channels", "spade_channels", "label_channels"}, "generator"
        )
        defaults = cls()
        channels = d.get("channels", defaults.channels)
        if (
            not isinstance(channels, Sequence)
            or not channels
            or not all(isinstance(c, int) and c > 0 for c in channels)
        ):
            raise ValueError(f"generator 'channels' must be positive integers, got {channels!r}")
        config = cls(
            tuple(channels),
            d.get("noise_channels", defaults.noise_channels),
            d.get("spade_channels", defaults.spade_channels),
            d.get("label_channels", defaults.label_channels),
        )
        for key, low in (("noise_channels", 0), ("spade_channels", 1), ("label_channels", 1)):
            value = getattr(config, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"generator {key!r} must be an integer >= {low}, got {value!r}")
        return config

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": list(self.channels),
            "noise_channels": self.noise_channels,
            "spade_channels": self.spade_channels,
            "label_channels": self.label_channels,
        }


def one_hot_sequence(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Channel indices ``(B, L, H, W)`` -> float one-hot ``(B, L * C, H, W)``, slice-major."""
    b, length, h, w = label.shape
    one_hot = F.one_hot(label.long(), num_classes).permute(0, 1, 4, 2, 3)
    return one_hot.reshape(b, length * num_classes, h, w).float()


class ImageSequenceGenerator(nn.Module):
    """A SPADE U-Net over a sequence of slices stacked as channels.

    Args:
        num_classes: ``C``, label channels per slice (background included).
        sequence_length: ``L``.
        context_slices: ``k``, the slices shared with the previous sequence.
        config: widths and noise.
    """

    def __init__(
        self, num_classes: int, sequence_length: int, context_slices: int, config: GeneratorConfig
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0 <= context_slices < sequence_length:
            raise ValueError(
                f"context_slices ({context_slices}) must be in [0, {sequence_length}), "
                "the sequence length"
            )
        self.num_classes = num_classes
        self.sequence_length = sequence_length
        self.context_slices = context_slices
        self.config = config
        label_nc = config.label_channels
        self.embed_label = Convolution(
            2, sequence_length * num_classes, label_nc, kernel_size=1, conv_only=True
        )
        chans = config.channels
        # context slices, the "first sequence" flag, the position, the noise maps
        in_channels = context_slices + 2 + config.noise_channels
        self.conv_in = Convolution(2, in_channels, chans[0], conv_only=True)
        self.down = nn.ModuleList(
            SPADENetResBlock(2, c_in, c_out, label_nc, config.spade_channels, kernel_size=1)
            for c_in, c_out in zip((chans[0], *chans[:-1]), chans, strict=True)
        )
        self.downsample = nn.ModuleList(
            Convolution(2, c, c, strides=2, kernel_size=3, conv_only=True) for c in chans[:-1]
        )
        self.up = nn.ModuleList(
            SPADENetResBlock(
                2, c_deep + c_skip, c_skip, label_nc, config.spade_channels, kernel_size=1
            )
            for c_deep, c_skip in zip(chans[:0:-1], chans[-2::-1], strict=True)
        )
        self.conv_out = Convolution(2, chans[0], sequence_length, conv_only=True)

    @property
    def size_multiple(self) -> int:
        """``H`` and ``W`` must be multiples of this."""
        return 2 ** (len(self.config.channels) - 1)

    def forward(
        self,
        label: torch.Tensor,
        context: torch.Tensor,
        first: torch.Tensor,
        position: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        """Generate an image sequence.

        Args:
            label: channel indices, long ``(B, L, H, W)``.
            context: the ``k`` slices generated before, ``(B, k, H, W)`` in [-1, 1];
                ignored (zeroed) where ``first`` is set.
            first: ``(B,)``, 1 for a sequence with no context (the first one), else 0.
            position: ``(B,)`` relative position of the sequence in its volume.
            noise: ``(B, noise_channels, H, W)`` standard normal.

        Returns:
            The image sequence ``(B, L, H, W)`` in [-1, 1].
        """
        b, length, h, w = label.shape
        if length != self.sequence_length:
            raise ValueError(f"expected {self.sequence_length} slices, got {length}")
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f"slice size {(h, w)} is not a multiple of {self.size_multiple}")
        seg = self.embed_label(one_hot_sequence(label, self.num_classes))
        first = first.to(context.dtype).view(b, 1, 1, 1)
        planes = [
            context * (1 - first),
            first.expand(b, 1, h, w),
            position.to(context.dtype).view(b, 1, 1, 1).expand(b, 1, h, w),
            noise,
        ]
        x = self.conv_in(torch.cat(planes, dim=1))
        skips = []
        for i, block in enumerate(self.down):
            x = block(x, seg)
            if i < len(self.downsample):
                skips.append(x)
                x = self.downsample[i](x)
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1), seg)
        return torch.tanh(self.conv_out(F.leaky_relu(x, 0.2)))


def build_image_generator(config: Mapping[str, Any], data: DataSpec) -> ImageSequenceGenerator:
    """The generator for ``data``'s labels and sequence geometry from a config dict.

    Raises:
        ValueError: naming the key, for an invalid config.
    """
    return ImageSequenceGenerator(
        len(data.labels), data.sequence_length, data.overlap, GeneratorConfig.from_dict(config)
    )


class ImageGenerator:
    """A trained generator ready for inference: network, data spec and device.

    Args:
        network: the generator (in eval mode after construction).
        data: the data spec it was trained with (labels, grid, window, ``L``, ``k``).
        device: where it runs.
    """

    def __init__(
        self, network: ImageSequenceGenerator, data: DataSpec, device: torch.device | str = "cpu"
    ) -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.data = data

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, device: torch.device | str = "cpu"
    ) -> ImageGenerator:
        """Rebuild from an ``"images"`` checkpoint (its inference weights)."""
        data = DataSpec.from_dict(checkpoint.config["data"])
        network = build_image_generator(checkpoint.config["model"]["generator"], data)
        network.load_state_dict(checkpoint.weights["generator"])
        return cls(network, data, device)

    @torch.no_grad()
    def generate_sequence(
        self,
        label: torch.Tensor,
        context: torch.Tensor | None,
        position: float,
        rng: torch.Generator,
    ) -> torch.Tensor:
        """One sequence ``(L, H, W)`` from its mask ``(L, H, W)`` (channel indices).

        Args:
            label: the sequence's mask.
            context: the ``k`` slices before (``(k, H, W)`` in [-1, 1]), or ``None`` for
                the first sequence. When given, they replace the first ``k`` output
                slices, so the sequence continues its neighbour exactly.
            position: relative position in the volume.
            rng: a CPU generator for the noise maps (CPU, so a seed gives the same noise
                on every device).
        """
        net = self.network
        h, w = label.shape[1:]
        noise = torch.randn((1, net.config.noise_channels, h, w), generator=rng)
        k = net.context_slices
        has_context = context is not None
        ctx = context if has_context else torch.zeros((k, h, w))
        out = net(
            label[None].to(self.device),
            ctx[None].float().to(self.device),
            torch.tensor([0.0 if has_context else 1.0], device=self.device),
            torch.tensor([position], device=self.device),
            noise.to(self.device),
        )[0]
        if has_context:
            out[:k] = ctx.to(out)
        return out.cpu()
