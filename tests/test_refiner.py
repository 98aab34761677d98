"""The semantic diffusion refiner: training lowers the loss; SDEdit refinement behaves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from _stage_data import TINY_REFINER, phantom_spec, recipe, write_small_phantoms
from medgen3d.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medgen3d.errors import InputError
from medgen3d.phantom import make_phantom
from medgen3d.progress import Progress, drain
from medgen3d.settings import RefineSettings
from medgen3d.stages.refiner import (
    RefinerNetworkConfig,
    SemanticRefiner,
    build_refiner_network,
    refine_volume,
)
from medgen3d.train.run import train_stage

STEPS = 120


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[SemanticRefiner, list]:
    root = tmp_path_factory.mktemp("refiner")
    data_dir = write_small_phantoms(root / "data", n=2)
    settings = {"max_steps": STEPS, "batch_size": 4, "learning_rate": 2e-3, "ema_decay": 0.9}
    result = drain(
        train_stage(
            "refiner",
            data_dir,
            recipe("refiner", TINY_REFINER, **settings),
            root / "r.pt",
            device="cpu",
        )
    )
    return SemanticRefiner.from_checkpoint(load_checkpoint(root / "r.pt", stage="refiner")), (
        result.losses
    )


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    """A phantom image in [-1, 1] and its labels as channel indices (values = indices)."""
    case = make_phantom(7, (10, 32, 32))
    return np.clip(case.image.data / 1000.0, -1, 1).astype(np.float32), case.label.data


def _refine(refiner: SemanticRefiner, volume: tuple, seed: int = 0, **kwargs) -> np.ndarray:
    settings = RefineSettings(**{"steps": 4, "batch_size": 4, **kwargs})
    return drain(refine_volume(refiner, *volume, settings, seed=seed))


@pytest.mark.slow
def test_training_lowers_the_loss(trained: tuple[SemanticRefiner, list]) -> None:
    _, losses = trained
    mse = [x["mse"] for x in losses]
    assert np.mean(mse[-30:]) < 0.6 * np.mean(mse[:10]), (mse[:10], mse[-30:])


def test_strength_zero_returns_the_input_without_running_the_network(volume: tuple) -> None:
    torch.manual_seed(0)
    network = build_refiner_network(RefinerNetworkConfig.from_dict(TINY_REFINER), 9)
    refiner = SemanticRefiner(network, RefinerNetworkConfig.from_dict(TINY_REFINER), phantom_spec())
    refiner.network = None  # any network call would fail
    reports: list[Progress] = []
    out = drain(refine_volume(refiner, *volume, RefineSettings(strength=0.0)), reports.append)
    assert out is volume[0]
    assert reports == []


@pytest.mark.slow
def test_stronger_refinement_changes_more(trained: tuple, volume: tuple) -> None:
    refiner, _ = trained
    changes = [
        float(np.abs(_refine(refiner, volume, strength=s) - volume[0]).mean())
        for s in (0.2, 0.5, 0.9)
    ]
    assert 0 < changes[0] < changes[1] < changes[2], changes


@pytest.mark.slow
def test_same_seed_same_output_other_seed_differs(trained: tuple, volume: tuple) -> None:
    refiner, _ = trained
    first = _refine(refiner, volume, strength=0.5, seed=3)
    assert first.shape == volume[0].shape
    assert first.dtype == np.float32
    assert np.array_equal(first, _refine(refiner, volume, strength=0.5, seed=3))
    assert not np.array_equal(first, _refine(refiner, volume, strength=0.5, seed=4))
    # the starting noise is drawn for the whole volume: the batch size does not matter
    np.testing.assert_allclose(
        first, _refine(refiner, volume, strength=0.5, seed=3, batch_size=3), atol=1e-5
    )


@pytest.mark.slow
def test_progress_counts_every_step_of_every_batch(trained: tuple, volume: tuple) -> None:
    refiner, _ = trained
    reports: list[Progress] = []
    settings = RefineSettings(strength=0.5, steps=3, batch_size=4)
    drain(refine_volume(refiner, *volume, settings), reports.append)
    assert [r.done for r in reports] == list(range(1, 10))  # 3 batches x 3 steps
    assert {r.stage for r in reports} == {"refiner"} and reports[-1].total == 9
    assert sum(r.preview is not None for r in reports) == 3


def test_guidance_mixes_conditional_and_unconditional_predictions() -> None:
    torch.manual_seed(0)
    config = RefinerNetworkConfig.from_dict(TINY_REFINER)
    refiner = SemanticRefiner(build_refiner_network(config, 9), config, phantom_spec())
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 50])
    seg = torch.nn.functional.one_hot(torch.randint(9, (2, 16, 16)), 9).permute(0, 3, 1, 2).float()
    conditional = refiner.predict(x, t, seg)
    unconditional = refiner.predict(x, t, torch.zeros_like(seg))
    guided = refiner.predict(x, t, seg, guidance=3.0)
    torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional))


def test_bad_settings_are_input_errors(volume: tuple) -> None:
    config = RefinerNetworkConfig.from_dict(TINY_REFINER)
    refiner = SemanticRefiner(build_refiner_network(config, 9), config, phantom_spec())
    with pytest.raises(InputError, match="strength"):
        RefineSettings(strength=1.5)
    with pytest.raises(InputError, match="sampler 'euler'"):
        RefineSettings(sampler="euler")
    with pytest.raises(InputError, match="rflow"):
        drain(refine_volume(refiner, *volume, RefineSettings(sampler="rflow")))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"channels": [16, 20]}, "norm_num_groups"),
        ({"attention_levels": [True]}, "attention_levels"),
        ({"attention_levels": [False, True], "num_head_channels": 24}, "num_head_channels"),
        ({"null_probability": 1.0}, "null_probability"),
        ({"diffusion": {"objective": "ddpm", "steps": 3}}, "diffusion"),
        ({"channel": [16]}, "channel"),
    ],
)
def test_invalid_config_names_the_key(change: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        RefinerNetworkConfig.from_dict({**TINY_REFINER, **change})


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path: Path) -> None:
    torch.manual_seed(1)
    config = RefinerNetworkConfig.from_dict(TINY_REFINER)
    network = build_refiner_network(config, 9)
    stored = {"data": phantom_spec().to_dict(), "model": config.to_dict()}
    path = save_checkpoint(
        Checkpoint("refiner", stored, {"refiner": network.state_dict()}), tmp_path / "r.pt"
    )
    loaded = SemanticRefiner.from_checkpoint(load_checkpoint(path))
    original = SemanticRefiner(network, config, phantom_spec())
    x, t, seg = torch.randn(2, 1, 16, 16), torch.tensor([3, 90]), torch.rand(2, 9, 16, 16)
    assert torch.equal(original.predict(x, t, seg), loaded.predict(x, t, seg))
    assert loaded.config == config


def test_auto_sampler_is_the_one_the_objective_calls_for(trained: tuple, volume: tuple) -> None:
    refiner, _ = trained  # trained with the ddpm objective: auto means DDIM
    auto = _refine(refiner, volume, sampler="auto", strength=0.5, steps=3)
    np.testing.assert_array_equal(
        auto, _refine(refiner, volume, sampler="ddim", strength=0.5, steps=3)
    )
    assert not np.array_equal(auto, _refine(refiner, volume, sampler="ddpm", strength=0.5, steps=3))
