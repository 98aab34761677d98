"""Mask anatomy on constructed label maps with known volumes, lengths, pieces and continuity."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medgen3d.evaluation.anatomy import (
    COMPONENT_MARGIN,
    ENCLOSED_FLOOR_ML,
    LENGTH_FACTOR,
    VOLUME_FACTOR,
    AnatomyReference,
    MaskAnatomy,
    compare_anatomy,
    implausible,
    mask_anatomy,
)

SHAPE = (12, 16, 16)
NAMES = ("liver", "spleen")


def _map(*boxes: tuple[int, tuple[slice, slice, slice]]) -> np.ndarray:
    """A uint8 label map of SHAPE with each (channel, (z, y, x) slices) box painted in."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    for channel, box in boxes:
        labels[box] = channel
    return labels


def _anatomy(volume_ml, components, continuity, length_mm=None) -> MaskAnatomy:
    volume_ml = np.asarray(volume_ml, dtype=float)
    return MaskAnatomy(
        volume_ml,
        np.where(volume_ml > 0, 10.0, 0.0) if length_mm is None else np.asarray(length_mm),
        np.asarray(components, dtype=np.int64),
        np.asarray(continuity, dtype=float),
        enclosed_ml=0.0,
    )


# ---- per-volume statistics -----------------------------------------------------------------


def test_volume_is_the_voxel_count_times_the_voxel_size():
    z, y, x = np.mgrid[:12, :16, :16]
    ball = (z - 6) ** 2 + (y - 10) ** 2 + (x - 10) ** 2 <= 9
    labels = _map((1, np.s_[1:4, 0:4, 0:5]))  # 3 * 4 * 5 = 60 voxels
    labels[ball] = 2
    spacing = (2.5, 0.8, 0.5)  # 1 mm³ per voxel
    anatomy = mask_anatomy(labels, num_classes=4, spacing=spacing)
    np.testing.assert_allclose(anatomy.volume_ml, [60 / 1000, ball.sum() / 1000, 0.0])
    np.testing.assert_array_equal(anatomy.components, [1, 1, 0])
    assert math.isnan(anatomy.continuity[2])  # label 3 is absent


def test_volume_scales_with_the_spacing():
    labels = _map((1, np.s_[0:2, 0:5, 0:5]))  # 50 voxels
    anatomy = mask_anatomy(labels, num_classes=2, spacing=(3.0, 2.0, 2.0))
    assert anatomy.volume_ml[0] == pytest.approx(50 * 12 / 1000)


def test_separated_blobs_are_separate_components_and_diagonal_contact_joins():
    labels = _map((1, np.s_[0:3, 0:3, 0:3]), (1, np.s_[6:9, 8:11, 8:11]))
    assert mask_anatomy(labels, 2, (1, 1, 1)).components[0] == 2
    # Voxels touching only at a corner are one piece under 26-connectivity.
    diagonal = np.zeros(SHAPE, dtype=np.uint8)
    diagonal[[0, 1, 2], [0, 1, 2], [0, 1, 2]] = 1
    assert mask_anatomy(diagonal, 2, (1, 1, 1)).components[0] == 1


def test_length_is_the_slice_span_of_the_largest_piece():
    labels = _map((1, np.s_[2:10, 4:8, 4:8]))  # 8 slices
    labels[11, 0, 0] = 1  # a stray voxel further down is a piece, not length
    labels[5, 12:14, 12:14] = 2
    anatomy = mask_anatomy(labels, num_classes=4, spacing=(2.5, 1.0, 1.0))
    np.testing.assert_allclose(anatomy.length_mm, [8 * 2.5, 2.5, 0.0])
    np.testing.assert_array_equal(anatomy.components, [2, 1, 0])


def test_a_straight_tube_is_fully_continuous_whatever_its_length():
    for z in (np.s_[0:12], np.s_[2:10], np.s_[5:7]):
        labels = _map((1, (z, np.s_[4:8], np.s_[4:8])))
        assert mask_anatomy(labels, 2, (1, 1, 1)).continuity[0] == pytest.approx(1.0)


@pytest.mark.parametrize("slices", [np.s_[::2], np.s_[1:10:3], np.s_[5:6]])
def test_a_label_without_adjacent_slices_has_zero_continuity(slices):
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[slices, 4:8, 4:8] = 1  # alternate slices, every third slice, one slice
    assert mask_anatomy(labels, 2, (1, 1, 1)).continuity[0] == 0.0


