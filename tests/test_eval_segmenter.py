"""Evaluation segmenter: Dice known answers, learning, determinism, checkpoints, 2.5D features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medgen3d.checkpoint import Checkpoint, save_checkpoint
from medgen3d.errors import InputError, OutputExistsError
from medgen3d.evaluation.segmenter import (
    Segmenter,
    SegmenterSettings,
    dice_per_label,
    train_segmenter,
)
from medgen3d.model import load_model
from medgen3d.phantom import PHANTOM_TABLE, make_phantom
from medgen3d.progress import Progress, drain

NUM_CLASSES = len(PHANTOM_TABLE.values)
SHAPE = (16, 32, 32)
# Body, right lung, left lung: the organs 100 steps on 32x32 slices learn (Dice about 0.95
# over seeds 0-3; the small organs need more steps and resolution).
BIG_ORGANS = [1, 2, 3]
TINY = SegmenterSettings(steps=3, batch_size=4, seed=5)


def _case(seed: int, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A phantom image in model scale [-1, 1] and its label map."""
    case = make_phantom(seed, shape=shape)
    image = (np.clip(case.image.data, -1000, 1000) / 1000).astype(np.float32)
    return image, case.label.data


@pytest.fixture(scope="module")
def training_set() -> tuple[list[np.ndarray], list[np.ndarray]]:
    cases = [_case(seed) for seed in range(3)]
    return [image for image, _ in cases], [label for _, label in cases]


@pytest.fixture(scope="module")
def trained(training_set: tuple[list[np.ndarray], list[np.ndarray]]) -> Segmenter:
    images, labels = training_set
    settings = SegmenterSettings(steps=100, batch_size=8, seed=0)
    return drain(train_segmenter(images, labels, NUM_CLASSES, settings))


# --- dice_per_label ---------------------------------------------------------------------


def test_dice_of_identical_maps_is_one_for_every_present_label() -> None:
    _, label = _case(1)
    assert np.array_equal(
        dice_per_label(label, label, NUM_CLASSES), np.ones(NUM_CLASSES - 1, dtype=np.float64)
    )


def test_dice_known_answers_disjoint_partial_and_absent() -> None:
    reference = np.zeros((8, 8, 8), dtype=np.uint8)
    prediction = np.zeros_like(reference)
    reference[0:4, 0:4, 0:4] = 1  # 64 voxels
    prediction[0:4, 0:4, 0:2] = 1  # 32 of them: Dice 2 * 32 / (64 + 32)
    reference[6:8, 6:8, 6:8] = 2
    prediction[4:6, 4:6, 4:6] = 2  # disjoint from the reference's label 2
    prediction[7, 0, 0] = 3  # label 3 is predicted but absent from the reference
    scores = dice_per_label(prediction, reference, num_classes=5)
    assert scores.shape == (4,)
    assert scores[0] == pytest.approx(2 / 3)
    assert scores[1] == 0.0
    assert np.isnan(scores[2])  # absent from the reference, present in the prediction
    assert np.isnan(scores[3])  # absent from both


@pytest.mark.parametrize(
    ("prediction", "reference", "message"),
    [
        (np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3, 4), np.uint8), r"shape \(2, 3, 3\)"),
        (np.full((2, 3, 3), 4, np.uint8), np.zeros((2, 3, 3), np.uint8), r"prediction.*value 4"),
        (np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3, 3), np.float32), r"reference.*integer"),
    ],
)
def test_dice_rejects_mismatched_or_out_of_range_maps(
    prediction: np.ndarray, reference: np.ndarray, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        dice_per_label(prediction, reference, num_classes=4)


# --- training -----------------------------------------------------------------------------


def test_training_learns_the_big_organs_of_a_held_out_phantom(trained: Segmenter) -> None:
    image, label = _case(100)
    untrained = Segmenter.create(NUM_CLASSES, trained.settings)
    before = dice_per_label(untrained.predict(image), label, NUM_CLASSES)
    after = dice_per_label(trained.predict(image), label, NUM_CLASSES)
    big = [c - 1 for c in BIG_ORGANS]
    assert np.nanmean(before[big]) < 0.3
    assert np.nanmean(after[big]) > 0.8, after


def test_training_reports_every_step_and_returns_an_eval_mode_segmenter(
    training_set: tuple[list[np.ndarray], list[np.ndarray]],
) -> None:
    images, labels = training_set
    reports: list[Progress] = []
    segmenter = drain(train_segmenter(images, labels, NUM_CLASSES, TINY), reports.append)
    assert [(r.stage, r.done, r.total) for r in reports] == [("segmenter", i, 3) for i in (1, 2, 3)]
    assert not segmenter.network.training
    assert segmenter.num_classes == NUM_CLASSES


def test_seeded_training_is_bit_identical_and_the_seed_matters(
    training_set: tuple[list[np.ndarray], list[np.ndarray]],
) -> None:
    images, labels = training_set
    torch.manual_seed(123)
    first = drain(train_segmenter(images, labels, NUM_CLASSES, TINY)).network.state_dict()
    torch.manual_seed(456)  # the caller's global random state plays no part
    second = drain(train_segmenter(images, labels, NUM_CLASSES, TINY)).network.state_dict()
    other_seed = SegmenterSettings(steps=3, batch_size=4, seed=6)
    third = drain(train_segmenter(images, labels, NUM_CLASSES, other_seed)).network.state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], third[name]) for name in first)


