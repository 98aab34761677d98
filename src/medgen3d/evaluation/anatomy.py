"""Anatomy of label maps: organ volumes, lengths, fragmentation, continuity and holes.

Image metrics cannot tell a plausible mask from one with a missing lung or a heart in five
pieces. These statistics can, per foreground label: how big it is (ml), how far it reaches
from head to foot (mm), in how many 3-D connected pieces, and how smoothly it continues
from one axial slice to the next, which is what breaks first when a volume is generated as
a stack of slice sequences. And
per map: how much background lies enclosed by labelled tissue within an axial slice, the
holes a sampler leaves where it is unsure which structure belongs (the image stage paints
them as air inside the head), which no per-label figure shows.

Label maps are ``(Z, H, W)`` arrays of channel indices ``0 .. C-1``, 0 the background;
spacing is ``(z, y, x)`` in mm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, stats

from medgen3d.holes import enclosed_in_slices
from medgen3d.islands import PIECES

__all__ = [
    "COMPONENT_MARGIN",
    "CONTINUITY_MARGIN",
    "ENCLOSED_FLOOR_ML",
    "LENGTH_FACTOR",
    "VOLUME_FACTOR",
    "AnatomyReference",
    "MaskAnatomy",
    "compare_anatomy",
    "implausible",
    "mask_anatomy",
]

# implausible(): a label's volume may lie within [min / VOLUME_FACTOR, max * VOLUME_FACTOR]
# of the reference volumes: room for patients smaller or larger than a reference set of a
# few dozen scans, while an organ under half the smallest or over twice the largest is flagged.
VOLUME_FACTOR = 2.0
# Its length may reach LENGTH_FACTOR times the reference maximum: the volume's allowance in
# one dimension (a structure scaled by 2^(1/3) in every direction doubles its volume). Only
# too long is flagged: a scan's field of view may cut a real structure short.
LENGTH_FACTOR = VOLUME_FACTOR ** (1.0 / 3.0)
# It may have up to COMPONENT_MARGIN more connected components than the reference maximum:
# a stray voxel or two beside an organ is common (and harmless) in generated masks.
COMPONENT_MARGIN = 2
# And a continuity (a Dice, in [0, 1]) down to CONTINUITY_MARGIN below the reference minimum.
CONTINUITY_MARGIN = 0.2
# Enclosed background may reach VOLUME_FACTOR times the reference maximum, and always
# ENCLOSED_FLOOR_ML: a few voxels left between two structures are harmless, and a reference
# set without any holes must not make a single voxel a fault.
ENCLOSED_FLOOR_ML = 1.0


@dataclass(frozen=True, eq=False)  # eq=False: arrays do not compare with ==
class MaskAnatomy:
    """Anatomy statistics of one label map; each array has one entry per channel 1..C-1.

    Attributes:
        volume_ml: volume of each label, (C-1,) float, 0 where absent.
        length_mm: craniocaudal length of each label's largest connected piece, from its
            first to its last axial slice, (C-1,) float, 0 where absent. A structure the
            generator draws through twice the slices at its real cross-section stays
            within the volume range of a varied reference set; it does not stay within
            this. Stray pieces are counted by ``components``, not here.
        components: number of 3-D connected components (26-connectivity), (C-1,) int.
        continuity: mean Dice between adjacent axial slices, over the pairs between the
            label's first and last slice in which it is present in either slice; (C-1,)
            float, nan where the label is absent. 1 for a straight tube, 0 for a label on
            alternate slices only or on a single slice; a one-slice gap inside a tube adds
            two pairs of Dice 0. The label's two ends are not counted as breaks, so the
            figure does not depend on how many slices an organ spans.
        enclosed_ml: background enclosed by labelled voxels within an axial slice (holes
            inside the labelled region, whatever labels surround them), in ml.
    """

    volume_ml: np.ndarray
    length_mm: np.ndarray
    components: np.ndarray
    continuity: np.ndarray
    enclosed_ml: float


def mask_anatomy(labels: np.ndarray, num_classes: int, spacing: Sequence[float]) -> MaskAnatomy:
    """Volume, length, connected components and continuity of every foreground label, and
    the background enclosed by the labelled region.

    Args:
        labels: label map (Z, H, W) of channel indices in ``[0, num_classes)``.
        num_classes: C, background included.
        spacing: voxel size (z, y, x) in mm. Continuity ignores it: it compares slices as
            they are, so thicker slices naturally score lower.

    Returns:
        The statistics, over channels 1..C-1 (and ``enclosed_ml`` for the whole map).

    Raises:
        ValueError: for a map that is not 3-D or holds values outside ``[0, num_classes)``,
            ``num_classes < 2``, or a spacing that is not three positive numbers.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"label map must be 3-D (Z, H, W), got shape {labels.shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background and one label), got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"label map holds values in [{labels.min()}, {labels.max()}], "
            f"outside [0, {num_classes - 1}]"
        )
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing}")
    voxel_ml = float(np.prod(spacing)) / 1000.0  # mm³ -> ml

    counts = np.bincount(labels.ravel().astype(np.intp), minlength=num_classes)[1:]
    length = np.zeros(num_classes - 1)
    components = np.zeros(num_classes - 1, dtype=np.int64)
    continuity = np.full(num_classes - 1, np.nan)
    for channel in range(1, num_classes):
        if counts[channel - 1] == 0:
            continue
        mask = labels == channel
        pieces, components[channel - 1] = ndimage.label(mask, structure=PIECES)
        length[channel - 1] = _largest_piece_slices(pieces) * spacing[0]
        continuity[channel - 1] = _slice_continuity(mask)
    enclosed = np.count_nonzero(enclosed_in_slices(labels))
    return MaskAnatomy(counts * voxel_ml, length, components, continuity, enclosed * voxel_ml)


