"""`medgen3d generate` and `medgen3d info` end to end with a tiny model folder."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _stage_data import TINY_DATA, write_tiny_model
from medgen3d.cli import main
from medgen3d.io import Volume, load_volume, save_volume

FAST = ["--depth", "10", "--steps", "2", "--refine-steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model"))


def _generate(model: Path, out: Path, *extra: str) -> int:
    return main(["generate", "--model", str(model), "--out", str(out), *FAST, *extra])


def test_generate_writes_aligned_pairs_with_sidecars(tiny_model: Path, tmp_path: Path) -> None:
    assert _generate(tiny_model, tmp_path, "-n", "2", "--seed", "4") == 0
    for i in range(2):
        image = load_volume(tmp_path / f"sample_{i:04d}_image.nii.gz", "image")
        label = load_volume(tmp_path / f"sample_{i:04d}_label.nii.gz", "label")
        assert image.shape == label.shape == (10, 16, 16)
        np.testing.assert_allclose(image.affine, label.affine)
        assert label.spacing == pytest.approx((3.0, 2.0, 2.0))
        sidecar = json.loads((tmp_path / f"sample_{i:04d}.json").read_text())
        assert sidecar["index"] == i and sidecar["base_seed"] == 4
        assert sidecar["settings"]["depth"] == 10 and len(sidecar["model"]["sha256"]) == 64


def test_undo_weighting_is_recorded_and_checked(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _generate(tiny_model, tmp_path / "a", "--undo-weighting", "0.5", "--stage", "masks") == 0
    sidecar = json.loads((tmp_path / "a" / "sample_0000.json").read_text())
    assert sidecar["settings"]["masks"]["undo_weighting"] == 0.5
    assert _generate(tiny_model, tmp_path / "b", "--undo-weighting", "1.5") == 2
    assert "undo weighting must be in [0, 1], got 1.5" in capsys.readouterr().err


def test_fill_holes_islands_and_overlap_are_recorded(tiny_model: Path, tmp_path: Path) -> None:
    cases = (
        (["--fill-holes"], "fill_holes", True),
        (["--no-fill-holes"], "fill_holes", False),
        (["--min-island", "5"], "min_island_voxels", 5),
        (["--overlap", "2"], "overlap", 2),
    )
    for n, (flags, key, recorded) in enumerate(cases):
        assert _generate(tiny_model, tmp_path / str(n), *flags, "--stage", "masks") == 0
        sidecar = json.loads((tmp_path / str(n) / "sample_0000.json").read_text())
        assert sidecar["settings"]["masks"][key] == recorded


@pytest.mark.parametrize(
    ("overlap", "message"),
    [("-1", "overlap must be a whole number >= 0, got -1"), ("99", "overlap must be in [0, ")],
)
def test_an_overlap_the_sequences_cannot_have_is_refused(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture, overlap: str, message: str
) -> None:
    assert _generate(tiny_model, tmp_path, "--overlap", overlap, "--stage", "masks") == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.nii.gz"))


def test_pack_model_sets_the_mask_sampling_the_model_ships_with(
    tiny_model: Path, tmp_path: Path
) -> None:
    from medgen3d.checkpoint import load_checkpoint
    from medgen3d.model import load_model

    out = tmp_path / "packed"
    command = ["pack-model", "--in", str(tiny_model), "--out", str(out)]
    flags = ["--fill-holes", "--undo-weighting", "0.5", "--min-island", "6", "--overlap", "2"]
    assert main([*command, *flags]) == 0
    config = load_model(out).stage("masks").config
    assert config.fill_holes and config.undo_weighting == 0.5 and config.min_island_voxels == 6
    assert config.sampling_overlap == 2
    packed, source = load_checkpoint(out / "masks.pt"), load_checkpoint(tiny_model / "masks.pt")
    for name, tensor in source.weights["network"].items():
        assert np.array_equal(packed.weights["network"][name].numpy(), tensor.numpy())
    assert main([*command, "--no-fill-holes", "--overwrite"]) == 0
    assert not load_model(out).stage("masks").config.fill_holes


def test_sample_i_does_not_depend_on_n(tiny_model: Path, tmp_path: Path) -> None:
    assert _generate(tiny_model, tmp_path / "one", "-n", "1", "--stage", "masks") == 0
    assert _generate(tiny_model, tmp_path / "three", "-n", "3", "--stage", "masks") == 0
    first = load_volume(tmp_path / "one" / "sample_0000_label.nii.gz", "label").data
    again = load_volume(tmp_path / "three" / "sample_0000_label.nii.gz", "label").data
    np.testing.assert_array_equal(first, again)
    assert not (tmp_path / "one" / "sample_0000_image.nii.gz").exists()  # --stage masks


def test_seed_mask_slices_are_kept_exactly(tiny_model: Path, tmp_path: Path) -> None:
    seeds = np.zeros((10, 16, 16), dtype=np.uint8)
    seeds[4, 2:14, 2:14] = 1
    seeds[4, 5:9, 5:9] = 4
    path = save_volume(Volume(seeds, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "seeds.nii.gz")
    assert (
        _generate(tiny_model, tmp_path / "out", "--seed-mask", str(path), "--stage", "masks") == 0
    )
    label = load_volume(tmp_path / "out" / "sample_0000_label.nii.gz", "label")
    np.testing.assert_array_equal(label.data[4], seeds[4])


def test_image_from_own_masks_keeps_their_geometry(tiny_model: Path, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    labels = np.zeros((20, 18, 12), dtype=np.uint8)
    labels[4:16, 3:15, :] = 1
    labels[8:12, 7:11, 2:10] = 4
    affine = np.diag([-1.5, -1.9, 2.8, 1.0])
    affine[:3, 3] = [12.0, -3.0, 40.0]
    masks.mkdir()
    nib.save(nib.Nifti1Image(labels, affine), masks / "case7.nii.gz")
    assert (
        main(
            [
                "generate",
                "--model",
                str(tiny_model),
                "--masks",
                str(masks),
                "--out",
                str(tmp_path / "out"),
                *FAST,
            ]
        )
        == 0
    )
    image = nib.load(tmp_path / "out" / "case7_image.nii.gz")
    assert image.shape == labels.shape
    np.testing.assert_allclose(image.affine, affine, atol=1e-6)
    copied = nib.load(tmp_path / "out" / "case7_label.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(copied.dataobj), labels)


def test_existing_sample_stops_the_run_before_any_work(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "sample_0001.json").write_text("{}")
    assert _generate(tiny_model, tmp_path, "-n", "2") == 2
    assert "sample_0001.json: already exists" in capsys.readouterr().err
    assert not (tmp_path / "sample_0000_label.nii.gz").exists()


def test_bad_model_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"\x80\x04junk")
    assert _generate(evil, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "evil.pt" in err and "Traceback" not in err


def test_info_describes_the_model(tiny_model: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["info", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    assert "4 heart" in out and "16x16" in out and "refiner:" in out


def test_two_processes_write_exactly_the_samples_of_one(tiny_model: Path, tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    generate = [
        "generate",
        "--model",
        str(tiny_model),
        "-n",
        "3",
        "--seed",
        "9",
        "--stage",
        "masks",
        *FAST,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            torchrun,
            "--nproc-per-node",
            "2",
            "--master-port",
            "29533",
            "-m",
            "medgen3d",
            *generate,
            "--out",
            str(tmp_path / "two"),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    assert main([*generate, "--out", str(tmp_path / "one")]) == 0
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert len([n for n in names if n.endswith("_label.nii.gz")]) == 3
    for name in names:
        if name.endswith(".nii.gz"):
            a = load_volume(tmp_path / "one" / name, "label").data
            b = load_volume(tmp_path / "two" / name, "label").data
            np.testing.assert_array_equal(a, b)


def test_masks_in_the_models_training_convention_are_conformed(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A model whose recipe maps its training data's values (as brain-mri maps raw DLMUSE)
    takes masks in those values as they are, and writes them in its own table."""
    parcellation = {0: 0, 1: 1, 59: 4, 60: 4, 95: 8}
    model = write_tiny_model(
        tmp_path / "model", dataclasses.replace(TINY_DATA, label_mapping=parcellation)
    )
    raw = np.zeros((16, 16, 20), dtype=np.int16)  # x, y, z on the model's own grid
    raw[2:14, 2:14, 2:18] = 1
    raw[4:8, 4:8, 8:12] = 59
    raw[8:12, 8:12, 8:12] = 60
    raw[2:14, 7:9, 5:15] = 95
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    grouped = np.vectorize(parcellation.get)(raw).astype(np.uint8)
    for name, values in (("raw", raw), ("grouped", grouped)):
        (tmp_path / name).mkdir()
        nib.save(nib.Nifti1Image(values, affine), tmp_path / name / "case.nii.gz")
        argv = ["generate", "--model", str(model), "--masks", str(tmp_path / name), *FAST]
        assert main([*argv, "--out", str(tmp_path / f"out_{name}")]) == 0
    for part in ("label", "image"):
        from_raw = nib.load(tmp_path / "out_raw" / f"case_{part}.nii.gz").get_fdata()
        from_grouped = nib.load(tmp_path / "out_grouped" / f"case_{part}.nii.gz").get_fdata()
        np.testing.assert_array_equal(from_raw, from_grouped)
    np.testing.assert_array_equal(from_raw.shape, raw.shape)

    raw[0, 0, 0] = 250  # neither a table value nor a mapped one
    nib.save(nib.Nifti1Image(raw, affine), tmp_path / "raw" / "bad.nii.gz")
    argv = ["generate", "--model", str(model), "--masks", str(tmp_path / "raw" / "bad.nii.gz")]
    assert main([*argv, "--out", str(tmp_path / "out_bad"), *FAST]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "bad.nii.gz: label values 250" in errors[0]


def test_depth_defaults_to_the_models_typical_training_volume(tmp_path: Path) -> None:
    model = write_tiny_model(
        tmp_path / "model", provenance={"depth": {"min": 12, "median": 20, "max": 30}}
    )
    argv = ["generate", "--model", str(model), "--stage", "masks", "--steps", "2"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert load_volume(tmp_path / "out" / "sample_0000_label.nii.gz", "label").shape[0] == 20
    assert main([*argv, "--out", str(tmp_path / "o2"), "--device", "cpu", "--depth", "9"]) == 0
    assert load_volume(tmp_path / "o2" / "sample_0000_label.nii.gz", "label").shape[0] == 9


def test_label_map_translates_the_users_convention(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "model")
    user = np.zeros((16, 16, 20), dtype=np.uint8)
    user[2:14, 2:14, 2:18] = 7  # "body" in the user's numbering
    user[5:9, 5:9, 6:14] = 3  # "heart"
    nib.save(nib.Nifti1Image(user, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "mine.nii.gz")
    (tmp_path / "map.txt").write_text("0 0\n7 1\n3 4\n")
    argv = ["generate", "--model", str(model), "--masks", str(tmp_path / "mine.nii.gz"), *FAST]
    argv += ["--label-map", str(tmp_path / "map.txt"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    written = np.asanyarray(nib.load(tmp_path / "out" / "mine_label.nii.gz").dataobj)
    np.testing.assert_array_equal(written, np.select([user == 7, user == 3], [1, 4], 0))


def test_refiner_sampler_and_guidance_reach_the_refiner(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medgen3d.generate

    calls = []

    def recording(refiner, image, labels, settings, *, seed):
        calls.append(settings)
        yield from ()
        return image

    monkeypatch.setattr(medgen3d.generate, "refine_volume", recording)
    extra = ["--refine-sampler", "ddpm", "--guidance", "2.5", "--refine-batch-size", "3"]
    assert _generate(tiny_model, tmp_path / "a", *extra) == 0
    assert _generate(tiny_model, tmp_path / "b") == 0
    assert (calls[0].sampler, calls[0].guidance, calls[0].batch_size) == ("ddpm", 2.5, 3)
    assert (calls[1].sampler, calls[1].guidance, calls[1].batch_size) == ("auto", 1.0, 16)
    sidecar = json.loads((tmp_path / "a" / "sample_0000.json").read_text())
    assert sidecar["settings"]["refiner"]["sampler"] == "ddpm"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_pair_is_written_leaves_nothing_and_a_rerun_works(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, request, signum
) -> None:
    """The signal arrives while the image file is being written, after its label map; the
    process that calls main (as an embedding host might) had a handler that ignores it."""
    import medgen3d.batch

    host_handler = signal.signal(signum, lambda *_: None)
    request.addfinalizer(lambda: signal.signal(signum, host_handler))

    real_save = medgen3d.batch.save_volume

    def interrupted_save(volume, path, **kwargs):
        if volume.data.dtype == np.float32:  # the image, written second
            os.kill(os.getpid(), signum)
        return real_save(volume, path, **kwargs)

    monkeypatch.setattr(medgen3d.batch, "save_volume", interrupted_save)
    out = tmp_path / "out"
    assert _generate(tiny_model, out) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == []  # no pair, no orphan, no .part file
    monkeypatch.setattr(medgen3d.batch, "save_volume", real_save)
    assert _generate(tiny_model, out) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "sample_0000.json",
        "sample_0000_image.nii.gz",
        "sample_0000_label.nii.gz",
    ]


@pytest.mark.parametrize(
    ("side", "extra", "status", "says"),
    [
        (12, [], 0, None),  # 24 mm: inside the training range
        (8, [], 0, "the model was trained on 20-30 x 20-30 mm"),  # 16 mm: a warning
        (4, [], 2, "--allow-out-of-range"),  # 8 mm: far below, refused
        (4, ["--allow-out-of-range"], 0, "spans 8 x 8 mm"),
    ],
)
def test_masks_far_from_the_training_anatomy_are_refused(
    tmp_path: Path, caplog, capsys, side: int, extra: list[str], status: int, says: str | None
) -> None:
    anatomy = {"extent_mm": {"min": [30.0, 20.0, 20.0], "max": [60.0, 30.0, 30.0]}}
    model = write_tiny_model(tmp_path / "model", provenance={"anatomy": anatomy})
    labels = np.zeros((16, 16, 20), dtype=np.uint8)
    labels[2 : 2 + side, 2 : 2 + side, 2:18] = 1
    path = tmp_path / "organ.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    argv = ["generate", "--model", str(model), "--masks", str(path), *FAST, *extra]
    with caplog.at_level("WARNING"):
        assert main([*argv, "--out", str(tmp_path / "out")]) == status
    said = caplog.text + capsys.readouterr().err
    if says is None:
        assert "trained on" not in said
    else:
        assert says in said and "organ.nii.gz" in said
    assert (tmp_path / "out" / "organ_image.nii.gz").exists() == (status == 0)


def test_seed_mask_at_another_spacing_is_refused(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    seeds = np.zeros((10, 16, 16), dtype=np.uint8)
    seeds[4, 2:14, 2:14] = 1
    path = save_volume(Volume(seeds, np.diag([1.0, 1.0, 5.0, 1.0])), tmp_path / "seeds.nii.gz")
    out = tmp_path / "out"
    assert _generate(tiny_model, out, "--seed-mask", str(path), "--stage", "masks") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "spacing 5 x 1 x 1 mm" in errors[0]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("spacing", [(20.0, 20.0, 20.0), (1.0, 1.0, 5.0)])
def test_the_demo_model_refuses_phantom_labels_written_at_the_wrong_scale(
    tmp_path: Path, capsys: pytest.CaptureFixture, spacing: tuple[float, float, float]
) -> None:
    from medgen3d.phantom import make_phantom

    label = make_phantom(0).label
    affine = np.diag([*spacing, 1.0])
    path = save_volume(Volume(label.data, affine), tmp_path / "phantom_label.nii.gz")
    argv = ["generate", "--model", "demo", "--masks", str(path), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "phantom_label.nii.gz" in errors[0] and "trained on" in errors[0]


def test_a_bad_mask_in_a_folder_stops_the_run_before_anything_is_written(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    good = np.zeros((16, 16, 20), dtype=np.uint8)
    good[2:14, 2:14, 2:18] = 1
    for name, values in (("a", good), ("b", good), ("c", np.where(good > 0, 42, 0))):
        nib.save(
            nib.Nifti1Image(values.astype(np.uint8), np.diag([2.0, 2.0, 3.0, 1.0])),
            masks / f"{name}.nii.gz",
        )
    out = tmp_path / "out"
    assert _generate(tiny_model, out, "--masks", str(masks)) == 2
    assert "c.nii.gz: label values 42" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_a_structure_far_larger_than_any_seen_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Another dataset's numbering read as this table's: a whole body arriving as 'spine'."""
    anatomy = {
        "extent_mm": {"min": [30.0, 20.0, 20.0], "max": [60.0, 30.0, 30.0]},
        "volume_ml": {"body": [3.0, 20.0], "spine": [0.1, 0.5]},
    }
    model = write_tiny_model(tmp_path / "model", provenance={"anatomy": anatomy})
    labels = np.zeros((16, 16, 20), dtype=np.uint8)
    labels[2:14, 2:14, 2:18] = 8  # 'spine' everywhere: 12 x 12 x 16 voxels of 12 mm3
    path = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    argv = ["generate", "--model", str(model), "--masks", str(path), *FAST]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "its spine is 27.6 ml; the model saw 0.1-0.5 ml" in errors[0]
