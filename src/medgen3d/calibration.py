"""Volume calibration of a mask model: one factor per label that makes sampled structures
as large as the training cases'.

A mask model short of its loss minimum is unsure of small structures, and sampling, which
builds each structure from its own earlier estimates, loses them or, pushed the other way,
lets them flood their neighbours. A single power of the training's label weights
(``undo_weighting``) moves all labels together and cannot serve both ends: the brain masks
at 3700 steps lost the deep grey matter at one power and let the cortex outgrow its range
at another. Calibration gives each label its own prior factor ``exp(b_k)``
(:attr:`~medgen3d.stages.masks.network.MaskNetworkConfig.label_bias`), fitted by sampling
whole volumes and comparing every structure's volume with its median over the training
cases. It reads the training cases only, never a held-out one, and changes no weight.

A label's sampled volume responds steeply and not linearly to its factor (near the
threshold where a structure appears, a factor of 2 can change its volume 30-fold), so each
update divides the log volume error by the slope measured between that label's last two
fits (secant steps), clipped to a small step, and the fit keeps the iteration whose volumes
were closest to the targets, not the last one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgen3d.checkpoint import Checkpoint
from medgen3d.errors import InputError
from medgen3d.evaluation.anatomy import mask_anatomy
from medgen3d.generate import generate_masks
from medgen3d.model import GenerativeModel, save_model, with_mask_sampling
from medgen3d.progress import Progress, ProgressGenerator, drain
from medgen3d.settings import DEFAULTS, MaskSettings
from medgen3d.train.bank import CaseBank

__all__ = [
    "Calibration",
    "calibrate_masks",
    "sample_channels",
    "save_calibrated",
    "structure_volumes",
    "training_volumes",
    "volume_error",
]

# Largest change of one label's log factor per iteration; the slope of log volume over
# log factor assumed while a label has no two fits to measure it from (the brain masks:
# about 4, see the module doc), and the range a measured one is kept in. Larger steps made
# the CSF of the brain masks swing between 70 and 350 ml.
MAX_STEP = 0.3
DEFAULT_SLOPE = 4.0
MIN_SLOPE, MAX_SLOPE = 2.0, 12.0
# A structure sampled smaller than this fraction of its target counts as this size, so
# that a missing one gets a finite (the largest) step.
VOLUME_FLOOR = 0.05


@dataclass(frozen=True)
class Calibration:
    """The fitted factors and the evidence for them.

    Attributes:
        bias: one log factor per label channel (0 for the background).
        target_ml: per structure name, its median volume over the training cases.
        volumes_ml: per structure name, its volume in each calibration sample at ``bias``.
        error: mean over samples and structures of ``|log(volume / target)|`` at ``bias``
            (a missing structure counts at the floor): 0 is perfect.
        iteration: which fit (0 = no bias) was kept, of ``iterations`` made.
        iterations: fits made.
        samples: volumes sampled per fit (seeds ``seed`` onwards, the same every fit).
        masks: the sampler settings the factors were fitted for.
    """

    bias: tuple[float, ...]
    target_ml: dict[str, float]
    volumes_ml: dict[str, list[float]]
    error: float
    iteration: int
    iterations: int
    samples: int
    masks: MaskSettings

    def to_dict(self) -> dict:
        """JSON-able, as a calibrated checkpoint records it (provenance ``calibration``)."""
        record = dataclasses.asdict(self)
        record["bias"] = list(self.bias)
        record["masks"]["sampler"] = self.masks.sampler.value
        return record


def training_volumes(model: GenerativeModel, data_dir: str | Path) -> dict[str, float]:
    """Per structure, its median volume (ml) on the model's grid over the training cases
    in ``data_dir``: every pair there except those the model holds out. Structures absent
    from a case do not count towards its median.

    Raises:
        InputError: naming the file or folder, for unreadable pairs, unknown label values,
            or a folder of held-out cases only.
    """
    bank = CaseBank.from_folder(data_dir, model.data, exclude=model.data.holdout)
    spacing = model.data.preprocessing.spacing or (1.0, 1.0, 1.0)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.asarray(bank.label_counts, dtype=np.float64)
    names = model.data.labels.names
    return {
        name: float(np.median(counts[counts[:, k] > 0, k]) * voxel_ml)
        for k, name in enumerate(names)
        if k > 0 and (counts[:, k] > 0).any()
    }


def sample_channels(
    model: GenerativeModel, seed: int, masks: MaskSettings = DEFAULTS.masks
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """One whole label volume sampled with ``seed`` at the model's typical depth, as
    channel indices, and its spacing: what calibration fits and the mask benchmarks
    measure."""
    settings = dataclasses.replace(DEFAULTS, seed=seed, depth=model.typical_depth, masks=masks)
    labels = drain(generate_masks(model, settings))
    return model.data.labels.to_channels(labels.data, f"sample {seed}"), labels.spacing


def structure_volumes(
    model: GenerativeModel, seed: int, masks: MaskSettings = DEFAULTS.masks
) -> np.ndarray:
    """The volume (ml) of each label channel in :func:`sample_channels`' volume (0 for the
    background)."""
    channels, spacing = sample_channels(model, seed, masks)
    anatomy = mask_anatomy(channels, len(model.data.labels), spacing)
    return np.array([0.0, *anatomy.volume_ml])


def calibrate_masks(
    model: GenerativeModel,
    target_ml: dict[str, float],
    *,
    iterations: int = 8,
    samples: int = 2,
    seed: int = 1000,
    masks: MaskSettings = DEFAULTS.masks,
) -> ProgressGenerator[Calibration]:
    """Fit the mask stage's ``label_bias`` so that sampled whole volumes (the model's typical
    depth) hold each structure of ``target_ml`` at that volume.

    Structures without a target keep a factor of 1, as does the background. The model is
    left as it came (its own ``label_bias`` is the starting point and is restored).

    Yields:
        ``Progress("calibrate", done, iterations * samples)`` after each sampled volume,
        with the iteration's error in ``metrics`` once its samples are done.

    Raises:
        InputError: for fewer than one iteration or sample, or a target naming no label of
            the model.
    """
    if iterations < 1 or samples < 1:
        raise InputError(f"need at least one iteration and sample, got {iterations}, {samples}")
    table = model.data.labels
    unknown = sorted(set(target_ml) - set(table.names[1:]))
    if unknown:
        raise InputError(f"no such label in the model's table: {', '.join(unknown)}")
    mask_model = model.stage("masks")
    original = mask_model.config
    channels = [k for k, name in enumerate(table.names) if name in target_ml]
    target = np.array([target_ml[table.names[k]] for k in channels])
    bias = np.array(original.label_bias or (0.0,) * len(table), dtype=np.float64)
    fits: list[tuple[np.ndarray, np.ndarray]] = []  # (bias, volumes per sample) per iteration
    errors: list[float] = []
    try:
        for iteration in range(iterations):
            mask_model.config = dataclasses.replace(original, label_bias=tuple(bias.tolist()))
            volumes = []
            for n in range(samples):
                volumes.append(structure_volumes(model, seed + n, masks))
                metrics = None
                if n == samples - 1:
                    errors.append(volume_error(np.array(volumes)[:, channels], target))
                    metrics = {"error": errors[-1]}
                yield Progress(
                    "calibrate", iteration * samples + n + 1, iterations * samples, metrics=metrics
                )
            fits.append((bias.copy(), np.array(volumes)))
            bias[channels] += _secant_step(fits, channels, target)
    finally:
        mask_model.config = original
    best = int(np.argmin(errors))
    kept_bias, kept_volumes = fits[best]
    return Calibration(
        bias=tuple(float(b) for b in kept_bias),
        target_ml={table.names[k]: float(t) for k, t in zip(channels, target, strict=True)},
        volumes_ml={table.names[k]: kept_volumes[:, k].tolist() for k in channels},
        error=float(errors[best]),
        iteration=best,
        iterations=iterations,
        samples=samples,
        masks=masks,
    )


def save_calibrated(
    model: GenerativeModel,
    calibration: Calibration,
    out: str | Path,
    *,
    data: str | Path,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``model`` to the folder ``out`` with inference weights only (as
    :func:`~medgen3d.model.pack_model` does) and ``calibration`` in its mask stage: the
    factors as ``label_bias``, the sampler's ``undo_weighting`` and ``fill_holes`` they were
    fitted with (when given) as the stage's own, and the evidence in provenance
    ``calibration`` with the ``data`` folder the targets came from.

    Raises:
        OutputExistsError: when ``out`` already holds a stage file and not ``overwrite``.
    """
    masks = with_mask_sampling(model.checkpoints["masks"], calibration.masks)
    network = {**masks.config["model"], "label_bias": list(calibration.bias)}
    provenance = {
        **masks.config.get("provenance", {}),
        "calibration": {**calibration.to_dict(), "data": str(Path(data).resolve())},
    }
    calibrated = Checkpoint(
        "masks", {**masks.config, "model": network, "provenance": provenance}, masks.weights
    )
    return save_model({**model.checkpoints, "masks": calibrated}.values(), out, overwrite=overwrite)