def test_continuity_is_the_mean_dice_over_occupied_slice_pairs():
    # Area 4 on slices 3-4, then a 2-voxel part of it on 5-6.
    labels = _map((1, np.s_[3:5, 0:2, 0:2]), (1, np.s_[5:7, 0:1, 0:2]))
    # Pairs (3,4) 1, (4,5) 2*2/(4+2), (5,6) 1.
    assert mask_anatomy(labels, 2, (1, 1, 1)).continuity[0] == pytest.approx(8 / 9)
    # A gap of 1 or 3 empty slices inside a tube of 12 adds two pairs of Dice 0.
    for gap in (np.s_[6:7], np.s_[5:8]):
        labels = _map((1, np.s_[0:12, 4:8, 4:8]))
        labels[gap] = 0
        pairs = 11 - (gap.stop - gap.start + 1)  # intact pairs
        expected = pairs / (pairs + 2)
        assert mask_anatomy(labels, 2, (1, 1, 1)).continuity[0] == pytest.approx(expected)


def test_enclosed_background_counts_holes_within_axial_slices():
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[2:6, 2:8, 2:8] = 1
    labels[2:6, 2:8, 5:8] = 2  # the ring is two structures; the hole is still enclosed
    labels[2:6, 4:6, 4:6] = 0  # a 2 x 2 hole on 4 slices, open at both ends in 3-D
    labels[8:10, 0:16, 3:6] = 1  # a band from edge to edge: background beside it is open
    anatomy = mask_anatomy(labels, num_classes=3, spacing=(2.0, 1.0, 1.0))
    assert anatomy.enclosed_ml == pytest.approx(16 * 2 / 1000)


def test_background_around_labels_is_not_enclosed():
    labels = _map((1, np.s_[1:4, 0:4, 0:5]), (2, np.s_[5:9, 6:12, 6:12]))
    assert mask_anatomy(labels, num_classes=3, spacing=(1, 1, 1)).enclosed_ml == 0.0


@pytest.mark.parametrize(
    ("labels", "num_classes", "spacing", "match"),
    [
        (np.zeros((4, 4), dtype=np.uint8), 2, (1, 1, 1), "3-D"),
        (np.full((2, 2, 2), 3, dtype=np.uint8), 3, (1, 1, 1), "outside"),
        (np.zeros((2, 2, 2), dtype=np.uint8), 1, (1, 1, 1), "num_classes"),
        (np.zeros((2, 2, 2), dtype=np.uint8), 2, (1, 1), "spacing"),
        (np.zeros((2, 2, 2), dtype=np.uint8), 2, (1, 0, 1), "spacing"),
    ],
)
def test_mask_anatomy_rejects_bad_input(labels, num_classes, spacing, match):
    with pytest.raises(ValueError, match=match):
        mask_anatomy(labels, num_classes, spacing)


# ---- set comparison ------------------------------------------------------------------------


def test_compare_identical_sets_has_zero_wasserstein():
    real = [_anatomy([v, 1.0], [1, 2], [0.9, np.nan]) for v in (10.0, 20.0, 40.0)]
    report = compare_anatomy(real, list(real), NAMES)
    assert set(report) == set(NAMES)
    assert report["liver"]["volume_wasserstein_ml"] == 0.0
    assert report["liver"]["real_volume_ml_mean"] == pytest.approx(70 / 3)
    assert report["liver"]["real_components_mean"] == 1.0
    assert report["liver"]["synthetic_continuity_mean"] == pytest.approx(0.9)
    assert report["liver"]["real_length_mm_mean"] == 10.0
    assert math.isnan(report["spleen"]["real_continuity_mean"])  # absent everywhere


def test_compare_a_set_scaled_by_two():
    # Sorted volumes pair up, so W1(v, 2v) = mean(|2v - v|) = mean(v) for v >= 0.
    volumes = (10.0, 20.0, 40.0, 0.0)
    real = [_anatomy([v, 5.0], [1, 1], [0.8, 0.9], [v, 3.0]) for v in volumes]
    synthetic = [
        _anatomy([2 * v, 5.0], [c, 1], [t, 0.9], [2 * v, 3.0])
        for v, c, t in zip(volumes, (1, 3, 5, 0), (0.5, np.nan, 0.7, np.nan), strict=True)
    ]
    report = compare_anatomy(real, synthetic, NAMES)
    liver = report["liver"]
    assert liver["volume_wasserstein_ml"] == pytest.approx(np.mean(volumes))
    assert liver["synthetic_volume_ml_mean"] == pytest.approx(2 * np.mean(volumes))
    assert liver["synthetic_components_mean"] == pytest.approx(9 / 4)
    assert liver["synthetic_continuity_mean"] == pytest.approx(0.6)  # absent ones left out
    assert liver["real_length_mm_mean"] == pytest.approx(70 / 3)  # so are their lengths
    assert liver["synthetic_length_mm_mean"] == pytest.approx(140 / 3)
    assert report["spleen"]["volume_wasserstein_ml"] == 0.0
    # Plain floats: the report goes to JSON as it is.
    assert all(type(value) is float for row in report.values() for value in row.values())
    json.dumps(report)


