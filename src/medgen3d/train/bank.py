"""Training cases held in memory, and seeded sampling of sequence batches from them.

Cases are small once on a model's grid (a 64-slice 64x64 volume is 1 MB), so every stage
samples its batches from a :class:`CaseBank` instead of a data loader. Sampling draws from
an explicit ``torch.Generator``: the training loop seeds one per step and every
``torchrun`` rank draws the same global batch, then keeps its own share. That is what makes
a run on N processes follow the run on one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medgen3d.datasets import discover_pairs, load_case
from medgen3d.errors import InputError
from medgen3d.evaluation.anatomy import AnatomyReference, mask_anatomy
from medgen3d.preprocessing import IntensityWindow
from medgen3d.recipe import DataSpec

__all__ = ["INTENSITY_PERCENTILES", "CaseBank"]

# The percentiles of each label's intensities that a model records about its training data.
INTENSITY_PERCENTILES = (1.0, 50.0, 99.0)
# The central fraction of the training masks whose anatomy a model records as the reference
# of its generated masks: what a held-out set of a few dozen scans spans, without the rare
# outliers of hundreds (AnatomyReference.from_anatomies).
REFERENCE_COVERAGE = 0.95


@dataclass(frozen=True)
class CaseBank:
    """Preprocessed cases: images in ``[-1, 1]`` and labels as channel indices.

    Attributes:
        images: one float32 ``(Z, H, W)`` array per case.
        labels: one uint8 ``(Z, H, W)`` array of channel indices ``0 .. C-1`` per case.
        num_classes: ``C``, the label table's size.
        names: case names, for messages.
    """

    images: tuple[np.ndarray, ...]
    labels: tuple[np.ndarray, ...]
    num_classes: int
    names: tuple[str, ...]

    @classmethod
    def from_folder(
        cls,
        root: str | Path,
        spec: DataSpec,
        progress: Callable[[int, int], None] | None = None,
        exclude: Sequence[str] = (),
    ) -> CaseBank:
        """Load every pair under ``root`` (any layout :func:`discover_pairs` knows), except
        the cases named in ``exclude`` (a recipe's held-out cases, when training).

        Raises:
            InputError: naming the file, for unreadable pairs or unknown label values, or
                naming the case when it has fewer slices than one sequence.
        """
        excluded = set(exclude)
        cases = [case for case in discover_pairs(root) if case.name not in excluded]
        if not cases:
            raise InputError("every pair in this folder is excluded (held out)", root)
        images, labels = [], []
        for i, case in enumerate(cases):
            image, label = load_case(
                case, spec.labels, spec.preprocessing, spec.label_mapping, spec.foreground_fill
            )
            if image.shape[0] < spec.sequence_length:
                raise InputError(
                    f"has {image.shape[0]} slices on the model grid, fewer than one sequence "
                    f"({spec.sequence_length}); use a smaller sequence_length or spacing",
                    case.image,
                )
            if images and image.shape[1:] != images[0].shape[1:]:
                raise InputError(
                    f"in-plane size {image.shape[1:]} differs from {images[0].shape[1:]} of "
                    f"{cases[0].name}; set data.size in the recipe to crop/pad all cases",
                    case.image,
                )
            images.append(image.data)
            labels.append(spec.labels.to_channels(label.data, case.label))
            if progress is not None:
                progress(i + 1, len(cases))
        return cls(tuple(images), tuple(labels), len(spec.labels), tuple(c.name for c in cases))

    def __len__(self) -> int:
        return len(self.images)

    def depth_range(self) -> dict[str, int]:
        """Slices per case on the model grid (min, median, max): a model records it so
        generation can default to the depth of a typical training volume."""
        depths = [image.shape[0] for image in self.images]
        return {"min": min(depths), "median": int(np.median(depths)), "max": max(depths)}

    @functools.cached_property
    def label_counts(self) -> np.ndarray:
        """``(cases, C)`` int64: the voxels of each channel in each case (counted once)."""
        return np.stack(
            [np.bincount(labels.ravel(), minlength=self.num_classes) for labels in self.labels]
        )

    @functools.cached_property
    def label_frequency(self) -> np.ndarray:
        """``(C,)`` each channel's share of all voxels: the mask loss weighs labels by it,
        and checkpoints record it, so sampling can divide those weights out again."""
        counts = self.label_counts.sum(0)
        return counts / counts.sum()

    def anatomy_ranges(
        self, spacing: Sequence[float] | None, names: Sequence[str], reference: bool = True
    ) -> dict[str, dict[str, list[float]]]:
        """The physical size of the training anatomy, recorded in every checkpoint, so a
        user's mask far from what the model has seen can be recognised as such.

        Returns:
            ``extent_mm``: per axis ``(z, y, x)``, min and max over cases of the labelled
            region's extent; ``volume_ml``: per label name, min and max over the cases
            holding it; ``reference``: the span of every structure's volume, pieces and
            continuity over the central :data:`REFERENCE_COVERAGE` of the cases
            (:class:`~medgen3d.evaluation.anatomy.AnatomyReference`), against which
            generation checks its masks. ``reference=False`` leaves it out: only the mask
            stage's is read, and measuring every structure of every case takes minutes.
        """
        spacing = np.asarray(spacing if spacing is not None else (1.0, 1.0, 1.0), float)
        extents, volumes = [], {name: [] for name in names[1:]}
        for labels, counts in zip(self.labels, self.label_counts, strict=True):
            where = np.argwhere(labels > 0)
            if len(where):
                extents.append((where.max(0) - where.min(0) + 1) * spacing)
            for channel, name in enumerate(names[1:], start=1):
                if counts[channel]:
                    volumes[name].append(counts[channel] * spacing.prod() / 1000.0)
        extent = np.stack(extents) if extents else np.zeros((1, 3))
        ranges = {
            "extent_mm": {"min": extent.min(0).tolist(), "max": extent.max(0).tolist()},
            "volume_ml": {n: [min(v), max(v)] for n, v in volumes.items() if v},
        }
        if reference:
            anatomies = [mask_anatomy(lab, self.num_classes, spacing) for lab in self.labels]
            ranges["reference"] = AnatomyReference.from_anatomies(
                anatomies, names[1:], REFERENCE_COVERAGE
            ).to_dict()
        return ranges

    def subset(self, ids: Sequence[int]) -> CaseBank:
        """The cases ``ids``, in that order."""
        return CaseBank(
            tuple(self.images[i] for i in ids),
            tuple(self.labels[i] for i in ids),
            self.num_classes,
            tuple(self.names[i] for i in ids),
        )

    def label_intensities(
        self, window: IntensityWindow, names: Sequence[str]
    ) -> dict[str, list[float]]:
        """Per label name, :data:`INTENSITY_PERCENTILES` of its voxels in physical units.

        Recorded in every checkpoint's provenance, so a generated pair can later be checked
        against the intensities its model was trained on (``medgen3d check``) without the
        training data. Labels with no voxel in the bank are left out.
        """
        ranges = {}
        for channel, name in enumerate(names):
            values = np.concatenate(
                [
                    image[label == channel]
                    for image, label in zip(self.images, self.labels, strict=True)
                ]
            )
            if values.size:
                physical = window.to_physical(values)
                ranges[name] = [float(v) for v in np.percentile(physical, INTENSITY_PERCENTILES)]
        return ranges

    def sample_sequences(
        self, batch_size: int, length: int, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Draw ``batch_size`` random sequences of ``length`` consecutive slices.

        Returns:
            ``image`` float ``(B, L, H, W)`` in [-1, 1], ``label`` long ``(B, L, H, W)``
            channel indices, ``position`` float ``(B,)``: the relative position
            ``start / (Z - L)`` of each sequence in its volume (0.5 when ``Z == L``).
        """
        case_ids = torch.randint(len(self), (batch_size,), generator=rng).tolist()
        draws = torch.rand(batch_size, generator=rng, dtype=torch.float64).tolist()
        images, labels, positions = [], [], []
        for case_id, u in zip(case_ids, draws, strict=True):
            depth = self.images[case_id].shape[0]
            last_start = depth - length
            start = min(int(u * (last_start + 1)), last_start)
            images.append(self.images[case_id][start : start + length])
            labels.append(self.labels[case_id][start : start + length])
            positions.append(0.5 if last_start == 0 else start / last_start)
        return {
            "image": torch.from_numpy(np.stack(images)),
            "label": torch.from_numpy(np.stack(labels).astype(np.int64)),
            "position": torch.tensor(positions, dtype=torch.float32),
        }
