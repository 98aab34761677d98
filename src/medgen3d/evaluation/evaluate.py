"""``medgen3d evaluate``: every figure of the evaluation, computed from two folders of pairs.

Both sets are loaded onto the model's grid and window (the scale the model works in), real
labels through the model's label mapping, synthetic ones as written by ``medgen3d
generate``. The real set is split once, with the seed or by the model's own held-out cases,
into cases that train the segmenter and held-out cases that score it. Then:

* **alignment**: the segmenter (trained here, or the user's) on synthetic images, Dice
  against the synthetic masks, beside its Dice on the held-out real cases;
* **images from real masks** (optional): the model's images for held-out real masks,
  tissue by tissue against the real images (:mod:`medgen3d.evaluation.from_masks`);
* **fidelity**: FID and kernel distance on the segmenter's 2.5D encoder features, real vs
  synthetic, with real vs real (two halves of the real set) as the floor;
* **diversity**: mean pairwise MS-SSIM within each set;
* **anatomy**: per-label volume distributions, lengths, components and slice continuity, with the
  synthetic masks that look implausible next to the real ones;
* **downstream**: the same segmenter trained on a few real cases, on those plus the
  synthetic set, and on the synthetic set alone, scored on the held-out real cases.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgen3d.errors import InputError
from medgen3d.evaluation.anatomy import (
    AnatomyReference,
    compare_anatomy,
    implausible,
    mask_anatomy,
)
from medgen3d.evaluation.from_masks import images_from_real_masks
from medgen3d.evaluation.metrics import (
    frechet_distance,
    kernel_distance,
    mean_pairwise_ms_ssim,
    split_halves,
)
from medgen3d.evaluation.segmenter import (
    Segmenter,
    SegmenterSettings,
    dice_per_label,
    train_segmenter,
)
from medgen3d.model import GenerativeModel
from medgen3d.progress import Progress, ProgressGenerator, as_stage
from medgen3d.recipe import DataSpec
from medgen3d.train.bank import CaseBank

__all__ = [
    "DOWNSTREAM_ARMS",
    "KID_SUBSET",
    "Evaluation",
    "EvaluationSettings",
    "evaluate",
    "split_by_names",
    "split_real",
]

# Rows (slices) per set that the kernel distance is computed on.
KID_SUBSET = 1000
# Training sets of the downstream experiment, in the order they are reported.
DOWNSTREAM_ARMS = ("real", "real+synthetic", "synthetic")


@dataclass(frozen=True)
class EvaluationSettings:
    """How the evaluation is run; every figure depends only on these and the data.

    Attributes:
        segmenter: training of every segmenter (alignment and downstream arms).
        held_out: fraction of the real cases held out to score segmenters (at least one).
        downstream: run the downstream experiment (three more segmenter trainings).
        downstream_real: real cases in the small real-only training set.
        seed: the real-set split and every segmenter's training.
        held_out_names: when given (a model's held-out cases), these real cases score the
            segmenters and are the reference of fidelity, diversity and anatomy; the other
            real cases train the segmenters. Otherwise the split is random (``held_out``).
        from_masks: how many held-out real masks the model turns into images to compare
            with their real images (:mod:`medgen3d.evaluation.from_masks`); 0 skips it.
    """

    segmenter: SegmenterSettings = field(default_factory=SegmenterSettings)
    held_out: float = 0.25
    downstream: bool = True
    downstream_real: int = 2
    seed: int = 0
    held_out_names: tuple[str, ...] = ()
    from_masks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "segmenter": self.segmenter.to_dict()}


@dataclass
class Evaluation:
    """What :func:`evaluate` found: JSON-ready ``metrics`` and what the figures need.

    Attributes:
        metrics: every number of the report (the content of ``metrics.json``).
        data: the grid, window and label table the sets were compared on.
        real: the real cases on the model grid.
        synthetic: the synthetic cases on the model grid.
        segmenter: the alignment segmenter (saved with the report for ``medgen3d check``).
        volumes_ml: ``{"real": ..., "synthetic": ...}``, per case, volume of each
            foreground label (for the anatomy figure).
    """

    metrics: dict[str, Any]
    data: DataSpec
    real: CaseBank
    synthetic: CaseBank
    segmenter: Segmenter
    volumes_ml: dict[str, np.ndarray]


def split_real(count: int, held_out: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of ``count`` real cases into ``(training, held-out)`` index lists.

    Raises:
        InputError: when fewer than two cases leave no case on one side.
    """
    if count < 2:
        raise InputError(
            f"the real set needs at least 2 cases (one to train, one to score); has {count}"
        )
    if not 0.0 < held_out < 1.0:
        raise InputError(f"held_out must be in (0, 1), got {held_out}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = min(count - 1, max(1, round(held_out * count)))
    return sorted(order[n_held:]), sorted(order[:n_held])


def evaluate(
    real_dir: str | Path,
    synthetic_dir: str | Path,
    data: DataSpec,
    settings: EvaluationSettings | None = None,
    *,
    segmenter: Segmenter | None = None,
    model: GenerativeModel | None = None,
    device: str | torch.device = "cpu",
) -> ProgressGenerator[Evaluation]:
    """Compare a synthetic set of pairs with a real one.

    Args:
        real_dir: real pairs, any layout :func:`medgen3d.datasets.discover_pairs` reads.
        synthetic_dir: generated pairs, same.
        data: the model's data spec (grid, window, labels, mapping of the real labels).
        settings: see :class:`EvaluationSettings`.
        segmenter: a trained segmenter to use for alignment and features instead of
            training one on the real set.
        model: the model that generated the synthetic set; needed (with an images stage)
            for ``settings.from_masks``.
        device: where segmenters train and run.

    Yields:
        :class:`~medgen3d.progress.Progress` per unit of each part (``stage`` names it).

    Raises:
        InputError: naming the folder or file, for unreadable sets, too few real cases, or
            a segmenter whose label count differs from the model's.
    """
    settings = settings or EvaluationSettings()
    if settings.from_masks and model is None:  # before any work
        raise InputError("images from real masks need the model (--model)")
    names, num_classes = data.labels.names, len(data.labels)
    real = CaseBank.from_folder(real_dir, data)
    # Synthetic masks are in the model's table and already carry any derived subject label:
    # deriving it again would cover the holes the generator left, the faults measured here.
    as_generated = dataclasses.replace(data, label_mapping=None, foreground_fill=None)
    synthetic = CaseBank.from_folder(synthetic_dir, as_generated)
    train_ids, held_ids, reference = _split(real, settings, real_dir)
    segmenter_source = "given" if segmenter is not None else "trained on the real set"
    if segmenter is None:
        segmenter = yield from _train(real, train_ids, num_classes, settings, device, "alignment")
    alignment = _alignment(segmenter, real, held_ids, synthetic)
    yield Progress("alignment", 1, 1)
    from_masks = None
    if settings.from_masks:
        chosen = held_ids[: settings.from_masks]
        from_masks = yield from images_from_real_masks(
            model, real, chosen, segmenter, settings.seed
        )

    fidelity, diversity = yield from _set_statistics(segmenter, reference, synthetic, settings)
    anatomy, flagged = _anatomy(reference, synthetic, data)
    yield Progress("anatomy", 1, 1)
    downstream = None
    if settings.downstream:
        downstream = yield from _downstream(
            real, synthetic, train_ids, held_ids, num_classes, settings, device
        )

    metrics = {
        "cases": {
            "real": len(real),
            "real_segmenter_training": len(train_ids),
            "real_held_out": len(held_ids),
            "real_reference": len(reference),
            "synthetic": len(synthetic),
        },
        "labels": list(names[1:]),
        "segmenter": segmenter_source,
        "settings": settings.to_dict(),
        "alignment_dice": alignment,
        "images_from_real_masks": from_masks,
        "fidelity": fidelity,
        "diversity": diversity,
        "anatomy": compare_anatomy(anatomy["real"], anatomy["synthetic"], names[1:]),
        "enclosed_background_ml": {
            kind: {"mean": float(np.mean(enclosed)), "max": float(np.max(enclosed))}
            for kind, masks in anatomy.items()
            if (enclosed := [a.enclosed_ml for a in masks])
        },
        "implausible_samples": flagged,
        "generation_checks": _generation_checks(synthetic_dir, synthetic.names),
        "downstream_dice": downstream,
    }
    volumes = {k: np.stack([a.volume_ml for a in v]) for k, v in anatomy.items()}
    return Evaluation(_plain(metrics), data, reference, synthetic, segmenter, volumes)


def _set_statistics(
    segmenter: Segmenter, reference: CaseBank, synthetic: CaseBank, settings: EvaluationSettings
) -> ProgressGenerator[tuple[dict[str, Any], dict[str, Any]]]:
    """Fidelity (FID of the segmenter's features) and diversity (MS-SSIM within each set)."""
    fidelity = _fidelity(segmenter, reference, synthetic, settings.seed)
    yield Progress("fidelity", 1, 1)
    diversity = {
        "ms_ssim_synthetic": _diversity(synthetic.images),
        "ms_ssim_real": _diversity(reference.images),
    }
    yield Progress("diversity", 1, 1)
    return fidelity, diversity


def _alignment(
    segmenter: Segmenter, real: CaseBank, held_ids: list[int], synthetic: CaseBank
) -> dict[str, Any]:
    """The segmenter's Dice on the held-out real cases and on the synthetic set; a segmenter
    trained here also keeps what it can segment on real cases (for ``check``)."""
    num_classes = real.num_classes
    if segmenter.num_classes != num_classes:
        raise InputError(
            f"the segmenter predicts {segmenter.num_classes} labels, the model has {num_classes}"
        )
    alignment = {
        "real_held_out": _mean_dice(segmenter, real, held_ids, num_classes),
        "synthetic": _mean_dice(segmenter, synthetic, range(len(synthetic)), num_classes),
    }
    if segmenter.real_dice is None:
        segmenter.real_dice = tuple(_plain(alignment["real_held_out"]["per_label"]))
    return alignment


def _split(
    real: CaseBank, settings: EvaluationSettings, source: str | Path
) -> tuple[list[int], list[int], CaseBank]:
    """Segmenter-training and held-out indices, and the real reference of the comparisons:
    the model's own held-out cases when it lists them (what the generator never saw), else
    a seeded split and the whole real set."""
    if settings.held_out_names:
        train_ids, held_ids = split_by_names(real.names, settings.held_out_names, source)
        return train_ids, held_ids, real.subset(held_ids)
    train_ids, held_ids = split_real(len(real), settings.held_out, settings.seed)
    return train_ids, held_ids, real


def split_by_names(
    names: Sequence[str], held_out: Sequence[str], source: str | Path
) -> tuple[list[int], list[int]]:
    """``(training, held-out)`` indices of a real set split by a model's held-out names.

    Raises:
        InputError: naming ``source``, when none of the held-out cases is in it.
    """
    held = set(held_out)
    held_ids = [i for i, name in enumerate(names) if name in held]
    if not held_ids:
        raise InputError("holds none of the model's held-out cases", source)
    return [i for i in range(len(names)) if names[i] not in held], held_ids


def _fidelity(
    segmenter: Segmenter, real: CaseBank, synthetic: CaseBank, seed: int
) -> dict[str, float | None]:
    """FID and KID on the segmenter's 2.5D features; real vs real halves as the floor."""
    features = {
        name: [segmenter.features(image) for image in bank.images]
        for name, bank in (("real", real), ("synthetic", synthetic))
    }
    real_features, synthetic_features = (
        torch.cat(features["real"]),
        torch.cat(features["synthetic"]),
    )
    fidelity = {
        "fid": frechet_distance(real_features, synthetic_features),
        "kid": _kid(real_features, synthetic_features, seed),
        "fid_real_vs_real": None,
        "kid_real_vs_real": None,
    }
    if len(real) >= 4:  # the floor: two disjoint halves of the real set
        first, second = (
            torch.cat([features["real"][i] for i in half]) for half in split_halves(len(real), seed)
        )
        fidelity["fid_real_vs_real"] = frechet_distance(first, second)
        fidelity["kid_real_vs_real"] = _kid(first, second, seed)
    return fidelity


def _anatomy(
    real: CaseBank, synthetic: CaseBank, data: DataSpec
) -> tuple[dict[str, list], dict[str, list[str]]]:
    """Each mask's anatomy, and the synthetic masks implausible next to the real ones."""
    names, num_classes = data.labels.names, len(data.labels)
    spacing = data.preprocessing.spacing or (1.0, 1.0, 1.0)
    anatomy = {
        name: [mask_anatomy(labels, num_classes, spacing) for labels in bank.labels]
        for name, bank in (("real", real), ("synthetic", synthetic))
    }
    reference = AnatomyReference.from_anatomies(anatomy["real"], names[1:])
    flagged = {
        case: reasons
        for case, sample in zip(synthetic.names, anatomy["synthetic"], strict=True)
        if (reasons := implausible(sample, reference))
    }
    return anatomy, flagged


def _generation_checks(folder: str | Path, names: Sequence[str]) -> dict[str, int] | None:
    """What the anatomy check did while the synthetic set was generated, from the samples'
    sidecars (``NAME.json``): ``samples`` checked, ``draws`` made for them, and how many
    kept masks ``passed``; ``None`` when no sidecar records a check."""
    checks = []
    for name in names:
        sidecar = Path(folder) / f"{name}.json"
        if sidecar.is_file():
            check = json.loads(sidecar.read_text()).get("anatomy_check")
            if check is not None:
                checks.append(check)
    if not checks:
        return None
    return {
        "samples": len(checks),
        "draws": sum(c["draws"] for c in checks),
        "passed": sum(bool(c["passed"]) for c in checks),
    }


def _train(
    bank: CaseBank,
    ids: Sequence[int],
    num_classes: int,
    settings: EvaluationSettings,
    device: str | torch.device,
    purpose: str,
    extra: CaseBank | None = None,
) -> ProgressGenerator[Segmenter]:
    images = [bank.images[i] for i in ids]
    labels = [bank.labels[i] for i in ids]
    if extra is not None:
        images += list(extra.images)
        labels += list(extra.labels)
    seeded = dataclasses.replace(settings.segmenter, seed=settings.seed)
    work = train_segmenter(images, labels, num_classes, seeded, device)
    return (yield from as_stage(work, f"segmenter ({purpose})"))


def _downstream(
    real: CaseBank,
    synthetic: CaseBank,
    train_ids: list[int],
    held_ids: list[int],
    num_classes: int,
    settings: EvaluationSettings,
    device: str | torch.device,
) -> ProgressGenerator[dict[str, Any]]:
    """Dice on held-out real cases of segmenters trained on each arm's data."""
    few = train_ids[: max(1, min(settings.downstream_real, len(train_ids)))]
    training_sets = {
        "real": (real, few, None),
        "real+synthetic": (real, few, synthetic),
        "synthetic": (real, [], synthetic),
    }
    scores = {}
    for arm in DOWNSTREAM_ARMS:
        bank, ids, extra = training_sets[arm]
        model = yield from _train(bank, ids, num_classes, settings, device, arm, extra)
        scores[arm] = _mean_dice(model, real, held_ids, num_classes)
    return {
        "real_cases": len(few),
        "synthetic_cases": len(synthetic),
        "steps": settings.segmenter.steps,
        "held_out_cases": len(held_ids),
        "dice": scores,
    }


def _mean_dice(
    segmenter: Segmenter, bank: CaseBank, ids: Sequence[int], num_classes: int
) -> dict[str, Any]:
    """Per-label Dice averaged over cases (cases without a label do not count for it)."""
    per_case = np.stack(
        [
            dice_per_label(segmenter.predict(bank.images[i]), bank.labels[i], num_classes)
            for i in ids
        ]
    )
    with warnings.catch_warnings():  # a label no scored case holds stays nan, as meant
        warnings.simplefilter("ignore", RuntimeWarning)
        per_label = np.nanmean(per_case, axis=0)
    return {"per_label": per_label.tolist(), "mean": float(np.nanmean(per_label))}


def _kid(first: torch.Tensor, second: torch.Tensor, seed: int) -> float:
    """Kernel distance between seeded random subsets of two feature sets, of one size (the
    unbiased estimator needs it) and at most :data:`KID_SUBSET` rows (its cost grows with
    the cube of the rows), as KID is usually computed."""
    size = min(len(first), len(second), KID_SUBSET)
    rng = torch.Generator().manual_seed(seed)
    subsets = [f[torch.randperm(len(f), generator=rng)[:size]] for f in (first, second)]
    return kernel_distance(*subsets)


def _diversity(images: Sequence[np.ndarray]) -> float | None:
    """Mean pairwise MS-SSIM over the volumes, centre-cropped to the smallest depth."""
    if len(images) < 2:
        return None
    depth = min(image.shape[0] for image in images)
    cropped = [_centre_slices(image, depth) for image in images]
    return mean_pairwise_ms_ssim(cropped)


def _centre_slices(volume: np.ndarray, depth: int) -> np.ndarray:
    start = (volume.shape[0] - depth) // 2
    return volume[start : start + depth]


def _plain(value: Any) -> Any:
    """Numbers as floats, nan as ``None``: what JSON can hold."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
