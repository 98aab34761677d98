"""How often a model's first draws fail the anatomy check against its training masks, what
redrawing costs, and where the drawn structures differ from the training ones.

    python benchmarks/bench_anatomy_check.py MODEL --data TRAINING_DATA [--samples 8]
        [--seed 1000] [--coverage 1.0 0.95 0.9]

Draws ``--samples`` whole label volumes the way ``generate`` draws a sample's first mask
(seeds ``--seed``, ... through :func:`medgen3d.batch.sample_seed`, the model's own
sampling settings and typical depth) and checks each against references spanned by the
central ``--coverage`` of every training case in ``--data`` (the held-out cases left out),
printing its faults. From the fraction ``p`` flagged it prints, for 0-3 redraws and
assuming independent draws, the share of samples still flagged (``p^(R+1)``) and the mean
number of mask draws per sample (``1 + p + ... + p^R``). Last, per structure, how many
axial slices it spans and its mean area on those slices (cm²), samples against training
cases: a structure drawn too large shows whether it grew along z or in-plane.
Run by hand, never in CI.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from medgen3d.batch import sample_seed
from medgen3d.evaluation.anatomy import AnatomyReference, implausible, mask_anatomy
from medgen3d.generate import generate_masks
from medgen3d.model import load_model
from medgen3d.progress import drain
from medgen3d.settings import DEFAULTS
from medgen3d.train.bank import CaseBank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model name or model folder")
    parser.add_argument("--data", required=True, help="the model's training data folder")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--coverage", type=float, nargs="+", default=[1.0, 0.95, 0.9])
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = load_model(args.model)
    spec, table = model.data, model.data.labels
    spacing = spec.preprocessing.spacing or (1.0, 1.0, 1.0)
    training = CaseBank.from_folder(args.data, spec, exclude=spec.holdout)
    anatomies = [mask_anatomy(c, len(table), spacing) for c in training.labels]
    references = {
        c: AnatomyReference.from_anatomies(anatomies, table.names[1:], c) for c in args.coverage
    }
    settings = dataclasses.replace(DEFAULTS, depth=model.typical_depth)
    samples = []
    for i in range(args.samples):
        seeded = settings.with_seed(sample_seed(args.seed, i))
        samples.append(table.to_channels(drain(generate_masks(model, seeded)).data))
    print(f"{len(training)} training cases; {args.samples} first draws, seeds {args.seed}+")

    for coverage, reference in references.items():
        flagged = 0
        print(f"\ncoverage {coverage:g}")
        for i, channels in enumerate(samples):
            faults = implausible(mask_anatomy(channels, len(table), spacing), reference)
            flagged += bool(faults)
            print(f"  sample {i}: {'; '.join(faults) or 'passes'}")
        p = flagged / len(samples)
        print(f"  flagged {flagged} of {len(samples)} (p = {p:.2f})")
        for redraws in range(4):
            still = p ** (redraws + 1)
            draws = sum(p**k for k in range(redraws + 1))
            print(f"  redraws {redraws}: {still:.0%} still flagged, {draws:.2f} draws per sample")

    voxel_cm2 = spacing[1] * spacing[2] / 100.0
    print(f"\n{'structure':28s} slices spanned (median)   area on them, cm² (median)")
    print(f"{'':28s} {'samples':>9s} {'training':>9s}   {'samples':>9s} {'training':>9s}")
    for channel, name in enumerate(table.names[1:], start=1):
        figures = [_extent(masks, channel, voxel_cm2) for masks in (samples, training.labels)]
        (s_slices, s_area), (t_slices, t_area) = figures
        print(f"{name:28s} {s_slices:9.1f} {t_slices:9.1f}   {s_area:9.2f} {t_area:9.2f}")


def _extent(masks, channel: int, voxel_cm2: float) -> tuple[float, float]:
    """Median over the masks holding ``channel`` of the slices it spans and of its mean area
    on them; nan where none holds it."""
    slices, areas = [], []
    for mask in masks:
        per_slice = (mask == channel).sum(axis=(1, 2))
        if per_slice.any():
            slices.append(np.count_nonzero(per_slice))
            areas.append(per_slice[per_slice > 0].mean() * voxel_cm2)
    if not slices:
        return float("nan"), float("nan")
    return float(np.median(slices)), float(np.median(areas))


if __name__ == "__main__":
    main()
