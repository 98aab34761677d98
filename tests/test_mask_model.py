"""MC-DPM network: shapes in both layouts, config checks, the position condition, checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from medgen3d.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medgen3d.diffusion import Diffusion
from medgen3d.errors import InputError
from medgen3d.labels import bundled_table
from medgen3d.preprocessing import Preprocessing
from medgen3d.recipe import DataSpec
from medgen3d.stages.masks import (
    NO_POSITION,
    MaskDiffusionModel,
    MaskNetworkConfig,
    label_weights,
    labels_to_signal,
)

TABLE = bundled_table("thorax_phantom")
DATA = DataSpec(TABLE, Preprocessing(size=(8, 8)), sequence_length=4, overlap=1)
TINY = {"channels": [8, 8], "attention_levels": [False, False], "norm_num_groups": 4}


def _inputs(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(TABLE), (batch, 4, 8, 8), generator=g)
    return {
        "x": torch.randn(batch, len(TABLE), 4, 8, 8, generator=g),
        "timesteps": torch.randint(1000, (batch,), generator=g),
        "known_values": labels_to_signal(labels, len(TABLE)),
        "known": torch.tensor([[True, False, False, True]] * batch),
        "position": torch.rand(batch, generator=g),
    }


def _build(
    layout: str = "2d", data: DataSpec = DATA, coordinates: bool = True
) -> MaskDiffusionModel:
    """A tiny model with every weight random: MONAI zero-initialises the output layer,
    which would make every comparison of outputs trivially equal."""
    torch.manual_seed(0)
    config = {**TINY, "layout": layout, "coordinates": coordinates}
    model = MaskDiffusionModel.build(data, MaskNetworkConfig.from_dict(config))
    with torch.no_grad():
        for parameter in model.network.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def _predict(model: MaskDiffusionModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model.network(**inputs)


@pytest.mark.parametrize("layout", ["2d", "3d"])
def test_both_layouts_map_sequences_to_sequences(layout: str) -> None:
    model = _build(layout)
    inputs = _inputs()
    out = _predict(model, inputs)
    assert out.shape == inputs["x"].shape
    assert torch.isfinite(out).all()
    assert (model.num_classes, model.length, model.overlap, model.size) == (9, 4, 1, (8, 8))


def test_labels_to_signal_is_one_hot_in_minus_one_to_one() -> None:
    labels = torch.tensor([[[[0, 2]]]])  # (B, L, H, W) = (1, 1, 1, 2)
    signal = labels_to_signal(labels, 3)
    assert signal.shape == (1, 3, 1, 1, 2)
    assert signal[0, :, 0, 0, 0].tolist() == [1.0, -1.0, -1.0]
    assert signal[0, :, 0, 0, 1].tolist() == [-1.0, -1.0, 1.0]


def test_config_is_resolved_with_defaults_and_round_trips() -> None:
    resolved = MaskNetworkConfig.from_dict(TINY).to_dict()
    assert resolved["layout"] == "2d" and resolved["diffusion"]["objective"] == "x0"
    assert resolved["attention_levels"] == [False, False]
    assert MaskNetworkConfig.from_dict(resolved).to_dict() == resolved
    partial = MaskNetworkConfig.from_dict({"diffusion": {"input_scale": 0.5}})
    assert partial.diffusion == Diffusion(objective="x0", input_scale=0.5)  # over the default


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"chanels": [8]}, "chanels"),
        ({"layout": "4d"}, "layout"),
        ({"channels": [8, 8], "attention_levels": [False]}, "attention_levels"),
        ({"channels": [8, 10], "attention_levels": [False, False]}, "norm_num_groups"),
        ({"norm_num_groups": 8}, "norm_num_groups"),
        ({"num_res_blocks": [1, 1, 1]}, "num_res_blocks"),
        ({"position_dropout": 2.0}, "position_dropout"),
        ({"diffusion": {"objective": "magic"}}, "objective"),
        ({"diffusion": {"steps": 10}}, "diffusion"),
        ({"label_weighting": 0.5, "diffusion": {"objective": "ddpm"}}, "label_weighting"),
        ({"shrink_input": 1}, "shrink_input"),
        ({"shrink_input": True, "diffusion": {"objective": "rflow"}}, "shrink_input"),
    ],
)
def test_bad_config_names_the_key(config: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        MaskDiffusionModel.build(DATA, MaskNetworkConfig.from_dict({**TINY, **config}))


def test_grid_must_divide_by_the_downsampling() -> None:
    odd = DataSpec(TABLE, Preprocessing(size=(10, 10)), sequence_length=4, overlap=1)
    deep = MaskNetworkConfig.from_dict({"channels": [8, 8, 8], "norm_num_groups": 4})
    with pytest.raises(ValueError, match=r"data\.size"):
        MaskDiffusionModel.build(odd, deep)
    short = DataSpec(TABLE, Preprocessing(size=(8, 8)), sequence_length=6, overlap=1)
    with pytest.raises(ValueError, match=r"data\.sequence_length"):
        MaskDiffusionModel.build(short, dataclasses.replace(deep, layout="3d"))


@pytest.mark.parametrize("layout", ["2d", "3d"])
def test_position_and_known_slices_change_the_output(layout: str) -> None:
    model = _build(layout)
    inputs = _inputs()
    base = _predict(model, inputs)
    moved = _predict(model, {**inputs, "position": 1.0 - inputs["position"]})
    dropped = _predict(model, {**inputs, "position": torch.full((2,), NO_POSITION)})
    unknown = _predict(model, {**inputs, "known": torch.zeros(2, 4, dtype=torch.bool)})
    for other in (moved, dropped, unknown):
        assert not torch.allclose(base, other, atol=1e-5)


@pytest.mark.parametrize("layout", ["2d", "3d"])
def test_coordinates_tell_the_network_where_in_the_plane_it_is(layout: str) -> None:
    """Pure noise carries no position: from a featureless input, only the coordinate
    channels let the output differ across the middle of the plane (far from the padding)."""
    wide = DataSpec(TABLE, Preprocessing(size=(64, 64)), sequence_length=4, overlap=1)
    flat = {
        "x": torch.zeros(1, len(TABLE), 4, 64, 64),
        "timesteps": torch.tensor([999]),
        "known_values": torch.zeros(1, len(TABLE), 4, 64, 64),
        "known": torch.zeros(1, 4, dtype=torch.bool),
        "position": torch.tensor([0.5]),
    }
    spread = {
        coordinates: _predict(_build(layout, wide, coordinates), flat)[..., 26:38, 26:38]
        .std(dim=(-2, -1))
        .max()
        for coordinates in (True, False)
    }
    assert spread[True] > 1e-3 > 1e-4 > spread[False]


def test_values_of_unknown_slices_are_ignored() -> None:
    model = _build()
    inputs = _inputs()
    scrambled = inputs["known_values"].clone()
    scrambled[:, :, 1:3] = torch.randn_like(scrambled[:, :, 1:3])
    torch.testing.assert_close(
        _predict(model, inputs), _predict(model, {**inputs, "known_values": scrambled})
    )


@pytest.mark.parametrize("layout", ["2d", "3d"])
def test_checkpoint_round_trip_gives_identical_outputs(layout: str, tmp_path: Path) -> None:
    model = _build(layout)
    config = {"data": DATA.to_dict(), "model": model.config.to_dict()}
    weights = {"network": model.network.state_dict()}
    save_checkpoint(Checkpoint("masks", config, weights), tmp_path / "m.pt")
    loaded = MaskDiffusionModel.from_checkpoint(load_checkpoint(tmp_path / "m.pt", "masks"), "cpu")
    inputs = _inputs()
    model.network.eval()
    assert torch.equal(_predict(model, inputs), _predict(loaded, inputs))
    assert loaded.config == model.config and loaded.diffusion == model.diffusion


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_x0_objective_samples_the_predicted_clean_sequence(sampler: str) -> None:
    """With a perfect clean-sample predictor, sampling lands on the clean sequence."""
    diffusion = Diffusion(objective="x0", num_train_timesteps=50)
    clean = labels_to_signal(torch.randint(len(TABLE), (1, 4, 8, 8)), len(TABLE))
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    noisy, target = diffusion.training_pair(clean, noise, torch.tensor([30]))
    assert torch.equal(target, clean) and not torch.allclose(noisy, clean)
    steps = diffusion.denoise(lambda x, t: clean, noise, diffusion.sampler(sampler, 10))
    *_, last = steps
    torch.testing.assert_close(last.sample, clean, atol=1e-3, rtol=0)


def test_input_scale_divides_the_signal_to_noise_ratio_and_sampling_follows() -> None:
    """Scaling the clean sample by b leaves b * clean as the target; an ideal predictor
    still samples it, and noise_to noises known slices exactly as training did."""
    clean = labels_to_signal(torch.randint(len(TABLE), (1, 4, 8, 8)), len(TABLE))
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    plain, scaled = (
        Diffusion(objective="x0", num_train_timesteps=50, input_scale=b) for b in (1.0, 0.25)
    )
    t = torch.tensor([30])
    noisy, target = scaled.training_pair(clean, noise, t)
    torch.testing.assert_close(target, 0.25 * clean)
    plain_noisy, _ = plain.training_pair(clean, noise, t)
    # same noise, a quarter of the signal: the difference is -0.75 sqrt(alpha_bar_t) clean
    signal_ratio = (noisy - plain_noisy) / clean / -0.75
    assert 0.0 < float(signal_ratio[0, 0, 0, 0, 0]) < 1.0
    torch.testing.assert_close(
        signal_ratio, torch.full_like(clean, float(signal_ratio.flatten()[0]))
    )
    schedule = scaled.sampler("ddim", 10)
    torch.testing.assert_close(scaled.noise_to(clean, noise, schedule, 30), noisy)
    *_, last = scaled.denoise(lambda x, t: 0.25 * clean, noise, schedule)
    assert torch.equal(last.sample.argmax(dim=1), clean.argmax(dim=1))
    with pytest.raises(ValueError, match="input_scale"):
        Diffusion(input_scale=0.0)


def test_a_checkpoint_from_before_coordinates_loads_without_them(tmp_path: Path) -> None:
    model = _build(coordinates=False)
    written_then = {k: v for k, v in model.config.to_dict().items() if k != "coordinates"}
    config = {"data": DATA.to_dict(), "model": written_then}
    save_checkpoint(
        Checkpoint("masks", config, {"network": model.network.state_dict()}), tmp_path / "old.pt"
    )
    loaded = MaskDiffusionModel.from_checkpoint(load_checkpoint(tmp_path / "old.pt", "masks"))
    assert loaded.config.coordinates is False
    model.network.eval()
    inputs = _inputs()
    assert torch.equal(_predict(model, inputs), _predict(loaded, inputs))


def _weighted_checkpoint(model: MaskDiffusionModel, provenance: dict) -> Checkpoint:
    config = {
        "data": DATA.to_dict(),
        "model": {**model.config.to_dict(), "label_weighting": 0.5},
        "provenance": provenance,
    }
    return Checkpoint("masks", config, {"network": model.network.state_dict()})


def test_sampling_divides_the_label_weighting_back_out(tmp_path: Path) -> None:
    """A loss that weighs label k by w_k is minimised by the weighted posterior
    q = p w / sum(p w); the estimate sampling uses must recover p from it exactly."""
    frequency = [0.9, 0.06, 0.03, 0.01] + [0.0] * (len(TABLE) - 4)
    model = _build()
    save_checkpoint(_weighted_checkpoint(model, {"label_frequency": frequency}), tmp_path / "w.pt")
    loaded = MaskDiffusionModel.from_checkpoint(load_checkpoint(tmp_path / "w.pt", "masks"))
    weights = label_weights(frequency, 0.5)
    torch.testing.assert_close(loaded.label_weights, weights)
    assert weights[3] / weights[0] == pytest.approx(90**0.5)  # (0.9 / 0.01) ** 0.5

    posterior = torch.softmax(torch.randn(2, len(TABLE), 4, 8, 8), dim=1)
    weighted = posterior * weights.view(1, -1, 1, 1, 1)
    weighted = weighted / weighted.sum(dim=1, keepdim=True)
    scale = loaded.diffusion.input_scale
    minimiser = scale * (2 * weighted - 1)  # what the weighted loss teaches the network
    torch.testing.assert_close(loaded.sampling_estimate(minimiser), scale * (2 * posterior - 1))
    assert not torch.allclose(minimiser, scale * (2 * posterior - 1))


def test_undo_weighting_divides_out_that_power_of_the_weights(tmp_path: Path) -> None:
    """Power 0 keeps the weighted estimate, 1 recovers the posterior, 0.5 divides by the
    square root of the weights; the config's power is the default."""
    frequency = [0.9, 0.06, 0.03, 0.01] + [0.0] * (len(TABLE) - 4)
    model = _build()
    checkpoint = _weighted_checkpoint(model, {"label_frequency": frequency})
    checkpoint.config["model"]["undo_weighting"] = 0.5
    save_checkpoint(checkpoint, tmp_path / "w.pt")
    loaded = MaskDiffusionModel.from_checkpoint(load_checkpoint(tmp_path / "w.pt", "masks"))
    assert loaded.config.undo_weighting == 0.5
    weighted = torch.softmax(torch.randn(2, len(TABLE), 4, 8, 8), dim=1)
    scale = loaded.diffusion.input_scale
    estimate = scale * (2 * weighted - 1)

    def probability(power: float | None) -> torch.Tensor:
        return (loaded.sampling_estimate(estimate, power) / scale + 1) / 2

    torch.testing.assert_close(probability(0.0), weighted)
    half = weighted / loaded.label_weights.view(1, -1, 1, 1, 1) ** 0.5
    torch.testing.assert_close(probability(0.5), half / half.sum(dim=1, keepdim=True))
    torch.testing.assert_close(probability(None), probability(0.5))
    rarest = (
        probability(0.0)[:, 3].mean(),
        probability(0.5)[:, 3].mean(),
        probability(1.0)[:, 3].mean(),
    )
    assert rarest[0] > rarest[1] > rarest[2]


