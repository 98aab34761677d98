"""Images generated from real masks, compared with the real images of those masks.

Stages 2 and 3 are what a user calls with ``generate --masks``: given a real label map, is
the image it produces the scan those labels came from, tissue by tissue? For held-out real
cases (never trained on) the model turns each real mask into an image on the model grid;
then

* **intensities**: each label's mean intensity in the generated image against the real
  image's, averaged over cases; Pearson r over labels says whether tissues keep their
  order and contrast (a CT's bone brighter than fat, an MRI's white matter brighter than
  grey);
* **recovery**: the evaluation's segmenter (trained on real pairs) on the generated images,
  Dice against the real mask, beside its Dice on the real images of the same cases.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from medgen3d.evaluation.segmenter import Segmenter, dice_per_label
from medgen3d.generate import image_for_channels
from medgen3d.model import GenerativeModel
from medgen3d.progress import ProgressGenerator, as_stage
from medgen3d.settings import DEFAULTS, GenerationSettings
from medgen3d.train.bank import CaseBank

__all__ = ["images_from_real_masks", "label_means"]


def label_means(image: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean of ``image`` under each channel index ``0 .. C-1`` (nan where absent)."""
    counts = np.bincount(labels.ravel(), minlength=num_classes).astype(np.float64)
    sums = np.bincount(labels.ravel(), weights=image.ravel(), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def images_from_real_masks(
    model: GenerativeModel,
    real: CaseBank,
    ids: Sequence[int],
    segmenter: Segmenter,
    seed: int = 0,
    generation: GenerationSettings = DEFAULTS,
) -> ProgressGenerator[dict[str, Any]]:
    """Turn the masks of real cases ``ids`` into images and compare (module docstring).

    ``generation`` holds the refiner's settings (seeded ``seed + i`` for case ``i``); the
    defaults, which reports use, make the figures describe what ``generate --masks``
    gives, and other strengths let a benchmark compare them.

    Returns:
        JSON-ready metrics: ``cases``, per-label mean intensities (physical units) of the
        real and generated images, ``pearson_r`` over labels, and the segmenter's Dice on
        real and generated images of those cases.
    """
    num_classes = real.num_classes
    real_means, generated_means, real_dice, generated_dice = [], [], [], []
    for n, i in enumerate(ids):
        labels = real.labels[i]
        work = image_for_channels(model, labels, generation.with_seed(seed + i))
        image = yield from as_stage(work, f"image from real mask {n + 1}/{len(ids)}")
        real_means.append(label_means(real.images[i], labels, num_classes))
        generated_means.append(label_means(image, labels, num_classes))
        real_dice.append(dice_per_label(segmenter.predict(real.images[i]), labels, num_classes))
        generated_dice.append(dice_per_label(segmenter.predict(image), labels, num_classes))
    window = model.data.preprocessing.window
    with warnings.catch_warnings():  # labels absent from every case stay nan, as meant
        warnings.simplefilter("ignore", RuntimeWarning)
        real_mean, generated_mean = (
            window.to_physical(np.nanmean(np.stack(m), axis=0))
            for m in (real_means, generated_means)
        )
        dice = {
            name: np.nanmean(np.stack(values), axis=0)
            for name, values in (("real", real_dice), ("generated", generated_dice))
        }
    present = np.isfinite(real_mean) & np.isfinite(generated_mean)
    present[0] = False  # background is mostly air or padding, not a tissue
    r = float(np.corrcoef(real_mean[present], generated_mean[present])[0, 1])
    return {
        "cases": len(ids),
        "mean_intensity": {
            "real": real_mean[1:].tolist(),
            "generated": generated_mean[1:].tolist(),
        },
        "pearson_r": r,
        "dice": {
            name: {"per_label": d.tolist(), "mean": float(np.nanmean(d))}
            for name, d in dice.items()
        },
    }
