"""The image sequence generator: shapes, range, conditioning, config errors, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _stage_data import LENGTH, OVERLAP, TINY_GENERATOR, phantom_spec
from medgen3d.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medgen3d.stages.images import ImageGenerator, ImageNetworkConfig, build_image_generator


def _inputs(batch: int = 2, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(9, (batch, LENGTH, size, size), generator=g),
        torch.rand((batch, OVERLAP, size, size), generator=g) * 2 - 1,
        torch.tensor([1.0, 0.0])[:batch],
        torch.rand(batch, generator=g),
        torch.randn((batch, TINY_GENERATOR["noise_channels"], size, size), generator=g),
    )


def _network(seed: int = 0):
    torch.manual_seed(seed)
    config = ImageNetworkConfig.from_dict(TINY_GENERATOR)
    return build_image_generator(config, phantom_spec()).eval()


def test_output_is_one_image_per_mask_slice_in_range() -> None:
    out = _network()(*_inputs())
    assert out.shape == (2, LENGTH, 16, 16)
    assert out.abs().max() <= 1.0


def test_context_is_ignored_for_a_first_sequence_and_used_otherwise() -> None:
    net = _network()
    label, context, _, position, noise = _inputs()
    first, later = torch.ones(2), torch.zeros(2)
    with torch.no_grad():
        base = net(label, context, first, position, noise)
        assert torch.equal(base, net(label, -context, first, position, noise))
        assert not torch.allclose(
            net(label, context, later, position, noise),
            net(label, -context, later, position, noise),
        )


def test_mask_position_and_noise_change_the_output() -> None:
    net = _network()
    label, context, first, position, noise = _inputs()
    with torch.no_grad():
        base = net(label, context, first, position, noise)
        assert not torch.allclose(base, net((label + 1) % 9, context, first, position, noise))
        assert not torch.allclose(base, net(label, context, first, 1 - position, noise))
        assert not torch.allclose(base, net(label, context, first, position, -noise))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"channels": []}, "channels"),
        ({"channels": [16, -4]}, "channels"),
        ({"noise_channels": -1}, "noise_channels"),
        ({"spade_channels": 0}, "spade_channels"),
        ({"label_channels": "8"}, "label_channels"),
        ({"chanels": [8]}, "chanels"),
    ],
)
def test_invalid_config_names_the_key(change: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        ImageNetworkConfig.from_dict({**TINY_GENERATOR, **change})


def test_slice_size_must_fit_the_levels() -> None:
    label, context, first, position, noise = _inputs(size=15)
    with pytest.raises(ValueError, match="multiple of 2"):
        _network()(label, context, first, position, noise)


def test_checkpoint_round_trip_gives_identical_output(tmp_path: Path) -> None:
    net = _network(seed=3)
    data = phantom_spec()
    config = {"data": data.to_dict(), "model": {"generator": TINY_GENERATOR}}
    path = save_checkpoint(
        Checkpoint("images", config, {"generator": net.state_dict()}), tmp_path / "g.pt"
    )
    loaded = ImageGenerator.from_checkpoint(load_checkpoint(path, stage="images"))
    original = ImageGenerator(net, data)
    label = torch.randint(9, (LENGTH, 16, 16), generator=torch.Generator().manual_seed(1))
    context = torch.rand(OVERLAP, 16, 16) * 2 - 1
    for ctx in (None, context):
        a = original.generate_sequence(label, ctx, 0.3, torch.Generator().manual_seed(5))
        b = loaded.generate_sequence(label, ctx, 0.3, torch.Generator().manual_seed(5))
        assert torch.equal(a, b)
    assert loaded.data == data


def test_generated_sequence_starts_with_its_context_exactly() -> None:
    gen = ImageGenerator(_network(), phantom_spec())
    label = torch.randint(9, (LENGTH, 16, 16))
    context = torch.rand(OVERLAP, 16, 16) * 2 - 1
    out = gen.generate_sequence(label, context, 0.5, torch.Generator().manual_seed(0))
    assert out.shape == (LENGTH, 16, 16)
    assert torch.equal(out[:OVERLAP], context)
    # seeded noise: same seed same sequence, another seed another
    again = gen.generate_sequence(label, context, 0.5, torch.Generator().manual_seed(0))
    other = gen.generate_sequence(label, context, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert not torch.equal(out, other)