def test_compare_checks_the_names_and_the_sets():
    one = [_anatomy([1.0, 1.0], [1, 1], [1.0, 1.0])]
    with pytest.raises(ValueError, match="label names"):
        compare_anatomy(one, one, ["liver"])
    with pytest.raises(ValueError, match="need volumes"):
        compare_anatomy(one, [], NAMES)


# ---- plausibility --------------------------------------------------------------------------


def _reference() -> list[np.ndarray]:
    """Liver boxes of 60-120 voxels in every map; a spleen box in only some of them."""
    maps = []
    for depth, with_spleen in ((3, True), (4, False), (5, True), (6, True)):
        labels = _map((1, np.s_[2 : 2 + depth, 2:6, 2:7]))
        if with_spleen:
            labels[2:5, 10:13, 10:13] = 2
        maps.append(labels)
    return maps


def _stats(labels: np.ndarray) -> MaskAnatomy:
    return mask_anatomy(labels, num_classes=3, spacing=(2.0, 1.0, 1.0))


def test_reference_volumes_are_plausible_against_their_own_set():
    members = [_stats(m) for m in _reference()]
    reference = AnatomyReference.from_anatomies(members, NAMES)
    for member in members:
        assert implausible(member, reference) == []


def test_a_reference_survives_json_and_judges_alike():
    """A checkpoint carries the reference as JSON; read back it must flag the same maps."""
    members = [_stats(m) for m in _reference()]
    reference = AnatomyReference.from_anatomies(members, NAMES)
    restored = AnatomyReference.from_dict(json.loads(json.dumps(reference.to_dict())))
    assert restored.names == NAMES
    np.testing.assert_array_equal(restored.volume_ml, reference.volume_ml)
    np.testing.assert_array_equal(restored.present_in_all, [True, False])
    striped = _map((1, np.s_[1:10, 2:6, 2:7]), (2, np.s_[2:5, 10:13, 10:13]))
    striped[1::2] = 0
    for labels in (*_reference(), striped, _map((2, np.s_[2:5, 10:13, 10:13]))):
        assert implausible(_stats(labels), restored) == implausible(_stats(labels), reference)
    assert implausible(_stats(striped), restored)  # the comparison is not vacuous


def test_a_reference_covering_the_central_maps_flags_the_outliers_of_its_set():
    """A span over all maps lets its outliers pass; over the central 95 % it does not."""
    livers = [_map((1, np.s_[2 : 2 + depth, 2:6, 2:7])) for depth in [3, 4, 5] * 13]
    outlier = _map((1, np.s_[1:11, 1:15, 1:15]))  # 10 times the largest other liver
    members = [_stats(m) for m in [*livers, outlier]]
    assert implausible(members[-1], AnatomyReference.from_anatomies(members, NAMES)) == []
    central = AnatomyReference.from_anatomies(members, NAMES, coverage=0.95)
    assert implausible(members[-1], central)[0].startswith("liver volume")
    assert all(implausible(m, central) == [] for m in members[:-1])
    assert AnatomyReference.from_dict(central.to_dict()).coverage == 0.95
    with pytest.raises(ValueError, match="coverage"):
        AnatomyReference.from_anatomies(members, NAMES, coverage=0.0)


def test_a_missing_organ_is_flagged_only_when_every_reference_has_it():
    members = [_stats(m) for m in _reference()]
    reference = AnatomyReference.from_anatomies(members, NAMES)
    no_liver = _stats(_map((2, np.s_[2:5, 10:13, 10:13])))
    reasons = implausible(no_liver, reference)
    assert len(reasons) == 1
    assert "liver is missing" in reasons[0]
    # The spleen is absent from one reference map, so its absence is plausible.
    no_spleen = _stats(_map((1, np.s_[2:6, 2:6, 2:7])))
    assert implausible(no_spleen, reference) == []


