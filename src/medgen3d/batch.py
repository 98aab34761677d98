"""Generated datasets on disk: per-sample seeds, the files of a pair and its sidecar, and
the batch jobs of ``medgen3d generate`` (``n`` samples, or one image per mask file).

A pair is written as a unit (``NAME_image.nii.gz``, ``NAME_label.nii.gz`` and the
``NAME.json`` sidecar with the seed, every setting and the model's hash) or not at all, and
sample ``i`` depends on ``(base seed, i)`` only, so a set is the same however it is split
over processes. The generation itself is :mod:`medgen3d.generate`'s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medgen3d import __version__
from medgen3d.errors import InputError, OutputExistsError
from medgen3d.generate import check_mask_extent, conform_labels, generate_image, generate_pair
from medgen3d.io import (
    Volume,
    atomic_outputs,
    is_nifti_path,
    load_volume,
    nifti_stem,
    save_volume,
)
from medgen3d.model import GenerativeModel
from medgen3d.progress import ProgressGenerator
from medgen3d.settings import GenerationSettings

__all__ = [
    "generate_samples",
    "mask_files",
    "pair_paths",
    "pairs_for_mask_files",
    "sample_seed",
    "write_pair",
]

log = logging.getLogger(__name__)


def sample_seed(base_seed: int, index: int) -> int:
    """The seed of sample ``index``: a function of ``(base_seed, index)`` only, so sample
    ``i`` is the same whatever ``-n`` is and however many processes share the work."""
    return int(np.random.SeedSequence([base_seed, index]).generate_state(1)[0])


def pair_paths(folder: str | Path, name: str) -> tuple[Path, Path, Path]:
    """``(image, label, sidecar)`` paths of the pair ``name`` in ``folder``."""
    folder = Path(folder)
    return (
        folder / f"{name}_image.nii.gz",
        folder / f"{name}_label.nii.gz",
        folder / f"{name}.json",
    )


def write_pair(
    folder: str | Path,
    name: str,
    image: Volume | None,
    label: Volume,
    *,
    settings: GenerationSettings | Mapping[str, Any],
    model: GenerativeModel | None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``NAME_image.nii.gz`` (when there is an image), ``NAME_label.nii.gz`` and the
    ``NAME.json`` sidecar (seed, model hash, every setting, version, label table).

    The files are written as a unit (:func:`~medgen3d.io.atomic_outputs`): an error or an
    interruption leaves none of them, never an image without its label map. Nothing is
    written when any of the files exists and ``overwrite`` is false.

    Raises:
        OutputExistsError: naming the first existing file.
        InputError: when image and label do not share one grid.
    """
    image_path, label_path, sidecar_path = pair_paths(folder, name)
    targets = [label_path, sidecar_path] + ([image_path] if image is not None else [])
    for target in targets:
        if target.exists() and not overwrite:
            raise OutputExistsError(target)
    if image is not None and not image.on_grid_of(label):
        raise InputError(f"image and label of {name} do not share one grid")
    if isinstance(settings, GenerationSettings):
        settings = settings.to_dict()
    sidecar = {
        "name": name,
        "medgen3d_version": __version__,
        "seed": settings.get("seed"),
        "settings": dict(settings),
        "model": None if model is None else {"source": model.source, "sha256": model.digest},
        "labels": None if model is None else model.data.labels.to_dict(),
        "modality": None if model is None else model.data.preprocessing.window.modality,
        **(extra or {}),
    }
    volumes = [(label, label_path, label.data.dtype)]
    if image is not None:
        volumes.append((image, image_path, np.float32))
    targets = [path for _, path, _ in volumes] + [sidecar_path]  # the sidecar completes it
    with atomic_outputs(targets, overwrite=overwrite) as temporaries:
        for (volume, _, dtype), tmp in zip(volumes, temporaries[:-1], strict=True):
            save_volume(volume, tmp, overwrite=True, dtype=dtype)
        temporaries[-1].write_text(json.dumps(sidecar, indent=2) + "\n")
    return targets


