"""Recipes: what a model is trained on and how, as a JSON file.

One recipe describes a whole three-stage model, so the stages cannot disagree about labels
or grid::

    {
      "data":    {"labels": "thorax_phantom", "label_mapping": null,
                  "spacing": [5, 6, 6], "size": [64, 64], "holdout": [],
                  "window": {"modality": "ct", "low": -1000, "high": 1000},
                  "sequence_length": 16, "overlap": 4},
      "masks":   {"model": {...}, "training": {...}},
      "images":  {"model": {...}, "training": {...}},
      "refiner": {"model": {...}, "training": {...}}
    }

Paths to data and outputs are not part of a recipe: they come from the command line, so
one recipe moves between machines. ``"labels"`` names a bundled table
(``medgen3d/labels/``) or a table file relative to the recipe; ``"label_mapping"`` is inline
or a mapping file relative to the recipe (:func:`~medgen3d.labels.read_label_mapping`), and
``"holdout"`` lists case names training never reads. A stage's ``"model"`` section
is checked by that stage's network builder; ``"training"`` is :class:`TrainingSettings`.
Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgen3d.errors import InputError
from medgen3d.foreground import ForegroundFill
from medgen3d.labels import LabelTable, bundled_table, read_label_mapping
from medgen3d.preprocessing import IntensityWindow, Preprocessing
from medgen3d.stages.config import check_keys

__all__ = ["DataSpec", "Recipe", "StageRecipe", "TrainingSettings", "load_recipe"]


@dataclass(frozen=True)
class DataSpec:
    """The grid, intensities, labels and sequence geometry shared by all stages.

    ``holdout`` names the cases of the recipe's dataset that training never reads: they are
    kept for evaluation, and a model carries the list so its report can say which scans it
    has never seen. ``foreground_fill`` (recipe key ``"unlabelled_foreground"``) derives a
    label for the subject the dataset's masks leave unlabelled (:mod:`medgen3d.foreground`).
    """

    labels: LabelTable
    preprocessing: Preprocessing
    sequence_length: int = 16
    overlap: int = 4
    label_mapping: dict[int, int] | None = None
    holdout: tuple[str, ...] = ()
    foreground_fill: ForegroundFill | None = None

    def __post_init__(self) -> None:
        if (
            self.foreground_fill is not None
            and self.foreground_fill.value not in self.labels.values
        ):
            raise ValueError(
                f"unlabelled_foreground value {self.foreground_fill.value} is not in the table"
            )
        if not 0 <= self.overlap < self.sequence_length:
            raise ValueError(
                f"overlap ({self.overlap}) must be in [0, sequence_length={self.sequence_length})"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, with the label table inline (checkpoints carry it)."""
        pre = self.preprocessing
        return {
            "labels": self.labels.to_dict(),
            "label_mapping": None if self.label_mapping is None else dict(self.label_mapping),
            "spacing": None if pre.spacing is None else list(pre.spacing),
            "size": None if pre.size is None else list(pre.size),
            "window": dataclasses.asdict(pre.window),
            "sequence_length": self.sequence_length,
            "overlap": self.overlap,
            "holdout": list(self.holdout),
            "unlabelled_foreground": None
            if self.foreground_fill is None
            else self.foreground_fill.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: Path | None = None) -> DataSpec:
        """Parse the ``"data"`` section; ``base`` resolves a relative label-table path."""
        _check_keys(
            d,
            {
                "labels",
                "label_mapping",
                "spacing",
                "size",
                "window",
                "sequence_length",
                "overlap",
                "holdout",
                "unlabelled_foreground",
            },
            "data",
        )
        mapping = _label_mapping(d.get("label_mapping"), base)
        fill = d.get("unlabelled_foreground")
        spacing, size = d.get("spacing"), d.get("size")
        return cls(
            labels=_label_table(d["labels"], base),
            preprocessing=Preprocessing(
                spacing=None if spacing is None else tuple(float(s) for s in spacing),
                size=None if size is None else tuple(int(s) for s in size),
                window=IntensityWindow(**d.get("window", {})),
            ),
            sequence_length=int(d.get("sequence_length", 16)),
            overlap=int(d.get("overlap", 4)),
            label_mapping=mapping,
            holdout=tuple(str(name) for name in d.get("holdout", ())),
            foreground_fill=None if fill is None else ForegroundFill.from_dict(fill),
        )