def test_a_fragmented_organ_is_flagged():
    members = [_stats(m) for m in _reference()]
    reference = AnatomyReference.from_anatomies(members, NAMES)
    most = max(int(r.components[0]) for r in members)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    pieces = most + COMPONENT_MARGIN + 1
    for i in range(pieces):  # separate 2-voxel-wide columns, about the liver's volume
        labels[2:8, 2 + 3 * i : 4 + 3 * i, 2:4] = 1
    reasons = implausible(_stats(labels), reference)
    assert reasons == [f"liver is in {pieces} pieces; reference volumes have at most {most}"]
    # One piece fewer is within the margin.
    labels[:, 2 + 3 * (pieces - 1) :, :] = 0
    assert implausible(_stats(labels), reference) == []


def test_volume_outside_the_plausible_range_is_flagged():
    members = [_stats(m) for m in _reference()]
    reference = AnatomyReference.from_anatomies(members, NAMES)
    largest = max(r.volume_ml[0] for r in members)
    # A liver of 7 * 12 * 12 voxels * 2 mm³ is over VOLUME_FACTOR times the largest (and
    # 14 mm long, within LENGTH_FACTOR times the longest 12 mm).
    huge = _stats(_map((1, np.s_[2:9, 2:14, 2:14])))
    assert huge.volume_ml[0] > VOLUME_FACTOR * largest
    reasons = implausible(huge, reference)
    assert len(reasons) == 1
    assert reasons[0].startswith("liver volume")
    tiny = _stats(_map((1, np.s_[2:3, 2:4, 2:5])))  # 6 voxels, far below 60 / 2
    assert implausible(tiny, reference)[0].startswith("liver volume")


def test_holes_beyond_the_reference_and_the_floor_are_flagged():
    members = [_stats(m) for m in _reference()]
    reference = AnatomyReference.from_anatomies(members, NAMES)  # no holes
    liver = _map((1, np.s_[1:11, 1:15, 1:15]))
    hole_ml = ENCLOSED_FLOOR_ML + 0.2  # 600 voxels of 2 mm³: 10 slices of 6 x 10
    liver[1:11, 4:10, 3:13] = 0
    reasons = implausible(_stats(liver), reference)
    assert reasons[-1] == (
        f"{hole_ml:.2f} ml of background is enclosed by labelled tissue (holes within axial "
        "slices); reference volumes have at most 0.00 ml"
    )
    liver[1:11, 4:10, 3:13] = 1
    liver[1:11, 4:6, 3:13] = 0  # 200 voxels, 0.4 ml: under the floor
    assert not any("enclosed" in r for r in implausible(_stats(liver), reference))


def test_broken_continuity_and_unknown_organs_are_flagged():
    members = [_stats(m) for m in _reference()]
    reference = AnatomyReference.from_anatomies(members, NAMES)
    striped = _map((1, np.s_[1:10, 2:6, 2:7]))
    striped[1::2] = 0  # liver on alternate slices only: continuity 0, one piece per slice
    assert any(
        "continuity 0.00 is well below" in r for r in implausible(_stats(striped), reference)
    )
    only_spleen_reference = AnatomyReference.from_anatomies(
        [_stats(_map((2, np.s_[2:5, 10:13, 10:13])))] * 2, NAMES
    )
    liver = _stats(_map((1, np.s_[2:6, 2:6, 2:7])))
    assert implausible(liver, only_spleen_reference)[0].startswith(
        "liver is present (0.16 ml); no reference volume has it"
    )


def test_a_structure_longer_than_the_reference_is_flagged():
    """Drawn through twice its slices at a thinner section, an organ keeps a plausible
    volume; its length gives it away."""
    members = [_stats(m) for m in _reference()]  # livers of 3-6 slices of 2 mm
    reference = AnatomyReference.from_anatomies(members, NAMES)
    assert reference.length_mm[0] == 12.0
    long_thin = _stats(_map((1, np.s_[2:10, 2:4, 2:5])))  # 16 mm, 0.096 ml
    assert 16.0 > 12.0 * LENGTH_FACTOR
    assert implausible(long_thin, reference) == [
        "liver reaches 16 mm from head to foot; reference volumes at most 12 mm"
    ]
    assert implausible(_stats(_map((1, np.s_[2:9, 2:4, 2:5]))), reference) == []  # 14 mm
    # A reference recorded before lengths were checks none.
    recorded = reference.to_dict()
    for row in recorded["labels"].values():
        del row["length_mm"]
    assert implausible(long_thin, AnatomyReference.from_dict(recorded)) == []
