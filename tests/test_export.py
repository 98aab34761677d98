"""Export of generated pairs to nnU-Net and MSD layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medgen3d.cli import main
from medgen3d.datasets import discover_pairs
from medgen3d.errors import InputError, OutputExistsError
from medgen3d.export import export_dataset
from medgen3d.io import load_volume, save_volume
from medgen3d.labels import Label, LabelTable
from medgen3d.phantom import PHANTOM_TABLE, make_phantom


def _generated_folder(folder: Path, n: int = 2, sidecar: bool = True) -> Path:
    """Pairs laid out as ``medgen3d generate`` writes them, with sidecars."""
    for i in range(n):
        case = make_phantom(i, shape=(8, 16, 16))
        save_volume(case.image, folder / f"sample_{i:04d}_image.nii.gz", dtype=np.float32)
        save_volume(case.label, folder / f"sample_{i:04d}_label.nii.gz")
        if sidecar:
            meta = {"seed": i, "labels": PHANTOM_TABLE.to_dict(), "modality": "ct"}
            (folder / f"sample_{i:04d}.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("export_format", ["nnunet", "msd"])
def test_export_writes_a_dataset_its_own_layout_reader_finds(tmp_path: Path, export_format) -> None:
    source = _generated_folder(tmp_path / "gen")
    manifest = export_dataset(source, tmp_path / "ds", export_format)
    content = json.loads(manifest.read_text())
    assert content["numTraining"] == 2
    labels = content["labels"]
    if export_format == "nnunet":
        assert labels["heart"] == 4 and content["channel_names"] == {"0": "CT"}
        assert (tmp_path / "ds" / "imagesTr" / "sample_0000_0000.nii.gz").is_file()
    else:
        assert labels["4"] == "heart" and len(content["training"]) == 2
    assert (
        json.loads((tmp_path / "ds" / "provenance" / "sample_0001.json").read_text())["seed"] == 1
    )
    pairs = discover_pairs(tmp_path / "ds")
    assert [p.name for p in pairs] == ["sample_0000", "sample_0001"]
    original = load_volume(source / "sample_0001_label.nii.gz", "label")
    exported = load_volume(pairs[1].label, "label")
    np.testing.assert_array_equal(exported.data, original.data)
    np.testing.assert_array_equal(exported.affine, original.affine)


def test_nnunet_renumbers_a_table_with_gaps(tmp_path: Path) -> None:
    source = _generated_folder(tmp_path / "gen", n=1, sidecar=False)
    gappy = LabelTable(
        tuple(
            Label(v * 10, n, c.colour)
            for (v, n, c) in zip(
                PHANTOM_TABLE.values, PHANTOM_TABLE.names, PHANTOM_TABLE.labels, strict=True
            )
        )
    )
    label_path = source / "sample_0000_label.nii.gz"
    label = load_volume(label_path, "label")
    save_volume(label.with_data(label.data * 10), label_path, overwrite=True)
    manifest = json.loads(
        export_dataset(
            source, tmp_path / "ds", "nnunet", table=gappy, channel_name="CT"
        ).read_text()
    )
    assert manifest["labels"]["spine"] == 8
    exported = load_volume(tmp_path / "ds" / "labelsTr" / "sample_0000.nii.gz", "label").data
    np.testing.assert_array_equal(exported, label.data)


def test_unknown_label_value_stops_before_anything_is_written(tmp_path: Path) -> None:
    source = _generated_folder(tmp_path / "gen")
    bad = source / "sample_0001_label.nii.gz"
    label = load_volume(bad, "label")
    save_volume(
        label.with_data(np.where(label.data == 8, 42, label.data).astype(np.uint8)),
        bad,
        overwrite=True,
    )
    with pytest.raises(InputError, match=r"sample_0001_label\.nii\.gz: label values 42"):
        export_dataset(source, tmp_path / "ds", "msd")
    assert not (tmp_path / "ds").exists()


def test_no_label_table_and_non_empty_output_are_errors(tmp_path: Path) -> None:
    source = _generated_folder(tmp_path / "gen", sidecar=False)
    with pytest.raises(InputError, match="pass --labels"):
        export_dataset(source, tmp_path / "ds", "msd")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError):
        export_dataset(source, tmp_path / "full", "msd", table=PHANTOM_TABLE)


def test_cli_export(tmp_path: Path) -> None:
    source = _generated_folder(tmp_path / "gen")
    assert (
        main(["export", "--in", str(source), "--out", str(tmp_path / "ds"), "--format", "nnunet"])
        == 0
    )
    assert (tmp_path / "ds" / "dataset.json").is_file()


def test_overwrite_replaces_the_whole_dataset(tmp_path: Path) -> None:
    export_dataset(_generated_folder(tmp_path / "three", n=3), tmp_path / "ds", "nnunet")
    one = _generated_folder(tmp_path / "one", n=1)
    with pytest.raises(OutputExistsError):
        export_dataset(one, tmp_path / "ds", "nnunet")
    export_dataset(one, tmp_path / "ds", "nnunet", overwrite=True)
    manifest = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert manifest["numTraining"] == 1
    assert sorted(p.name for p in (tmp_path / "ds" / "imagesTr").iterdir()) == [
        "sample_0000_0000.nii.gz"
    ]
    # nothing left beside it: no staging or retired folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "one", "three"]


def test_channel_name_comes_from_the_sidecar_or_the_user(tmp_path: Path) -> None:
    source = _generated_folder(tmp_path / "gen", sidecar=False)
    with pytest.raises(InputError, match="--channel-name"):
        export_dataset(source, tmp_path / "ds", "nnunet", table=PHANTOM_TABLE)
    export_dataset(source, tmp_path / "ds", "nnunet", table=PHANTOM_TABLE, channel_name="T1")
    manifest = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert manifest["channel_names"] == {"0": "T1"}
    with_sidecars = _generated_folder(tmp_path / "ct")
    export_dataset(with_sidecars, tmp_path / "ds2", "msd")
    assert json.loads((tmp_path / "ds2" / "dataset.json").read_text())["modality"] == {"0": "CT"}


def test_label_map_translates_the_exported_label_maps(tmp_path: Path) -> None:
    source = _generated_folder(tmp_path / "gen", n=1)
    label_path = source / "sample_0000_label.nii.gz"
    label = load_volume(label_path, "label")
    save_volume(label.with_data(label.data + 100), label_path, overwrite=True)  # 100..108
    mapping = {100 + v: v for v in PHANTOM_TABLE.values}
    export_dataset(source, tmp_path / "ds", "msd", label_mapping=mapping)
    exported = load_volume(tmp_path / "ds" / "labelsTr" / "sample_0000.nii.gz", "label").data
    np.testing.assert_array_equal(exported, label.data)
    with pytest.raises(InputError, match="label values 100"):
        export_dataset(source, tmp_path / "ds2", "msd")