def _log_ratios(volumes: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``log(volume / target)`` per sample and target ``(samples, targets)``, a volume under
    the floor counting at the floor."""
    return np.log(np.maximum(volumes, VOLUME_FLOOR * target) / target)


def volume_error(volumes: np.ndarray, target: np.ndarray) -> float:
    """Mean over samples and structures of ``|log(volume / target)|``: per sample, so that
    a structure missing from one sample and twice its size in another is no fit."""
    return float(np.abs(_log_ratios(volumes, target)).mean())


def _secant_step(
    fits: list[tuple[np.ndarray, np.ndarray]], channels: list[int], target: np.ndarray
) -> np.ndarray:
    """The change of each calibrated label's log factor after the latest fit: its log
    volume error (the mean over samples of ``log(volume / target)``) over the slope between
    its latest fit and the most recent earlier fit at a different factor (both with the
    structure present), clipped to :data:`MAX_STEP`."""
    levels = [(bias[channels], _log_ratios(v[:, channels], target).mean(0)) for bias, v in fits]
    bias, level = levels[-1]
    present = np.log(VOLUME_FLOOR) + 1e-6
    step = np.zeros(len(channels))
    for i in range(len(channels)):
        slope = DEFAULT_SLOPE
        earlier = [
            (b[i], lv[i]) for b, lv in levels[:-1] if abs(b[i] - bias[i]) > 1e-3 and lv[i] > present
        ]
        if level[i] > present and earlier:
            previous_bias, previous_level = earlier[-1]
            measured = (level[i] - previous_level) / (bias[i] - previous_bias)
            if measured > 0:  # else neighbours' changes outweighed its own: keep the default
                slope = float(np.clip(measured, MIN_SLOPE, MAX_SLOPE))
        step[i] = np.clip(-level[i] / slope, -MAX_STEP, MAX_STEP)
    return step
