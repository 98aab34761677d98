"""A few of a recipe's cases as a :class:`~medgen3d.train.bank.CaseBank`, for the benchmarks
that choose checkpoints and settings.

``split="train"`` takes the last training cases: every choice made on them leaves the
held-out cases, which the reports score, unseen. ``split="holdout"`` takes the first
held-out ones (figures recorded before 2026-11-30's choices were made on those).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from medgen3d.datasets import discover_pairs
from medgen3d.recipe import Recipe
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
