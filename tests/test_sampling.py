"""Whole-volume mask assembly: seeded slices, extension in both directions, reproducibility."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medgen3d.errors import InputError
from medgen3d.foreground import ForegroundFill
from medgen3d.holes import enclosed_in_slices
from medgen3d.islands import remove_islands
from medgen3d.labels import bundled_table
from medgen3d.preprocessing import Preprocessing
from medgen3d.progress import Progress, drain
from medgen3d.recipe import DataSpec
from medgen3d.sequences import relative_position, sequence_starts
from medgen3d.stages.masks import (
    MaskDiffusionModel,
    MaskNetworkConfig,
    generation_order,
    sample_mask_volume,
)
from medgen3d.stages.masks.sampling import _channel_indices

TABLE = bundled_table("thorax_phantom")
DATA = DataSpec(TABLE, Preprocessing(size=(8, 8)), sequence_length=4, overlap=1)
CONFIG = {"channels": [8, 8], "attention_levels": [False, False], "norm_num_groups": 4}
STEPS = 3


class Spy(torch.nn.Module):
    """Records the known-slice flags and position of every network call."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.calls: list[tuple[np.ndarray, float]] = []

    def forward(self, x, timesteps, known_values, known, position):
        self.calls.append((known[0].cpu().numpy().copy(), float(position[0])))
        return self.network(x, timesteps, known_values, known, position)


@pytest.fixture(scope="module")
def model() -> MaskDiffusionModel:
    """A tiny untrained model with random weights everywhere (MONAI zero-initialises the
    output layer, which would make every sample the same)."""
    torch.manual_seed(0)
    model = MaskDiffusionModel.build(DATA, MaskNetworkConfig.from_dict(CONFIG))
    with torch.no_grad():
        for parameter in model.network.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    model.network.eval()
    return model


def _sample(model: MaskDiffusionModel, depth: int, **kwargs) -> np.ndarray:
    return drain(
        sample_mask_volume(model, depth, seed=kwargs.pop("seed", 0), steps=STEPS, **kwargs)
    )


def _seeds(depth: int, rows: list[int], seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(TABLE), (depth, 8, 8)).astype(np.uint8)
    known = np.zeros(depth, dtype=bool)
    known[rows] = True
    return labels, known


@pytest.mark.parametrize(
    ("depth", "rows"),
    [(13, [0, 12]), (13, [2, 5, 6, 11]), (4, [1, 2]), (9, [3])],
)
def test_seeded_slices_come_back_bit_identical(
    model: MaskDiffusionModel, depth: int, rows: list[int]
) -> None:
    labels, known = _seeds(depth, rows)
    out = _sample(model, depth, known_labels=labels, known=known)
    assert out.shape == (depth, 8, 8) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[known], labels[known])
    assert not np.array_equal(out[~known], labels[~known])


@pytest.mark.parametrize("depth", [4, 8, 13])  # 8: the last sequence is shifted
def test_extension_covers_any_depth_and_conditions_on_neighbours(
    model: MaskDiffusionModel, depth: int
) -> None:
    spy = Spy(model.network)
    reports = []
    out = drain(
        sample_mask_volume(dataclasses.replace(model, network=spy), depth, seed=0, steps=STEPS),
        reports.append,
    )
    assert out.shape == (depth, 8, 8)
    starts = sequence_starts(depth, 4, 1)
    order = generation_order(depth, 4, 1)
    assert sorted(order) == starts
    assert [r.done for r in reports] == list(range(1, len(starts) * STEPS + 1))
    assert all(isinstance(r, Progress) and r.total == len(starts) * STEPS for r in reports)
    # one preview per finished sequence, the last one the result itself
    previews = [r.preview for r in reports if r.preview is not None]
    assert len(previews) == len(starts)
    np.testing.assert_array_equal(previews[-1], out)
    # every sequence sees exactly the slices generated before it as known, and its position
    generated = np.zeros(depth, dtype=bool)
    for n, start in enumerate(order):
        for known, position in spy.calls[n * STEPS : (n + 1) * STEPS]:
            np.testing.assert_array_equal(known, generated[start : start + 4])
            assert position == pytest.approx(relative_position(start, depth, 4))
        if n > 0:
            assert known.sum() >= 1  # the neighbour's overlap
        generated[start : start + 4] = True


