"""Progress of long engine work, reported by generators.

Long engine functions are generators: they ``yield`` a :class:`Progress` after each unit
of work (a denoising step, a sequence, a batch of slices) and ``return`` their result. The
napari plugin runs them in a ``thread_worker`` (yields drive the progress bar and previews,
``quit()`` stops between yields, the return value arrives in ``returned``); the command line
drains them with :func:`drain`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

__all__ = ["Progress", "ProgressGenerator", "as_stage", "drain", "map_reports", "with_affine"]

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One report: ``done`` of ``total`` units of ``stage`` finished.

    Attributes:
        stage: ``"masks"``, ``"images"`` or ``"refiner"`` (or a caller's own name).
        done: units finished so far within the stage.
        total: units in the stage.
        preview: optionally, the current estimate of the stage's output volume
            (``(Z, H, W)``), for live display; ``None`` most of the time.
        affine: the preview's voxel-to-world affine (nibabel ``(x, y, z)`` order), where
            the caller that knows the grid attached it (:func:`with_affine`), so a viewer can
            show the preview where the result will appear.
        metrics: figures of the unit just finished, such as a training step's losses.
    """

    stage: str
    done: int
    total: int
    preview: np.ndarray | None = None
    affine: np.ndarray | None = None
    metrics: Mapping[str, float] | None = None


ProgressGenerator = Generator[Progress, None, T]


def drain(
    work: Generator[Progress, Any, T], callback: Callable[[Progress], None] | None = None
) -> T:
    """Run a progress generator to the end, passing each report to ``callback``."""
    while True:
        try:
            report = next(work)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(report)


def map_reports(
    work: Generator[Progress, Any, T], change: Callable[[Progress], Progress]
) -> Generator[Progress, Any, T]:
    """``work`` with every report passed through ``change``, and its return value kept."""
    while True:
        try:
            report = next(work)
        except StopIteration as stop:
            return stop.value
        yield change(report)


def as_stage(work: Generator[Progress, Any, T], stage: str) -> Generator[Progress, Any, T]:
    """``work`` with every report relabelled as part of ``stage`` (e.g. one step of a
    larger job), and its return value kept."""
    return (yield from map_reports(work, lambda report: dataclasses.replace(report, stage=stage)))


def with_affine(
    work: Generator[Progress, Any, T], affine: np.ndarray
) -> Generator[Progress, Any, T]:
    """``work``, its previews placed with ``affine``: the grid its arrays lie on, which the
    array-level functions that yield them (sampling, stage 2, the refiner) do not know."""

    def place(report: Progress) -> Progress:
        return report if report.preview is None else dataclasses.replace(report, affine=affine)

    return (yield from map_reports(work, place))
