"""What a mask model has learnt: its clean-sample estimate of real sequences at each noise
level, scored against the truth.

    python benchmarks/bench_mask_denoising.py RUN_OR_MODEL RECIPE DATA [--cases 4]

Draws sequences from ``--cases`` of the recipe's pairs in DATA (``--split train``, the
default: the last training cases, on which checkpoints are chosen; ``--split holdout``:
the held-out ones, as the figures before 2026-11-30's last rows; ``recipe_cases.py``),
noises them to timestep t, asks the model for the clean sequence (no known slices,
position given) and prints per t the voxel accuracy of its arg-max, the mean Dice over
labels, and each label's share of the voxels in the truth and in the estimate (and per-label
Dice at the last, least noisy t). A model that cannot name a label at t = 100
(little noise) has not learnt it, whatever its loss says; sampling cannot draw it either.
Last, from pure noise: how much the estimate varies between noise draws against how much
its mean layout varies across the slice (a model that reads a layout into noise draws the
body wherever its noise suggests). Run by hand, never in CI.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from medgen3d.evaluation.segmenter import dice_per_label
from medgen3d.model import load_model
from medgen3d.recipe import load_recipe
from medgen3d.stages.masks import labels_to_signal
from recipe_cases import SPLITS, recipe_cases

TIMESTEPS = (999, 700, 500, 300, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model name, model folder or training run folder")
    parser.add_argument("recipe", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--split", choices=SPLITS, default="train")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = load_model(args.model).stage("masks")
    recipe = load_recipe(args.recipe)
    bank = recipe_cases(recipe, args.data, args.split, args.cases)
    rng = torch.Generator().manual_seed(0)
    drawn = bank.sample_sequences(args.sequences, model.length, rng)
    truth = drawn["label"]
    clean = labels_to_signal(truth, model.num_classes)
    known = torch.zeros(args.sequences, model.length, dtype=torch.bool)
    names = recipe.data.labels.names
    print("share of voxels   ", _shares(truth, names))
    for t in TIMESTEPS:
        timesteps = torch.full((args.sequences,), t)
        noise = torch.randn(clean.shape, generator=rng)
        noisy, _ = model.diffusion.training_pair(clean, noise, timesteps)
        with torch.no_grad():
            prediction = model.network(noisy, timesteps, clean, known, drawn["position"])
            estimate = model.sampling_estimate(prediction)
        labels = estimate.argmax(dim=1)
        accuracy = float((labels == truth).float().mean())
        dice = dice_per_label(labels.numpy(), truth.numpy(), len(names))
        print(
            f"t={t:4d} accuracy {accuracy:.3f} mean Dice {np.nanmean(dice):.3f}",
            _shares(labels, names),
        )
    print("Dice at t=100", " ".join(f"{n}={d:.2f}" for n, d in zip(names[1:], dice, strict=True)))
    _noise_reading(model)


def _noise_reading(model, draws: int = 6) -> None:
    """Whether the model reads a layout into noise: from pure noise (no known slice, middle
    position) its estimate of "not background" should be the data's mean layout whatever
    the draw, at least at t = 999, where the input holds no signal at all."""
    shape = (1, model.num_classes, model.length, *model.size)
    known, nothing = torch.zeros(1, model.length, dtype=torch.bool), torch.zeros(shape)
    position = torch.tensor([0.5])
    for t in TIMESTEPS:
        foreground = []
        for draw in range(draws):
            noise = torch.randn(shape, generator=torch.Generator().manual_seed(draw))
            with torch.no_grad():
                prediction = model.network(noise, torch.tensor([t]), nothing, known, position)
            probability = model.label_probabilities(model.sampling_estimate(prediction))
            foreground.append(1 - probability[0, 0].numpy())
        foreground = np.stack(foreground)
        print(
            f"from noise t={t:4d}: spread between draws {foreground.std(0).mean():.3f}, "
            f"of the mean layout across the slice {foreground.mean(0).std():.3f}"
        )


def _shares(labels: torch.Tensor, names: tuple[str, ...]) -> str:
    counts = np.bincount(labels.ravel().numpy(), minlength=len(names)) / labels.numel()
    return " ".join(f"{name}={share:.4f}" for name, share in zip(names, counts, strict=True))


if __name__ == "__main__":
    main()
