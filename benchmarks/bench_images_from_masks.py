"""Images a model makes from real masks, at several refiner strengths: the figures of the
reports' "Images from real masks" on cases that choices may be made on.

    python benchmarks/bench_images_from_masks.py MODEL RECIPE DATA SEGMENTER
        [--cases 3] [--strengths 0,0.3] [--split train]

MODEL is a model name or folder (a training run's folder works: its stage files load
with their optimiser state). For ``--cases`` of the recipe's cases (``--split train``, the
default: the last training cases, so that choosing image or refiner checkpoints and the
refiner's strength never looks at the held-out cases the reports score;
``recipe_cases.py``), each real mask becomes an image with each strength; prints the
Pearson r of per-label mean intensities and the segmenter's mean Dice on the real and the
generated images, and their ratio (the bar: 0.85). SEGMENTER is a report's
``segmenter.pt``. Run by hand, never in CI.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from medgen3d.evaluation.from_masks import images_from_real_masks
from medgen3d.evaluation.segmenter import Segmenter
from medgen3d.model import load_model
from medgen3d.progress import drain
from medgen3d.recipe import load_recipe
from medgen3d.settings import DEFAULTS
from recipe_cases import SPLITS, recipe_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model name, model folder or training run folder")
    parser.add_argument("recipe", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("segmenter", type=Path)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--strengths", default="0,0.3", help="comma-separated, in [0, 1]")
    parser.add_argument("--split", choices=SPLITS, default="train")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = load_model(args.model)
    bank = recipe_cases(load_recipe(args.recipe), args.data, args.split, args.cases)
    segmenter = Segmenter.load(args.segmenter)
    for strength in (float(s) for s in args.strengths.split(",")):
        refiner = dataclasses.replace(DEFAULTS.refiner, strength=strength)
        generation = dataclasses.replace(DEFAULTS, refiner=refiner)
        work = images_from_real_masks(model, bank, range(len(bank)), segmenter, 0, generation)
        found = drain(work)
        real, generated = (found["dice"][k]["mean"] for k in ("real", "generated"))
        print(
            f"strength {strength:.2f}: r {found['pearson_r']:.3f}, mean Dice real "
            f"{real:.3f}, generated {generated:.3f}, ratio {generated / real:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
