"""Stage 2, the image sequence generator: masks (and the slices before them) to images.

One forward pass turns a mask sequence of ``L`` slices into the image sequence that goes
with it. Three things condition it:

* the **mask** enters every block through spatially-adaptive normalisation (SPADE, Park
  et al. 2019, https://arxiv.org/abs/1903.07291; MONAI's ``SPADENetResBlock``), so the
  layout modulates features at every scale instead of being washed out after the input;
* the **context**: the first ``k`` slices of the sequence are the last ``k`` slices of the
  sequence generated before it (sequences overlap by ``k``, see :mod:`medgen3d.sequences`).
  They come in as ``k`` image channels plus one "first sequence" flag channel; when the
  flag is set the context is zeros. :func:`generate_images` pastes the context back over the first
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

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets.spade_network import SPADENetResBlock
from monai.networks.utils import one_hot
from torch import nn

from medgen3d.checkpoint import Checkpoint
from medgen3d.errors import InputError
from medgen3d.progress import Progress, ProgressGenerator
from medgen3d.recipe import DataSpec
from medgen3d.sequences import relative_position, sequence_starts
from medgen3d.stages.config import NetworkConfig, positive_int

__all__ = [
    "ImageGenerator",
    "ImageNetworkConfig",
    "ImageSequenceGenerator",
    "build_image_generator",
    "generate_images",
    "one_hot_sequence",
]


@dataclass(frozen=True)
class ImageNetworkConfig(NetworkConfig):
    """Hyper-parameters of :class:`ImageSequenceGenerator` (``images.model.generator``).

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

    SECTION = "generator"

    channels: tuple[int, ...] = (32, 64, 64)
    noise_channels: int = 4
    spade_channels: int = 32
    label_channels: int = 32

    def __post_init__(self) -> None:
        channels = self.channels
        if not isinstance(channels, tuple) or not channels:
            raise ValueError(f"generator 'channels' must be a list, got {channels!r}")
        if not all(positive_int(c) for c in channels):
            raise ValueError(f"generator 'channels' must be positive integers, got {channels!r}")
        for key, low in (("noise_channels", 0), ("spade_channels", 1), ("label_channels", 1)):
            value = getattr(self, key)
            if not positive_int(value, low):
                raise ValueError(f"generator {key!r} must be an integer >= {low}, got {value!r}")


def one_hot_sequence(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Channel indices ``(B, L, H, W)`` -> float one-hot ``(B, L * C, H, W)``, slice-major."""
    b, length, h, w = label.shape
    encoded = one_hot(label.long()[:, :, None], num_classes, dim=2)  # (B, L, C, H, W)
    return encoded.reshape(b, length * num_classes, h, w)


class ImageSequenceGenerator(nn.Module):
    """A SPADE U-Net over a sequence of slices stacked as channels.

    Args:
        num_classes: ``C``, label channels per slice (background included).
        sequence_length: ``L``.
        context_slices: ``k``, the slices shared with the previous sequence.
        config: widths and noise.
    """

    def __init__(
        self,
        num_classes: int,
        sequence_length: int,
        context_slices: int,
        config: ImageNetworkConfig,
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


def build_image_generator(config: ImageNetworkConfig, data: DataSpec) -> ImageSequenceGenerator:
    """The generator network for ``data``'s labels and sequence geometry."""
    return ImageSequenceGenerator(len(data.labels), data.sequence_length, data.overlap, config)


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
        config = ImageNetworkConfig.from_dict(checkpoint.config["model"]["generator"])
        network = build_image_generator(config, data)
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


def generate_images(
    image_generator: ImageGenerator,
    labels: np.ndarray,
    *,
    seed: int = 0,
    previous: np.ndarray | None = None,
    region: np.ndarray | None = None,
) -> ProgressGenerator[np.ndarray]:
    """Stage 2 over a label volume, or over part of it, sequence by sequence from the first
    (most inferior) slice up; each sequence starts with the last ``k`` slices generated
    before it, so sequences join without a seam.

    Args:
        image_generator: the trained image sequence generator.
        labels: ``(Z, H, W)`` channel indices, ``Z`` at least the sequence length.
        seed: seeds the noise maps of all sequences.
        previous: ``(Z, H, W)`` image in [-1, 1] to update, with ``region``.
        region: ``(Z,)`` bool, the slices to (re)generate; only sequences touching it run,
            each still starting from the ``k`` slices before it, and slices outside it keep
            ``previous``. ``None`` generates every slice.

    Yields:
        :class:`Progress` ``("images", i, n_sequences, preview)`` after every sequence.

    Returns:
        ``(Z, H, W)`` float32 image in [-1, 1].

    Raises:
        InputError: when the volume is shorter than one sequence, or ``region`` comes
            without ``previous``.
    """
    depth = labels.shape[0]
    length, overlap = image_generator.data.sequence_length, image_generator.data.overlap
    if depth < length:
        raise InputError(f"a volume of {depth} slices is shorter than one sequence ({length})")
    if region is not None and previous is None:
        raise InputError("regenerating a region needs the previous image")
    out = np.full(labels.shape, -1.0, np.float32) if previous is None else previous.copy()
    write = np.ones(depth, bool) if region is None else np.asarray(region, bool)
    starts = [s for s in sequence_starts(depth, length, overlap) if write[s : s + length].any()]
    rng = torch.Generator().manual_seed(seed)
    for i, start in enumerate(starts):
        context = None if start == 0 else torch.from_numpy(out[start : start + overlap])
        sequence = image_generator.generate_sequence(
            torch.from_numpy(labels[start : start + length].astype(np.int64)),
            context,
            relative_position(start, depth, length),
            rng,
        ).numpy()
        inside = write[start : start + length]
        out[start : start + length][inside] = sequence[inside]
        yield Progress("images", i + 1, len(starts), out.copy())
    return out