def generate_samples(
    model: GenerativeModel,
    out: str | Path,
    count: int,
    settings: GenerationSettings,
    *,
    seed_mask: Volume | None = None,
    stage: Literal["all", "masks"] = "all",
    indices: Iterable[int] | None = None,
    overwrite: bool = False,
) -> Iterator[tuple[int, ProgressGenerator[list[Path]]]]:
    """Samples ``sample_NNNN`` for ``indices`` (default all of ``range(count)``), one at a time.

    Sample ``i`` is generated with the seed :func:`sample_seed` ``(settings.seed, i)``, so
    it is the same whatever ``count`` is and whichever process makes it: pass each
    ``torchrun`` rank its :meth:`~medgen3d.runtime.Runtime.shard` as ``indices``. Every
    target file is checked before the first sample starts, so a clash stops the run before
    any work.

    Yields:
        ``(i, work)``: drain ``work`` (a progress generator) to make and write sample ``i``;
        it returns the paths written.
    """
    indices = list(range(count) if indices is None else indices)
    for i in indices:
        for target in pair_paths(out, f"sample_{i:04d}"):
            if target.exists() and not overwrite:
                raise OutputExistsError(target)

    def one(i: int) -> ProgressGenerator[list[Path]]:
        seeded = settings.with_seed(sample_seed(settings.seed, i))
        pair = yield from generate_pair(model, seeded, seed_mask, stage)
        return write_pair(
            out,
            f"sample_{i:04d}",
            pair.image,
            pair.label,
            settings=seeded,
            model=model,
            extra={
                "index": i,
                "base_seed": settings.seed,
                "anatomy_check": None if pair.anatomy is None else pair.anatomy.to_dict(),
            },
            overwrite=overwrite,
        )

    for i in indices:
        yield i, one(i)


def pairs_for_mask_files(
    model: GenerativeModel,
    masks: Sequence[Path],
    out: str | Path,
    settings: GenerationSettings,
    *,
    indices: Iterable[int] | None = None,
    overwrite: bool = False,
    label_mapping: Mapping[int, int] | None = None,
    allow_out_of_range: bool = False,
) -> Iterator[tuple[int, ProgressGenerator[list[Path]]]]:
    """Like :func:`generate_samples` for "image from your own mask": pair ``i`` is
    ``NAME_image.nii.gz`` (on the mask's grid), the mask in the model's label values as
    ``NAME_label.nii.gz`` and ``NAME.json``, where ``NAME`` is the mask file's name without
    its suffix and a trailing ``_label`` (``CASE_label.nii.gz`` gives ``CASE_image.nii.gz``).
    ``label_mapping`` translates masks in the user's own convention (:func:`conform_labels`);
    masks far from the training anatomy are refused (:func:`check_mask_extent`) unless
    ``allow_out_of_range``. Every mask is read and checked before the first image is made,
    so a bad file in a folder stops the run before anything is written.
    """
    indices = list(range(len(masks)) if indices is None else indices)
    names = [nifti_stem(m).removesuffix("_label") for m in masks]
    for i in indices:
        for target in pair_paths(out, names[i]):
            if target.exists() and not overwrite:
                raise OutputExistsError(target)

    def prepared(i: int) -> Volume:
        label = conform_labels(model, load_volume(masks[i], "label"), masks[i], label_mapping)
        warning = check_mask_extent(model, label, masks[i], allow=allow_out_of_range)
        if warning:
            log.warning("%s", warning)
        return label

    for i in indices:  # every mask is checked before the first image is made
        prepared(i)

    def one(i: int) -> ProgressGenerator[list[Path]]:
        label = prepared(i)
        seeded = settings.with_seed(sample_seed(settings.seed, i))
        image = yield from generate_image(model, label, seeded, source=masks[i])
        return write_pair(
            out,
            names[i],
            image,
            label,
            settings=seeded,
            model=model,
            extra={"mask": str(masks[i])},
            overwrite=overwrite,
        )

    for i in indices:
        yield i, one(i)


def mask_files(path: str | Path) -> list[Path]:
    """The label files given as ``--masks``: one NIfTI file, or every NIfTI file in a folder
    (only the label maps of a folder of pairs)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError("no such mask file or folder", path)
    found = sorted(p for p in path.iterdir() if is_nifti_path(p) and not p.name.startswith("."))
    # In a folder of pairs (CASE_image + CASE_label, as generate writes), the images are
    # not masks: take the label maps only.
    labels = [p for p in found if nifti_stem(p).endswith("_label")]
    partners = {nifti_stem(p).removesuffix("_label") for p in labels}
    found = [
        p
        for p in found
        if not (nifti_stem(p).endswith("_image") and nifti_stem(p)[:-6] in partners)
    ]
    if not found:
        raise InputError("holds no .nii or .nii.gz label files", path)
    return found
