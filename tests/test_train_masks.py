"""MC-DPM training: it learns the phantom, uses the position, scales out, reads real data.

The tiny model sees 16x16 phantoms with their labels folded onto five channels (background,
body, lung, heart, trachea): small enough to learn in a few hundred CPU steps. The trachea
covers about one voxel per slice at this size, too little for such a model to draw, so the
position test uses the effect of position the data shows most clearly: the neck (p = 1) is
narrower than the lung bases (p = 0), so there is more background at the top.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medgen3d.checkpoint import load_checkpoint
from medgen3d.labels import LabelTable
from medgen3d.phantom import write_phantoms
from medgen3d.preprocessing import Preprocessing
from medgen3d.progress import drain
from medgen3d.recipe import DataSpec, Recipe, StageRecipe, TrainingSettings, load_recipe
from medgen3d.runtime import Runtime, mixed_precision
from medgen3d.stages.masks import (
    MaskDiffusionModel,
    MaskNetworkConfig,
    label_weights,
    sample_mask_volume,
)
from medgen3d.train.bank import CaseBank
from medgen3d.train.loop import fit, step_rng
from medgen3d.train.masks import (
    PATTERNS,
    build_task,
    draw_known_slices,
    masked_mse,
)
from medgen3d.train.run import train_stage

CPU = Runtime(torch.device("cpu"))
ROOT = Path(__file__).resolve().parents[1]
TABLE = LabelTable.from_text("0 background\n1 body\n2 lung\n3 heart\n4 trachea\n")
# phantom: body, right lung, left lung, heart, aorta, trachea, esophagus, spine
FOLD = {0: 0, 1: 1, 2: 2, 3: 2, 4: 3, 5: 1, 6: 4, 7: 1, 8: 1}
DATA = DataSpec(TABLE, Preprocessing(), sequence_length=4, overlap=1, label_mapping=FOLD)
MODEL = {
    "channels": [16, 32],
    "attention_levels": [False, False],
    "norm_num_groups": 8,
    "diffusion": {"objective": "x0", "num_train_timesteps": 1000},
}
SETTINGS = TrainingSettings(
    max_steps=300,
    batch_size=8,
    learning_rate=2e-3,
    ema_decay=0.0,
    checkpoint_every=1000,
    log_every=1000,
)
DEPTH, SIZE = 24, 16


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(root, 4, 0, (DEPTH, SIZE, SIZE), (10.0, 12.0, 12.0))
    return root


@pytest.fixture(scope="module")
def bank(phantoms: Path) -> CaseBank:
    return CaseBank.from_folder(phantoms, DATA)


@pytest.fixture(scope="module")
def trained(bank: CaseBank, tmp_path_factory: pytest.TempPathFactory):
    """(untrained model, trained model, per-step losses) of one short run."""
    torch.manual_seed(0)
    task = build_task(DATA, StageRecipe(MODEL, SETTINGS), CPU)
    untrained = MaskDiffusionModel.build(DATA, MaskNetworkConfig.from_dict(MODEL))
    untrained.network.load_state_dict(task.model.network.state_dict())
    path = tmp_path_factory.mktemp("masks") / "masks.pt"
    result = drain(fit(task, bank, DATA, SETTINGS, CPU, path))
    model = MaskDiffusionModel.from_checkpoint(load_checkpoint(path, "masks"))
    untrained.network.eval()
    return untrained, model, [x["mse"] for x in result.losses]


def _fractions(labels: np.ndarray | list[np.ndarray]) -> np.ndarray:
    counts = np.bincount(np.concatenate([np.ravel(x) for x in labels]), minlength=len(TABLE))
    return counts / counts.sum()


def _sample_at(model: MaskDiffusionModel, position: float, n: int = 8) -> np.ndarray:
    """``n`` sequences sampled at ``position`` with no known slice, as channel indices."""
    generator = torch.Generator().manual_seed(0)
    shape = (n, model.num_classes, model.length, SIZE, SIZE)
    values, known = torch.zeros(shape), torch.zeros(n, model.length, dtype=torch.bool)
    positions = torch.full((n,), position)
    schedule = model.diffusion.sampler("ddim", 10)

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.network(x, t, values, known, positions)

    for step in model.diffusion.denoise(predict, torch.randn(shape, generator=generator), schedule):
        sample = step.sample
    return sample.argmax(dim=1).numpy()


@pytest.mark.slow
def test_training_lowers_the_loss_and_matches_label_statistics(trained, bank: CaseBank) -> None:
    untrained, model, losses = trained
    assert np.mean(losses[-30:]) < 0.4 * np.mean(losses[:10])
    truth = _fractions(bank.labels)

    def distance(m: MaskDiffusionModel) -> float:
        volume = drain(sample_mask_volume(m, DEPTH, seed=0, steps=10, size=(SIZE, SIZE)))
        return float(np.abs(_fractions(volume) - truth).sum())

    after, before = distance(model), distance(untrained)
    assert after < 0.5 * before
    assert after < 0.2


@pytest.mark.slow
def test_label_weighted_training_samples_the_unweighted_statistics(
    phantoms: Path, bank: CaseBank, tmp_path: Path
) -> None:
    """Weighted training records the label frequencies; sampling divides the weights out,
    so rare labels come out at their true share, where the weighted estimate inflates them."""
    weighted = {**MODEL, "label_weighting": 0.5}
    recipe = Recipe(DATA, {"masks": StageRecipe(weighted, SETTINGS)})
    torch.manual_seed(0)
    drain(train_stage("masks", phantoms, recipe, tmp_path / "w.pt", device="cpu", runtime=CPU))
    checkpoint = load_checkpoint(tmp_path / "w.pt", "masks")
    np.testing.assert_allclose(
        checkpoint.config["provenance"]["label_frequency"], bank.label_frequency
    )
    native = mixed_precision(torch.device("cpu")) == torch.bfloat16  # the recipe asks for AMP
    assert checkpoint.config["provenance"]["mixed_precision"] == ("bfloat16" if native else None)
    assert "reference" in checkpoint.config["provenance"]["anatomy"]  # what generation checks
    model = MaskDiffusionModel.from_checkpoint(checkpoint)
    truth = _fractions(bank.labels)

    def error(m: MaskDiffusionModel) -> float:
        volume = drain(sample_mask_volume(m, DEPTH, seed=0, steps=10, size=(SIZE, SIZE)))
        return float(np.abs(_fractions(volume) - truth).sum())

    corrected = error(model)
    model.label_weights = None  # sample from the weighted estimate as it is
    assert corrected < 0.2
    assert corrected < 0.7 * error(model)


@pytest.mark.slow
def test_position_condition_follows_the_data(trained, bank: CaseBank) -> None:
    _, model, _ = trained
    data_base = _fractions([v[: model.length] for v in bank.labels])
    data_top = _fractions([v[-model.length :] for v in bank.labels])
    assert data_top[0] - data_base[0] > 0.05  # the premise: more background at the neck
    base, top = _fractions(_sample_at(model, 0.0)), _fractions(_sample_at(model, 1.0))
    # Both draw the same noise: a model ignoring the position gives identical samples.
    assert top[0] - base[0] > 0.3 * (data_top[0] - data_base[0])
    assert base[1] > top[1]  # and more body at the bases


@pytest.mark.slow
def test_samples_draw_the_body_where_the_data_has_it(trained, bank: CaseBank) -> None:
    _, model, _ = trained
    middle = [v[v.shape[0] // 2 - 2 : v.shape[0] // 2 + 2] for v in bank.labels]
    data_body = np.mean([(v > 0).mean(axis=0) for v in middle], axis=0)
    sampled_body = (_sample_at(model, 0.5, n=16) > 0).mean(axis=(0, 1))
    # per-pixel frequency of "inside the body": where, not only how much
    assert np.corrcoef(data_body.ravel(), sampled_body.ravel())[0, 1] > 0.8


def test_batches_are_seeded_and_hold_every_condition(bank: CaseBank) -> None:
    torch.manual_seed(0)
    task = build_task(DATA, StageRecipe(MODEL, SETTINGS), CPU)
    first = task.make_batch(bank, 64, step_rng(0, 5))
    again = task.make_batch(bank, 64, step_rng(0, 5))
    for key, value in first.items():
        assert torch.equal(value, again[key]), key
    assert first["clean"].shape == (64, len(TABLE), 4, SIZE, SIZE)
    assert set(first["clean"].unique().tolist()) == {-1.0, 1.0}
    assert (first["position"] == -1).any() and (first["position"] >= 0).any()
    known = first["known"]
    assert not known.all(dim=1).any()  # something is always left to generate
    assert (~known).all(dim=1).any() and known[:, 0].any() and known[:, -1].any()


def test_label_weighting_lets_rare_labels_count() -> None:
    counts = np.array([9000, 990, 10, 0])
    flat = label_weights(counts, 0.0)
    torch.testing.assert_close(flat, torch.ones(4))
    weights = label_weights(counts, 0.5)
    assert float((torch.from_numpy(counts / counts.sum()).float() * weights).sum()) == (
        pytest.approx(1.0)
    )
    assert weights[2] / weights[0] == pytest.approx(30.0)  # (9000 / 10) ** 0.5
    assert weights[3] == weights[2]  # unseen labels weigh as the rarest seen
    prediction, target = torch.zeros(1, 2, 2, 1, 2), torch.ones(1, 2, 2, 1, 2)
    slices = torch.tensor([[True, False]])
    voxels = torch.tensor([[[[3.0, 1.0]], [[5.0, 5.0]]]])
    assert float(masked_mse(prediction, target, slices)) == pytest.approx(1.0)
    assert float(masked_mse(prediction, target, slices, voxels)) == pytest.approx(2.0)


def test_known_slice_patterns() -> None:
    known = draw_known_slices(4000, 8, 2, torch.Generator().manual_seed(0))
    rows = {tuple(r) for r in known.int().tolist()}
    first_k = (1, 1, 0, 0, 0, 0, 0, 0)
    assert first_k in rows and first_k[::-1] in rows and (0,) * 8 in rows
    assert (1, 1, 0, 0, 0, 0, 1, 1) in rows
    assert len(rows) > 40  # scattered subsets
    assert not known.all(dim=1).any()
    none_share = (~known).all(dim=1).float().mean().item()
    assert none_share == pytest.approx(PATTERNS["none"], abs=0.05)


def _recipe_file(tmp_path: Path, steps: int, batch: int) -> Path:
    """A recipe file for float32 training: bfloat16 rounds a half batch's sums otherwise than
    a whole one's, so only float32 runs on 1 and 2 processes can be compared closely."""
    data = DATA.to_dict()
    training = dataclasses.replace(
        SETTINGS, max_steps=steps, batch_size=batch, ema_decay=0.9, amp=False
    ).to_dict()
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"data": data, "masks": {"model": MODEL, "training": training}}))
    return path


