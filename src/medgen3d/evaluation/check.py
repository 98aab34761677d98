"""Per-pair quality check: flag generated pairs to drop before they become training data.

A pair is flagged when a label's median intensity lies outside the range its model saw in
training (the 1st to 99th percentile recorded in every checkpoint's provenance), or when a
segmenter trained on real pairs (``medgen3d evaluate`` saves one) finds the image does not
show the mask's anatomy: its mean Dice against the pair's own mask is low. The mean is over
the labels the segmenter segments reliably on real pairs (held-out Dice of at least
:data:`RELIABLE_DICE`, recorded with it), so a small organ it never learned does not flag
every pair.

Intensities are read on the model grid in the model's window, the scale the recorded
ranges were taken in, and reported in physical units (HU for CT).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medgen3d.datasets import CasePaths
from medgen3d.errors import InputError
from medgen3d.evaluation.segmenter import Segmenter, dice_per_label
from medgen3d.io import Volume, load_pair
from medgen3d.model import GenerativeModel
from medgen3d.preprocessing import preprocess_pair
from medgen3d.progress import Progress, ProgressGenerator
from medgen3d.recipe import DataSpec

__all__ = [
    "DEFAULT_MIN_DICE",
    "RELIABLE_DICE",
    "LabelCheck",
    "PairCheck",
    "check_pair",
    "check_pairs",
    "training_intensities",
]

# Below this mean Dice an image no longer shows its mask's anatomy.
DEFAULT_MIN_DICE = 0.5
# Labels a segmenter reaches this Dice on in held-out real pairs count for alignment.
RELIABLE_DICE = 0.5


@dataclass(frozen=True)
class LabelCheck:
    """One label of one pair.

    Attributes:
        name: the label's name in the model's table.
        median: median intensity of its voxels (physical units).
        low: the 1st percentile of this label in the model's training data.
        high: the 99th percentile.
        dice: the segmenter's Dice for this label, ``None`` without a segmenter.
    """

    name: str
    median: float
    low: float
    high: float
    dice: float | None = None

    @property
    def in_range(self) -> bool:
        return self.low <= self.median <= self.high


@dataclass(frozen=True)
class PairCheck:
    """The verdict on one pair: per-label figures and the reasons it is flagged."""

    name: str
    labels: tuple[LabelCheck, ...]
    mean_dice: float | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        """A few readable lines: the verdict, each label's figures, the problems."""
        dice = "" if self.mean_dice is None else f", mean Dice {self.mean_dice:.2f}"
        lines = [f"{'ok' if self.ok else 'FLAGGED'}: {self.name}{dice}"]
        for c in self.labels:
            mark = " " if c.in_range else "!"
            label_dice = "" if c.dice is None else f"  Dice {c.dice:.2f}"
            lines.append(
                f" {mark} {c.name:<14} median {c.median:8.1f}  "
                f"training [{c.low:.0f}, {c.high:.0f}]{label_dice}"
            )
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "problems": list(self.problems),
            "mean_dice": self.mean_dice,
            "labels": {
                c.name: {"median": c.median, "low": c.low, "high": c.high, "dice": c.dice}
                for c in self.labels
            },
        }


def training_intensities(model: GenerativeModel) -> dict[str, list[float]]:
    """Per label, the training intensity percentiles recorded in ``model``'s checkpoints.

    Raises:
        InputError: when no stage records them (checkpoints written before they were).
    """
    ranges = model.recorded("label_intensities")
    if ranges:
        return ranges
    raise InputError(
        "none of its checkpoints records its training intensities; retrain (or resume) a "
        "stage with this version of medgen3d to record them",
        model.source,
    )


