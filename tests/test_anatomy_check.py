"""Generated masks checked against the model's training anatomy, and drawn again while
flagged."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from _stage_data import TINY_DATA, phantom_spec, tiny_stages, write_small_phantoms, write_tiny_model
from medgen3d import generate
from medgen3d.anatomy_check import (
    AnatomyCheck,
    check_anatomy,
    draw_plausible,
    training_reference,
)
from medgen3d.batch import generate_samples
from medgen3d.checkpoint import Checkpoint
from medgen3d.evaluation.anatomy import AnatomyReference, mask_anatomy
from medgen3d.generate import generate_pair, model_grid
from medgen3d.io import Volume, load_volume
from medgen3d.model import GenerativeModel, load_model, pack_model
from medgen3d.preprocessing import Preprocessing
from medgen3d.progress import Progress, drain
from medgen3d.settings import GenerationSettings, MaskSettings
from medgen3d.stages.masks import sample_mask_volume

TABLE = TINY_DATA.labels
SPACING = TINY_DATA.preprocessing.spacing
SHAPE = (12, 16, 16)


def _body_with_heart(heart_slices: slice) -> np.ndarray:
    """Table values: a body box through every slice with a heart box in ``heart_slices``."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[:, 2:14, 2:14] = TABLE.value_of("body")
    labels[heart_slices, 5:10, 5:10] = TABLE.value_of("heart")
    return labels


def _model_with_reference(reference_maps: list[np.ndarray] | None) -> GenerativeModel:
    """Tiny untrained stages whose mask checkpoint records ``reference_maps``' anatomy."""
    provenance = {}
    if reference_maps is not None:
        anatomies = [
            mask_anatomy(TABLE.to_channels(m), len(TABLE), SPACING) for m in reference_maps
        ]
        reference = AnatomyReference.from_anatomies(anatomies, TABLE.names[1:])
        provenance = {"anatomy": {"reference": reference.to_dict()}}
    masks = Checkpoint("masks", {"provenance": provenance}, {})
    return GenerativeModel(TINY_DATA, tiny_stages(), {"masks": masks}, "tiny", "0" * 64)


REFERENCE = [_body_with_heart(np.s_[3:7]), _body_with_heart(np.s_[4:9])]


def _drawing(maps: list[np.ndarray], calls: list[int]):
    """A ``draw(n)`` returning ``maps[n]`` on the model grid after one progress report."""

    def draw(n: int):
        calls.append(n)
        yield Progress("masks", 1, 1)
        return Volume(maps[n], model_grid(TINY_DATA, SHAPE[0]))

    return draw


def test_a_flagged_mask_is_drawn_again_until_one_passes() -> None:
    model = _model_with_reference(REFERENCE)
    no_heart, plausible = _body_with_heart(np.s_[0:0]), _body_with_heart(np.s_[4:8])
    calls: list[int] = []
    reports: list[Progress] = []
    label, check = drain(
        draw_plausible(model, _drawing([no_heart, plausible, no_heart], calls), redraws=3),
        reports.append,
    )
    assert calls == [0, 1] and len(reports) == 2
    np.testing.assert_array_equal(label.data, plausible)
    assert check.passed and check.draws == 2 and check.faults == ()
    assert len(check.rejected) == 1 and "heart is missing" in check.rejected[0][0]
    assert json.loads(json.dumps(check.to_dict()))["rejected"] == [list(check.rejected[0])]


def test_when_every_draw_is_flagged_the_least_faulty_is_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = _model_with_reference(REFERENCE)
    no_heart = _body_with_heart(np.s_[0:0])
    no_heart_no_body = np.zeros(SHAPE, np.uint8)
    calls: list[int] = []
    maps = [no_heart_no_body, no_heart, no_heart_no_body]
    with caplog.at_level(logging.WARNING, logger="medgen3d.anatomy_check"):
        label, check = drain(draw_plausible(model, _drawing(maps, calls), redraws=2))
    assert calls == [0, 1, 2]
    np.testing.assert_array_equal(label.data, no_heart)
    assert not check.passed and check.draws == 3
    assert check.faults == tuple(check_anatomy(label, model, training_reference(model)))
    assert [len(f) for f in check.rejected] == [2, 2]
    assert "every mask drawn was flagged" in caplog.text


