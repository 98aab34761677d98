"""MC-DPM: the multi-condition diffusion model that generates mask sequences.

A mask sequence is ``L`` consecutive slices of ``C`` one-hot label channels scaled to
``[-1, 1]``, held as a ``(B, C, L, H, W)`` tensor everywhere in the engine. One network
serves every way a sequence is generated, because the conditions are inputs that training
drops at random (MCVD-style):

* **relative position** ``p`` of the sequence in its volume (0 = first slice, 1 = last),
  embedded and *added* to the timestep embedding, as MAISI adds its spacing and body-region
  embeddings (``DiffusionModelUNetMaisi``). :data:`NO_POSITION` stands for "unknown" and
  maps to a learned null embedding, so the model also generates without it;
* **known slices**: their one-hot values (zeros on unknown slices) plus a per-slice
  indicator, concatenated to the noisy input along channels (the ``concat`` conditioning
  mode of MONAI's ``DiffusionInferer``).

With ``"coordinates"`` (the default) two more input channels hold each pixel's in-plane
position in ``[-1, 1]`` (CoordConv). A convolutional network is translation-equivariant,
and at the start of sampling its input is pure noise: without coordinates nothing tells it
where in the plane the body belongs, and it draws a torso wherever the noise suggests one.

The denoiser is MONAI's ``DiffusionModelUNet`` in one of two layouts (the ``"layout"`` key):
``"2d"`` stacks the slices as channels (``2 L C + L`` in, ``L C`` out, convolutions over
``(H, W)``), ``"3d"`` convolves over ``(L, H, W)`` (``2 C + 1`` in, ``C`` out).
``benchmarks/README.md`` records the measurement behind the demo's choice.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from medgen3d.checkpoint import Checkpoint
from medgen3d.diffusion import Diffusion
from medgen3d.models._config import check_keys
from medgen3d.recipe import DataSpec

__all__ = [
    "DEFAULT_CONFIG",
    "LAYOUTS",
    "NO_POSITION",
    "MaskDenoiser",
    "MaskDiffusionModel",
    "PositionEmbedding",
    "PositionalDiffusionUNet",
    "check_config",
    "labels_to_signal",
]

LAYOUTS = ("2d", "3d")
# Position value meaning "not given"; any negative value is treated the same way.
NO_POSITION = -1.0
# Positions in [0, 1] are scaled onto the range of timesteps before the sinusoidal
# embedding, so they use as many of its frequencies as a timestep does.
_POSITION_SCALE = 1000.0

DEFAULT_CONFIG: dict[str, Any] = {
    "layout": "2d",
    "channels": [32, 64],
    "num_res_blocks": 1,
    "attention_levels": [False, False],
    "norm_num_groups": 8,
    "num_head_channels": 8,
    "position_dropout": 0.15,
    "coordinates": True,
    # Width of a 1x1 convolution that projects the 2 L C + L input channels before the UNet
    # and of the 1x1 convolution that expands its output to L C; None feeds them to the
    # UNet's 3x3 convolutions directly. With many labels those two 3x3 convolutions cost
    # more than the rest of the network (benchmarks/README.md, "Where a mask step's time goes").
    "stem_channels": None,
    # Clean-sample prediction: a 2D network must otherwise carry L*C noise channels through
    # its narrow first level (see benchmarks/README.md).
    "diffusion": Diffusion(objective="x0").to_dict(),
}


def check_config(config: Mapping[str, Any], data: DataSpec | None = None) -> dict[str, Any]:
    """The network config with defaults filled in, after checking every key.

    The resolved dict is what a checkpoint stores, so a checkpoint never depends on the
    defaults of the version that reads it.

    Args:
        config: the recipe's ``masks.model`` section; missing keys take
            :data:`DEFAULT_CONFIG`'s values.
        data: when given, its sequence length and in-plane size are checked against the
            network's downsampling.

    Raises:
        ValueError: naming the offending key.
    """
    check_keys(config, set(DEFAULT_CONFIG), "masks model")
    resolved = {**copy.deepcopy(DEFAULT_CONFIG), **copy.deepcopy(dict(config))}
    if resolved["layout"] not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {resolved['layout']!r}")
    channels = resolved["channels"] = [int(c) for c in _as_list(resolved, "channels")]
    levels = resolved["attention_levels"] = [
        bool(a) for a in _as_list(resolved, "attention_levels")
    ]
    groups = resolved["norm_num_groups"]
    if not channels or any(c <= 0 for c in channels):
        raise ValueError(f"channels must be positive integers, got {channels}")
    if len(levels) != len(channels):
        raise ValueError(
            f"attention_levels has {len(levels)} entries, channels {len(channels)}; "
            "give one per level"
        )
    if not isinstance(groups, int) or groups < 1 or any(c % groups for c in channels):
        raise ValueError(f"norm_num_groups ({groups}) must divide every entry of channels")
    if any(c // groups < 2 for c in channels):
        # MONAI adds the time embedding per channel right before a GroupNorm: in a group of
        # one channel that offset is normalised away and the network never sees t or p.
        raise ValueError(
            f"norm_num_groups ({groups}) must leave at least 2 channels per group in every "
            f"level of channels {channels}"
        )
    _check_per_level(resolved, "num_res_blocks", len(channels))
    _check_per_level(resolved, "num_head_channels", len(channels))
    if not isinstance(resolved["coordinates"], bool):
        raise ValueError(f"coordinates must be true or false, got {resolved['coordinates']!r}")
    stem = resolved["stem_channels"]
    if stem is not None and (not isinstance(stem, int) or isinstance(stem, bool) or stem < 1):
        raise ValueError(f"stem_channels must be a positive integer or null, got {stem!r}")
    if not 0.0 <= resolved["position_dropout"] <= 1.0:
        raise ValueError(f"position_dropout must be in [0, 1], got {resolved['position_dropout']}")
    try:
        given = {**DEFAULT_CONFIG["diffusion"], **resolved["diffusion"]}
        resolved["diffusion"] = Diffusion.from_dict(given).to_dict()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"diffusion: {exc}") from exc
    if data is not None:
        _check_grid(resolved, data)
    return resolved


def _as_list(config: Mapping[str, Any], key: str) -> list:
    value = config[key]
    if not isinstance(value, list | tuple):
        raise ValueError(f"{key} must be a list, got {value!r}")
    return list(value)


def _check_per_level(config: dict[str, Any], key: str, levels: int) -> None:
    value = config[key]
    per_level = isinstance(value, list | tuple)
    values = list(value) if per_level else [value]
    if not all(isinstance(v, int) and v > 0 for v in values) or (
        per_level and len(values) != levels
    ):
        raise ValueError(f"{key} must be a positive integer or one per level, got {value!r}")
    if per_level:
        config[key] = values


def _check_grid(config: dict[str, Any], data: DataSpec) -> None:
    """Every downsampling halves the grid, so its sides must divide by ``2 ** (levels - 1)``."""
    factor = 2 ** (len(config["channels"]) - 1)
    size = data.preprocessing.size
    sides = {"data.size": size} if size is not None else {}
    if config["layout"] == "3d":
        sides["data.sequence_length"] = (data.sequence_length,)
    for key, values in sides.items():
        if any(v % factor for v in values):
            raise ValueError(
                f"{key} {tuple(values)} must be divisible by {factor} for "
                f"{len(config['channels'])} levels (channels)"
            )


def labels_to_signal(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Channel indices ``(B, L, H, W)`` -> one-hot ``(B, C, L, H, W)`` float in ``[-1, 1]``."""
    one_hot = nn.functional.one_hot(labels.long(), num_classes).permute(0, 4, 1, 2, 3)
    return one_hot.float() * 2.0 - 1.0