def compare_anatomy(
    real: Sequence[MaskAnatomy], synthetic: Sequence[MaskAnatomy], names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per-label comparison of the anatomy of a real and a synthetic set.

    Args:
        real: statistics of the real label maps.
        synthetic: statistics of the generated label maps.
        names: names of the foreground labels, channels 1..C-1 in order.

    Returns:
        For each name: ``volume_wasserstein_ml`` (1-D Wasserstein distance between the two
        sets' volume distributions, in ml; volumes of 0 count, so a label missing from
        some samples moves it), ``real_/synthetic_volume_ml_mean``,
        ``real_/synthetic_length_mm_mean``, ``real_/synthetic_components_mean`` and
        ``real_/synthetic_continuity_mean`` (lengths and continuity over the volumes where
        the label is present; nan if it is present in none). Plain
        floats, ready for JSON (nan aside).

    Raises:
        ValueError: for an empty set or when ``names`` does not match the label count.
    """
    if not real or not synthetic:
        raise ValueError(f"both sets need volumes, got {len(real)} real and {len(synthetic)}")
    r, s = _stack(real, names), _stack(synthetic, names)
    present_r, present_s = r.volume_ml > 0, s.volume_ml > 0
    report: dict[str, dict[str, float]] = {}
    for i, name in enumerate(names):
        report[name] = {
            "volume_wasserstein_ml": float(
                stats.wasserstein_distance(r.volume_ml[:, i], s.volume_ml[:, i])
            ),
            "real_volume_ml_mean": float(r.volume_ml[:, i].mean()),
            "synthetic_volume_ml_mean": float(s.volume_ml[:, i].mean()),
            "real_length_mm_mean": _mean_present(
                np.where(present_r[:, i], r.length_mm[:, i], np.nan)
            ),
            "synthetic_length_mm_mean": _mean_present(
                np.where(present_s[:, i], s.length_mm[:, i], np.nan)
            ),
            "real_components_mean": float(r.components[:, i].mean()),
            "synthetic_components_mean": float(s.components[:, i].mean()),
            "real_continuity_mean": _mean_present(r.continuity[:, i]),
            "synthetic_continuity_mean": _mean_present(s.continuity[:, i]),
        }
    return report


@dataclass(frozen=True, eq=False)
class AnatomyReference:
    """The span of a reference set of label maps, per label: all :func:`implausible` needs.

    A few numbers per label instead of every reference map, so a model can carry the
    reference of its training masks in its checkpoint and check what it generates
    without the training data at hand.

    Each figure is over the central ``coverage`` of the maps (with coverage 1, over all):
    "smallest" is then the lower quantile, "most" the upper one.

    Attributes:
        names: the foreground labels, channels 1..C-1 in order.
        present_in_all: (C-1,) bool, the label is in every reference map.
        present_in_any: (C-1,) bool, the label is in at least one (over all maps).
        volume_ml: (2, C-1) smallest and largest volume (0 for maps that lack the label).
        length_mm: (C-1,) the longest the label is where present, nan where it never is
            (or where the reference was recorded before lengths were: nothing to check).
        components: (C-1,) the most connected components of the label in one map.
        continuity: (C-1,) the lowest slice-to-slice continuity where the label is present,
            nan where it never is.
        enclosed_ml: the most background enclosed by labelled tissue in one map.
        coverage: the central fraction of the reference maps these figures span
            (:meth:`from_anatomies`); 1 for all of them.
    """

    names: tuple[str, ...]
    present_in_all: np.ndarray
    present_in_any: np.ndarray
    volume_ml: np.ndarray
    length_mm: np.ndarray
    components: np.ndarray
    continuity: np.ndarray
    enclosed_ml: float
    coverage: float = 1.0

    @classmethod
    def from_anatomies(
        cls, anatomies: Sequence[MaskAnatomy], names: Sequence[str], coverage: float = 1.0
    ) -> AnatomyReference:
        """The reference spanned by the statistics of a set of maps: by all of them, or by
        the central ``coverage`` of each statistic's values (a structure counts as always
        present when at least the upper quantile of the maps have it).

        A set of a few dozen scans, such as the held-out cases of an evaluation, spans its
        central 95 % or so; a training set of hundreds also holds the rare scan that
        reaches far below the neck (a spinal cord of 1.1 litres) or an organ contoured on
        one slice, which would widen a min-max span until nothing is flagged.

        Raises:
            ValueError: for an empty set, a coverage outside (0, 1], or when ``names`` does
                not match the label count.
        """
        if not anatomies:
            raise ValueError("the reference set is empty")
        if not 0.0 < coverage <= 1.0:
            raise ValueError(f"coverage must be in (0, 1], got {coverage}")
        low, high = (1.0 - coverage) / 2.0, (1.0 + coverage) / 2.0
        ref = _stack(anatomies, names)
        present = ref.volume_ml > 0
        return cls(
            names=tuple(names),
            present_in_all=present.mean(axis=0) >= high,
            present_in_any=present.any(axis=0),
            volume_ml=np.quantile(ref.volume_ml, [low, high], axis=0),
            length_mm=_quantile_where_present(ref.length_mm, present, high),
            components=np.ceil(np.quantile(ref.components, high, axis=0)).astype(np.int64),
            continuity=_quantile_where_present(ref.continuity, present, low),
            enclosed_ml=float(np.quantile(ref.enclosed_ml, high)),
            coverage=coverage,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, per label name (a never-present label's length and continuity
        are None)."""
        labels = {
            name: {
                "present_in_all": bool(self.present_in_all[i]),
                "present_in_any": bool(self.present_in_any[i]),
                "volume_ml": [float(v) for v in self.volume_ml[:, i]],
                "length_mm": _or_none(self.length_mm[i]),
                "components": int(self.components[i]),
                "continuity": _or_none(self.continuity[i]),
            }
            for i, name in enumerate(self.names)
        }
        return {"labels": labels, "enclosed_ml": self.enclosed_ml, "coverage": self.coverage}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnatomyReference:
        """The inverse of :meth:`to_dict`; a reference recorded before lengths were
        (no ``length_mm``) checks none."""
        labels = d["labels"]
        rows = list(labels.values())
        return cls(
            names=tuple(labels),
            present_in_all=np.array([r["present_in_all"] for r in rows], dtype=bool),
            present_in_any=np.array([r["present_in_any"] for r in rows], dtype=bool),
            volume_ml=np.array([r["volume_ml"] for r in rows], dtype=float).reshape(-1, 2).T,
            length_mm=_from_none([r.get("length_mm") for r in rows]),
            components=np.array([r["components"] for r in rows], dtype=np.int64),
            continuity=_from_none([r["continuity"] for r in rows]),
            enclosed_ml=float(d["enclosed_ml"]),
            coverage=float(d["coverage"]),
        )


