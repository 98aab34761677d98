"""The models bundled with the package: found by name, described, and generating a pair on
their own grid with their own label table."""

from __future__ import annotations

import numpy as np
import pytest

from medgen3d.anatomy_check import training_reference
from medgen3d.bundled import BUNDLED_MODELS, bundled_model_of, bundled_model_path, bundled_models
from medgen3d.errors import InputError
from medgen3d.generate import generate_pair
from medgen3d.model import load_model
from medgen3d.progress import drain
from medgen3d.settings import GenerationSettings, MaskSettings, RefineSettings
from medgen3d.train.bank import REFERENCE_COVERAGE

REAL_ANATOMY = ("brain-mri", "headneck-ct")


def _present(name: str) -> str:
    if name not in bundled_models():
        pytest.skip(f"{name} is not bundled in this checkout yet")
    return name


@pytest.fixture(params=sorted(BUNDLED_MODELS))
def bundled(request) -> str:
    return _present(request.param)


@pytest.fixture(params=REAL_ANATOMY)
def real_anatomy(request) -> str:
    return _present(request.param)


def test_bundled_model_generates_a_short_pair_on_its_grid(bundled: str) -> None:
    model = load_model(bundled, "cpu")
    data = model.data
    settings = GenerationSettings(
        depth=data.sequence_length,
        masks=MaskSettings(steps=2),
        refiner=RefineSettings(steps=1),
    )
    pair = drain(generate_pair(model, settings))
    assert pair.label.shape == pair.image.shape == (data.sequence_length, *data.preprocessing.size)
    np.testing.assert_allclose(pair.label.affine, pair.image.affine)
    assert pair.label.spacing == pytest.approx(data.preprocessing.spacing)
    assert set(np.unique(pair.label.data).tolist()) <= set(data.labels.values)
    assert np.isfinite(pair.image.data).all()


def test_real_anatomy_models_say_what_they_were_trained_on(real_anatomy: str) -> None:
    model = load_model(real_anatomy, "cpu")
    text = model.describe()
    assert "licence:" in text and "held out:" in text and "data:" in text
    assert "check:  generated masks against the training masks' anatomy" in text


def test_real_anatomy_models_carry_the_reference_their_masks_are_checked_against(
    real_anatomy: str,
) -> None:
    model = load_model(real_anatomy, "cpu")
    reference = training_reference(model)
    assert reference.names == model.data.labels.names[1:]
    assert reference.coverage == REFERENCE_COVERAGE
    # Every structure of the table occurs in the training masks, within a finite span.
    assert reference.present_in_any.all()
    assert np.all(reference.volume_ml[1] > reference.volume_ml[0])
    # ... and a length: generated structures too long for the training anatomy are flagged.
    slice_mm = model.data.preprocessing.spacing[0]
    assert np.all(reference.length_mm >= slice_mm)


def test_unknown_or_absent_bundled_name_is_a_clear_error(tmp_path, monkeypatch) -> None:
    with pytest.raises(InputError, match="no such model file or folder"):
        load_model("brain-MRI", "cpu")
    import medgen3d.model as model_module

    monkeypatch.setattr(model_module, "bundled_model_path", lambda name: tmp_path / name)
    with pytest.raises(InputError, match="is not bundled with this installation"):
        load_model("headneck-ct", "cpu")


def test_bundled_network_configs_read_back_exactly(bundled: str) -> None:
    """Each stage's config class reads what the bundled checkpoints store and writes it back
    unchanged (plus keys newer than the checkpoint): training resumes only when the two
    agree, and a run restarted from the bundled weights must build the very networks they
    were trained in."""
    from medgen3d.stages.masks import MaskNetworkConfig
    from medgen3d.stages.refiner import RefinerNetworkConfig
    from medgen3d.train.images import ImageTrainingConfig

    classes = {
        "masks": MaskNetworkConfig,
        "images": ImageTrainingConfig,
        "refiner": RefinerNetworkConfig,
    }
    model = load_model(bundled, "cpu")
    for stage, checkpoint in model.checkpoints.items():
        stored = checkpoint.config["model"]
        written = classes[stage].from_dict(stored).to_dict()
        assert _restricted(written, stored) == stored, stage


def _restricted(written: dict, stored: dict) -> dict:
    """``written`` with only the keys of ``stored``, nested dicts alike."""
    return {
        key: _restricted(written[key], value) if isinstance(value, dict) else written[key]
        for key, value in stored.items()
    }


def test_a_stage_started_from_a_bundled_model_names_it_and_its_lineage(tmp_path) -> None:
    """A run started from a bundled model records its name, not this installation's path;
    the description follows the whole chain of runs a stage continues, nearest first."""
    assert bundled_model_of(bundled_model_path("demo") / "masks.pt") == "demo"
    assert bundled_model_of(tmp_path / "masks.pt") is None
    model = load_model("demo", "cpu")
    model.checkpoints["masks"].config["provenance"]["init_from"] = {
        "source": "demo (bundled)",
        "steps": 5,
        "init_from": {"source": "an older recipe", "steps": 7},
    }
    masks_line = next(line for line in model.describe().splitlines() if line.startswith("masks:"))
    assert "steps (after 5 steps of demo (bundled), after 7 steps of an older recipe) on" in (
        masks_line
    )