@pytest.mark.parametrize(
    ("given", "own", "expected"), [(None, None, 1), (None, 2, 2), (3, 2, 3), (0, 2, 0)]
)
def test_overlap_is_the_given_one_else_the_models_else_the_datas(
    model: MaskDiffusionModel, given: int | None, own: int | None, expected: int
) -> None:
    """Each sequence after the first starts from the ``expected`` slices it shares with
    those generated before it (more where the last one is moved back to end the volume)."""
    depth = 13
    spy = Spy(model.network)
    config = dataclasses.replace(model.config, sampling_overlap=own)
    drain(
        sample_mask_volume(
            dataclasses.replace(model, network=spy, config=config),
            depth,
            seed=0,
            steps=STEPS,
            overlap=given,
        )
    )
    order = generation_order(depth, 4, expected)
    assert len(spy.calls) == len(order) * STEPS
    generated = np.zeros(depth, dtype=bool)
    for n, start in enumerate(order):
        known = spy.calls[n * STEPS][0]
        np.testing.assert_array_equal(known, generated[start : start + 4])
        generated[start : start + 4] = True


def test_generation_starts_in_the_middle_then_goes_down_and_up() -> None:
    # depth 13, L=4, k=1: starts 0, 3, 6, 9
    assert generation_order(13, 4, 1) == [3, 0, 6, 9]  # a tie: the lower one
    assert generation_order(13, 4, 1, start_position=0.0) == [0, 3, 6, 9]
    assert generation_order(13, 4, 1, start_position=1.0) == [9, 6, 3, 0]
    seeded = np.zeros(13, dtype=bool)
    seeded[[1, 2]] = True
    assert generation_order(13, 4, 1, seeded) == [0, 3, 6, 9]


def test_preview_every_step_shows_the_current_estimate(model: MaskDiffusionModel) -> None:
    labels, known = _seeds(8, [0, 7])
    reports = []
    out = drain(
        sample_mask_volume(
            model, 8, seed=0, steps=STEPS, known_labels=labels, known=known, preview_every=1
        ),
        reports.append,
    )
    assert all(r.preview is not None for r in reports)
    for r in reports:
        np.testing.assert_array_equal(r.preview[known], labels[known])
    np.testing.assert_array_equal(reports[-1].preview, out)


def test_same_seed_same_volume_and_different_seed_differs(model: MaskDiffusionModel) -> None:
    first = _sample(model, 10, seed=3)
    np.testing.assert_array_equal(first, _sample(model, 10, seed=3))
    assert not np.array_equal(first, _sample(model, 10, seed=4))


def test_ddpm_sampler_runs_every_training_step(model: MaskDiffusionModel) -> None:
    diffusion = dataclasses.replace(model.diffusion, num_train_timesteps=5)
    short = dataclasses.replace(
        model, config=dataclasses.replace(model.config, diffusion=diffusion)
    )
    reports = []
    out = drain(sample_mask_volume(short, 4, seed=0, sampler="ddpm"), reports.append)
    assert out.shape == (4, 8, 8) and len(reports) == 5


def test_fill_holes_closes_generated_slices_and_keeps_seeded_ones(
    model: MaskDiffusionModel,
) -> None:
    labels, known = _seeds(13, [0, 6, 12])
    assert enclosed_in_slices(labels[known]).any()  # the seeds have holes of their own
    raw = _sample(model, 13, known_labels=labels, known=known)
    assert enclosed_in_slices(raw[~known]).any()  # so that filling has work to do
    filled = _sample(model, 13, known_labels=labels, known=known, fill_holes=True)
    np.testing.assert_array_equal(filled[known], labels[known])
    assert not enclosed_in_slices(filled[~known]).any()
    own = dataclasses.replace(model, config=dataclasses.replace(model.config, fill_holes=True))
    np.testing.assert_array_equal(_sample(own, 13, known_labels=labels, known=known), filled)
    overridden = _sample(own, 13, known_labels=labels, known=known, fill_holes=False)
    np.testing.assert_array_equal(overridden, raw)


