"""The shared training loop: learning, seeded batches, exact resume, checkpoint handling."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medgen3d.checkpoint import Checkpoint, load_checkpoint
from medgen3d.errors import InputError
from medgen3d.labels import bundled_table
from medgen3d.phantom import make_phantom
from medgen3d.preprocessing import Preprocessing
from medgen3d.progress import drain
from medgen3d.recipe import DataSpec, TrainingSettings
from medgen3d.runtime import Runtime, mixed_precision
from medgen3d.train import loop
from medgen3d.train.bank import CaseBank
from medgen3d.train.loop import OptimisedNetwork, TrainingTask, fit, step_rng

CPU = Runtime(torch.device("cpu"))
TABLE = bundled_table("thorax_phantom")
SPEC = DataSpec(TABLE, Preprocessing(), sequence_length=4, overlap=1)


@pytest.fixture(scope="module")
def bank() -> CaseBank:
    cases = [make_phantom(seed, shape=(12, 16, 16)) for seed in range(2)]
    return CaseBank(
        tuple(np.clip(c.image.data / 1000, -1, 1) for c in cases),
        tuple(TABLE.to_channels(c.label.data) for c in cases),
        len(TABLE),
        ("a", "b"),
    )


class LabelsToIntensity(TrainingTask):
    """A one-layer network learning each label's intensity: small enough to test the loop."""

    stage = "images"
    inference_networks = ("net",)

    def __init__(self, settings: TrainingSettings) -> None:
        torch.manual_seed(settings.seed)
        conv = torch.nn.Conv2d(len(TABLE), 1, 1)
        self.networks = {"net": OptimisedNetwork(conv, settings, CPU)}

    def make_batch(self, bank: CaseBank, batch_size: int, rng: torch.Generator):
        return bank.sample_sequences(batch_size, 4, rng)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        net = self.networks["net"]
        onehot = torch.nn.functional.one_hot(batch["label"].flatten(0, 1), len(TABLE))
        with net.autocast():
            prediction = net.model(onehot.permute(0, 3, 1, 2).float())[:, 0]
        self.forward_dtype = prediction.dtype
        loss = torch.nn.functional.l1_loss(prediction.float(), batch["image"].flatten(0, 1))
        net.step(loss)
        return {"l1": loss.detach()}

    def model_config(self) -> dict[str, Any]:
        return {"kind": "1x1 conv"}


SETTINGS = TrainingSettings(
    max_steps=40, batch_size=4, learning_rate=5e-2, checkpoint_every=10, log_every=10, ema_decay=0.9
)


def test_loss_falls_and_checkpoint_holds_inference_and_resume_state(
    bank: CaseBank, tmp_path: Path
) -> None:
    result = drain(fit(LabelsToIntensity(SETTINGS), bank, SPEC, SETTINGS, CPU, tmp_path / "c.pt"))
    first, last = np.mean([x["l1"] for x in result.losses[:5]]), result.losses[-1]["l1"]
    assert last < 0.5 * first
    checkpoint = load_checkpoint(tmp_path / "c.pt", stage="images")
    assert checkpoint.training["step"] == 40
    assert checkpoint.config["model"] == {"kind": "1x1 conv"}
    assert checkpoint.config["training"]["batch_size"] == 4
    assert DataSpec.from_dict(checkpoint.config["data"]) == SPEC
    raw = checkpoint.training["state"]["net"]["network"]
    # Inference weights are the EMA, which differs from the raw weights after training.
    assert not torch.equal(checkpoint.weights["net"]["weight"], raw["weight"])


