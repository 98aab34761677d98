"""The stages end to end: masks -> image sequences -> refined image -> physical units.

Every function here is a progress generator (:mod:`medgen3d.progress`): it yields
:class:`~medgen3d.progress.Progress` of each stage it runs (``"masks"``, ``"images"``,
``"refiner"``) and returns its result, so the napari plugin runs it in a ``thread_worker``
and the command line drains it.

* :func:`generate_images`: stage 2 over a whole label volume, sequence by sequence from the
  first (most inferior) slice up; each sequence starts with the last ``k`` slices generated
  before it, so sequences join without a seam.
* :func:`image_from_labels`: stage 2 then stage 3 (skipped at strength 0).
* :func:`image_from_mask`: "image from your own mask": a user's label volume in any
  geometry, out an aligned image on exactly that grid.

Whole models (all stages, a user's settings) are driven from :mod:`medgen3d.generate`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from medgen3d.errors import InputError
from medgen3d.io import Volume
from medgen3d.models.image_generator import ImageGenerator
from medgen3d.models.refiner import SemanticRefiner
from medgen3d.preprocessing import preprocess_pair, resample_like
from medgen3d.progress import Progress, ProgressGenerator, with_affine
from medgen3d.refine import RefineSettings, refine_volume
from medgen3d.sequences import relative_position, sequence_starts

__all__ = [
    "DEFAULT_REFINE",
    "generate_images",
    "image_from_labels",
    "image_from_mask",
    "stage_seed",
]


DEFAULT_REFINE = RefineSettings()


def stage_seed(seed: int, stage: str) -> int:
    """An independent seed per stage, so the stages' random streams never coincide."""
    index = ("masks", "images", "refiner").index(stage)
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def generate_images(
    generator: ImageGenerator,
    labels: np.ndarray,
    *,
    seed: int = 0,
    previous: np.ndarray | None = None,
    region: np.ndarray | None = None,
) -> ProgressGenerator[np.ndarray]:
    """Stage 2 over a label volume, or over part of it.

    Args:
        generator: the trained image sequence generator.
        labels: ``(Z, H, W)`` channel indices, ``Z`` at least the sequence length.
        seed: seeds the noise maps of all sequences.
        previous: ``(Z, H, W)`` image in [-1, 1] to update, with ``region``.
        region: ``(Z,)`` bool, the slices to (re)generate; only sequences touching it run,
            each still starting from the ``k`` slices before it, and slices outside it keep
            ``previous``. ``None`` generates every slice.

    Yields:
        :class:`Progress` ``("images", i, n_sequences, preview)`` after every sequence.

    Returns:
        ``(Z, H, W)`` float32 image in [-1, 1].

    Raises:
        InputError: when the volume is shorter than one sequence, or ``region`` comes
            without ``previous``.
    """
    depth = labels.shape[0]
    length, overlap = generator.data.sequence_length, generator.data.overlap
    if depth < length:
        raise InputError(f"a volume of {depth} slices is shorter than one sequence ({length})")
    if region is not None and previous is None:
        raise InputError("regenerating a region needs the previous image")
    out = np.full(labels.shape, -1.0, np.float32) if previous is None else previous.copy()
    write = np.ones(depth, bool) if region is None else np.asarray(region, bool)
    starts = [s for s in sequence_starts(depth, length, overlap) if write[s : s + length].any()]
    noise = torch.Generator().manual_seed(seed)
    for i, start in enumerate(starts):
        context = None if start == 0 else torch.from_numpy(out[start : start + overlap])
        sequence = generator.generate_sequence(
            torch.from_numpy(labels[start : start + length].astype(np.int64)),
            context,
            relative_position(start, depth, length),
            noise,
        ).numpy()
        inside = write[start : start + length]
        out[start : start + length][inside] = sequence[inside]
        yield Progress("images", i + 1, len(starts), out.copy())
    return out


def image_from_labels(
    generator: ImageGenerator,
    refiner: SemanticRefiner | None,
    labels: np.ndarray,
    *,
    seed: int = 0,
    refine: RefineSettings = DEFAULT_REFINE,
) -> ProgressGenerator[np.ndarray]:
    """Stages 2 and 3: an image in [-1, 1] for a ``(Z, H, W)`` channel-index volume.

    The refiner is skipped when it is ``None`` or ``refine.strength`` is 0.
    """
    image = yield from generate_images(generator, labels, seed=stage_seed(seed, "images"))
    if refiner is None or refine.strength == 0.0:
        return image
    _check_same_labels(generator, refiner)
    return (
        yield from refine_volume(
            refiner,
            image,
            labels,
            **dataclasses.asdict(refine),
            seed=stage_seed(seed, "refiner"),
        )
    )


def image_from_mask(
    label: Volume,
    generator: ImageGenerator,
    refiner: SemanticRefiner | None = None,
    *,
    seed: int = 0,
    refine: RefineSettings = DEFAULT_REFINE,
    source: str | Path | None = None,
) -> ProgressGenerator[Volume]:
    """An image aligned with a user's label volume, on the user's own grid.

    The labels (already in the model's table: :func:`medgen3d.generate.conform_labels`) are
    checked against it, resampled onto
    the model's grid (nearest neighbour), turned into an image there, converted to physical
    units and resampled back onto the user's grid.

    Args:
        label: the user's label volume (label values), any spacing and orientation.
        generator: stage 2.
        refiner: stage 3, or ``None``.
        seed: seeds every random draw.
        refine: refinement settings (strength 0 skips it).
        source: the file ``label`` came from, named in errors.

    Returns:
        The image on exactly ``label``'s grid (same shape, affine and source orientation).

    Raises:
        InputError: naming ``source``, for label values outside the table, or a volume
            that on the model's grid is shorter than one sequence or has an in-plane size
            the generator cannot take.
    """
    data = generator.data
    data.labels.check_values(label.data, source)
    _, on_grid = preprocess_pair(None, label, data.preprocessing)
    _check_model_grid(on_grid, generator, source)
    channels = data.labels.to_channels(on_grid.data, source)
    work = image_from_labels(generator, refiner, channels, seed=seed, refine=refine)
    image = yield from with_affine(work, on_grid.affine)
    physical = Volume(data.preprocessing.window.to_physical(image), on_grid.affine)
    return resample_like(physical, label, "image")


def _check_model_grid(
    on_grid: Volume, generator: ImageGenerator, source: str | Path | None
) -> None:
    depth, height, width = on_grid.shape
    length = generator.data.sequence_length
    if depth < length:
        raise InputError(
            f"has {depth} slices on the model's grid, fewer than one sequence ({length})", source
        )
    multiple = generator.network.size_multiple
    if height % multiple or width % multiple:
        raise InputError(
            f"in-plane size {height}x{width} on the model's grid is not a multiple of "
            f"{multiple}, which the generator needs",
            source,
        )


def _check_same_labels(generator: ImageGenerator, refiner: SemanticRefiner) -> None:
    if generator.data.labels != refiner.data.labels:
        raise InputError("the image generator and the refiner use different label tables")