def test_structures_close_over_the_unlabelled_subject_first() -> None:
    subject = TABLE.values[-1]
    data = dataclasses.replace(DATA, foreground_fill=ForegroundFill(subject))
    model = MaskDiffusionModel.build(data, MaskNetworkConfig.from_dict(CONFIG))
    channel = len(TABLE) - 1
    assert model.subject_channel == channel
    labels = np.full((1, 9, 9), channel, dtype=np.uint8)  # the subject fills the slice
    labels[0, 2:7, 2:7] = 1  # a structure inside it
    labels[0, 4, 4] = channel  # with an island of the subject
    labels[0, 7, 7] = 0  # a hole in the subject outside the structure
    labels[0, 0, :] = 0  # and background around it all
    expected = labels.copy()
    expected[0, 4, 4] = 1
    expected[0, 7, 7] = channel
    np.testing.assert_array_equal(model.fill_holes(labels), expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 3}, "depth"),
        ({"depth": 4.0}, "depth"),
        ({"depth": 8, "seed": -1}, "seed"),
        ({"depth": 8, "start_position": 1.5}, "start_position"),
        ({"depth": 8, "sampler": "rflow"}, "rflow"),
        ({"depth": 8, "known": np.ones(8, dtype=bool)}, "both"),
        (
            {"depth": 8, "known_labels": np.zeros((8, 8, 8), np.uint8), "known": np.ones(7, bool)},
            "known",
        ),
        (
            {
                "depth": 8,
                "known_labels": np.full((8, 8, 8), 9, np.uint8),
                "known": np.ones(8, bool),
            },
            "channels",
        ),
        (
            {
                "depth": 8,
                "known_labels": np.zeros((8, 8, 8), np.uint8),
                "known": np.ones(8, bool),
                "size": (4, 4),
            },
            "size",
        ),
    ],
)
def test_bad_requests_are_input_errors(
    model: MaskDiffusionModel, kwargs: dict, message: str
) -> None:
    depth = kwargs.pop("depth")
    with pytest.raises(InputError, match=message):
        drain(sample_mask_volume(model, depth, seed=kwargs.pop("seed", 0), steps=STEPS, **kwargs))


@pytest.mark.parametrize("overlap", [4, 7])
def test_an_overlap_leaving_nothing_to_generate_is_an_input_error(
    model: MaskDiffusionModel, overlap: int
) -> None:
    with pytest.raises(InputError, match=r"overlap must be in \[0, 3\] for sequences of 4"):
        _sample(model, 8, overlap=overlap)


def test_size_is_needed_when_the_model_has_none(model: MaskDiffusionModel) -> None:
    free = dataclasses.replace(model, size=None)
    with pytest.raises(InputError, match="size"):
        drain(sample_mask_volume(free, 4, seed=0, steps=STEPS))
    assert _sample(free, 4, size=(16, 8)).shape == (4, 16, 8)


def test_islands_go_to_their_neighbours_once_the_volume_is_generated_and_seeds_stay(
    model: MaskDiffusionModel,
) -> None:
    labels, known = _seeds(13, [0, 6, 12])
    raw = _sample(model, 13, known_labels=labels, known=known)
    cleaned = _sample(model, 13, known_labels=labels, known=known, min_island_voxels=4)
    np.testing.assert_array_equal(cleaned[known], labels[known])
    expected = remove_islands(raw, 4, keep=known[:, None, None])
    assert (expected != raw).any()  # so that there was work to do
    np.testing.assert_array_equal(cleaned, expected)
    own = dataclasses.replace(model, config=dataclasses.replace(model.config, min_island_voxels=4))
    np.testing.assert_array_equal(_sample(own, 13, known_labels=labels, known=known), cleaned)
    np.testing.assert_array_equal(
        _sample(own, 13, known_labels=labels, known=known, min_island_voxels=0), raw
    )


def test_channel_indices_are_the_argmax_and_take_the_first_of_equals() -> None:
    torch.manual_seed(0)
    signal = torch.randn(1, 5, 3, 4, 4)
    signal[:, 3] = signal[:, 1] = signal.max(dim=1).values + 1.0  # ties between 1 and 3
    signal[0, 4, 0] += 5.0  # a slice where 4 wins
    indices = _channel_indices(signal)
    assert indices.dtype == np.uint8 and set(np.unique(indices)) == {1, 4}
    np.testing.assert_array_equal(indices, signal.argmax(dim=1)[0].numpy())
