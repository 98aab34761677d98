"""Recipes: the shipped ones load, and mistakes are reported with the file's name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medgen3d.errors import InputError
from medgen3d.recipe import DataSpec, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "resources" / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.json")), ids=lambda p: p.name)
def test_shipped_recipes_load(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.data.labels.values[0] == 0
    assert 0 <= recipe.data.overlap < recipe.data.sequence_length


def test_demo_recipe_describes_the_phantom_grid() -> None:
    recipe = load_recipe(RECIPES / "demo_phantom.json")
    assert recipe.data.labels.names[:4] == ("background", "body", "right_lung", "left_lung")
    assert recipe.data.preprocessing.size == (64, 64)
    assert recipe.data.preprocessing.window.modality == "ct"


def test_data_spec_survives_a_json_round_trip(tmp_path: Path) -> None:
    table = tmp_path / "tbl.txt"
    table.write_text("0 background\n3 liver #aa0000\n")
    spec = DataSpec.from_dict(
        {
            "labels": "tbl.txt",
            "label_mapping": {"5": 3, "1": 0},
            "spacing": [2, 1, 1],
            "size": [32, 48],
            "sequence_length": 8,
            "overlap": 2,
        },
        base=tmp_path,
    )
    assert spec.labels.values == (0, 3) and spec.labels.labels[1].colour == "#aa0000"
    assert spec.label_mapping == {5: 3, 1: 0}
    again = DataSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def _write(tmp_path: Path, recipe: object) -> Path:
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe) if not isinstance(recipe, str) else recipe)
    return path


def test_unknown_keys_are_errors_naming_file_and_key(tmp_path: Path) -> None:
    data = {"labels": "thorax_phantom", "sequence_lenght": 8}
    with pytest.raises(InputError, match=r"recipe\.json: unknown key\(s\) sequence_lenght"):
        load_recipe(_write(tmp_path, {"data": data}))
    with pytest.raises(InputError, match="learning_rat"):
        load_recipe(
            _write(
                tmp_path,
                {"data": {"labels": "thorax_phantom"}, "masks": {"training": {"learning_rat": 1}}},
            )
        )


def test_invalid_json_and_values_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"recipe\.json: invalid JSON at line 2"):
        load_recipe(_write(tmp_path, '{"data":\n  oops}'))
    with pytest.raises(InputError, match=r"recipe\.json.*overlap"):
        load_recipe(
            _write(
                tmp_path, {"data": {"labels": "thorax_phantom", "sequence_length": 4, "overlap": 4}}
            )
        )
    with pytest.raises(InputError, match="neither a bundled table nor a file"):
        load_recipe(_write(tmp_path, {"data": {"labels": "no_such_table"}}))


def test_missing_stage_section_is_reported(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path, {"data": {"labels": "thorax_phantom"}}))
    with pytest.raises(InputError, match="no 'refiner' section"):
        recipe.stage("refiner")
