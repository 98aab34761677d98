"""A few of a recipe's or model's cases as a :class:`~medgen3d.train.bank.CaseBank`, for the
benchmarks that choose checkpoints and settings.

``split="train"`` takes the last training cases: every choice made on them leaves the
held-out cases, which the reports score, unseen. ``split="holdout"`` takes the first
held-out ones (figures recorded before 2026-11-30's choices were made on those).
:func:`first_training_cases` takes the first training cases, the reference of the
anatomy benchmarks.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from medgen3d.datasets import discover_pairs
from medgen3d.recipe import DataSpec, Recipe
from medgen3d.train.bank import CaseBank

SPLITS = ("train", "holdout")


def recipe_cases(recipe: Recipe, data: Path, split: str, count: int) -> CaseBank:
    """``count`` cases of ``split`` from DATA, on the recipe's grid and label table."""
    holdout = set(recipe.data.holdout)
    cases = [c for c in discover_pairs(data) if (c.name in holdout) == (split != "train")]
    chosen = cases[-count:] if split == "train" else cases[:count]
    with tempfile.TemporaryDirectory() as folder:  # a few cases, linked rather than copied
        for case in chosen:
            for path in (case.image, case.label):
                (Path(folder) / path.name).symlink_to(path.resolve())
        return CaseBank.from_folder(folder, recipe.data)


def first_training_cases(root: str | Path, spec: DataSpec, count: int) -> CaseBank:
    """The first ``count`` cases under ``root`` that ``spec`` does not hold out."""
    held_out = set(spec.holdout)
    training = [c.name for c in discover_pairs(root) if c.name not in held_out]
    return CaseBank.from_folder(root, spec, exclude=[*held_out, *training[count:]])