def test_volumes_of_different_sizes_train_together() -> None:
    small, large = _case(1, (8, 24, 20)), _case(2, (10, 32, 32))
    settings = SegmenterSettings(steps=2, batch_size=4)
    segmenter = drain(
        train_segmenter([small[0], large[0]], [small[1], large[1]], NUM_CLASSES, settings)
    )
    assert segmenter.predict(small[0]).shape == (8, 24, 20)


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        ([], [], "at least one"),
        ([np.zeros((2, 8, 8), np.float32)], [], "1 images but 0 label maps"),
        (
            [np.zeros((2, 8, 8), np.float32)],
            [np.zeros((2, 8, 9), np.uint8)],
            r"labels\[0\] has shape \(2, 8, 9\) but images\[0\] has shape \(2, 8, 8\)",
        ),
        (
            [np.zeros((2, 8, 8), np.float32)] * 2,
            [np.zeros((2, 8, 8), np.uint8), np.full((2, 8, 8), 9, np.uint8)],
            r"labels\[1\] holds label value 9, outside 0\.\.8",
        ),
        ([np.zeros((8, 8), np.float32)], [np.zeros((8, 8), np.uint8)], r"images\[0\].*\(Z, H, W\)"),
        (
            [np.zeros((2, 8, 8), np.float32)],
            [np.zeros((2, 8, 8), np.float32)],
            r"labels\[0\] must hold integer",
        ),
    ],
)
def test_bad_training_inputs_are_clear_errors(
    images: list[np.ndarray], labels: list[np.ndarray], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        next(train_segmenter(images, labels, NUM_CLASSES, TINY))


def test_bad_settings_and_class_counts_are_clear_errors() -> None:
    with pytest.raises(InputError, match="multiple of 8"):
        SegmenterSettings(init_filters=4)
    with pytest.raises(InputError, match="steps must be a positive integer"):
        SegmenterSettings(steps=0)
    with pytest.raises(InputError, match=r"unknown segmenter setting.*epochs"):
        SegmenterSettings.from_dict({"epochs": 3})
    with pytest.raises(InputError, match="num_classes"):
        Segmenter.create(1, TINY)
    assert SegmenterSettings.from_dict(TINY.to_dict()) == TINY


# --- prediction and features --------------------------------------------------------------


def test_prediction_pads_at_the_far_ends_and_crops_back(trained: Segmenter) -> None:
    image = _case(100)[0][:, :30, :27]
    padded = np.full((SHAPE[0], 32, 32), -1.0, dtype=np.float32)
    padded[:, :30, :27] = image
    prediction = trained.predict(image)
    assert prediction.shape == image.shape
    assert prediction.dtype == np.uint8
    assert np.array_equal(prediction, trained.predict(padded)[:, :30, :27])


def test_features_are_pooled_encoder_outputs_of_all_three_views(trained: Segmenter) -> None:
    # Sides that differ and do not divide by 8; Z beyond one inference batch.
    image = np.random.default_rng(0).uniform(-1, 1, (37, 21, 19)).astype(np.float32)
    features = trained.features(image)
    assert features.shape == (37 + 21 + 19, trained.feature_size)
    assert trained.feature_size == 8 * trained.settings.init_filters
    assert features.dtype == torch.float32
    # Coronal slices image[:, y, :] are the axial slices of the volume with Y moved first,
    # and sagittal slices image[:, :, x] those of the volume with X moved first.
    coronal = trained.features(np.moveaxis(image, 1, 0))[:21]
    sagittal = trained.features(np.moveaxis(image, 2, 0))[:19]
    torch.testing.assert_close(features[37 : 37 + 21], coronal)
    torch.testing.assert_close(features[37 + 21 :], sagittal)
    with torch.no_grad():
        encoded, _ = trained.network.encode(torch.from_numpy(image[5:6, None]))
    torch.testing.assert_close(features[5], encoded.mean(dim=(2, 3))[0])


# --- checkpoints --------------------------------------------------------------------------


def test_save_and_load_give_identical_predictions_and_features(
    trained: Segmenter, tmp_path: Path
) -> None:
    image = _case(100)[0]
    path = trained.save(tmp_path / "segmenter.pt")
    loaded = Segmenter.load(path)
    assert loaded.num_classes == trained.num_classes
    assert loaded.settings == trained.settings
    assert np.array_equal(loaded.predict(image), trained.predict(image))
    assert torch.equal(loaded.features(image), trained.features(image))
    with pytest.raises(OutputExistsError, match=r"segmenter\.pt"):
        trained.save(path)


def test_a_generative_stage_is_not_loaded_as_a_segmenter_nor_a_segmenter_as_a_model(
    tmp_path: Path,
) -> None:
    masks = save_checkpoint(Checkpoint("masks", {"model": {}}, {}), tmp_path / "masks.pt")
    with pytest.raises(InputError, match=r"masks\.pt.*'masks' stage, not 'segmenter'"):
        Segmenter.load(masks)
    segmenter = Segmenter.create(NUM_CLASSES, TINY).save(tmp_path / "seg.pt")
    with pytest.raises(InputError, match=r"seg\.pt.*'segmenter' stage, not a model stage"):
        load_model(segmenter)


def test_a_segmenter_file_whose_weights_do_not_fit_is_a_clear_error(tmp_path: Path) -> None:
    nine_classes = Segmenter.create(NUM_CLASSES, TINY).network.state_dict()
    config = {"num_classes": 3, "settings": TINY.to_dict()}
    path = save_checkpoint(
        Checkpoint("segmenter", config, {"network": nine_classes}), tmp_path / "seg.pt"
    )
    with pytest.raises(InputError, match=r"seg\.pt.*not a usable segmenter"):
        Segmenter.load(path)