def test_undo_weighting_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match="undo_weighting must be in"):
        MaskNetworkConfig.from_dict({"label_weighting": 0.5, "undo_weighting": 1.5})


@pytest.mark.parametrize("size", [-1, 2.5, True, "10"])
def test_an_island_size_that_is_not_a_whole_number_is_refused(size) -> None:
    with pytest.raises(ValueError, match="min_island_voxels must be a whole number"):
        MaskNetworkConfig.from_dict({"min_island_voxels": size})


@pytest.mark.parametrize("overlap", [-1, 2.5, True, "4"])
def test_a_sampling_overlap_that_is_not_a_whole_number_is_refused(overlap) -> None:
    with pytest.raises(ValueError, match="sampling_overlap must be a whole number"):
        MaskNetworkConfig.from_dict({"sampling_overlap": overlap})


def test_an_unweighted_model_keeps_its_prediction() -> None:
    model = _build()
    prediction = torch.randn(2, len(TABLE), 4, 8, 8)
    assert model.label_weights is None
    assert torch.equal(model.sampling_estimate(prediction), prediction)


def test_label_bias_multiplies_each_label_probability_by_its_factor(tmp_path: Path) -> None:
    """A calibrated model's estimate is the network's probabilities times exp(bias),
    renormalised; the bias survives the checkpoint, and a label with a higher factor gains
    probability everywhere."""
    model = _build()
    bias = [0.0, 1.0, -2.0] + [0.5] * (len(TABLE) - 3)
    config = {**model.config.to_dict(), "label_bias": bias}
    checkpoint = Checkpoint(
        "masks", {"data": DATA.to_dict(), "model": config}, {"network": model.network.state_dict()}
    )
    save_checkpoint(checkpoint, tmp_path / "b.pt")
    loaded = MaskDiffusionModel.from_checkpoint(load_checkpoint(tmp_path / "b.pt", "masks"))
    assert loaded.config.label_bias == tuple(bias)
    probabilities = torch.softmax(torch.randn(2, len(TABLE), 4, 8, 8), dim=1)
    scale = loaded.diffusion.input_scale
    estimate = loaded.sampling_estimate(scale * (2 * probabilities - 1))
    shifted = probabilities * torch.tensor(bias).exp().view(1, -1, 1, 1, 1)
    expected = shifted / shifted.sum(dim=1, keepdim=True)
    torch.testing.assert_close((estimate / scale + 1) / 2, expected)
    assert ((estimate / scale + 1) / 2)[:, 1].gt(probabilities[:, 1]).all()