def implausible(sample: MaskAnatomy, reference: AnatomyReference) -> list[str]:
    """Reasons why a label map is anatomically implausible against a reference set.

    Per label, the sample is flagged when the label

    - is missing although every reference map has it;
    - is present although no reference map has it;
    - has a volume outside ``[min / VOLUME_FACTOR, max * VOLUME_FACTOR]`` of the
      reference volumes (with 0 for those that lack it);
    - is longer (its largest piece, head to foot) than ``LENGTH_FACTOR`` times the longest
      it is in the reference;
    - has more than ``COMPONENT_MARGIN`` connected components beyond the reference maximum;
    - has a continuity more than ``CONTINUITY_MARGIN`` below the reference minimum;

    and the map is flagged when its enclosed background exceeds both ``VOLUME_FACTOR``
    times the reference maximum and ``ENCLOSED_FLOOR_ML``. Any member of the reference set
    passes against that set.

    Args:
        sample: statistics of the label map to check.
        reference: the span of the reference set (real scans, or the training masks).

    Returns:
        One sentence per problem, naming the label; empty when the sample is plausible.

    Raises:
        ValueError: when the reference's labels do not match the sample's.
    """
    _check_names(sample, reference.names)
    reasons: list[str] = []
    for i, name in enumerate(reference.names):
        volume = sample.volume_ml[i]
        if volume == 0:
            if reference.present_in_all[i]:
                reasons.append(f"{name} is missing; every reference volume has it")
            continue
        if not reference.present_in_any[i]:
            reasons.append(f"{name} is present ({volume:.2f} ml); no reference volume has it")
            continue
        smallest, largest = reference.volume_ml[:, i]
        low, high = smallest / VOLUME_FACTOR, largest * VOLUME_FACTOR
        if not low <= volume <= high:
            reasons.append(
                f"{name} volume {volume:.2f} ml is outside the plausible [{low:.2f}, {high:.2f}] ml"
            )
        longest = reference.length_mm[i]  # nan for a reference without lengths
        if sample.length_mm[i] > longest * LENGTH_FACTOR:
            reasons.append(
                f"{name} reaches {sample.length_mm[i]:.0f} mm from head to foot; reference "
                f"volumes at most {longest:.0f} mm"
            )
        most = int(reference.components[i])
        if sample.components[i] > most + COMPONENT_MARGIN:
            reasons.append(
                f"{name} is in {sample.components[i]} pieces; reference volumes have at most {most}"
            )
        least = reference.continuity[i]  # never nan where present
        if sample.continuity[i] < least - CONTINUITY_MARGIN:
            reasons.append(
                f"{name} slice-to-slice continuity {sample.continuity[i]:.2f} is well below "
                f"the reference minimum {least:.2f}"
            )
    most_enclosed = reference.enclosed_ml
    if sample.enclosed_ml > max(VOLUME_FACTOR * most_enclosed, ENCLOSED_FLOOR_ML):
        reasons.append(
            f"{sample.enclosed_ml:.2f} ml of background is enclosed by labelled tissue "
            f"(holes within axial slices); reference volumes have at most {most_enclosed:.2f} ml"
        )
    return reasons


