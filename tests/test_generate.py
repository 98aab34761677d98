"""Model-level generation (what the CLI and the widget call), model folders and sidecars."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _stage_data import LENGTH, OVERLAP, TINY_GENERATOR, tiny_model
from _stage_data import TINY_DATA as DATA
from medgen3d.batch import sample_seed, write_pair
from medgen3d.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medgen3d.errors import InputError, OutputExistsError
from medgen3d.generate import (
    generate_masks,
    generate_pair,
    model_grid,
    regenerate_slices,
)
from medgen3d.io import Volume, load_volume
from medgen3d.labels import bundled_table
from medgen3d.model import GenerativeModel, load_model, pack_model
from medgen3d.preprocessing import Preprocessing
from medgen3d.progress import Progress, drain
from medgen3d.recipe import DataSpec
from medgen3d.settings import GenerationSettings, MaskSettings, RefineSettings

FAST = GenerationSettings(
    seed=3,
    depth=12,
    masks=MaskSettings(steps=2),
    refiner=RefineSettings(strength=0.4, steps=2),
)


@pytest.fixture(scope="module")
def model() -> GenerativeModel:
    return tiny_model(DATA)


def test_pair_runs_every_stage_and_is_aligned_and_seeded(model: GenerativeModel) -> None:
    reports: list[Progress] = []
    pair = drain(generate_pair(model, FAST), reports.append)
    stages = [r.stage for r in reports]
    assert stages == sorted(stages, key=["masks", "images", "refiner"].index)
    assert set(stages) == {"masks", "images", "refiner"}
    assert pair.image.shape == pair.label.shape == (12, 16, 16)
    np.testing.assert_array_equal(pair.image.affine, pair.label.affine)
    np.testing.assert_array_equal(pair.label.affine, model_grid(DATA, 12))
    assert pair.label.spacing == pytest.approx((3.0, 2.0, 2.0))
    assert set(np.unique(pair.label.data)) <= set(DATA.labels.values)
    again = drain(generate_pair(model, FAST))
    np.testing.assert_array_equal(again.label.data, pair.label.data)
    np.testing.assert_array_equal(again.image.data, pair.image.data)
    masks_only = drain(generate_pair(model, FAST, stage="masks"))
    assert masks_only.image is None
    np.testing.assert_array_equal(masks_only.label.data, pair.label.data)


def test_previews_carry_the_grid_the_result_lies_on(model: GenerativeModel) -> None:
    reports: list[Progress] = []
    pair = drain(generate_pair(model, FAST), reports.append)
    previews = [r for r in reports if r.preview is not None]
    assert {r.stage for r in previews} == {"masks", "images", "refiner"}
    for report in previews:
        assert report.preview.shape == pair.label.shape
        np.testing.assert_allclose(report.affine, pair.label.affine, atol=1e-6)
    assert all(r.affine is None for r in reports if r.preview is None)


def test_seeded_slices_come_back_exactly_on_the_seeds_grid(model: GenerativeModel) -> None:
    seeds = np.zeros((14, 16, 16), dtype=np.uint8)
    seeds[3, 4:12, 4:12] = 4  # heart painted on slice 3
    seeds[10] = 1
    seeds[10, 6:9, 6:9] = 8  # body with spine on slice 10
    affine = np.diag([-2.0, 2.0, 3.0, 1.0])
    volume = Volume(seeds, affine, ("L", "A", "S"))
    completed = drain(generate_masks(model, FAST, seed_mask=volume))
    np.testing.assert_array_equal(completed.data[[3, 10]], seeds[[3, 10]])
    np.testing.assert_array_equal(completed.affine, affine)
    assert completed.source_axcodes == ("L", "A", "S")
    assert completed.shape == seeds.shape


def test_seeds_of_another_size_or_values_are_refused(model: GenerativeModel) -> None:
    with pytest.raises(InputError, match="in-plane size"):
        drain(
            generate_masks(model, FAST, seed_mask=Volume(np.zeros((12, 8, 8), np.uint8), np.eye(4)))
        )
    bad = np.zeros((12, 16, 16), np.uint8)
    bad[0, 0, 0] = 99
    on_grid = model_grid(model.data, 12)
    with pytest.raises(InputError, match="99"):
        drain(generate_masks(model, FAST, seed_mask=Volume(bad, on_grid)))
    with pytest.raises(InputError, match="spacing 1 x 1 x 1 mm"):
        drain(
            generate_masks(
                model, FAST, seed_mask=Volume(np.zeros((12, 16, 16), np.uint8), np.eye(4))
            )
        )


def test_regenerating_edited_slices_leaves_the_rest_untouched(model: GenerativeModel) -> None:
    pair = drain(generate_pair(model, FAST.with_seed(5)))
    edited = pair.label.data.copy()
    edited[6, 2:6, 2:6] = 4
    changed = np.zeros(12, dtype=bool)
    changed[6] = True
    updated = drain(
        regenerate_slices(model, pair.image, pair.label.with_data(edited), changed, FAST)
    )
    region = np.zeros(12, dtype=bool)
    region[6 - OVERLAP : 6 + OVERLAP + 1] = True
    np.testing.assert_array_equal(updated.data[~region], pair.image.data[~region])
    assert not np.array_equal(updated.data[6], pair.image.data[6])
    np.testing.assert_array_equal(updated.affine, pair.image.affine)


def test_sample_seeds_depend_on_index_only() -> None:
    seeds = [sample_seed(7, i) for i in range(5)]
    assert len(set(seeds)) == 5
    assert sample_seed(7, 3) == seeds[3]
    assert sample_seed(8, 3) != seeds[3]


def test_write_pair_writes_sidecar_and_never_overwrites(
    model: GenerativeModel, tmp_path: Path
) -> None:
    pair = drain(generate_pair(model, FAST))
    paths = write_pair(tmp_path, "sample_0000", pair.image, pair.label, settings=FAST, model=model)
    assert sorted(p.name for p in paths) == [
        "sample_0000.json",
        "sample_0000_image.nii.gz",
        "sample_0000_label.nii.gz",
    ]
    sidecar = json.loads((tmp_path / "sample_0000.json").read_text())
    assert sidecar["seed"] == 3 and sidecar["settings"]["masks"]["steps"] == 2
    assert sidecar["model"]["sha256"] == "0" * 64
    assert sidecar["labels"]["names"][4] == "heart"
    label = load_volume(tmp_path / "sample_0000_label.nii.gz", "label")
    np.testing.assert_array_equal(label.data, pair.label.data)
    before = (tmp_path / "sample_0000_label.nii.gz").read_bytes()
    with pytest.raises(OutputExistsError):
        write_pair(tmp_path, "sample_0000", None, pair.label, settings=FAST, model=model)
    assert (tmp_path / "sample_0000_label.nii.gz").read_bytes() == before


def _save_stage(
    folder: Path,
    stage: str,
    network: torch.nn.Module,
    name: str,
    model: dict,
    data: DataSpec = DATA,
) -> Path:
    config = {"data": data.to_dict(), "model": model, "provenance": {"steps": 1}}
    checkpoint = Checkpoint(stage, config, {name: network.state_dict()}, {"step": 1, "state": {}})
    return save_checkpoint(checkpoint, folder / f"{stage}.pt", overwrite=True)


def test_model_folder_loads_packs_and_rejects_mismatched_stages(
    model: GenerativeModel, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    images = model.stages["images"]
    generator_config = {"generator": TINY_GENERATOR}
    _save_stage(folder, "images", images.network, "generator", generator_config)
    _save_stage(
        folder,
        "masks",
        model.stages["masks"].network,
        "network",
        model.stages["masks"].config.to_dict(),
    )
    loaded = load_model(folder)
    assert set(loaded.stages) == {"masks", "images"}
    assert "refiner: (missing)" in loaded.describe()
    with pytest.raises(InputError, match="no 'refiner' stage"):
        loaded.stage("refiner")
    packed = pack_model(folder, tmp_path / "packed")
    assert sorted(p.name for p in packed) == ["images.pt", "masks.pt"]
    assert all(load_checkpoint(p).training is None for p in packed)
    assert set(load_model(tmp_path / "packed").stages) == {"masks", "images"}

    other = DataSpec(
        bundled_table("thorax_phantom"), Preprocessing((3.0, 2.0, 2.0), (32, 32)), LENGTH, OVERLAP
    )
    _save_stage(
        folder,
        "masks",
        model.stages["masks"].network,
        "network",
        model.stages["masks"].config.to_dict(),
        data=other,
    )
    with pytest.raises(InputError, match=r"in-plane size .* differs"):
        load_model(folder)
    with pytest.raises(InputError, match="no such model"):
        load_model(tmp_path / "absent")


def test_a_folder_of_pairs_gives_its_label_maps_as_masks(tmp_path) -> None:
    from medgen3d.batch import mask_files

    for name in ("a_image", "a_label", "b_label", "c_image", "notes"):
        (tmp_path / f"{name}.nii.gz").write_bytes(b"")
    (tmp_path / "a.json").write_text("{}")
    # c_image has no label partner: it may be a mask named so by its user, and stays
    assert [p.name for p in mask_files(tmp_path)] == [
        "a_label.nii.gz",
        "b_label.nii.gz",
        "c_image.nii.gz",
        "notes.nii.gz",
    ]
