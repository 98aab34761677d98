"""How large a mask model draws each structure: whole sampled label volumes against the
range of the training data.

    python benchmarks/bench_mask_volumes.py MODEL [--samples 2] [--steps 25] [--sampler ddim]
        [--undo-weighting P] [--data TRAINING_DATA]

Samples ``--samples`` whole label volumes (seeds 0, 1, ...) at the model's typical depth and
prints each structure's volume in ml beside the range its training cases had (recorded in
the checkpoint). ``--undo-weighting`` sets the power of a ``label_weighting`` that
sampling divides back out (default: the model's; 0 samples the network's estimate as
trained): the figures to choose a model's ``undo_weighting`` by. With ``--data`` (the
training data folder) it also prints each structure's median over the training cases and
the error ``medgen3d calibrate`` minimises, on seeds the calibration never samples. Uses
no held-out case.
Run by hand, never in CI.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from medgen3d.calibration import structure_volumes, training_volumes, volume_error
from medgen3d.model import load_model
from medgen3d.settings import MaskSampler, MaskSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model name, model folder or training run folder")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--sampler", choices=[s.value for s in MaskSampler], default="ddim")
    parser.add_argument("--undo-weighting", type=float)
    parser.add_argument("--data", help="the training data: also print medians and the error")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = load_model(args.model)
    masks = MaskSettings(args.sampler, args.steps, args.undo_weighting)
    table = model.data.labels
    volumes = np.array([structure_volumes(model, seed, masks) for seed in range(args.samples)])
    seen = model.recorded("anatomy")["volume_ml"]
    medians = training_volumes(model, args.data) if args.data else {}
    seeds = " ".join(f"seed {s:<4d}" for s in range(args.samples))
    print(f"{'structure':28s} {seeds} trained{'   median' if medians else ''}")
    within = 0
    for name, row in zip(table.names[1:], volumes[:, 1:].T, strict=True):
        low, high = seen.get(name, (float("nan"), float("nan")))
        within += bool(np.all((low <= row) & (row <= high)))
        sampled = " ".join(f"{v:9.1f}" for v in row)
        median = f"{medians[name]:9.1f}" if name in medians else ""
        print(f"{name:28s} {sampled}   {low:.1f}-{high:.1f} {median}")
    print(
        f"{within} of {len(table.names) - 1} structures within the training range in every sample"
    )
    if medians:
        channels = [k for k, name in enumerate(table.names) if name in medians]
        target = np.array([medians[table.names[k]] for k in channels])
        error = volume_error(volumes[:, channels], target)
        print(f"mean |log(volume / training median)|: {error:.3f}")


if __name__ == "__main__":
    main()
