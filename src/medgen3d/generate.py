"""The composition layer: what a user asks of a model (masks, an image for masks, a refined
image, a whole pair), made by chaining the stages of :mod:`medgen3d.stages`.

This is the only module that chains stages and converts between volumes and the stages'
arrays. Its generator functions are the single entry the command line (``medgen3d
generate``, through :mod:`medgen3d.batch`), the napari widget and the evaluation share.
They take and return :class:`~medgen3d.io.Volume` objects with label *values* and physical
intensities (HU for CT), so geometry travels with the data: a mask completed from a user's
seed mask keeps its grid, an image generated for a user's mask comes back on that mask's
grid, and the image and label of a pair always share one affine. Each yields
:class:`~medgen3d.progress.Progress` and returns its result.

Every stage draws from its own seed (:func:`stage_seed`), so the stages' random streams
never coincide and a sample is a function of its seed only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from medgen3d.anatomy_check import AnatomyCheck, draw_plausible
from medgen3d.errors import InputError
from medgen3d.io import Volume
from medgen3d.model import GenerativeModel
from medgen3d.preprocessing import preprocess_pair, resample_like
from medgen3d.progress import ProgressGenerator, with_affine
from medgen3d.recipe import DataSpec
from medgen3d.settings import GenerationSettings
from medgen3d.stages.images import generate_images
from medgen3d.stages.masks import sample_mask_volume
from medgen3d.stages.refiner import refine_volume

__all__ = [
    "GeneratedPair",
    "check_mask_extent",
    "checked_masks",
    "conform_labels",
    "generate_image",
    "generate_masks",
    "generate_pair",
    "image_for_channels",
    "model_grid",
    "refine_image",
    "regenerate_slices",
    "stage_seed",
]


@dataclass(frozen=True)
class GeneratedPair:
    """A generated label volume and, unless only masks were asked for, its image, with the
    anatomy check of the label volume (``None`` for a model that recorded no training
    anatomy)."""

    label: Volume
    image: Volume | None
    settings: GenerationSettings
    anatomy: AnatomyCheck | None = None


def stage_seed(seed: int, stage: str, draw: int = 0) -> int:
    """An independent seed per stage, so the stages' random streams never coincide, and per
    draw of a stage that may draw again (:func:`generate_pair`'s masks)."""
    index = ("masks", "images", "refiner").index(stage)
    entropy = [seed, index] + ([draw] if draw else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def model_grid(data: DataSpec, depth: int) -> np.ndarray:
    """The affine of a freshly generated volume: the model's spacing, centred on the origin."""
    size = _model_size(data)
    spacing_zyx = data.preprocessing.spacing or (1.0, 1.0, 1.0)
    shape_xyz = np.array([size[1], size[0], depth], dtype=float)
    spacing_xyz = np.array(spacing_zyx[::-1], dtype=float)
    affine = np.diag([*spacing_xyz, 1.0])
    affine[:3, 3] = -(shape_xyz - 1) / 2 * spacing_xyz
    return affine


def generate_masks(
    model: GenerativeModel,
    settings: GenerationSettings,
    seed_mask: Volume | None = None,
    draw: int = 0,
) -> ProgressGenerator[Volume]:
    """A label volume from the mask model, optionally completing a user's seed slices.

    Args:
        model: a model with a ``masks`` stage.
        settings: seed, depth (ignored when ``seed_mask`` is given) and mask settings.
        seed_mask: a label volume whose non-empty slices are kept exactly and whose empty
            slices are generated; its in-plane size must be the model's.
        draw: which of the sample's masks to draw, each from its own seed
            (:func:`checked_masks` draws again while the anatomy check fails).

    Returns:
        Label values on the seed mask's grid, or on :func:`model_grid` without one.
    """
    mask_model = model.stage("masks")
    table = model.data.labels
    if seed_mask is None:
        grid = Volume(
            np.zeros((settings.depth, *_model_size(model.data)), np.uint8),
            model_grid(model.data, settings.depth),
        )
        known_labels, known = None, None
    else:
        _check_in_plane(seed_mask, model.data)
        grid = seed_mask = conform_labels(model, seed_mask, "the seed mask")
        known_labels = table.to_channels(seed_mask.data, "the seed mask")
        known = known_labels.reshape(len(known_labels), -1).any(axis=1)
    work = sample_mask_volume(
        mask_model,
        grid.shape[0],
        seed=stage_seed(settings.seed, "masks", draw),
        sampler=settings.masks.sampler,
        steps=settings.masks.steps,
        undo_weighting=settings.masks.undo_weighting,
        fill_holes=settings.masks.fill_holes,
        min_island_voxels=settings.masks.min_island_voxels,
        overlap=settings.masks.overlap,
        size=grid.shape[1:],
        known_labels=known_labels,
        known=known,
        preview_every=max(1, settings.masks.steps // 4),
    )
    channels = yield from with_affine(work, grid.affine)
    values = table.from_channels(channels)
    if seed_mask is not None:  # seeded slices are returned exactly as given
        values[known] = seed_mask.data[known].astype(values.dtype)
    return grid.with_data(values)


def generate_pair(
    model: GenerativeModel,
    settings: GenerationSettings,
    seed_mask: Volume | None = None,
    stage: Literal["all", "masks"] = "all",
) -> ProgressGenerator[GeneratedPair]:
    """Masks from the mask model (:func:`checked_masks`), then (``stage="all"``) their
    image, refined."""
    label, anatomy = yield from checked_masks(model, settings, seed_mask)
    if stage == "masks":
        return GeneratedPair(label, None, settings, anatomy)
    image = yield from generate_image(model, label, settings)
    return GeneratedPair(label, image, settings, anatomy)


def checked_masks(
    model: GenerativeModel, settings: GenerationSettings, seed_mask: Volume | None = None
) -> ProgressGenerator[tuple[Volume, AnatomyCheck | None]]:
    """:func:`generate_masks`, checked against the model's training anatomy and drawn again
    up to ``settings.masks.redraws`` times while flagged (:func:`draw_plausible`).

    A mask completing a user's seed slices is checked but never drawn again: the seeds fix
    part of its anatomy, which may be a partial volume the whole-volume reference does not
    describe, and the user who painted them decides what to keep.
    """
    redraws = settings.masks.redraws if seed_mask is None else 0
    return (
        yield from draw_plausible(
            model, lambda draw: generate_masks(model, settings, seed_mask, draw), redraws
        )
    )


def generate_image(
    model: GenerativeModel,
    label: Volume,
    settings: GenerationSettings,
    source: str | Path | None = None,
) -> ProgressGenerator[Volume]:
    """An image aligned with a label volume in any geometry, on exactly that volume's grid.

    The labels may be in the model's table or in its training data's convention (the
    recipe's ``label_mapping``, e.g. a raw DLMUSE parcellation for ``brain-mri``). They are
    resampled onto the model's grid (nearest neighbour), turned into an image there
    (:func:`image_for_channels`), converted to physical units and resampled back onto the
    label's grid.

    Returns:
        The image on ``label``'s grid (same shape, affine and source orientation).

    Raises:
        InputError: naming ``source``, for label values outside the table, or a volume
            that on the model's grid is shorter than one sequence or has an in-plane size
            the generator cannot take.
    """
    label = conform_labels(model, label, source)
    data = model.data
    _, on_grid = preprocess_pair(None, label, data.preprocessing)
    _check_model_grid(on_grid, model, source)
    channels = data.labels.to_channels(on_grid.data, source)
    image = yield from with_affine(image_for_channels(model, channels, settings), on_grid.affine)
    physical = Volume(data.preprocessing.window.to_physical(image), on_grid.affine)
    return resample_like(physical, label, "image")


def image_for_channels(
    model: GenerativeModel, channels: np.ndarray, settings: GenerationSettings
) -> ProgressGenerator[np.ndarray]:
    """Stages 2 and 3 on the model's grid: an image in [-1, 1] for ``(Z, H, W)`` channel
    indices; the refiner runs when the model has one and the refine strength is above 0."""
    image = yield from generate_images(
        model.stage("images"), channels, seed=stage_seed(settings.seed, "images")
    )
    if "refiner" not in model.stages or settings.refiner.strength == 0.0:
        return image
    return (
        yield from refine_volume(
            model.stage("refiner"),
            image,
            channels,
            settings.refiner,
            seed=stage_seed(settings.seed, "refiner"),
        )
    )


# A mask whose in-plane extent leaves [FAR_BELOW x smallest, FAR_ABOVE x largest] of the
# training anatomy is refused; one just outside the training range gets a warning.
FAR_BELOW, FAR_ABOVE = 0.5, 2.0


def check_mask_extent(
    model: GenerativeModel, label: Volume, source: str | Path | None, *, allow: bool = False
) -> str | None:
    """Compare a mask's size with the training anatomy's: the labelled region's in-plane
    extent, and each structure's volume.

    A model only knows anatomy of the sizes it was trained on: a mask written with wrong
    voxel sizes, one small organ taken for a whole body, or another dataset's numbering
    read as this table's (a body called "spine") gives an image with tissues at the wrong
    intensities. The extent along z is not compared, and a structure smaller than seen in
    training only warns: a mask may cover part of a body. Models that did not record their
    training anatomy are not checked.

    Returns:
        A warning for sizes outside the training range but within
        ``[FAR_BELOW x min, FAR_ABOVE x max]``, else ``None``.

    Raises:
        InputError: naming ``source``, the sizes and the model's, for an extent beyond that
            range or a structure more than ``FAR_ABOVE`` times the largest seen (unless
            ``allow``).
    """
    anatomy = model.recorded("anatomy")
    where = np.argwhere(label.data > 0)
    if anatomy is None or not len(where):
        return None
    spacing = np.asarray(label.spacing, float)
    extent = ((where.max(0) - where.min(0) + 1) * spacing)[1:]
    low = np.asarray(anatomy["extent_mm"]["min"][1:])
    high = np.asarray(anatomy["extent_mm"]["max"][1:])
    far, outside = [], []
    described = (
        f"its labelled region spans {extent[0]:.0f} x {extent[1]:.0f} mm in-plane (y x); "
        f"the model was trained on {low[0]:.0f}-{high[0]:.0f} x {low[1]:.0f}-{high[1]:.0f} mm"
    )
    if np.any(extent < FAR_BELOW * low) or np.any(extent > FAR_ABOVE * high):
        far.append(described)
    elif np.any(extent < low) or np.any(extent > high):
        outside.append(described)
    table = model.data.labels
    counts = np.bincount(table.to_channels(label.data).ravel(), minlength=len(table))
    for name, count in zip(table.names[1:], counts[1:], strict=True):
        seen = anatomy.get("volume_ml", {}).get(name)
        volume = count * spacing.prod() / 1000.0
        if not seen or not count:
            continue
        said = f"its {name} is {volume:.3g} ml; the model saw {seen[0]:.3g}-{seen[1]:.3g} ml"
        if volume > FAR_ABOVE * seen[1]:
            far.append(said)
        elif volume > seen[1] or volume < FAR_BELOW * seen[0]:
            outside.append(said)
    if far and not allow:
        raise InputError(
            f"{'; '.join(far)}: check its voxel sizes and label values, or pass "
            "--allow-out-of-range to generate anyway",
            source,
        )
    return f"{source}: {'; '.join(far + outside)}" if far or outside else None


def conform_labels(
    model: GenerativeModel,
    label: Volume,
    source: str | Path | None,
    label_mapping: Mapping[int, int] | None = None,
) -> Volume:
    """``label`` in the model's table values.

    With ``label_mapping`` (the user's ``--label-map``) the volume is in the user's
    convention and is translated with it; otherwise :meth:`LabelTable.conform` takes it as
    table values or in the model's training-data convention.
    """
    table = model.data.labels
    if label_mapping is not None:
        return label.with_data(table.translate(label.data, label_mapping, source))
    return label.with_data(table.conform(label.data, model.data.label_mapping, source))


def refine_image(
    model: GenerativeModel, image: Volume, label: Volume, settings: GenerationSettings
) -> ProgressGenerator[Volume]:
    """Refine an image (physical units) with its label volume, on the image's own grid."""
    image, label = _on_one_grid(image, label)
    model.data.labels.check_values(label.data, "the label layer")
    normalised, label_on_grid = preprocess_pair(image, label, model.data.preprocessing)
    work = refine_volume(
        model.stage("refiner"),
        normalised.data,
        model.data.labels.to_channels(label_on_grid.data),
        settings.refiner,
        seed=stage_seed(settings.seed, "refiner"),
    )
    refined = yield from with_affine(work, normalised.affine)
    physical = normalised.with_data(model.data.preprocessing.window.to_physical(refined))
    return resample_like(physical, image, "image")


def regenerate_slices(
    model: GenerativeModel,
    image: Volume,
    label: Volume,
    changed: np.ndarray,
    settings: GenerationSettings,
) -> ProgressGenerator[Volume]:
    """After a mask was edited: new image slices where it changed, the rest untouched.

    The changed slices and ``k`` neighbours on each side are regenerated (each sequence
    still starting from the slices before it, so no seam appears) and refined; every other
    slice keeps its exact values. The pair must be on the model's grid, as generated pairs
    are.

    Args:
        model: a model with an ``images`` stage (a ``refiner`` is used when present).
        image: the generated image, physical units.
        label: the edited label volume, same grid.
        changed: ``(Z,)`` bool, the edited slices.
        settings: seed and refiner settings.
    """
    image, label = _on_one_grid(image, label)
    _check_in_plane(label, model.data)
    window, overlap = model.data.preprocessing.window, model.data.overlap
    region = np.convolve(np.asarray(changed, float), np.ones(2 * overlap + 1), "same") > 0
    channels = model.data.labels.to_channels(label.data, "the edited label layer")
    work = generate_images(
        model.stage("images"),
        channels,
        seed=stage_seed(settings.seed, "images"),
        previous=window.to_model(image.data),
        region=region,
    )
    updated = yield from with_affine(work, image.affine)
    if "refiner" in model.stages and settings.refiner.strength > 0:
        updated[region] = yield from refine_volume(
            model.stage("refiner"),
            updated[region],
            channels[region],
            settings.refiner,
            seed=stage_seed(settings.seed, "refiner"),
        )
    result = image.data.copy()
    result[region] = window.to_physical(updated[region])
    return image.with_data(result)


def _on_one_grid(image: Volume, label: Volume) -> tuple[Volume, Volume]:
    """Check that an image and its labels share one grid (layers the user picked)."""
    if not image.on_grid_of(label):
        raise InputError(
            f"the image {image.shape} and the labels {label.shape} are not on one grid; "
            "pick the labels that belong to the image"
        )
    return image, label


def _check_model_grid(on_grid: Volume, model: GenerativeModel, source: str | Path | None) -> None:
    depth, height, width = on_grid.shape
    length = model.data.sequence_length
    if depth < length:
        raise InputError(
            f"has {depth} slices on the model's grid, fewer than one sequence ({length})", source
        )
    multiple = model.stage("images").network.size_multiple
    if height % multiple or width % multiple:
        raise InputError(
            f"in-plane size {height}x{width} on the model's grid is not a multiple of "
            f"{multiple}, which the generator needs",
            source,
        )


def _model_size(data: DataSpec) -> tuple[int, int]:
    if data.preprocessing.size is None:
        raise InputError("the model was trained without a fixed in-plane size; give a mask")
    return data.preprocessing.size


def _check_in_plane(seed_mask: Volume, data: DataSpec) -> None:
    """Seeds are kept voxel for voxel, so they must lie on the model's grid: its in-plane
    size and its spacing (a mask at another spacing would be drawn at the wrong scale)."""
    size = _model_size(data)
    if seed_mask.shape[1:] != size:
        raise InputError(
            f"the seed mask's in-plane size {seed_mask.shape[1:]} differs from the model's {size}; "
            "paint seeds on a volume of the model's size (e.g. one it generated)"
        )
    spacing = data.preprocessing.spacing
    if spacing is not None and not np.allclose(seed_mask.spacing, spacing, rtol=0.01):
        given = " x ".join(f"{s:g}" for s in seed_mask.spacing)
        raise InputError(
            f"the seed mask's spacing {given} mm (z, y, x) differs from the model's "
            f"{' x '.join(f'{s:g}' for s in spacing)} mm; paint seeds on a volume the model "
            "generated"
        )