class PositionEmbedding(nn.Module):
    """Relative position ``p`` -> an addend of the timestep embedding.

    ``p`` goes through the same sinusoidal embedding as a timestep, then a small MLP (the
    MAISI pattern). Negative ``p`` (:data:`NO_POSITION`) selects a learned null embedding,
    which training uses whenever it drops the position.

    Args:
        base_dim: width of the sinusoidal embedding.
        embed_dim: width of the timestep embedding it is added to.
    """

    def __init__(self, base_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.base_dim = base_dim
        self.mlp = nn.Sequential(
            nn.Linear(base_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )
        self.null = nn.Parameter(torch.zeros(embed_dim))

    def forward(self, position: torch.Tensor) -> torch.Tensor:
        """``position`` ``(N,)`` float -> ``(N, embed_dim)``."""
        given = position >= 0
        sinusoid = get_timestep_embedding(position.clamp(min=0) * _POSITION_SCALE, self.base_dim)
        embedded = self.mlp(sinusoid.to(self.null.dtype))
        return torch.where(given[:, None], embedded, self.null.to(embedded.dtype))


class PositionalDiffusionUNet(DiffusionModelUNet):
    """``DiffusionModelUNet`` whose timestep embedding also carries a continuous position.

    MONAI's forward adds ``class_embedding(class_labels)`` to the time embedding (its step
    2). A position embedding is the same kind of addend, so it takes that slot: the class
    table is replaced by a :class:`PositionEmbedding` and the whole MONAI forward is reused.
    Keyword arguments are those of ``DiffusionModelUNet`` (without ``num_class_embeds``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(num_class_embeds=1, **kwargs)
        base_dim = self.block_out_channels[0]
        self.class_embedding = PositionEmbedding(base_dim, 4 * base_dim)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, timesteps: torch.Tensor, position: torch.Tensor
    ) -> torch.Tensor:
        """``x`` ``(N, C_in, *spatial)``, ``timesteps`` and ``position`` ``(N,)``."""
        return super().forward(x, timesteps, class_labels=position)


class MaskDenoiser(nn.Module):
    """The MC-DPM network: noisy sequence + conditions -> the objective's prediction.

    Packs ``(B, C, L, H, W)`` sequences into the chosen layout and back, so callers never
    see it.

    Args:
        num_classes: ``C``, one-hot channels per slice.
        length: ``L``, slices per sequence.
        config: a config resolved by :func:`check_config`.
    """

    def __init__(self, num_classes: int, length: int, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.length = length
        self.layout = config["layout"]
        self.coordinates = config["coordinates"]
        flat = self.layout == "2d"
        per_slice = length if flat else 1
        spatial_dims = 2 if flat else 3
        in_channels = per_slice * (2 * num_classes + 1) + (2 if self.coordinates else 0)
        out_channels = per_slice * num_classes
        stem = config["stem_channels"]
        conv = nn.Conv2d if flat else nn.Conv3d
        # Identity when there is no stem: the state dict (and old checkpoints) stay unchanged.
        self.stem = nn.Identity() if stem is None else conv(in_channels, stem, 1)
        self.head = nn.Identity() if stem is None else conv(stem, out_channels, 1)
        self.unet = PositionalDiffusionUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels if stem is None else stem,
            out_channels=out_channels if stem is None else stem,
            channels=tuple(config["channels"]),
            num_res_blocks=config["num_res_blocks"],
            attention_levels=tuple(config["attention_levels"]),
            norm_num_groups=config["norm_num_groups"],
            num_head_channels=config["num_head_channels"],
        )

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        known_values: torch.Tensor,
        known: torch.Tensor,
        position: torch.Tensor,
    ) -> torch.Tensor:
        """Predict for a batch of noisy sequences.

        Args:
            x: noisy sequences ``(B, C, L, H, W)``.
            timesteps: ``(B,)``.
            known_values: clean one-hot values ``(B, C, L, H, W)``; read on known slices only.
            known: ``(B, L)`` bool, which slices are given.
            position: ``(B,)`` relative positions, :data:`NO_POSITION` where not given.

        Returns:
            The prediction, ``(B, C, L, H, W)``.
        """
        b, c, length, h, w = x.shape
        indicator = known.to(x.dtype)[:, None, :, None, None]
        given = known_values * indicator
        packed = torch.cat([x, given, indicator.expand(b, 1, length, h, w)], dim=1)
        if self.layout == "2d":
            packed = packed.reshape(b, (2 * c + 1) * length, h, w)
        if self.coordinates:
            packed = torch.cat([packed, _plane_coordinates(packed)], dim=1)
        out = self.head(self.unet(self.stem(packed), timesteps, position))
        return out.reshape(b, c, length, h, w)


def _plane_coordinates(packed: torch.Tensor) -> torch.Tensor:
    """``(B, 2, *spatial)`` channels holding each voxel's in-plane ``(y, x)`` in ``[-1, 1]``
    (the same on every slice of a 3-D layout)."""
    h, w = packed.shape[-2:]
    axes = [torch.linspace(-1.0, 1.0, n, device=packed.device, dtype=packed.dtype) for n in (h, w)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    shape = (packed.shape[0], 2, *packed.shape[2:])
    return grid.view(1, 2, *([1] * (packed.dim() - 4)), h, w).expand(shape)


@dataclass
class MaskDiffusionModel:
    """Everything sampling needs: the network, its diffusion process and its geometry.

    Attributes:
        network: the :class:`MaskDenoiser` (in eval mode after :meth:`from_checkpoint`).
        diffusion: objective and noise schedule it was trained with.
        num_classes: ``C``.
        length: ``L``, slices per sequence.
        overlap: ``k``, slices shared by neighbouring sequences.
        size: in-plane ``(H, W)`` it was trained on, ``None`` when the data had no fixed size.
        config: the resolved network config.
    """

    network: MaskDenoiser
    diffusion: Diffusion
    num_classes: int
    length: int
    overlap: int
    size: tuple[int, int] | None
    config: dict[str, Any]

    @classmethod
    def build(cls, data: DataSpec, config: Mapping[str, Any]) -> MaskDiffusionModel:
        """A freshly initialised model for ``data``'s labels and sequence geometry.

        Raises:
            ValueError: naming the config key that is wrong.
        """
        resolved = check_config(config, data)
        network = MaskDenoiser(len(data.labels), data.sequence_length, resolved)
        return cls(
            network,
            Diffusion.from_dict(resolved["diffusion"]),
            len(data.labels),
            data.sequence_length,
            data.overlap,
            data.preprocessing.size,
            resolved,
        )

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, device: torch.device | str = "cpu"
    ) -> MaskDiffusionModel:
        """Rebuild from a ``masks`` checkpoint's config and load its inference weights.

        A checkpoint stores its resolved config, so a key it lacks did not exist when it was
        written: such models were built without coordinate channels and without a stem.
        """
        config = {"coordinates": False, "stem_channels": None, **checkpoint.config["model"]}
        model = cls.build(DataSpec.from_dict(checkpoint.config["data"]), config)
        model.network.load_state_dict(checkpoint.weights["network"])
        model.network.to(device).eval()
        return model

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device
