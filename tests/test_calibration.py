"""Volume calibration of the mask stage: the fit, its targets and the calibrated model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from _stage_data import TINY_DATA, tiny_model, write_small_phantoms, write_tiny_model
from medgen3d.calibration import calibrate_masks, training_volumes
from medgen3d.cli import main
from medgen3d.datasets import discover_pairs
from medgen3d.errors import InputError
from medgen3d.model import load_model
from medgen3d.progress import drain
from medgen3d.settings import MaskSettings

FAST = MaskSettings(steps=2)


@pytest.fixture
def model():
    """The tiny model with every mask weight random: MONAI zero-initialises the output
    layer, and an untrained model would draw background only."""
    model = tiny_model()
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.stage("masks").network.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def _volumes_at_no_bias(model, names: list[str]) -> dict[str, float]:
    """Each structure's mean sampled volume with the model as it is (one fit, no step)."""
    probe = drain(calibrate_masks(model, dict.fromkeys(names, 1.0), iterations=1, masks=FAST))
    return {name: float(np.mean(v)) for name, v in probe.volumes_ml.items()}


def test_the_fit_grows_a_structure_below_its_target_and_shrinks_one_above(model) -> None:
    names = list(TINY_DATA.labels.names[1:])
    sampled = _volumes_at_no_bias(model, names)
    present = sorted((v, n) for n, v in sampled.items() if v > 0)
    (_, small), (_, large) = present[0], present[-1]
    targets = {small: 3.0 * sampled[small], large: sampled[large] / 3.0}

    calibration = drain(calibrate_masks(model, targets, iterations=4, masks=FAST))

    index = {name: k for k, name in enumerate(TINY_DATA.labels.names)}
    assert calibration.bias[index[small]] > 0 > calibration.bias[index[large]]
    assert calibration.iteration > 0
    unbiased = drain(calibrate_masks(model, targets, iterations=1, masks=FAST))
    assert calibration.error < unbiased.error
    others = [b for k, b in enumerate(calibration.bias) if k not in (index[small], index[large])]
    assert others == [0.0] * len(others)  # structures without a target keep factor 1
    assert model.stage("masks").config.label_bias is None  # the model is left as it came


def test_the_fit_is_seeded(model) -> None:
    targets = {TINY_DATA.labels.names[1]: 50.0}
    first = drain(calibrate_masks(model, targets, iterations=2, masks=FAST))
    again = drain(calibrate_masks(model, targets, iterations=2, masks=FAST))
    assert first == again


def test_targets_must_name_the_models_labels() -> None:
    with pytest.raises(InputError, match=r"no such label.*spleen"):
        drain(calibrate_masks(tiny_model(), {"spleen": 1.0}, masks=FAST))


def test_targets_are_the_training_cases_medians_and_never_a_held_out_case(
    tmp_path: Path,
) -> None:
    data = write_small_phantoms(tmp_path / "data", n=3)
    model = tiny_model()
    volumes = training_volumes(model, data)
    assert set(volumes) <= set(TINY_DATA.labels.names[1:]) and volumes
    assert all(v > 0 for v in volumes.values())
    every_case = tuple(case.name for case in discover_pairs(data))
    held_out = dataclasses.replace(model, data=dataclasses.replace(model.data, holdout=every_case))
    with pytest.raises(InputError, match="held out"):
        training_volumes(held_out, data)


def test_calibrate_writes_a_model_that_samples_with_the_fitted_factors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_tiny_model(tmp_path / "model")
    data = write_small_phantoms(tmp_path / "data", n=3)
    out = tmp_path / "calibrated"
    command = ["calibrate", "--model", str(source), "--data", str(data), "--out", str(out)]
    options = ["--iterations", "2", "--samples", "1", "--steps", "2", "--device", "cpu"]
    assert main([*command, *options, "--fill-holes"]) == 0

    calibrated = load_model(out)
    assert calibrated.stage("masks").config.fill_holes  # sampled as fitted
    record = calibrated.checkpoints["masks"].config["provenance"]["calibration"]
    bias = calibrated.stage("masks").config.label_bias
    assert bias == tuple(record["bias"]) and len(bias) == len(TINY_DATA.labels)
    assert set(record["target_ml"]) == set(training_volumes(calibrated, data))
    assert record["data"] == str(data.resolve())
    original = load_model(source)
    for stage in ("masks", "images", "refiner"):
        for key, value in original.checkpoints[stage].weights.items():
            for name, tensor in value.items():
                assert torch.equal(calibrated.checkpoints[stage].weights[key][name], tensor)
    assert main(["info", str(out)]) == 0
    described = capsys.readouterr().out
    assert "volumes calibrated on" in described and "(fill_holes)" in described

    before = (out / "masks.pt").read_bytes()
    assert main(command + options) == 2  # never over an earlier model
    assert (out / "masks.pt").read_bytes() == before
    assert main([*command, *options, "--seed", "7", "--overwrite"]) == 0
    assert (out / "masks.pt").read_bytes() != before


def test_a_model_without_a_mask_stage_is_refused_before_the_data_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_tiny_model(tmp_path / "model")
    (source / "masks.pt").unlink()
    missing = tmp_path / "no-such-data"
    out = tmp_path / "out"
    command = ["calibrate", "--model", str(source), "--data", str(missing), "--out", str(out)]
    assert main(command) == 2
    assert "no 'masks' stage" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
