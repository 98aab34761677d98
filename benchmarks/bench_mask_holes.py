"""How many holes a mask model leaves in its slices, and what ``fill_holes`` and
removing small islands do to the anatomy check.

    python benchmarks/bench_mask_holes.py MODEL --data TRAINING_DATA [--cases 30]
        [--samples 4] [--seed 1000] [--steps 25] [--islands VOXELS ...]

The reference is the first ``--cases`` training cases in ``--data`` (never a held-out
one) on the model grid. For them, and for ``--samples`` whole label volumes (seeds
``--seed``, ...) sampled once without and once with ``fill_holes`` (same seeds), prints the
background enclosed within axial slices (ml), the derived subject label (the brain's head)
enclosed by the structures (ml), and the faults the anatomy check
(:func:`medgen3d.evaluation.anatomy.implausible`) finds against the reference; then, for
each ``--islands`` size, the faults left in the filled samples once their islands of fewer
voxels are removed (:func:`medgen3d.islands.remove_islands`). Samples are drawn with the
model's own ``min_island_voxels`` off, so the sizes compare from none.
Run by hand, never in CI.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from medgen3d.calibration import sample_channels
from medgen3d.evaluation.anatomy import AnatomyReference, implausible, mask_anatomy
from medgen3d.holes import enclosed_in_slices
from medgen3d.islands import remove_islands
from medgen3d.model import load_model
from medgen3d.settings import DEFAULTS
from recipe_cases import first_training_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model name or model folder")
    parser.add_argument("--data", required=True, help="the model's training data folder")
    parser.add_argument("--cases", type=int, default=30)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--islands", type=int, nargs="*", default=[], metavar="VOXELS")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = load_model(args.model)
    spec, table = model.data, model.data.labels
    subject = model.stage("masks").subject_channel
    spacing = spec.preprocessing.spacing or (1.0, 1.0, 1.0)
    voxel_ml = float(np.prod(spacing)) / 1000.0

    def holes_ml(channels: np.ndarray) -> str:
        background = enclosed_in_slices(channels).sum() * voxel_ml
        if subject is None:
            return f"{background:7.2f}"
        inside = enclosed_in_slices(channels, (0, subject)) & (channels == subject)
        return f"{background:7.2f} {inside.sum() * voxel_ml:7.2f}"

    reference = first_training_cases(args.data, spec, args.cases)
    anatomies = [mask_anatomy(c, len(table), spacing) for c in reference.labels]
    span = AnatomyReference.from_anatomies(anatomies, table.names[1:])
    header = "background ml" + ("  subject in structures ml" if subject is not None else "")
    print(f"{len(reference)} training cases: {header}")
    for name, channels in zip(reference.names, reference.labels, strict=True):
        print(f"  {name:24s} {holes_ml(channels)}")

    def faults(channels: np.ndarray) -> list[str]:
        anatomy = mask_anatomy(channels, len(table), spacing)
        return implausible(anatomy, span)

    filled = []
    for fill in (False, True):
        masks = dataclasses.replace(
            DEFAULTS.masks, steps=args.steps, fill_holes=fill, min_island_voxels=0
        )
        print(f"samples, fill_holes {fill}: {header}, faults")
        for seed in range(args.seed, args.seed + args.samples):
            channels, _ = sample_channels(model, seed, masks)
            found = faults(channels)
            print(f"  seed {seed:<18d} {holes_ml(channels)} {len(found):3d}")
            print("".join(f"      {fault}\n" for fault in found), end="")
            if fill:
                filled.append(channels)
    for size in args.islands:
        print(f"filled samples, islands under {size} voxels removed: faults")
        for seed, channels in enumerate(filled, start=args.seed):
            found = faults(remove_islands(channels, size))
            print(f"  seed {seed:<18d} {len(found):3d}")
            print("".join(f"      {fault}\n" for fault in found), end="")


if __name__ == "__main__":
    main()
