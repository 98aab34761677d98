"""The command line: what it writes, and how it reports a user's mistakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medgen3d.cli import main
from medgen3d.io import load_volume


def _phantom_args(out: Path, *extra: str, seed: int = 5) -> list[str]:
    return [
        "phantom",
        "--out",
        str(out),
        "-n",
        "2",
        "--seed",
        str(seed),
        "--shape",
        "12",
        "24",
        "20",
        "--spacing",
        "4",
        "2",
        "1.5",
        *extra,
    ]


def test_phantom_writes_seeded_pairs_with_requested_grid(tmp_path: Path) -> None:
    assert main(_phantom_args(tmp_path / "a")) == 0
    assert main(_phantom_args(tmp_path / "b")) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == [
        "phantom_0000_image.nii.gz",
        "phantom_0000_label.nii.gz",
        "phantom_0001_image.nii.gz",
        "phantom_0001_label.nii.gz",
    ]
    for name in names:
        kind = "label" if "label" in name else "image"
        a, b = load_volume(tmp_path / "a" / name, kind), load_volume(tmp_path / "b" / name, kind)
        assert a.shape == (12, 24, 20)
        assert a.spacing == pytest.approx((4.0, 2.0, 1.5))
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.affine, b.affine)
    first = load_volume(tmp_path / "a" / names[1], "label").data
    second = load_volume(tmp_path / "a" / names[3], "label").data
    assert not np.array_equal(first, second)


def test_existing_output_is_an_error_and_stays_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(_phantom_args(tmp_path)) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(_phantom_args(tmp_path, seed=6)) == 2
    err = capsys.readouterr().err
    assert "phantom_0000_image.nii.gz: already exists; pass --overwrite" in err
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert main(_phantom_args(tmp_path, "--overwrite")) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [(["-n", "0"], "-n must be at least 1"), (["--shape", "2", "8", "8"], "shape")],
)
def test_bad_arguments_print_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    assert main(["phantom", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_console_script_and_module_entry_points(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("medgen3d")
    version = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("medgen3d ")
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "medgen3d",
            "train",
            "masks",
            "--data",
            str(tmp_path / "none"),
            "--config",
            "resources/recipes/demo_phantom.json",
            "--out",
            str(tmp_path / "m.pt"),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert missing.returncode == 2
    assert f"{tmp_path / 'none'}: no such folder" in missing.stderr


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["generate", "--out", "{file}"], "is a file, not a folder"),
        (["generate", "--out", "{locked}/new"], "no write permission"),
        (["phantom", "--out", "{locked}"], "no write permission"),
        (["export", "--in", "{tmp}", "--out", "{file}", "--format", "msd"], "is a file"),
        (["evaluate", "--real", "{tmp}", "--synthetic", "{tmp}", "--out", "{file}"], "is a file"),
        (["pack-model", "--in", "{tmp}", "--out", "{file}"], "is a file"),
        (
            ["train", "masks", "--data", "{tmp}", "--config", "{file}", "--out", "{tmp}"],
            "is a folder",
        ),
        (["check", "{tmp}", "--json", "{locked}/r.json"], "no write permission"),
    ],
)
def test_unusable_outputs_are_refused_before_any_work(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    problem: str,
) -> None:
    import medgen3d.io

    file = tmp_path / "taken.txt"
    file.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    # root (as in CI) may write anywhere: the permission check itself is what is tested
    real_access = medgen3d.io.os.access
    monkeypatch.setattr(
        medgen3d.io.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode)
    )
    filled = [a.format(file=file, locked=locked, tmp=tmp_path) for a in argv]
    assert main(filled) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and problem in errors[0]


@pytest.mark.parametrize(
    ("stage", "section", "problem"),
    [
        ("masks", {"channels": [32, "wide"]}, "masks.model"),
        ("images", {"generator": {"channels": "many"}}, "images.model"),
        ("refiner", {"no_such_key": 1}, "refiner.model"),
    ],
)
def test_a_bad_model_section_of_a_recipe_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, stage: str, section: dict, problem: str
) -> None:
    import json

    demo = Path(__file__).parents[1] / "resources" / "recipes" / "demo_phantom.json"
    recipe = json.loads(demo.read_text())
    recipe[stage]["model"] = section
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    data = tmp_path / "data"
    assert main(["phantom", "--out", str(data), "-n", "1", "--shape", "16", "16", "16"]) == 0
    argv = ["train", stage, "--data", str(data), "--config", str(path)]
    assert main([*argv, "--out", str(tmp_path / "c.pt"), "--device", "cpu"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "recipe.json" in errors[0] and problem in errors[0]
