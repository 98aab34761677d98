"""Every generated mask checked against the anatomy its model was trained on, and drawn
again while the check fails.

A mask model short of its loss minimum draws most volumes plausibly and some with a
structure lost, doubled in size or broken from slice to slice; a segmentation model
trained on such a mask learns the fault. Like MAISI's generation scripts, which check each
generated mask's organ volumes and generate again when one is out of range, generation
compares every mask with the span of the training masks the checkpoint records
(:class:`~medgen3d.evaluation.anatomy.AnatomyReference`: each structure's volume, length,
pieces and slice-to-slice continuity, and the holes in the labelled region) and, while the mask
is flagged, draws a new one from a seed derived from the sample's, up to a given number of
times. The training masks only are the reference, never a held-out case. Each sample's
sidecar records how many draws it took and what was wrong with those it set aside, so a
dataset's acceptance rate is there for anyone to read; when every draw is flagged, the one
with the fewest faults is kept and its faults are recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medgen3d.evaluation.anatomy import AnatomyReference, implausible, mask_anatomy
from medgen3d.io import Volume
from medgen3d.model import GenerativeModel
from medgen3d.progress import ProgressGenerator

__all__ = ["AnatomyCheck", "check_anatomy", "draw_plausible", "training_reference"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnatomyCheck:
    """The anatomy check of one generated mask.

    Attributes:
        draws: masks drawn for this sample, the kept one included.
        faults: what the check found wrong with the kept mask; empty when it passed.
        rejected: the faults of each mask set aside, in the order drawn.
    """

    draws: int
    faults: tuple[str, ...]
    rejected: tuple[tuple[str, ...], ...] = ()

    @property
    def passed(self) -> bool:
        return not self.faults

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, as the sample's sidecar records them."""
        return {
            "passed": self.passed,
            "draws": self.draws,
            "faults": list(self.faults),
            "rejected": [list(faults) for faults in self.rejected],
        }


def training_reference(model: GenerativeModel) -> AnatomyReference | None:
    """The anatomy of the model's training masks, ``None`` for a model that did not record
    it (trained before it was recorded and not re-packed with ``--anatomy-data``)."""
    anatomy = model.recorded("anatomy") or {}
    reference = anatomy.get("reference")
    return None if reference is None else AnatomyReference.from_dict(reference)


def check_anatomy(label: Volume, model: GenerativeModel, reference: AnatomyReference) -> list[str]:
    """What is implausible about ``label`` (table values, any grid) next to ``reference``."""
    table = model.data.labels
    channels = table.to_channels(label.data)
    return implausible(mask_anatomy(channels, len(table), label.spacing), reference)


def draw_plausible(
    model: GenerativeModel,
    draw: Callable[[int], ProgressGenerator[Volume]],
    redraws: int,
) -> ProgressGenerator[tuple[Volume, AnatomyCheck | None]]:
    """Masks from ``draw(0)``, ``draw(1)``, ... until one passes the anatomy check or
    ``redraws`` more than the first have been drawn.

    Args:
        model: the model whose training anatomy is the reference.
        draw: ``draw(n)`` generates the ``n``-th mask of this sample (each from its own seed).
        redraws: how many masks may be drawn after the first; 0 checks the first only.

    Returns:
        The first mask that passes (else the one with the fewest faults, the earliest of
        equals) and its check; ``None`` as the check for a model without a reference,
        whose first mask is returned unchecked.
    """
    reference = training_reference(model)
    label = yield from draw(0)
    if reference is None:
        return label, None
    drawn = [(label, tuple(check_anatomy(label, model, reference)))]
    while drawn[-1][1] and len(drawn) <= redraws:
        log.info(
            "mask flagged (%s); drawing it again (%d of %d)",
            "; ".join(drawn[-1][1]),
            len(drawn),
            redraws,
        )
        label = yield from draw(len(drawn))
        drawn.append((label, tuple(check_anatomy(label, model, reference))))
    best = min(range(len(drawn)), key=lambda i: len(drawn[i][1]))
    kept, faults = drawn[best]
    if faults:
        log.warning("every mask drawn was flagged; kept the one with: %s", "; ".join(faults))
    rejected = tuple(f for i, (_, f) in enumerate(drawn) if i != best)
    return kept, AnatomyCheck(len(drawn), faults, rejected)
