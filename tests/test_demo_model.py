"""The bundled demo model: present, small, and generating phantom-like aligned pairs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from medgen3d.cli import main
from medgen3d.evaluation.anatomy import AnatomyReference, implausible, mask_anatomy
from medgen3d.io import load_volume
from medgen3d.model import demo_model_path, load_model
from medgen3d.phantom import PHANTOM_TABLE, make_phantom


def test_demo_model_holds_three_small_stages_for_the_phantom() -> None:
    files = sorted(demo_model_path().glob("*.pt"))
    assert [f.name for f in files] == ["images.pt", "masks.pt", "refiner.pt"]
    assert sum(f.stat().st_size for f in files) <= 25e6
    model = load_model("demo")
    assert model.data.labels == PHANTOM_TABLE
    assert set(model.stages) == {"masks", "images", "refiner"}
    assert all(c.training is None for c in model.checkpoints.values())  # inference only


def test_demo_samples_are_those_of_the_seed_across_code_changes() -> None:
    """Seed 7 of the bundled demo gives these voxels, as it did before the stages were
    moved into medgen3d.stages: a refactor that moves a random draw, an
    encoding or a default changes them. The labels are pinned exactly; the image to 1e-3 HU,
    which leaves room for another BLAS build's rounding."""
    import torch

    from medgen3d.generate import generate_pair
    from medgen3d.progress import drain
    from medgen3d.settings import GenerationSettings, MaskSettings, RefineSettings

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = GenerationSettings(
            seed=7, depth=16, masks=MaskSettings(steps=4), refiner=RefineSettings(steps=2)
        )
        pair = drain(generate_pair(load_model("demo", "cpu"), settings))
    finally:
        torch.set_num_threads(threads)
    digest = hashlib.sha256(pair.label.data.tobytes()).hexdigest()
    assert digest == "c51ba096ef3547eb21d538c3006a2fd8d6ab1b1a85778a27c1b004f7144ca539"
    voxels = [pair.image.data[z, y, x] for z, y, x in ((3, 20, 30), (8, 32, 32), (15, 10, 50))]
    np.testing.assert_allclose(voxels, [-9.049744, 71.86096, -997.357], atol=1e-3)


def test_demo_pair_is_aligned_and_has_the_phantoms_tissues(tmp_path: Path) -> None:
    args = [
        "generate",
        "--model",
        "demo",
        "--out",
        str(tmp_path),
        "--depth",
        "24",
        "--steps",
        "5",
        "--refine-steps",
        "2",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    image = load_volume(tmp_path / "sample_0000_image.nii.gz", "image")
    label = load_volume(tmp_path / "sample_0000_label.nii.gz", "label")
    assert image.shape == label.shape == (24, 64, 64)
    np.testing.assert_allclose(image.affine, label.affine)
    assert label.spacing == (5.0, 6.0, 6.0)
    fraction = {v: float((label.data == v).mean()) for v in PHANTOM_TABLE.values}
    assert fraction[1] > 0.05 and fraction[2] + fraction[3] > 0.02  # body and lungs
    mean_hu = {v: float(image.data[label.data == v].mean()) for v in (0, 1, 2, 3) if fraction[v]}
    assert mean_hu[0] < -900  # air outside the body
    assert -300 < mean_hu[1] < 200  # soft tissue
    assert all(mean_hu[v] < -500 for v in (2, 3) if v in mean_hu)  # aerated lungs


def test_demo_masks_have_the_phantoms_anatomy(tmp_path: Path) -> None:
    """A whole 64-slice mask volume: organs where the phantom has them, in one piece, and
    plausible next to fresh phantoms (volumes, components, continuity)."""
    args = ["generate", "--model", "demo", "--out", str(tmp_path), "--stage", "masks"]
    assert main([*args, "--steps", "10", "--device", "cpu", "--seed", "3"]) == 0
    label = load_volume(tmp_path / "sample_0000_label.nii.gz", "label").data  # RAS: z, y, x
    names = PHANTOM_TABLE.names
    centre = {n: ndimage.center_of_mass(label == v) for v, n in enumerate(names) if v}

    body = label > 0
    assert np.hypot(centre["body"][1] - 31.5, centre["body"][2] - 31.5) < 6  # centred
    pieces = [ndimage.label(s)[1] for s in body if s.any()]
    assert np.mean(np.equal(pieces, 1)) > 0.9  # one torso per slice
    assert centre["right_lung"][2] - centre["left_lung"][2] > 15  # right lung at larger x
    assert centre["heart"][1] > centre["spine"][1] + 8  # heart anterior to the spine
    assert centre["heart"][0] < 40 < centre["trachea"][0]  # trachea above the heart

    reference = [make_phantom(seed).label.data for seed in range(100, 108)]
    spacing = (5.0, 6.0, 6.0)
    span = AnatomyReference.from_anatomies(
        [mask_anatomy(r, len(names), spacing) for r in reference], names[1:]
    )
    problems = implausible(mask_anatomy(label, len(names), spacing), span)
    big = ("body", "right_lung", "left_lung", "heart", "spine")
    assert [p for p in problems if p.startswith(big)] == []