@dataclass(frozen=True)
class TrainingSettings:
    """Optimisation settings of one stage.

    Attributes:
        max_steps: optimiser steps in all (``--max-steps`` overrides).
        batch_size: the global batch, split evenly over ``torchrun`` processes, so a run
            on N processes follows the same trajectory as on one.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        grad_clip: maximum gradient norm (0 disables clipping).
        ema_decay: decay of the exponential moving average of weights used for inference
            (0 disables it).
        checkpoint_every: steps between checkpoints (the last step always saves).
        log_every: steps between log lines.
        amp: mixed precision: float16 on CUDA, bfloat16 on CPUs that compute it natively
            (:func:`medgen3d.runtime.mixed_precision`); ignored elsewhere.
        seed: seed of batch sampling, noise and initial weights.
    """

    max_steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    log_every: int = 50
    amp: bool = True
    seed: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainingSettings:
        _check_keys(d, {f.name for f in dataclasses.fields(cls)}, "training")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StageRecipe:
    """One stage's network hyper-parameters (checked by its builder) and training."""

    model: dict[str, Any] = field(default_factory=dict)
    training: TrainingSettings = TrainingSettings()


@dataclass(frozen=True)
class Recipe:
    """A whole model's recipe.

    ``description`` and ``dataset`` (``{"name": ..., "licence": ...}``: what the recipe is
    meant to be trained on, and under which terms its data may be used) are recorded in
    every checkpoint trained from it, so ``medgen3d info`` can say what a model has seen.
    """

    data: DataSpec
    stages: dict[str, StageRecipe]
    path: Path | None = None
    description: str = ""
    dataset: dict[str, str] | None = None

    def stage(self, name: str) -> StageRecipe:
        if name not in self.stages:
            raise InputError(f"recipe has no {name!r} section", self.path)
        return self.stages[name]


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file.

    Raises:
        InputError: naming the file, for unreadable JSON, unknown keys or invalid values.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"cannot read recipe ({exc.strerror})", path) from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON at line {exc.lineno}: {exc.msg}", path) from exc
    try:
        _check_keys(raw, {"data", "masks", "images", "refiner", "description", "dataset"}, "recipe")
        dataset = raw.get("dataset")
        if dataset is not None:
            _check_keys(dataset, {"name", "licence"}, "dataset")
            dataset = {key: str(value) for key, value in dataset.items()}
        data = DataSpec.from_dict(raw["data"], base=path.parent)
        stages = {
            name: StageRecipe(
                model=dict(section.get("model", {})),
                training=TrainingSettings.from_dict(section.get("training", {})),
            )
            for name, section in raw.items()
            if name in ("masks", "images", "refiner")
        }
    except InputError as exc:
        raise InputError(exc.problem, path) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"invalid recipe: {exc}", path) from exc
    return Recipe(data, stages, path, str(raw.get("description", "")), dataset)


def _label_mapping(spec: Any, base: Path | None) -> dict[int, int] | None:
    """``label_mapping`` inline (``{"source": target}``) or as a mapping file's path."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return read_label_mapping(Path(spec) if base is None else base / spec)
    return {int(k): int(v) for k, v in spec.items()}


def _label_table(spec: Any, base: Path | None) -> LabelTable:
    if isinstance(spec, Mapping):
        return LabelTable.from_dict(spec)
    candidate = Path(spec) if base is None else base / spec
    if candidate.suffix and candidate.is_file():
        return LabelTable.read(candidate)
    try:
        return bundled_table(str(spec))
    except FileNotFoundError:
        raise InputError(f"label table {spec!r} is neither a bundled table nor a file") from None


def _check_keys(d: Any, allowed: set[str], section: str) -> None:
    try:
        check_keys(d, allowed, section)
    except ValueError as exc:
        raise InputError(str(exc)) from None