@pytest.mark.slow
def test_torchrun_two_processes_match_one(phantoms: Path, tmp_path: Path) -> None:
    recipe = _recipe_file(tmp_path, steps=3, batch=4)
    out = tmp_path / "out" / "ddp.pt"
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "medgen3d"]
    command += ["train", "masks", "--data", str(phantoms), "--config", str(recipe)]
    command += ["--out", str(out), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in out.parent.iterdir()] == ["ddp.pt"]

    single = tmp_path / "single.pt"
    drain(train_stage("masks", phantoms, recipe, single, device="cpu", runtime=CPU))
    ddp, one = load_checkpoint(out, "masks"), load_checkpoint(single, "masks")
    assert ddp.training["step"] == one.training["step"] == 3
    assert ddp.config["provenance"]["processes"] == 2
    assert ddp.config["provenance"]["mixed_precision"] is None
    for name, weights in (
        ("raw", lambda c: c.training["state"]["network"]["network"]),
        ("ema", lambda c: c.weights["network"]),
    ):
        a, b = weights(ddp), weights(one)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"{name} {key}")


def test_training_runs_on_the_real_thoracic_ct(shared_data: Path, tmp_path: Path) -> None:
    case = shared_data / "ct_thorax"
    if not (case / "image.nii.gz").is_file():
        pytest.skip(f"no real thoracic CT case at {case}")
    recipe = load_recipe(ROOT / "resources" / "recipes" / "ct_thorax_gpu.json")
    coarse = Preprocessing(
        spacing=(6.0, 8.0, 8.0), size=(32, 32), window=recipe.data.preprocessing.window
    )
    data = dataclasses.replace(recipe.data, preprocessing=coarse, sequence_length=4, overlap=1)
    tiny = TrainingSettings(max_steps=3, batch_size=2, checkpoint_every=10, log_every=1)
    small = Recipe(data, {"masks": StageRecipe(MODEL, tiny)})
    result = drain(train_stage("masks", case, small, tmp_path / "ct.pt", device="cpu", runtime=CPU))
    assert result.end_step == 3 and all(np.isfinite(x["mse"]) for x in result.losses)
    checkpoint = load_checkpoint(tmp_path / "ct.pt", "masks")
    assert checkpoint.config["data"]["labels"]["names"][6] == "trachea"
    bank = CaseBank.from_folder(case, data)
    present = set(np.unique(bank.labels[0]).tolist())
    assert {0, 1, 4, 5} <= present <= set(range(len(data.labels)))