def test_without_redraws_or_without_a_reference_the_first_mask_is_kept() -> None:
    no_heart = _body_with_heart(np.s_[0:0])
    calls: list[int] = []
    label, check = drain(
        draw_plausible(_model_with_reference(REFERENCE), _drawing([no_heart], calls), 0)
    )
    assert calls == [0] and check.draws == 1 and not check.passed
    calls.clear()
    label, check = drain(
        draw_plausible(_model_with_reference(None), _drawing([no_heart], calls), 3)
    )
    assert calls == [0] and check is None
    np.testing.assert_array_equal(label.data, no_heart)


def test_redraws_take_new_seeds_and_leave_the_first_draw_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeds_drawn: list[int] = []

    def spy(*args, **kwargs):
        seeds_drawn.append(kwargs["seed"])
        return (yield from sample_mask_volume(*args, **kwargs))

    monkeypatch.setattr(generate, "sample_mask_volume", spy)
    # No untrained mask can match a reference whose heart fills every slice: all are flagged.
    model = _model_with_reference([_body_with_heart(np.s_[:])] * 2)
    settings = GenerationSettings(seed=3, depth=12, masks=MaskSettings(steps=2, redraws=2))
    pair = drain(generate_pair(model, settings, stage="masks"))
    assert pair.anatomy.draws == 3 and not pair.anatomy.passed
    assert len(set(seeds_drawn)) == 3
    # The first draw keeps the seed of a generation without the check.
    assert seeds_drawn[0] == int(np.random.SeedSequence([3, 0]).generate_state(1)[0])
    # Masks completing seeded slices are checked once, never drawn again.
    seeds = np.zeros(SHAPE, np.uint8)
    seeds[5] = _body_with_heart(np.s_[:])[5]
    seeded = drain(generate_pair(model, settings, Volume(seeds, model_grid(TINY_DATA, 12))))
    assert seeded.anatomy.draws == 1 and len(seeds_drawn) == 4


def test_the_sidecar_records_the_check(tmp_path: Path) -> None:
    model = _model_with_reference([_body_with_heart(np.s_[:])] * 2)
    settings = GenerationSettings(seed=1, depth=12, masks=MaskSettings(steps=2, redraws=1))
    for _, work in generate_samples(model, tmp_path, 1, settings, stage="masks"):
        drain(work)
    sidecar = json.loads((tmp_path / "sample_0000.json").read_text())
    assert sidecar["settings"]["masks"]["redraws"] == 1
    assert sidecar["anatomy_check"]["draws"] == 2 and not sidecar["anatomy_check"]["passed"]
    assert sidecar["anatomy_check"]["faults"]


def test_packing_records_the_training_anatomy_the_training_cases_pass(tmp_path: Path) -> None:
    data = write_small_phantoms(tmp_path / "data", n=3)
    spacing = load_volume(next(data.glob("*label*")), "label").spacing
    on_file_grid = dataclasses.replace(phantom_spec(), preprocessing=Preprocessing(spacing))
    write_tiny_model(tmp_path / "trained", on_file_grid)
    assert training_reference(load_model(tmp_path / "trained")) is None
    pack_model(tmp_path / "trained", tmp_path / "packed", anatomy_data=data)
    model = load_model(tmp_path / "packed")
    reference = training_reference(model)
    assert reference.names == model.data.labels.names[1:]
    # Every stage records the ranges; only the mask stage, whose masks are checked, the
    # reference.
    for stage, checkpoint in model.checkpoints.items():
        anatomy = checkpoint.config["provenance"]["anatomy"]
        assert "volume_ml" in anatomy and ("reference" in anatomy) == (stage == "masks")
    for path in sorted(data.glob("*label*")):
        label = load_volume(path, "label")
        assert check_anatomy(label, model, reference) == []
        heartless = label.data.copy()
        heartless[heartless == model.data.labels.value_of("heart")] = 0
        faults = check_anatomy(label.with_data(heartless), model, reference)
        assert any(f.startswith("heart is missing") for f in faults)


def test_redraws_must_be_a_whole_number() -> None:
    from medgen3d.errors import InputError

    for bad in (-1, 1.5, True):
        with pytest.raises(InputError, match="redraws"):
            MaskSettings(redraws=bad)
    assert AnatomyCheck(1, ()).passed