def test_label_bias_must_give_one_finite_factor_per_label() -> None:
    with pytest.raises(ValueError, match="label_bias has 2 entries"):
        MaskDiffusionModel.build(DATA, MaskNetworkConfig.from_dict({**TINY, "label_bias": [0, 1]}))
    with pytest.raises(ValueError, match="label_bias must be a list of finite numbers"):
        MaskNetworkConfig.from_dict({**TINY, "label_bias": [0.0, float("nan")]})


def test_a_weighted_model_without_recorded_frequencies_is_refused(tmp_path: Path) -> None:
    save_checkpoint(_weighted_checkpoint(_build(), {}), tmp_path / "w.pt")
    with pytest.raises(InputError, match="label_frequency"):
        MaskDiffusionModel.from_checkpoint(load_checkpoint(tmp_path / "w.pt", "masks"))


def test_shrink_input_hides_pure_noise_from_the_network() -> None:
    """With shrink_input the noisy input is scaled by the least-squares gain: about 1/b when
    clean, ~0 at the last timestep, so there two noise draws give the same estimate."""
    scaled = {"diffusion": {"objective": "x0", "schedule": "cosine", "input_scale": 0.25}}
    torch.manual_seed(0)
    config = MaskNetworkConfig.from_dict({**TINY, **scaled, "shrink_input": True})
    model = MaskDiffusionModel.build(DATA, config)
    with torch.no_grad():
        for parameter in model.network.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model.network.eval()
    gain = model.network.input_gain
    alpha_bar = config.diffusion.alphas_cumprod()
    assert float(gain[0]) == pytest.approx(4.0, rel=1e-2) and float(gain[-1]) < 1e-3
    assert float((gain * (1 - alpha_bar).sqrt()).max()) == pytest.approx(0.5, abs=1e-3)
    assert "input_gain" not in model.network.state_dict()

    def estimates(t: int) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = _inputs(seed=1), _inputs(seed=2)
        second = {**first, "x": second["x"]}  # the same conditions, other noise
        first["timesteps"] = second["timesteps"] = torch.full((2,), t)
        return _predict(model, first), _predict(model, second)

    torch.testing.assert_close(*estimates(999), atol=1e-4, rtol=0)
    assert not torch.allclose(*estimates(0), atol=1e-2)
