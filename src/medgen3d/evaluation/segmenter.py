"""A small 2D segmenter: the yardstick that alignment, fidelity and downstream figures share.

Three evaluations need one network that maps images to labels:

* **alignment**: a segmenter trained on real pairs is applied to synthetic images, and its
  per-label Dice against the synthetic masks (:func:`dice_per_label`) is read next to its
  Dice on held-out real pairs;
* **fidelity**: FID/KID are computed on this network's encoder features
  (:meth:`Segmenter.features`) instead of an ImageNet network, so nothing is downloaded
  and the features know about this anatomy;
* **downstream use**: the same recipe is trained on real-only, real+synthetic and
  synthetic-only pairs and scored on held-out real pairs.

The network is MONAI's ``SegResNet`` in 2D on axial slices, kept small enough to train in
seconds on a CPU. SegResNet is used because ``encode`` returns the encoder's output apart
from the decoder. Training is a generator of :class:`~medgen3d.progress.Progress` like all
long engine work; with the same seed it gives bit-identical weights on the CPU (on one
machine with one thread count: the order of floating-point sums may change with either).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import SegResNet
from monai.networks.utils import one_hot
from monai.transforms import DivisiblePad, SpatialPad
from monai.utils import convert_to_tensor

from medgen3d import __version__
from medgen3d.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medgen3d.errors import InputError
from medgen3d.progress import Progress, ProgressGenerator
from medgen3d.runtime import resolve_device
from medgen3d.train.loop import step_rng

__all__ = [
    "STAGE",
    "Segmenter",
    "SegmenterSettings",
    "dice_per_label",
    "train_segmenter",
]

STAGE = "segmenter"
# Encoder levels: the first keeps full resolution, each further one halves it, so slices fed
# through the whole network must divide by 2 ** (levels - 1).
_BLOCKS_DOWN = (1, 1, 1, 1)
_BLOCKS_UP = (1, 1, 1)
_FACTOR = 2 ** (len(_BLOCKS_DOWN) - 1)
# SegResNet normalises with 8 groups, so every level's channel count must divide by 8.
_NORM_GROUPS = 8
# Padding value for images: the floor of the model scale, i.e. air in CT and the darkest
# background in MR, so padded borders look like the borders slices already have.
_IMAGE_FLOOR = -1.0
_INFERENCE_BATCH = 32
_MAX_CLASSES = 256


@dataclass(frozen=True)
class SegmenterSettings:
    """How the segmenter is built and trained.

    Attributes:
        steps: optimiser steps.
        batch_size: axial slices per step.
        learning_rate: AdamW learning rate.
        init_filters: channels of the first SegResNet level (doubling at each of the
            three further levels); a multiple of 8, the group-norm group count.
        seed: seeds the initial weights and every step's slice draw.
    """

    steps: int = 600
    batch_size: int = 16
    learning_rate: float = 1e-2
    init_filters: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "init_filters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"segmenter {name} must be a positive integer, not {value!r}")
        if self.init_filters % _NORM_GROUPS:
            raise InputError(
                f"segmenter init_filters must be a multiple of {_NORM_GROUPS} (SegResNet's "
                f"group-norm groups), not {self.init_filters}"
            )
        if not self.learning_rate > 0:
            raise InputError(
                f"segmenter learning_rate must be positive, not {self.learning_rate!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"segmenter seed must be a non-negative integer, not {self.seed!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SegmenterSettings:
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise InputError(
                f"unknown segmenter setting(s) {', '.join(unknown)}; allowed: "
                f"{', '.join(sorted(allowed))}"
            )
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Segmenter:
    """A 2D SegResNet that labels a volume slice by slice, and embeds slices as features.

    Attributes:
        network: ``SegResNet(spatial_dims=2, in_channels=1, out_channels=num_classes)``,
            trained on axial slices.
        num_classes: label values ``0..num_classes-1``, 0 being background.
        settings: how it was built and trained.
        real_dice: its Dice per foreground label on held-out real pairs (``None`` where a
            label was absent, or unmeasured): what it can segment at all, so an alignment
            check judges an image only by the labels it is reliable on.
    """

    network: SegResNet
    num_classes: int
    settings: SegmenterSettings
    real_dice: tuple[float | None, ...] | None = None

    @classmethod
    def create(
        cls,
        num_classes: int,
        settings: SegmenterSettings,
        device: str | torch.device = "cpu",
    ) -> Segmenter:
        """An untrained segmenter whose initial weights depend on ``settings.seed`` only.

        The caller's global random state is left as it was.
        """
        _check_num_classes(num_classes)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            network = SegResNet(
                spatial_dims=2,
                init_filters=settings.init_filters,
                in_channels=1,
                out_channels=num_classes,
                blocks_down=_BLOCKS_DOWN,
                blocks_up=_BLOCKS_UP,
            )
        return cls(network.to(_device(device)), num_classes, settings)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def feature_size(self) -> int:
        """``F``, the length of one slice's feature vector (channels of the deepest level)."""
        return self.settings.init_filters * _FACTOR

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Label a volume, one axial slice at a time.

        Slices whose sides do not divide by 8 are padded at their far ends with -1 (the
        background of the model scale) and the padding is cropped off the prediction.

        Args:
            image: ``(Z, H, W)`` in model scale [-1, 1]; any ``H, W``.

        Returns:
            ``(Z, H, W)`` uint8 label map, the arg-max class of every voxel.
        """
        image = _check_image(image)
        height, width = image.shape[1:]
        pad = DivisiblePad(_FACTOR, method="end", value=_IMAGE_FLOOR)
        out = np.empty(image.shape, dtype=np.uint8)
        self.network.eval()
        with torch.inference_mode():
            for start in range(0, image.shape[0], _INFERENCE_BATCH):
                stop = start + _INFERENCE_BATCH
                slices = _plain(pad(torch.from_numpy(image[start:stop])))
                logits = self.network(slices.unsqueeze(1).to(self.device))
                labels = logits.argmax(dim=1)[:, :height, :width]
                out[start:stop] = labels.to(torch.uint8).cpu().numpy()
        return out

    def features(self, image: np.ndarray) -> torch.Tensor:
        """2.5D features: the pooled encoder output of every axial, coronal and sagittal slice.

        The network was trained on axial slices only: on coronal and sagittal slices
        (where the in-plane axes are ``Z`` and ``W`` or ``Z`` and ``H``, at the volume's
        own, often anisotropic, spacing) it is a fixed embedding rather than a segmenter.
        That suits FID/KID, which compare two sets of volumes on the same grid through the
        same embedding; the figures are meaningful as comparisons, not in absolute terms.

        Slices are not padded: the encoder is strided convolutions only, which accept any
        size, and padding would mix border values into the average by an amount that
        depends on how far each side is from a multiple of 8.

        Args:
            image: ``(Z, H, W)`` in model scale [-1, 1]; the sides may differ and need
                not divide by anything.

        Returns:
            ``(Z + H + W, F)`` float32 on the CPU: rows ``0..Z-1`` are the axial slices,
            then ``H`` coronal slices (``image[:, y, :]``), then ``W`` sagittal slices
            (``image[:, :, x]``); ``F`` is :attr:`feature_size` (``8 * init_filters``),
            each entry the global average of one channel of ``network.encode``'s output.
        """
        image = _check_image(image)
        rows = []
        self.network.eval()
        with torch.inference_mode():
            for axis in range(3):
                view = np.moveaxis(image, axis, 0)
                for start in range(0, view.shape[0], _INFERENCE_BATCH):
                    slices = torch.from_numpy(
                        np.ascontiguousarray(view[start : start + _INFERENCE_BATCH])
                    )
                    encoded, _ = self.network.encode(slices.unsqueeze(1).to(self.device))
                    rows.append(encoded.mean(dim=(2, 3)).float().cpu())
        return torch.cat(rows)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the weights with ``num_classes`` and the settings as a checkpoint.

        Raises:
            OutputExistsError: when ``path`` exists and ``overwrite`` is false.
        """
        config = {
            "num_classes": self.num_classes,
            "settings": self.settings.to_dict(),
            "real_dice": None if self.real_dice is None else list(self.real_dice),
            "provenance": {
                "medgen3d_version": __version__,
                "torch_version": str(torch.__version__),
                "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            },
        }
        checkpoint = Checkpoint(STAGE, config, {"network": self.network.state_dict()})
        return save_checkpoint(checkpoint, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Segmenter:
        """Read a segmenter written by :meth:`save` (weights-only loading: no code runs).

        Raises:
            InputError: naming the file, when it is not a readable checkpoint, holds
                another stage (a masks or images model, say), or its config or weights do
                not fit the segmenter network.
        """
        checkpoint = load_checkpoint(path, stage=STAGE)
        try:
            segmenter = cls.create(
                int(checkpoint.config["num_classes"]),
                SegmenterSettings.from_dict(checkpoint.config["settings"]),
                "cpu",
            )
            segmenter.network.load_state_dict(checkpoint.weights["network"])
            real_dice = checkpoint.config.get("real_dice")
            if real_dice is not None:
                segmenter.real_dice = tuple(None if d is None else float(d) for d in real_dice)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"not a usable segmenter checkpoint ({exc})", path) from exc
        segmenter.network.to(_device(device))
        return segmenter


def train_segmenter(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    num_classes: int,
    settings: SegmenterSettings,
    device: str | torch.device = "cpu",
) -> ProgressGenerator[Segmenter]:
    """Train a segmenter on axial slices of image/label pairs.

    Each step draws ``settings.batch_size`` axial slices uniformly (with replacement) from
    all slices of all volumes, with a generator seeded from ``(seed, step)``, and takes one
    AdamW step on MONAI's ``DiceCELoss``. The Dice term is taken over the whole batch
    rather than per slice, since most slices lack most labels. Slices are not flipped or
    otherwise augmented: a mirrored slice would swap left and right organs.

    Volumes may differ in size: every slice is padded at its far ends (images with -1,
    labels with background) to the largest ``H`` and ``W`` rounded up to a multiple of 8.

    Args:
        images: ``(Z_i, H_i, W_i)`` volumes in model scale [-1, 1].
        labels: label maps of the same shapes, integer values ``0..num_classes-1``.
        num_classes: number of classes, background included (at least 2).
        settings: network size, steps, batch, learning rate and seed.
        device: ``"cpu"``, ``"cuda"``, ``"mps"``, ``"auto"`` or a ``torch.device``. On the
            CPU the same inputs and settings give bit-identical weights (same machine and
            thread count).

    Yields:
        ``Progress("segmenter", done, settings.steps)`` after every step.

    Returns:
        The trained :class:`Segmenter`, on ``device``.

    Raises:
        InputError: for no volumes, unequal numbers of images and labels, a pair whose
            shapes differ, a volume that is not 3D, or labels that are not integers in
            ``0..num_classes-1``.
    """
    _check_num_classes(num_classes)
    slices = _AxialSlices(_check_pairs(images, labels, num_classes))
    segmenter = Segmenter.create(num_classes, settings, device)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    optimizer = torch.optim.AdamW(segmenter.network.parameters(), lr=settings.learning_rate)
    segmenter.network.train()
    for step in range(settings.steps):
        x, y = slices.draw(settings.batch_size, step_rng(settings.seed, step))
        loss = loss_function(segmenter.network(x.to(segmenter.device)), y.to(segmenter.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        yield Progress(STAGE, step + 1, settings.steps)
    segmenter.network.eval()
    return segmenter


def dice_per_label(prediction: np.ndarray, reference: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of every foreground label between two label maps (MONAI's ``DiceMetric``).

    Args:
        prediction: label map, integer values ``0..num_classes-1``, e.g. ``(Z, H, W)``.
        reference: the label map it is scored against, same shape.
        num_classes: number of classes, background included (at least 2).

    Returns:
        ``(num_classes - 1,)`` float64: entry ``c - 1`` is the Dice of label ``c``. It is
        nan where ``reference`` lacks label ``c`` (whatever ``prediction`` holds), since
        Dice is undefined there; average with ``np.nanmean``.

    Raises:
        InputError: for shapes that differ or values outside ``0..num_classes-1``.
    """
    _check_num_classes(num_classes)
    if prediction.shape != reference.shape:
        raise InputError(
            f"prediction shape {prediction.shape} differs from reference shape {reference.shape}"
        )
    _check_label_values(prediction, num_classes, "prediction")
    _check_label_values(reference, num_classes, "reference")
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    scores = metric(_one_hot(prediction, num_classes), _one_hot(reference, num_classes))
    return scores[0].double().numpy()


class _AxialSlices:
    """Every axial slice of the training pairs, padded once to one size and drawn by index.

    Volumes are padded at their far ends (images with -1, labels with background) to the
    largest ``H`` and ``W`` rounded up to a multiple of 8; a volume already of that size is
    used in place, without a copy.
    """

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
        size = [
            -(-max(image.shape[axis] for image, _ in pairs) // _FACTOR) * _FACTOR for axis in (1, 2)
        ]
        pad_image = SpatialPad(size, method="end", value=_IMAGE_FLOOR)
        pad_label = SpatialPad(size, method="end", value=0)
        self.images = [_plain(pad_image(torch.from_numpy(image))) for image, _ in pairs]
        self.labels = [_plain(pad_label(torch.from_numpy(label))) for _, label in pairs]
        # Slice k of all volumes in a row is slice k - offsets[i] of volume i.
        self.offsets = np.cumsum([0] + [image.shape[0] for image, _ in pairs])

    def draw(self, batch_size: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` slices, uniformly with replacement: images ``(N, 1, H, W)``
        float32 and labels ``(N, 1, H, W)`` int64."""
        picks = torch.randint(int(self.offsets[-1]), (batch_size,), generator=rng).numpy()
        volumes = np.searchsorted(self.offsets, picks, side="right") - 1
        within = picks - self.offsets[volumes]
        x = torch.stack([self.images[v][k] for v, k in zip(volumes, within, strict=True)])
        y = torch.stack([self.labels[v][k] for v, k in zip(volumes, within, strict=True)])
        return x.unsqueeze(1), y.unsqueeze(1).long()


def _one_hot(label_map: np.ndarray, num_classes: int) -> torch.Tensor:
    """``(1, num_classes, *shape)`` float one-hot of a label map."""
    indices = torch.from_numpy(label_map.astype(np.int64))[None, None]
    return one_hot(indices, num_classes, dim=1)


def _check_pairs(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], num_classes: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The pairs as (float32 image, uint8 label) arrays, after checking them."""
    if len(images) == 0:
        raise InputError("no training volumes: pass at least one image/label pair")
    if len(images) != len(labels):
        raise InputError(f"{len(images)} images but {len(labels)} label maps; they must pair up")
    pairs = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        image = _check_image(image, f"images[{i}]")
        label = np.asarray(label)
        if label.shape != image.shape:
            raise InputError(
                f"labels[{i}] has shape {label.shape} but images[{i}] has shape {image.shape}"
            )
        _check_label_values(label, num_classes, f"labels[{i}]")
        pairs.append((image, label.astype(np.uint8, copy=False)))
    return pairs


def _check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or min(image.shape) < 1:
        raise InputError(f"{what} must be a non-empty (Z, H, W) volume, not shape {image.shape}")
    return np.ascontiguousarray(image, dtype=np.float32)


def _check_label_values(label: np.ndarray, num_classes: int, what: str) -> None:
    if not (np.issubdtype(label.dtype, np.integer) or label.dtype == np.bool_):
        raise InputError(f"{what} must hold integer label values, not {label.dtype}")
    if label.size == 0:
        return
    low, high = label.min(), label.max()
    if low < 0 or high >= num_classes:
        bad = high if high >= num_classes else low
        raise InputError(
            f"{what} holds label value {bad}, outside 0..{num_classes - 1} "
            f"(num_classes is {num_classes})"
        )


def _check_num_classes(num_classes: int) -> None:
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or not 2 <= num_classes <= _MAX_CLASSES
    ):
        raise InputError(
            f"num_classes must be an integer from 2 (background and one label) to "
            f"{_MAX_CLASSES} (label maps are uint8), not {num_classes!r}"
        )


def _device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A MONAI transform's output as a plain tensor (no MetaTensor bookkeeping)."""
    return convert_to_tensor(tensor, track_meta=False)