def _largest_piece_slices(pieces: np.ndarray) -> int:
    """Axial slices spanned by the largest piece of a (Z, H, W) ``ndimage.label`` result
    with at least one piece."""
    largest = np.argmax(np.bincount(pieces.ravel())[1:])
    z = ndimage.find_objects(pieces)[largest][0]  # the piece's bounding box along z
    return z.stop - z.start


def _slice_continuity(mask: np.ndarray) -> float:
    """Mean Dice of adjacent axial slices of a non-empty (Z, H, W) mask; see MaskAnatomy."""
    areas = mask.sum(axis=(1, 2))
    first, last = np.flatnonzero(areas)[[0, -1]]
    if first == last:
        return 0.0
    overlap = np.logical_and(mask[first:last], mask[first + 1 : last + 1]).sum(axis=(1, 2))
    pair_areas = areas[first:last] + areas[first + 1 : last + 1]
    occupied = pair_areas > 0  # a gap of several empty slices adds only its two edges
    return float(np.mean(2.0 * overlap[occupied] / pair_areas[occupied]))


def _check_names(anatomy: MaskAnatomy, names: Sequence[str]) -> None:
    """Raise ``ValueError`` unless there is one name per label of ``anatomy``."""
    if len(anatomy.volume_ml) != len(names):
        raise ValueError(
            f"{len(names)} label names for statistics of {len(anatomy.volume_ml)} labels"
        )


def _stack(anatomies: Sequence[MaskAnatomy], names: Sequence[str]) -> MaskAnatomy:
    """Stack per-volume statistics into (n, C-1) arrays, checking the label count."""
    for anatomy in anatomies:
        _check_names(anatomy, names)
    return MaskAnatomy(
        np.stack([a.volume_ml for a in anatomies]),
        np.stack([a.length_mm for a in anatomies]),
        np.stack([a.components for a in anatomies]),
        np.stack([a.continuity for a in anatomies]),
        np.array([a.enclosed_ml for a in anatomies]),
    )


def _quantile_where_present(values: np.ndarray, present: np.ndarray, q: float) -> np.ndarray:
    """Per label (column) of ``(n, C-1)`` ``values``, their ``q`` quantile over the maps
    where the label is present; nan for a label present in none."""
    return np.array(
        [
            np.quantile(values[present[:, i], i], q) if present[:, i].any() else np.nan
            for i in range(values.shape[1])
        ],
        dtype=float,
    )


def _or_none(value: float) -> float | None:
    """``value`` as a JSON number, None for nan."""
    return None if np.isnan(value) else float(value)


def _from_none(values: Sequence[float | None]) -> np.ndarray:
    """The inverse of :func:`_or_none` over a list: a float array, nan for None."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _mean_present(values: np.ndarray) -> float:
    """Mean of the non-nan values; nan (without numpy's warning) when all are nan."""
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else float("nan")
