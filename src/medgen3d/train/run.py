"""Train one stage end to end: recipe + data folder in, checkpoint out.

This is what ``medgen3d train STAGE`` calls, under ``torchrun`` or not. Stage tasks are
found in a fixed registry (never from a name in a file).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from pathlib import Path

import torch

from medgen3d.checkpoint import load_checkpoint
from medgen3d.errors import InputError
from medgen3d.model import stage_file
from medgen3d.progress import ProgressGenerator
from medgen3d.recipe import Recipe, TrainingSettings, load_recipe
from medgen3d.runtime import Runtime, distributed_runtime, mixed_precision
from medgen3d.train.bank import CaseBank
from medgen3d.train.loop import TrainingResult, fit

__all__ = ["STAGE_TASKS", "train_stage"]

log = logging.getLogger(__name__)

# stage -> module whose ``build_task(data, stage_recipe, runtime)`` makes its TrainingTask
STAGE_TASKS = {
    "masks": "medgen3d.train.masks",
    "images": "medgen3d.train.images",
    "refiner": "medgen3d.train.refiner",
}


def train_stage(
    stage: str,
    data_dir: str | Path,
    recipe: Recipe | str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    max_steps: int | None = None,
    device: str = "auto",
    runtime: Runtime | None = None,
    init_from: str | Path | None = None,
) -> ProgressGenerator[TrainingResult]:
    """Train ``stage`` of ``recipe`` on the pairs under ``data_dir``, saving to ``out``.

    Args:
        stage: ``"masks"``, ``"images"`` or ``"refiner"``.
        data_dir: any layout :func:`medgen3d.datasets.discover_pairs` reads.
        recipe: a :class:`Recipe` or the path of a recipe file.
        out: checkpoint path (written periodically and at the end).
        resume: continue from ``out``.
        overwrite: replace ``out`` when not resuming.
        max_steps: overrides the recipe's ``max_steps``.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        runtime: an existing runtime; by default one is opened here (joining the
            ``torchrun`` process group when launched by it).
        init_from: a model (bundled name or folder) or a stage file whose ``stage`` weights
            a fresh run starts from: fine-tuning a bundled model on one's own scans, or
            restarting a lost run from the weights last packed.

    Yields:
        ``Progress(stage, step, max_steps, metrics=losses)`` after every step
        (:func:`medgen3d.train.loop.fit`).
    """
    if stage not in STAGE_TASKS:
        raise ValueError(f"unknown stage {stage!r}; expected one of {sorted(STAGE_TASKS)}")
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    stage_recipe = recipe.stage(stage)
    settings = stage_recipe.training
    if max_steps is not None:
        settings = dataclasses.replace(settings, max_steps=max_steps)
    start = None if init_from is None else load_checkpoint(stage_file(init_from, stage))
    if runtime is None:
        with distributed_runtime(device) as opened:
            return (
                yield from _train(
                    stage, data_dir, recipe, settings, out, opened, resume, overwrite, start
                )
            )
    return (
        yield from _train(stage, data_dir, recipe, settings, out, runtime, resume, overwrite, start)
    )


def _train(stage, data_dir, recipe, settings, out, runtime, resume, overwrite, start):
    precision = _precision_name(runtime, settings)
    if runtime.is_main:
        log.info(
            "[config] stage -> %s, device -> %s, processes -> %d, mixed precision -> %s",
            stage,
            runtime.device,
            runtime.world_size,
            precision,
        )
        log.info("[config] data -> %s", json.dumps(recipe.data.to_dict()))
        log.info("[config] training -> %s", json.dumps(settings.to_dict()))
    bank = CaseBank.from_folder(data_dir, recipe.data, exclude=recipe.data.holdout)
    if runtime.is_main:
        log.info(
            "loaded %d cases from %s (%d held out by the recipe)",
            len(bank),
            data_dir,
            len(recipe.data.holdout),
        )
    torch.manual_seed(settings.seed)  # identical initial weights on every rank
    module = importlib.import_module(STAGE_TASKS[stage])
    try:
        task = module.build_task(
            recipe.data, dataclasses.replace(recipe.stage(stage), training=settings), runtime
        )
    except InputError:
        raise
    except (ValueError, TypeError, KeyError) as exc:  # every stage's config checks raise these
        raise InputError(f"{stage}.model: {exc}", recipe.path) from exc
    provenance = {
        "data": str(Path(data_dir).resolve()),
        "cases": len(bank),
        "recipe": None if recipe.path is None else str(recipe.path),
        "description": recipe.description,
        "dataset": recipe.dataset,
        "processes": runtime.world_size,
        "mixed_precision": precision,
        "depth": bank.depth_range(),
        "anatomy": bank.anatomy_ranges(
            recipe.data.preprocessing.spacing,
            recipe.data.labels.names,
            reference=stage == "masks",  # generation reads the mask stage's only
        ),
        "label_frequency": bank.label_frequency.tolist(),
        "label_intensities": bank.label_intensities(
            recipe.data.preprocessing.window, recipe.data.labels.names
        ),
    }
    return (
        yield from fit(
            task,
            bank,
            recipe.data,
            settings,
            runtime,
            out,
            resume=resume,
            overwrite=overwrite,
            provenance=provenance,
            init_from=start,
        )
    )


def _precision_name(runtime: Runtime, settings: TrainingSettings) -> str | None:
    """The forward passes' reduced precision, e.g. ``"bfloat16"``, or None for float32."""
    precision = mixed_precision(runtime.device, settings.amp)
    return None if precision is None else str(precision).removeprefix("torch.")
