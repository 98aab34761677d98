"""Checkpoint format: round trip, and every way a file can be wrong, a crafted one included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medgen3d.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from medgen3d.errors import InputError, OutputExistsError


def _checkpoint(stage: str = "masks") -> Checkpoint:
    torch.manual_seed(0)
    net = torch.nn.Conv2d(2, 3, 3)
    config = {"data": {"labels": {"values": [0, 1]}}, "model": {"channels": [8]}, "k": (1, 2)}
    return Checkpoint(stage, config, {"network": net.state_dict()}, {"step": 7, "state": {}})


def test_round_trip_keeps_weights_config_and_training_state(tmp_path: Path) -> None:
    original = _checkpoint()
    path = save_checkpoint(original, tmp_path / "m.pt")
    loaded = load_checkpoint(path, stage="masks")
    assert loaded.stage == "masks"
    assert loaded.training == {"step": 7, "state": {}}
    # The config is stored as JSON values: tuples come back as lists.
    assert loaded.config == {
        "data": {"labels": {"values": [0, 1]}},
        "model": {"channels": [8]},
        "k": [1, 2],
    }
    for name, tensor in original.weights["network"].items():
        assert torch.equal(loaded.weights["network"][name], tensor)


def test_existing_file_is_not_replaced_without_overwrite(tmp_path: Path) -> None:
    path = save_checkpoint(_checkpoint(), tmp_path / "m.pt")
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match=r"m\.pt"):
        save_checkpoint(_checkpoint("images"), path)
    assert path.read_bytes() == before
    save_checkpoint(_checkpoint("images"), path, overwrite=True)
    assert load_checkpoint(path).stage == "images"


def test_config_that_is_not_json_is_rejected_at_save_time(tmp_path: Path) -> None:
    bad = Checkpoint("masks", {"fn": object()}, {})
    with pytest.raises(TypeError):
        save_checkpoint(bad, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_stage_mismatch_names_the_file(tmp_path: Path) -> None:
    path = save_checkpoint(_checkpoint("refiner"), tmp_path / "r.pt")
    with pytest.raises(InputError, match=r"r\.pt.*'refiner'.*not 'masks'"):
        load_checkpoint(path, stage="masks")


def test_missing_random_and_truncated_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint" * 10)
    with pytest.raises(InputError, match=r"junk\.pt"):
        load_checkpoint(junk)
    whole = save_checkpoint(_checkpoint(), tmp_path / "whole.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"cut\.pt"):
        load_checkpoint(cut)


def test_plain_torch_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(InputError, match="not a medgen3d checkpoint"):
        load_checkpoint(path)


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    torch.save(
        {
            "format": FORMAT,
            "version": 99,
            "stage": "masks",
            "config": {},
            "weights": {},
            "training": None,
        },
        path,
    )
    with pytest.raises(InputError, match="version 99 is newer"):
        load_checkpoint(path)


class _Payload:
    """Unpickling this object would create ``marker``: what a malicious file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_carrying_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(
        {
            "format": FORMAT,
            "version": 1,
            "stage": "masks",
            "config": {},
            "weights": {"network": {"w": torch.zeros(1)}},
            "x": _Payload(marker),
        },
        path,
    )
    assert not marker.exists()
    with pytest.raises(InputError, match=r"evil\.pt: refused"):
        load_checkpoint(path)
    assert not marker.exists()
    # The same file does run code through an unrestricted unpickler: the test is meaningful.
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("missing", ["weights", "config", "stage"])
def test_checkpoint_without_an_entry_is_a_clear_error(tmp_path: Path, missing: str) -> None:
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "stage": "masks", "config": {}}
    payload["weights"] = {"network": {"w": torch.zeros(1)}}
    del payload[missing]
    torch.save(payload, tmp_path / "damaged.pt")
    with pytest.raises(InputError, match=f"its '{missing}' entry is missing") as caught:
        load_checkpoint(tmp_path / "damaged.pt")
    assert caught.value.path == tmp_path / "damaged.pt"
