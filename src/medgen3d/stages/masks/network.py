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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from monai.networks.utils import one_hot
from torch import nn

from medgen3d.checkpoint import Checkpoint
from medgen3d.diffusion import Diffusion
from medgen3d.errors import InputError
from medgen3d.holes import fill_enclosed
from medgen3d.recipe import DataSpec
from medgen3d.stages.config import NetworkConfig, positive_int

__all__ = [
    "LAYOUTS",
    "NO_POSITION",
    "MaskDenoiser",
    "MaskDiffusionModel",
    "MaskNetworkConfig",
    "PositionEmbedding",
    "PositionalDiffusionUNet",
    "label_weights",
    "labels_to_signal",
]

LAYOUTS = ("2d", "3d")
# Position value meaning "not given"; any negative value is treated the same way.
NO_POSITION = -1.0
# Positions in [0, 1] are scaled onto the range of timesteps before the sinusoidal
# embedding, so they use as many of its frequencies as a timestep does.
_POSITION_SCALE = 1000.0


@dataclass(frozen=True)
class MaskNetworkConfig(NetworkConfig):
    """The recipe's ``masks.model`` section: the denoiser's layout and widths.

    Attributes:
        layout: ``"2d"`` (slices as channels) or ``"3d"`` (convolutions over the sequence).
        channels: U-Net channels per level.
        num_res_blocks: residual blocks, one number or one per level.
        attention_levels: self-attention per level (default: none).
        norm_num_groups: group-norm groups; must leave at least 2 channels per group.
        num_head_channels: channels per attention head, one number or one per level.
        position_dropout: how often training drops the position condition.
        coordinates: two CoordConv channels with each pixel's in-plane position.
        stem_channels: width of a 1x1 convolution that projects the ``2 L C + L`` input
            channels before the UNet, and of the 1x1 convolution that expands its output to
            ``L C``; ``None`` feeds them to the UNet's 3x3 convolutions directly. With many
            labels those two 3x3 convolutions cost more than the rest of the network
            (benchmarks/README.md, "Where a mask step's time goes").
        shrink_input: feed the network its noisy input scaled by the gain of the linear
            least-squares estimate of the clean sample at that timestep,
            ``sqrt(a) b / (a b^2 + 1 - a)`` (``a`` = alpha-bar, ``b`` = the diffusion's
            input_scale): about ``1 / b`` when nearly clean, falling to 0 where the input is
            all noise, so the noise reaching the network never exceeds half the signal's
            unit scale. Without it a network that has not learnt to ignore its input at high
            noise reads a layout into the noise itself (the head-and-neck masks at 6300
            steps: their estimate from pure noise varied between noise draws nearly as much
            as across the slice, `benchmarks/README.md`), and each sample puts the body
            wherever its noise suggests; with it, nearly pure noise leaves only position and
            coordinates to go by, so the estimate there is the data's mean layout.
        diffusion: objective and schedule. Clean-sample prediction by default: a 2D network
            must otherwise carry ``L C`` noise channels through its narrow first level
            (see benchmarks/README.md).
        label_weighting: each voxel's training error is weighted by the frequency of its
            true label to the power ``-label_weighting``, normalised to mean 1 over the
            training data. 0 weighs voxels alike, and a loss averaged over all voxels of a
            head-and-neck CT barely notices a 0.05 % parotid; 0.5 makes such a voxel count
            about 40 times a background one, so small structures are learnt early. The
            weighted loss is minimised by a *weighted* posterior, which would draw rare
            structures many times too large; sampling divides the weights back out
            (:meth:`MaskDiffusionModel.sampling_estimate`), so it needs the ``"x0"`` objective.
        undo_weighting: the power of the label weights that sampling divides out. 1 gives
            the posterior exactly at the loss minimum. A model short of that minimum is less
            sure of small structures than the data warrants, and sampling, which builds
            each structure from its own earlier estimates, then loses them: the
            head-and-neck masks at 9600 steps drew no organ at all with 1, and most organs
            at their training volumes with 0.5, some up to 2-3 times larger
            (`benchmarks/README.md`). Read only when
            sampling: choose it from sampled volumes against the training data's
            (``benchmarks/bench_mask_volumes.py``), and change it without retraining.
        label_bias: one log factor per label channel, multiplied into every estimate's
            label probabilities when sampling (after ``undo_weighting``); ``None``: none.
            One power cannot serve every label of a model short of its loss minimum: the
            brain masks at 3700 steps drew the deep grey matter at a power that let the
            cortex and cerebellum outgrow their range, and at one that kept those in range
            drew no thalamus at all (`benchmarks/README.md`). ``medgen3d calibrate`` fits
            these factors so that sampled volumes match the training cases' median
            volumes (:mod:`medgen3d.calibration`). Read only when sampling.
        fill_holes: close what each sequence generates slice by slice
            (:meth:`MaskDiffusionModel.fill_holes`): background, and the derived label of
            the unlabelled subject, enclosed by the structures take the nearest structure's
            label, then background enclosed by anything labelled takes the nearest label.
            Training masks have next to no such holes, and sampling leaves them where it is
            unsure which of two neighbours a voxel belongs to: calibrated brain masks at
            3700 steps enclosed 60-125 ml of background and islands of "head" of up to
            27 ml inside the brain (`benchmarks/README.md`). Read only when sampling.
        min_island_voxels: once the whole volume is generated, pieces of a structure
            smaller than this many voxels, all but its largest, take the nearest kept
            voxel's label (:func:`~medgen3d.islands.remove_islands`); 0 keeps every
            piece. Deep brain structures are one piece in training masks, and samples
            scatter fragments of a few voxels around them (`benchmarks/README.md`). Read
            only when sampling.
        sampling_overlap: slices each generated sequence shares with those generated
            before it; ``None``: the data's ``overlap``. Training shows the network every
            number of known slices, so any overlap below the sequence length is one it
            knows. More known slices tell a sequence how far a structure has come: the
            head-and-neck masks carry an organ through about twice its real length from 4
            known slices and much less from 8 (`benchmarks/README.md`), at about 1.5 times
            the sequences. Read only when sampling.
    """

    SECTION = "masks model"

    layout: str = "2d"
    channels: tuple[int, ...] = (32, 64)
    num_res_blocks: int | tuple[int, ...] = 1
    attention_levels: tuple[bool, ...] | None = None
    norm_num_groups: int = 8
    num_head_channels: int | tuple[int, ...] = 8
    position_dropout: float = 0.15
    coordinates: bool = True
    stem_channels: int | None = None
    shrink_input: bool = False
    diffusion: Diffusion = field(default_factory=lambda: Diffusion(objective="x0"))
    label_weighting: float = 0.0
    undo_weighting: float = 1.0
    label_bias: tuple[float, ...] | None = None
    fill_holes: bool = False
    min_island_voxels: int = 0
    sampling_overlap: int | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        channels = self.channels
        if not isinstance(channels, tuple) or not channels:
            raise ValueError(f"channels must be a list, got {channels!r}")
        if not all(positive_int(c) for c in channels):
            raise ValueError(f"channels must be positive integers, got {list(channels)}")
        levels = self.attention_levels
        if levels is None:
            levels = (False,) * len(channels)
        if not isinstance(levels, tuple):
            raise ValueError(f"attention_levels must be a list, got {levels!r}")
        object.__setattr__(self, "attention_levels", tuple(bool(a) for a in levels))
        if len(levels) != len(channels):
            raise ValueError(
                f"attention_levels has {len(levels)} entries, channels {len(channels)}; "
                "give one per level"
            )
        groups = self.norm_num_groups
        if not positive_int(groups) or any(c % groups for c in channels):
            raise ValueError(f"norm_num_groups ({groups}) must divide every entry of channels")
        if any(c // groups < 2 for c in channels):
            # MONAI adds the time embedding per channel right before a GroupNorm: in a group
            # of one channel that offset is normalised away and the network never sees t or p.
            raise ValueError(
                f"norm_num_groups ({groups}) must leave at least 2 channels per group in "
                f"every level of channels {list(channels)}"
            )
        for key in ("num_res_blocks", "num_head_channels"):
            value = getattr(self, key)
            values = value if isinstance(value, tuple) else (value,)
            if not all(positive_int(v) for v in values) or (
                isinstance(value, tuple) and len(values) != len(channels)
            ):
                raise ValueError(
                    f"{key} must be a positive integer or one per level, got {value!r}"
                )
        if not isinstance(self.coordinates, bool):
            raise ValueError(f"coordinates must be true or false, got {self.coordinates!r}")
        stem = self.stem_channels
        if stem is not None and not positive_int(stem):
            raise ValueError(f"stem_channels must be a positive integer or null, got {stem!r}")
        if not isinstance(self.label_weighting, int | float) or not 0 <= self.label_weighting <= 1:
            raise ValueError(f"label_weighting must be in [0, 1], got {self.label_weighting!r}")
        if not isinstance(self.undo_weighting, int | float) or not 0 <= self.undo_weighting <= 1:
            raise ValueError(f"undo_weighting must be in [0, 1], got {self.undo_weighting!r}")
        bias = self.label_bias
        if bias is not None and (
            not isinstance(bias, tuple)
            or not all(isinstance(b, int | float) and np.isfinite(b) for b in bias)
        ):
            raise ValueError(f"label_bias must be a list of finite numbers or null, got {bias!r}")
        if not isinstance(self.fill_holes, bool):
            raise ValueError(f"fill_holes must be true or false, got {self.fill_holes!r}")
        if not positive_int(self.min_island_voxels, 0):
            raise ValueError(
                f"min_island_voxels must be a whole number >= 0, got {self.min_island_voxels!r}"
            )
        overlap = self.sampling_overlap
        if overlap is not None and not positive_int(overlap, 0):
            raise ValueError(
                f"sampling_overlap must be a whole number >= 0 or null, got {overlap!r}"
            )
        if not isinstance(self.shrink_input, bool):
            raise ValueError(f"shrink_input must be true or false, got {self.shrink_input!r}")
        if self.shrink_input and self.diffusion.objective == "rflow":
            raise ValueError("shrink_input needs a DDPM noise schedule, not the 'rflow' objective")
        if self.label_weighting and self.diffusion.objective != "x0":
            raise ValueError(
                "label_weighting is divided out of the clean-sample estimate when sampling, "
                f"so it needs the 'x0' objective, not {self.diffusion.objective!r}"
            )
        if not 0.0 <= self.position_dropout <= 1.0:
            raise ValueError(f"position_dropout must be in [0, 1], got {self.position_dropout}")

    def check_grid(self, data: DataSpec) -> None:
        """Every downsampling halves the grid, so its sides must divide by
        ``2 ** (levels - 1)``.

        Raises:
            ValueError: naming the data key whose size does not divide.
        """
        factor = 2 ** (len(self.channels) - 1)
        size = data.preprocessing.size
        sides = {"data.size": size} if size is not None else {}
        if self.layout == "3d":
            sides["data.sequence_length"] = (data.sequence_length,)
        for key, values in sides.items():
            if any(v % factor for v in values):
                raise ValueError(
                    f"{key} {tuple(values)} must be divisible by {factor} for "
                    f"{len(self.channels)} levels (channels)"
                )


def label_weights(counts: Sequence[float] | np.ndarray, exponent: float) -> torch.Tensor:
    """Per-label voxel weights ``frequency ** -exponent`` from voxel counts (or frequencies)
    per label, normalised so that the mean weight over the voxels counted is 1 (labels never
    seen get the largest seen weight)."""
    counts = np.asarray(counts, dtype=np.float64)
    frequency = counts / counts.sum()
    seen = frequency > 0
    weights = np.ones_like(frequency)
    weights[seen] = frequency[seen] ** -exponent
    weights[~seen] = weights[seen].max()
    weights /= (frequency * weights).sum()
    return torch.from_numpy(weights).float()


def labels_to_signal(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Channel indices ``(B, L, H, W)`` -> one-hot ``(B, C, L, H, W)`` float in ``[-1, 1]``."""
    return one_hot(labels.long()[:, None], num_classes, dim=1) * 2.0 - 1.0


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
        config: the network's config.
    """

    def __init__(self, num_classes: int, length: int, config: MaskNetworkConfig) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.length = length
        self.layout = config.layout
        self.coordinates = config.coordinates
        flat = self.layout == "2d"
        per_slice = length if flat else 1
        spatial_dims = 2 if flat else 3
        in_channels = per_slice * (2 * num_classes + 1) + (2 if self.coordinates else 0)
        out_channels = per_slice * num_classes
        stem = config.stem_channels
        conv = nn.Conv2d if flat else nn.Conv3d
        # Identity when there is no stem: the state dict (and old checkpoints) stay unchanged.
        self.stem = nn.Identity() if stem is None else conv(in_channels, stem, 1)
        self.head = nn.Identity() if stem is None else conv(stem, out_channels, 1)
        # Not in the state dict: derived from the config, so checkpoints stay unchanged.
        self.register_buffer("input_gain", _input_gain(config), persistent=False)
        self.unet = PositionalDiffusionUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels if stem is None else stem,
            out_channels=out_channels if stem is None else stem,
            channels=config.channels,
            num_res_blocks=config.num_res_blocks,
            attention_levels=config.attention_levels,
            norm_num_groups=config.norm_num_groups,
            num_head_channels=config.num_head_channels,
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
        if self.input_gain is not None:
            x = x * self.input_gain[timesteps.long()].to(x.dtype).view(b, 1, 1, 1, 1)
        indicator = known.to(x.dtype)[:, None, :, None, None]
        given = known_values * indicator
        packed = torch.cat([x, given, indicator.expand(b, 1, length, h, w)], dim=1)
        if self.layout == "2d":
            packed = packed.reshape(b, (2 * c + 1) * length, h, w)
        if self.coordinates:
            packed = torch.cat([packed, _plane_coordinates(packed)], dim=1)
        out = self.head(self.unet(self.stem(packed), timesteps, position))
        return out.reshape(b, c, length, h, w)


def _input_gain(config: MaskNetworkConfig) -> torch.Tensor | None:
    """Per timestep, the gain of the linear least-squares estimate of the (unscaled) clean
    sample from the noisy one (``shrink_input``); ``None`` without it."""
    if not config.shrink_input:
        return None
    alpha_bar = config.diffusion.alphas_cumprod().double()
    scale = config.diffusion.input_scale
    return (alpha_bar.sqrt() * scale / (alpha_bar * scale**2 + 1.0 - alpha_bar)).float()


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
        config: the network config.
        label_weights: ``(C,)`` the weight its training loss gave each label
            (:func:`label_weights`), ``None`` when it weighed voxels alike.
        subject_channel: the channel of the label its data derives for the unlabelled
            subject (:class:`~medgen3d.foreground.ForegroundFill`, e.g. the head around a
            brain), ``None`` when the data has none.
    """

    network: MaskDenoiser
    num_classes: int
    length: int
    overlap: int
    size: tuple[int, int] | None
    config: MaskNetworkConfig
    label_weights: torch.Tensor | None = None
    subject_channel: int | None = None

    @property
    def generation_overlap(self) -> int:
        """Slices a generated sequence shares with those before it unless a call says
        otherwise: the config's ``sampling_overlap``, else the data's ``overlap``."""
        own = self.config.sampling_overlap
        return self.overlap if own is None else own

    @property
    def diffusion(self) -> Diffusion:
        return self.config.diffusion

    @classmethod
    def build(cls, data: DataSpec, config: MaskNetworkConfig) -> MaskDiffusionModel:
        """A freshly initialised model for ``data``'s labels and sequence geometry.

        Raises:
            ValueError: when the grid does not divide by the network's downsampling.
        """
        config.check_grid(data)
        if config.label_bias is not None and len(config.label_bias) != len(data.labels):
            raise ValueError(
                f"label_bias has {len(config.label_bias)} entries for "
                f"{len(data.labels)} label channels; give one per channel"
            )
        network = MaskDenoiser(len(data.labels), data.sequence_length, config)
        fill = data.foreground_fill
        return cls(
            network,
            len(data.labels),
            data.sequence_length,
            data.overlap,
            data.preprocessing.size,
            config,
            subject_channel=None if fill is None else data.labels.values.index(fill.value),
        )

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, device: torch.device | str = "cpu"
    ) -> MaskDiffusionModel:
        """Rebuild from a ``masks`` checkpoint's config and load its inference weights.

        A checkpoint stores its resolved config, so a key it lacks did not exist when it was
        written: such models were built without coordinate channels and without a stem.

        A model trained with ``label_weighting`` takes its weights from the label
        frequencies its training recorded (provenance ``label_frequency``).

        Raises:
            InputError: for a label-weighted model that records no label frequencies.
        """
        written = {"coordinates": False, "stem_channels": None, **checkpoint.config["model"]}
        config = MaskNetworkConfig.from_dict(written)
        model = cls.build(DataSpec.from_dict(checkpoint.config["data"]), config)
        model.network.load_state_dict(checkpoint.weights["network"])
        model.network.to(device).eval()
        if config.label_weighting:
            frequency = checkpoint.config.get("provenance", {}).get("label_frequency")
            if frequency is None or len(frequency) != model.num_classes:
                raise InputError(
                    "was trained with label_weighting but does not record a frequency for "
                    f"each of its {model.num_classes} labels (provenance 'label_frequency'), "
                    "so sampling cannot undo the weighting",
                    checkpoint.path,
                )
            model.label_weights = label_weights(frequency, config.label_weighting).to(device)
        return model

    def sampling_estimate(
        self, prediction: torch.Tensor, power: float | None = None
    ) -> torch.Tensor:
        """The network's clean-sample ``prediction`` ``(B, C, L, H, W)`` as sampling uses
        it: the training's label weights to the ``power`` divided out (by default the
        config's ``undo_weighting``) and the config's ``label_bias`` multiplied in;
        unchanged for a model with neither.

        Per voxel, a loss weighting label ``k`` by ``w_k`` is minimised by the weighted
        posterior ``q_k = p_k w_k / sum_j p_j w_j`` instead of the posterior ``p_k``, so the
        estimate of a weighted model overstates every rare label wherever it is uncertain
        (sampled organs came out 5-30 times too large). Dividing ``q`` by ``w`` and
        renormalising recovers ``p`` exactly at the loss minimum: the correction of a
        class-prior shift ("logit adjustment"), applied to the one-hot estimate. The
        calibration's factors ``exp(b_k)`` are a further prior shift of the same kind.
        """
        power = self.config.undo_weighting if power is None else power
        weighted = self.label_weights is not None and power != 0
        if not weighted and self.config.label_bias is None:
            return prediction
        factors = torch.ones(self.num_classes, dtype=torch.float64)
        if weighted:
            factors = factors / self.label_weights.double().cpu() ** power
        if self.config.label_bias is not None:
            factors = factors * torch.tensor(self.config.label_bias, dtype=torch.float64).exp()
        shifted = self.label_probabilities(prediction) * factors.view(1, -1, 1, 1, 1).to(prediction)
        posterior = shifted / shifted.sum(dim=1, keepdim=True).clamp(min=1e-12)
        return self.diffusion.input_scale * (2.0 * posterior - 1.0)

    def fill_holes(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` ``(Z, H, W)`` (channel indices) with the holes in each slice closed.

        First the structures close: background and the unlabelled subject enclosed by them
        take the nearest structure's channel (in 30 brain training masks at most 2.7 ml of
        head lies enclosed by the brain's structures, in samples islands of up to 27 ml).
        Then background enclosed by anything labelled, the subject included, takes the
        nearest labelled channel.
        """
        if self.subject_channel is None:
            return fill_enclosed(labels, (0,))
        return fill_enclosed(fill_enclosed(labels, (0, self.subject_channel)), (0,))

    def label_probabilities(self, prediction: torch.Tensor) -> torch.Tensor:
        """A clean-sample estimate ``(B, C, L, H, W)`` on the signal scale as per-voxel label
        probabilities: the inverse of :func:`labels_to_signal` times ``input_scale``,
        clamped at 0 (an estimate may overshoot the signal's floor)."""
        return ((prediction / self.diffusion.input_scale + 1.0) / 2.0).clamp(min=0.0)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device
