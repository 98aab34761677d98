"""Does a mask model draw a thorax? Its samples' anatomy next to fresh phantoms.

    .venv/bin/python benchmarks/bench_mask_anatomy.py MASKS.pt [--n 4] [--steps 25]

For a masks checkpoint trained on the phantom (the demo's, or a run's), prints:

* **denoising Dice**: phantom sequences noised to timestep t, denoised in one network call;
  Dice of body, lungs and heart against the phantoms. The last row feeds pure noise at
  t = T instead: a network that knows the anatomy predicts the mean thorax there, which
  overlaps any phantom fairly well. When the noised phantoms at T score much higher than
  pure noise, the schedule leaves signal at T that the network learned to read, and
  sampling from real noise will follow the noise instead;
* **samples**: ``--n`` whole volumes (64 slices) against ``--n`` fresh phantoms: the body's
  distance from the in-plane centre, torso pieces per slice, and how many samples
  :func:`medgen3d.evaluation.anatomy.implausible` flags (and for what).

Record the figures in benchmarks/README.md with the checkpoint's steps.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch
from scipy import ndimage

from medgen3d.checkpoint import load_checkpoint
from medgen3d.evaluation.anatomy import AnatomyReference, implausible, mask_anatomy
from medgen3d.evaluation.segmenter import dice_per_label
from medgen3d.phantom import PHANTOM_TABLE, make_phantom
from medgen3d.progress import drain
from medgen3d.stages.masks import (
    MaskDiffusionModel,
    labels_to_signal,
    sample_mask_volume,
)

SPACING = (5.0, 6.0, 6.0)
NAMES = PHANTOM_TABLE.names
BIG = ("body", "right_lung", "left_lung", "heart")


def denoising_dice(model: MaskDiffusionModel, phantoms: list[np.ndarray]) -> None:
    middle = phantoms[0].shape[0] // 2 - model.length // 2
    labels = torch.from_numpy(np.stack([p[middle : middle + model.length] for p in phantoms]))
    clean = labels_to_signal(labels.long(), model.num_classes)
    n = len(phantoms)
    none_known = torch.zeros(n, model.length, dtype=torch.bool)
    generator = torch.Generator().manual_seed(0)
    print("t       " + "  ".join(f"{name:>10}" for name in BIG))
    last = model.diffusion.num_train_timesteps - 1
    for t in (500, 900, 990, last, "noise"):
        steps = torch.full((n,), last if t == "noise" else t)
        noise = torch.randn(clean.shape, generator=generator)
        noisy = noise if t == "noise" else model.diffusion.training_pair(clean, noise, steps)[0]
        with torch.no_grad():
            predicted = model.network(noisy, steps, clean, none_known, torch.full((n,), 0.5))
        dice = dice_per_label(predicted.argmax(1).numpy(), labels.numpy(), model.num_classes)
        print(f"{t:<7} " + "  ".join(f"{dice[NAMES.index(b) - 1]:10.2f}" for b in BIG))


def sample_anatomy(model: MaskDiffusionModel, phantoms: list[np.ndarray], steps: int) -> None:
    reference = AnatomyReference.from_anatomies(
        [mask_anatomy(p, len(NAMES), SPACING) for p in phantoms], NAMES[1:]
    )
    offsets, pieces, reasons = [], [], Counter()
    for seed in range(len(phantoms)):
        volume = drain(sample_mask_volume(model, phantoms[0].shape[0], seed=seed, steps=steps))
        _, y, x = ndimage.center_of_mass(volume > 0)
        offsets.append(np.hypot(y - (volume.shape[1] - 1) / 2, x - (volume.shape[2] - 1) / 2))
        pieces.append(np.mean([ndimage.label(s)[1] for s in volume > 0 if s.any()]))
        found = implausible(mask_anatomy(volume, len(NAMES), SPACING), reference)
        reasons.update(reason.split(" ")[0] for reason in found)
        flagged = ", ".join(r.split(";")[0] for r in found) or "plausible"
        print(
            f"sample {seed}: body {offsets[-1]:.1f} px off centre, {pieces[-1]:.2f} "
            f"pieces per slice; {flagged}"
        )
    print(f"mean: {np.mean(offsets):.1f} px off centre, {np.mean(pieces):.2f} pieces per slice")
    print("flags by label:", dict(reasons) or "none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.checkpoint, "masks")
    model = MaskDiffusionModel.from_checkpoint(checkpoint)
    steps = checkpoint.config.get("provenance", {}).get("steps")
    print(f"{args.checkpoint}: {steps} training steps, {model.diffusion}")
    phantoms = [
        PHANTOM_TABLE.to_channels(make_phantom(s).label.data) for s in range(100, 100 + args.n)
    ]
    denoising_dice(model, phantoms)
    sample_anatomy(model, phantoms, args.steps)


if __name__ == "__main__":
    main()
