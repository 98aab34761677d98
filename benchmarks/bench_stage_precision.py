"""Mixed precision for any stage: the same start and batches trained in float32 and in the
device's reduced precision, side by side.

Where ``bench_mask_precision.py`` compares one step's gradient, this follows a few steps of
a stage's whole training step (for the images stage: generator and discriminator updates,
whose adversarial terms feed back on each other), from a model's weights, on batches drawn
from the first training cases (never a held-out one), and prints both runs' losses and
seconds per step.

    OMP_NUM_THREADS=1 python benchmarks/bench_stage_precision.py \\
        resources/recipes/brain_mri_ixi.json ../shared/data/mri_brain_ixi brain-mri images
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import time

import torch

from medgen3d.checkpoint import load_checkpoint
from medgen3d.model import stage_file
from medgen3d.recipe import load_recipe
from medgen3d.runtime import Runtime, mixed_precision
from medgen3d.train.run import STAGE_TASKS
from recipe_cases import first_training_cases

CPU = Runtime(torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("data", help="the recipe's training data folder")
    parser.add_argument("model", help="a model name or folder whose stage weights start both")
    parser.add_argument("stage", choices=sorted(STAGE_TASKS))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--cases", type=int, default=6)
    args = parser.parse_args()

    precision = mixed_precision(CPU.device)
    if precision is None:
        raise SystemExit("this CPU has no native bfloat16: amp trains in float32 here")
    names = {False: "float32", True: str(precision).removeprefix("torch.")}
    recipe = load_recipe(args.recipe)
    bank = first_training_cases(args.data, recipe.data, args.cases)
    start = load_checkpoint(stage_file(args.model, args.stage))
    module = importlib.import_module(STAGE_TASKS[args.stage])
    for amp in (False, True):
        stage = recipe.stage(args.stage)
        stage = dataclasses.replace(stage, training=dataclasses.replace(stage.training, amp=amp))
        torch.manual_seed(0)
        task = module.build_task(recipe.data, stage, CPU)
        task.initialise_from(start)
        task.train()
        rng = torch.Generator().manual_seed(1)  # the same batches for both runs
        began = time.perf_counter()
        for step in range(args.steps):
            batch = task.make_batch(bank, stage.training.batch_size, rng)
            losses = task.training_step(batch)
            print(
                f"{names[amp]:>8} step {step:3d} "
                + " ".join(f"{name} {float(value):.4f}" for name, value in losses.items())
            )
        seconds = (time.perf_counter() - began) / args.steps
        print(f"{names[amp]:>8}: {seconds:.2f} s/step")


if __name__ == "__main__":
    main()