@pytest.mark.parametrize("native_bfloat16", [True, False])
def test_mixed_precision_is_used_where_the_device_computes_it(
    monkeypatch: pytest.MonkeyPatch, native_bfloat16: bool
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native_bfloat16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert mixed_precision(cpu) == (torch.bfloat16 if native_bfloat16 else None)
    assert mixed_precision(cuda) == torch.float16
    assert mixed_precision(torch.device("mps")) is None
    assert mixed_precision(cpu, amp=False) is None and mixed_precision(cuda, amp=False) is None


def test_bfloat16_forward_passes_learn_what_float32_ones_do(
    bank: CaseBank, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With AMP on a CPU that computes bfloat16, forward passes run in it, unscaled (its
    range is float32's), and the run follows the float32 one."""
    monkeypatch.setattr(
        loop, "mixed_precision", lambda device, amp=True: torch.bfloat16 if amp else None
    )
    runs = {}
    for amp in (True, False):
        task = LabelsToIntensity(dataclasses.replace(SETTINGS, amp=amp))
        settings = dataclasses.replace(SETTINGS, amp=amp)
        result = drain(fit(task, bank, SPEC, settings, CPU, tmp_path / f"{amp}.pt"))
        runs[amp] = (task, [x["l1"] for x in result.losses])
    (mixed, mixed_losses), (full, full_losses) = runs[True], runs[False]
    assert mixed.forward_dtype == torch.bfloat16 and full.forward_dtype == torch.float32
    assert not mixed.networks["net"].scaler.is_enabled()
    assert mixed_losses[-1] < 0.5 * np.mean(mixed_losses[:5])
    assert mixed_losses[-1] == pytest.approx(full_losses[-1], rel=0.1)


def test_training_reports_every_step_and_stops_between_steps(
    bank: CaseBank, tmp_path: Path
) -> None:
    """Training is a progress generator: one report per step with its losses, and a run
    stopped between steps keeps its last periodic checkpoint, from which it resumes."""
    work = fit(LabelsToIntensity(SETTINGS), bank, SPEC, SETTINGS, CPU, tmp_path / "c.pt")
    reports = [next(work) for _ in range(15)]
    work.close()
    assert [(r.stage, r.done, r.total) for r in reports] == [
        ("images", step, 40) for step in range(1, 16)
    ]
    assert all(set(r.metrics) == {"l1"} for r in reports)
    assert load_checkpoint(tmp_path / "c.pt").training["step"] == 10
    path = tmp_path / "c.pt"
    resumed = drain(fit(LabelsToIntensity(SETTINGS), bank, SPEC, SETTINGS, CPU, path, resume=True))
    assert (resumed.start_step, resumed.end_step) == (10, 40)


def test_resumed_run_equals_uninterrupted_run(bank: CaseBank, tmp_path: Path) -> None:
    drain(fit(LabelsToIntensity(SETTINGS), bank, SPEC, SETTINGS, CPU, tmp_path / "once.pt"))
    half = dataclasses.replace(SETTINGS, max_steps=25)
    drain(fit(LabelsToIntensity(half), bank, SPEC, half, CPU, tmp_path / "twice.pt"))
    resumed = drain(
        fit(
            LabelsToIntensity(SETTINGS),
            bank,
            SPEC,
            SETTINGS,
            CPU,
            tmp_path / "twice.pt",
            resume=True,
        )
    )
    assert (resumed.start_step, resumed.end_step) == (25, 40)
    once = load_checkpoint(tmp_path / "once.pt").training["state"]["net"]
    twice = load_checkpoint(tmp_path / "twice.pt").training["state"]["net"]
    for key in ("network", "ema"):
        for name, tensor in once[key].items():
            torch.testing.assert_close(twice[key][name], tensor, rtol=0, atol=1e-6)


def test_step_batches_depend_only_on_seed_and_step(bank: CaseBank) -> None:
    a = bank.sample_sequences(6, 4, step_rng(3, 17))
    b = bank.sample_sequences(6, 4, step_rng(3, 17))
    c = bank.sample_sequences(6, 4, step_rng(3, 18))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image"], c["image"])
    assert a["image"].shape == (6, 4, 16, 16) and a["label"].dtype == torch.int64
    assert ((a["position"] >= 0) & (a["position"] <= 1)).all()


def test_existing_checkpoint_needs_resume_or_overwrite(bank: CaseBank, tmp_path: Path) -> None:
    short = dataclasses.replace(SETTINGS, max_steps=2)
    drain(fit(LabelsToIntensity(short), bank, SPEC, short, CPU, tmp_path / "c.pt"))
    with pytest.raises(InputError, match="--resume"):
        drain(fit(LabelsToIntensity(short), bank, SPEC, short, CPU, tmp_path / "c.pt"))
    drain(fit(LabelsToIntensity(short), bank, SPEC, short, CPU, tmp_path / "c.pt", overwrite=True))


def test_resume_refuses_another_network(bank: CaseBank, tmp_path: Path) -> None:
    short = dataclasses.replace(SETTINGS, max_steps=2)
    drain(fit(LabelsToIntensity(short), bank, SPEC, short, CPU, tmp_path / "c.pt"))
    other = LabelsToIntensity(short)
    other.model_config = lambda: {"kind": "something else"}
    with pytest.raises(InputError, match="different network configuration"):
        drain(fit(other, bank, SPEC, short, CPU, tmp_path / "c.pt", resume=True))


def test_resume_accepts_keys_newer_than_the_checkpoint(bank: CaseBank, tmp_path: Path) -> None:
    """A training option added after a run started (absent from its checkpoint) does not
    stop it from resuming; a stored key that changed does."""
    short = dataclasses.replace(SETTINGS, max_steps=2)
    drain(fit(LabelsToIntensity(short), bank, SPEC, short, CPU, tmp_path / "c.pt"))
    longer = dataclasses.replace(SETTINGS, max_steps=4)
    newer = LabelsToIntensity(longer)
    newer.model_config = lambda: {"kind": "1x1 conv", "label_weighting": 0.5}
    resumed = drain(fit(newer, bank, SPEC, longer, CPU, tmp_path / "c.pt", resume=True))
    assert (resumed.start_step, resumed.end_step) == (2, 4)


def test_resume_takes_sampling_only_options_from_the_recipe(bank: CaseBank, tmp_path: Path) -> None:
    """An option only sampling reads may change between resumes; the saved checkpoint
    then carries the new value."""
    short = dataclasses.replace(SETTINGS, max_steps=2)
    first = LabelsToIntensity(short)
    first.model_config = lambda: {"kind": "1x1 conv", "undo_weighting": 1.0}
    drain(fit(first, bank, SPEC, short, CPU, tmp_path / "c.pt"))
    longer = dataclasses.replace(SETTINGS, max_steps=4)
    changed = LabelsToIntensity(longer)
    changed.model_config = lambda: {"kind": "1x1 conv", "undo_weighting": 0.5}
    with pytest.raises(InputError, match="different network configuration"):
        drain(fit(changed, bank, SPEC, longer, CPU, tmp_path / "c.pt", resume=True))
    changed.sampling_only = ("undo_weighting",)
    resumed = drain(fit(changed, bank, SPEC, longer, CPU, tmp_path / "c.pt", resume=True))
    assert (resumed.start_step, resumed.end_step) == (2, 4)
    assert load_checkpoint(tmp_path / "c.pt").config["model"]["undo_weighting"] == 0.5


def test_batch_must_divide_over_processes(bank: CaseBank, tmp_path: Path) -> None:
    three = Runtime(torch.device("cpu"), rank=0, world_size=3)
    with pytest.raises(InputError, match="does not divide over 3 processes"):
        drain(fit(LabelsToIntensity(SETTINGS), bank, SPEC, SETTINGS, three, tmp_path / "c.pt"))


def test_label_intensities_are_each_labels_percentiles_in_physical_units(bank: CaseBank) -> None:
    window = SPEC.preprocessing.window
    ranges = bank.label_intensities(window, TABLE.names)
    heart = TABLE.names.index("heart")
    voxels = np.concatenate(
        [
            window.to_physical(i[lab == heart])
            for i, lab in zip(bank.images, bank.labels, strict=True)
        ]
    )
    assert ranges["heart"] == pytest.approx(np.percentile(voxels, [1, 50, 99]).tolist())
    # the phantom's tissues in HU (blurred at 16x16): air, then lung, soft tissue, bone
    assert ranges["background"][1] == pytest.approx(-1000, abs=30)
    assert ranges["right_lung"][1] < -500 < ranges["heart"][1] < ranges["spine"][1]


def test_init_from_starts_a_fresh_run_at_the_given_weights(bank: CaseBank, tmp_path: Path) -> None:
    drain(fit(LabelsToIntensity(SETTINGS), bank, SPEC, SETTINGS, CPU, tmp_path / "trained.pt"))
    trained = load_checkpoint(tmp_path / "trained.pt")
    short = dataclasses.replace(SETTINGS, max_steps=3)
    fresh = drain(fit(LabelsToIntensity(short), bank, SPEC, short, CPU, tmp_path / "fresh.pt"))
    task = LabelsToIntensity(short)
    tuned = drain(fit(task, bank, SPEC, short, CPU, tmp_path / "tuned.pt", init_from=trained))
    assert tuned.start_step == 0
    # It starts where the trained run ended, far below a fresh start.
    assert tuned.losses[0]["l1"] < 0.5 * fresh.losses[0]["l1"]
    origin = {
        "source": str(tmp_path / "trained.pt"),
        "steps": SETTINGS.max_steps,
        "init_from": None,
    }
    assert load_checkpoint(tmp_path / "tuned.pt").config["provenance"]["init_from"] == origin
    # Resuming (which never passes init_from again) keeps that record.
    longer = dataclasses.replace(SETTINGS, max_steps=5)
    drain(
        fit(LabelsToIntensity(longer), bank, SPEC, longer, CPU, tmp_path / "tuned.pt", resume=True)
    )
    assert load_checkpoint(tmp_path / "tuned.pt").config["provenance"]["init_from"] == origin
    assert load_checkpoint(tmp_path / "fresh.pt").config["provenance"]["init_from"] is None
    # A run started from the tuned weights records the whole lineage, nearest first.
    tuned_again = load_checkpoint(tmp_path / "tuned.pt")
    drain(
        fit(
            LabelsToIntensity(short),
            bank,
            SPEC,
            short,
            CPU,
            tmp_path / "again.pt",
            init_from=tuned_again,
        )
    )
    lineage = load_checkpoint(tmp_path / "again.pt").config["provenance"]["init_from"]
    assert lineage == {"source": str(tmp_path / "tuned.pt"), "steps": 5, "init_from": origin}
    # A start built in memory has no file to name; it still starts the run.
    in_memory = dataclasses.replace(trained, path=None)
    drain(
        fit(
            LabelsToIntensity(short),
            bank,
            SPEC,
            short,
            CPU,
            tmp_path / "mem.pt",
            init_from=in_memory,
        )
    )
    assert (
        load_checkpoint(tmp_path / "mem.pt").config["provenance"]["init_from"]["steps"]
        == SETTINGS.max_steps
    )


def test_init_from_keeps_fitting_tensors_and_refuses_another_stage(bank: CaseBank) -> None:
    task = LabelsToIntensity(SETTINGS)
    other = LabelsToIntensity(dataclasses.replace(SETTINGS, seed=1)).inference_weights()
    other["net"]["weight"] = torch.zeros(1, len(TABLE) + 2, 1, 1)  # another label table
    skipped = task.initialise_from(Checkpoint("images", {}, other))
    assert skipped == ["net.weight"]
    torch.testing.assert_close(task.networks["net"].network.bias, other["net"]["bias"])
    with pytest.raises(InputError, match="holds the 'masks' stage"):
        task.initialise_from(Checkpoint("masks", {}, other))
    other["net"] = {"unrelated": torch.zeros(1)}
    with pytest.raises(InputError, match="shares no weights"):
        task.initialise_from(Checkpoint("images", {}, other))


def test_anatomy_ranges_are_physical_extents_and_volumes(bank: CaseBank) -> None:
    ranges = bank.anatomy_ranges((2.0, 1.0, 0.5), TABLE.names)
    extents = []
    for labels in bank.labels:
        z, y, x = np.nonzero(labels)
        extents.append([(np.ptp(a) + 1) * s for a, s in ((z, 2.0), (y, 1.0), (x, 0.5))])
    np.testing.assert_allclose(ranges["extent_mm"]["min"], np.min(extents, axis=0))
    np.testing.assert_allclose(ranges["extent_mm"]["max"], np.max(extents, axis=0))
    heart = [np.count_nonzero(lab == TABLE.value_of("heart")) * 1e-3 for lab in bank.labels]
    assert ranges["volume_ml"]["heart"] == pytest.approx([min(heart), max(heart)])
    assert set(ranges["reference"]["labels"]) == set(TABLE.names[1:])
    without = bank.anatomy_ranges((2.0, 1.0, 0.5), TABLE.names, reference=False)
    assert "reference" not in without
    assert without["volume_ml"] == ranges["volume_ml"]