def check_pair(
    image: Volume,
    label: Volume,
    data: DataSpec,
    ranges: Mapping[str, Sequence[float]],
    segmenter: Segmenter | None = None,
    min_dice: float = DEFAULT_MIN_DICE,
    name: str = "pair",
    source: str | Path | None = None,
) -> PairCheck:
    """Check one pair against its model's training intensities and, optionally, a segmenter.

    Args:
        image: the pair's image in physical units, on any grid.
        label: its label map with the values of the model's table, on the image's grid.
        data: the model's data spec: label table, grid and intensity window.
        ranges: from :func:`training_intensities`.
        segmenter: when given, alignment is checked too.
        min_dice: the lowest acceptable mean foreground Dice.
        name: what to call the pair in the result.
        source: the label map's file, named in errors.

    Raises:
        InputError: when the label map holds values the model's table does not.
    """
    data.labels.check_values(label.data, source)
    names = data.labels.names
    # Intensities are judged on the pair's own grid: on the model's grid, padding (air)
    # would join the background and hide a background that is not air.
    channels = data.labels.to_channels(label.data)
    window = data.preprocessing.window
    physical = window.to_physical(window.normalise(image.data))
    dice = None
    if segmenter is not None:
        on_grid, label_on_grid = preprocess_pair(image, label, data.preprocessing)
        labels_on_grid = data.labels.to_channels(label_on_grid.data)
        dice = dice_per_label(segmenter.predict(on_grid.data), labels_on_grid, len(names))
    checks, problems = [], []
    for channel, label_name in enumerate(names):
        voxels = physical[channels == channel]
        if not voxels.size or label_name not in ranges:
            continue
        low, _, high = ranges[label_name]
        label_dice = None
        if dice is not None and channel > 0 and np.isfinite(dice[channel - 1]):
            label_dice = float(dice[channel - 1])
        check = LabelCheck(label_name, float(np.median(voxels)), low, high, label_dice)
        checks.append(check)
        if not check.in_range:
            problems.append(
                f"{label_name}: median intensity {check.median:.0f} outside the training "
                f"range [{low:.0f}, {high:.0f}]"
            )
    mean_dice = None
    if dice is not None:
        counted = dice[_reliable(segmenter) & np.isfinite(dice)]
        mean_dice = float(counted.mean()) if counted.size else None
        if mean_dice is not None and mean_dice < min_dice:
            problems.append(
                f"alignment: mean Dice {mean_dice:.2f} of a real-data segmenter below {min_dice}"
            )
    return PairCheck(name, tuple(checks), mean_dice, tuple(problems))


def _reliable(segmenter: Segmenter) -> np.ndarray:
    """Which foreground labels count for alignment: all, unless the segmenter records its
    real-data Dice, then those at :data:`RELIABLE_DICE` or above."""
    if segmenter.real_dice is None:
        return np.ones(segmenter.num_classes - 1, dtype=bool)
    return np.array([d is not None and d >= RELIABLE_DICE for d in segmenter.real_dice])


def check_pairs(
    cases: Sequence[CasePaths],
    data: DataSpec,
    ranges: Mapping[str, Sequence[float]],
    segmenter: Segmenter | None = None,
    min_dice: float = DEFAULT_MIN_DICE,
    label_mapping: Mapping[int, int] | None = None,
) -> ProgressGenerator[list[PairCheck]]:
    """:func:`check_pair` for pairs on disk (see :func:`medgen3d.datasets.find_pairs`);
    ``label_mapping`` translates label maps in another convention onto the model's table.

    Yields:
        ``Progress("check", done, total)`` after each pair.

    Raises:
        InputError: naming the file, for pairs that cannot be read or whose labels the
            model's table does not hold.
    """
    results = []
    for done, case in enumerate(cases, start=1):
        image, label = load_pair(case.image, case.label)
        # generated pairs carry the table's own values, never the training data's mapping
        label = label.with_data(data.labels.translate(label.data, label_mapping, case.label))
        results.append(
            check_pair(image, label, data, ranges, segmenter, min_dice, case.name, case.label)
        )
        yield Progress("check", done, len(cases))
    return results
