"""Stage-2 training end to end: after a short run on phantoms, tissues get their intensities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from _stage_data import TINY_GENERATOR, phantom_spec, recipe, write_small_phantoms
from medgen3d.checkpoint import load_checkpoint
from medgen3d.datasets import discover_pairs, load_case
from medgen3d.progress import drain
from medgen3d.stages.images import (
    ImageGenerator,
    ImageNetworkConfig,
    build_image_generator,
    generate_images,
)
from medgen3d.train.images import ImageTrainingConfig
from medgen3d.train.run import train_stage

pytestmark = pytest.mark.slow

STEPS = 250
MODEL = {"generator": TINY_GENERATOR, "discriminator": {"channels": 8, "layers": 2, "scales": 1}}
# lungs, trachea | body, heart | spine (values of the phantom's table)
AIRWAY, SOFT, BONE = (2, 3, 6), (1, 4), 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("images")
    data_dir = write_small_phantoms(root / "data")
    settings = {"max_steps": STEPS, "batch_size": 4, "learning_rate": 2e-3, "ema_decay": 0.9}
    result = drain(
        train_stage(
            "images",
            data_dir,
            recipe("images", MODEL, **settings),
            root / "images.pt",
            device="cpu",
        )
    )
    return root, result.losses


def _hu_by_label(image_hu: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    return {v: float(image_hu[labels == v].mean()) for v in np.unique(labels).tolist()}


def _generated_hu(generator: ImageGenerator, data_dir: Path) -> tuple[dict, dict]:
    """Per-label mean HU of the real case and of the image generated from its mask."""
    data = generator.data
    case = discover_pairs(data_dir)[0]
    image, label = load_case(case, data.labels, data.preprocessing)
    channels = data.labels.to_channels(label.data)
    generated = drain(generate_images(generator, channels, seed=0))
    window = data.preprocessing.window
    real = _hu_by_label(window.to_physical(image.data), label.data)
    return real, _hu_by_label(window.to_physical(generated), label.data)


def test_training_writes_a_resumable_checkpoint(trained: tuple[Path, list]) -> None:
    root, losses = trained
    checkpoint = load_checkpoint(root / "images.pt", stage="images")
    assert checkpoint.training["step"] == STEPS
    assert set(checkpoint.weights) == {"generator"}
    assert set(losses[0]) == {"l1", "g_adv", "feature_matching", "d_adv"}
    assert checkpoint.config["model"] == ImageTrainingConfig.from_dict(MODEL).to_dict()
    # the anatomy reference generation checks against is the mask stage's, measured there only
    assert "volume_ml" in checkpoint.config["provenance"]["anatomy"]
    assert "reference" not in checkpoint.config["provenance"]["anatomy"]
    assert np.mean([x["l1"] for x in losses[-20:]]) < np.mean([x["l1"] for x in losses[:5]])


def test_generated_tissues_are_ordered_like_the_training_data(trained: tuple[Path, list]) -> None:
    root, _ = trained
    generator = ImageGenerator.from_checkpoint(load_checkpoint(root / "images.pt"))
    real, fake = _generated_hu(generator, root / "data")
    # On this coarse grid the small trachea averages about -460 HU (partial volume), soft
    # tissue -110 to -20 and the spine 360: the margins leave room for a short run.
    assert max(fake[v] for v in AIRWAY) < min(fake[v] for v in SOFT) - 200, fake
    assert fake[BONE] > max(fake[v] for v in SOFT) + 200, fake
    # and the trained generator is much closer to the data than an untrained one
    torch.manual_seed(0)
    untrained = ImageGenerator(
        build_image_generator(ImageNetworkConfig.from_dict(TINY_GENERATOR), phantom_spec()),
        generator.data,
    )
    _, before = _generated_hu(untrained, root / "data")
    error_after = np.mean([abs(fake[v] - real[v]) for v in real])
    error_before = np.mean([abs(before[v] - real[v]) for v in real])
    assert error_after < 0.5 * error_before, (error_before, error_after)


def test_invalid_model_section_names_the_key() -> None:
    with pytest.raises(ValueError, match="l2"):
        ImageTrainingConfig.from_dict({"l2": 1.0})
    with pytest.raises(ValueError, match="first_probability"):
        ImageTrainingConfig.from_dict({"first_probability": 2.0})
    with pytest.raises(ValueError, match="scale"):
        ImageTrainingConfig.from_dict({"discriminator": {"scale": 2}})
    too_deep = ImageTrainingConfig.from_dict({"discriminator": {"layers": 3, "scales": 2}})
    with pytest.raises(ValueError, match="too deep for 64-pixel"):
        too_deep.discriminator.build(16, 64)
    too_deep.discriminator.build(16, 256)
