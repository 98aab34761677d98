"""Evaluation end to end: known answers of the whole report, the pair check, the commands."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from _stage_data import phantom_spec, write_small_phantoms, write_tiny_model
from medgen3d.cli import main
from medgen3d.datasets import discover_pairs
from medgen3d.errors import InputError, OutputExistsError
from medgen3d.evaluation.check import check_pair, check_pairs
from medgen3d.evaluation.evaluate import EvaluationSettings, evaluate, split_real
from medgen3d.evaluation.report import write_report
from medgen3d.evaluation.segmenter import (
    Segmenter,
    SegmenterSettings,
    dice_per_label,
    train_segmenter,
)
from medgen3d.foreground import ForegroundFill
from medgen3d.io import load_pair, save_volume
from medgen3d.progress import drain
from medgen3d.train.bank import CaseBank

DATA = phantom_spec()
NAMES = DATA.labels.names
QUICK = EvaluationSettings(SegmenterSettings(steps=60, batch_size=8), downstream=False)


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    return write_small_phantoms(tmp_path_factory.mktemp("real"), n=6, seed=0)


@pytest.fixture(scope="module")
def segmenter(real: Path):
    """Trained on five real cases; its Dice on the sixth recorded as ``medgen3d evaluate``
    records it."""
    bank = CaseBank.from_folder(real, DATA)
    settings = SegmenterSettings(steps=120, batch_size=8)
    model = drain(train_segmenter(bank.images[:5], bank.labels[:5], len(NAMES), settings))
    held_out = dice_per_label(model.predict(bank.images[5]), bank.labels[5], len(NAMES))
    model.real_dice = tuple(None if np.isnan(d) else float(d) for d in held_out)
    return model


@pytest.fixture(scope="module")
def ranges(real: Path) -> dict[str, list[float]]:
    bank = CaseBank.from_folder(real, DATA)
    return bank.label_intensities(DATA.preprocessing.window, NAMES)


def _copy_with(source: Path, target: Path, hu_offset: float = 0.0, roll: int = 0) -> Path:
    """The pairs of ``source`` with images shifted by ``hu_offset`` or masks rolled in x."""
    target.mkdir()
    for case in discover_pairs(source):
        image, label = load_pair(case.image, case.label)
        save_volume(image.with_data(image.data + hu_offset), target / case.image.name)
        save_volume(label.with_data(np.roll(label.data, roll, axis=2)), target / case.label.name)
    return target


def test_real_set_split_is_seeded_disjoint_and_complete() -> None:
    train, held = split_real(8, 0.25, seed=3)
    assert sorted(train + held) == list(range(8)) and len(held) == 2
    assert split_real(8, 0.25, seed=3) == (train, held)
    assert split_real(8, 0.25, seed=4) != (train, held)
    with pytest.raises(InputError, match="at least 2 cases"):
        split_real(1, 0.25, seed=0)


def test_a_set_against_itself_has_zero_distance_and_equal_figures(real: Path, segmenter) -> None:
    result = drain(evaluate(real, real, DATA, QUICK, segmenter=segmenter))
    metrics = result.metrics
    assert metrics["fidelity"]["fid"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["diversity"]["ms_ssim_synthetic"] == metrics["diversity"]["ms_ssim_real"]
    for label in metrics["anatomy"].values():
        assert label["volume_wasserstein_ml"] == 0.0
    assert metrics["implausible_samples"] == {}
    assert metrics["generation_checks"] is None  # no sidecars: nothing to say
    holes = metrics["enclosed_background_ml"]
    assert holes["synthetic"] == holes["real"]
    # a segmenter that learned the phantom finds the "synthetic" masks in their images
    body_and_lungs = metrics["alignment_dice"]["synthetic"]["per_label"][:3]
    assert min(body_and_lungs) > 0.8
    json.dumps(metrics)  # every figure is JSON-ready


def test_shifted_intensities_raise_fid_and_a_shuffled_mask_lowers_alignment(
    real: Path, segmenter, tmp_path: Path
) -> None:
    same = drain(evaluate(real, real, DATA, QUICK, segmenter=segmenter)).metrics
    shifted = _copy_with(real, tmp_path / "shifted", hu_offset=300.0)
    brighter = drain(evaluate(real, shifted, DATA, QUICK, segmenter=segmenter)).metrics
    assert brighter["fidelity"]["fid"] > same["fidelity"]["fid_real_vs_real"] + 1.0
    rolled = _copy_with(real, tmp_path / "rolled", roll=8)
    misaligned = drain(evaluate(real, rolled, DATA, QUICK, segmenter=segmenter)).metrics
    assert (
        misaligned["alignment_dice"]["synthetic"]["mean"]
        < same["alignment_dice"]["synthetic"]["mean"] - 0.3
    )


def test_tiny_evaluation_with_downstream_writes_a_complete_report(
    real: Path, tmp_path: Path
) -> None:
    synthetic = write_small_phantoms(tmp_path / "synthetic", n=4, seed=100)
    # Sidecars as generate writes them, for two of the samples: 1 draw and 3 draws.
    for name, draws, passed in (("phantom_0000", 1, True), ("phantom_0002", 3, False)):
        check = {"passed": passed, "draws": draws, "faults": [], "rejected": []}
        (synthetic / f"{name}.json").write_text(json.dumps({"anatomy_check": check}))
    settings = EvaluationSettings(SegmenterSettings(steps=20, batch_size=4), downstream_real=1)
    result = drain(evaluate(real, synthetic, DATA, settings))
    assert result.metrics["generation_checks"] == {"samples": 2, "draws": 4, "passed": 1}
    down = result.metrics["downstream_dice"]
    assert set(down["dice"]) == {"real", "real+synthetic", "synthetic"}
    assert (down["real_cases"], down["synthetic_cases"], down["steps"]) == (1, 4, 20)
    assert result.metrics["cases"] == {
        "real": 6,
        "real_segmenter_training": 4,
        "real_held_out": 2,
        "real_reference": 6,
        "synthetic": 4,
    }

    out = tmp_path / "report"
    written = write_report(result, out, command="medgen3d evaluate ...")
    names = {p.relative_to(out).as_posix() for p in written}
    assert names == {
        "report.md",
        "metrics.json",
        "segmenter.pt",
        "figures/samples.png",
        "figures/alignment.png",
        "figures/anatomy.png",
        "figures/downstream.png",
    }
    for figure in out.glob("figures/*.png"):
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "metrics.json").read_text()) == result.metrics
    report = (out / "report.md").read_text()
    for section in ("## Alignment", "## Fidelity", "## Diversity", "## Mask anatomy"):
        assert section in report
    assert "Background enclosed by labelled tissue (holes within axial slices)" in report
    assert "Generation drew 4 masks for 2 samples" in report and "1 of the 2 kept" in report
    assert "## Downstream segmentation" in report and "figures/downstream.png" in report
    with pytest.raises(OutputExistsError):
        write_report(result, out)


def test_check_passes_real_pairs_and_flags_wrong_intensity_and_misalignment(
    real: Path, segmenter, ranges, tmp_path: Path
) -> None:
    case = discover_pairs(real)[0]
    image, label = load_pair(case.image, case.label)
    good = check_pair(image, label, DATA, ranges, segmenter, name="good")
    assert good.ok, good.describe()
    assert {c.name for c in good.labels} >= {"body", "heart", "spine"}

    heart = label.data == NAMES.index("heart")
    hot = image.with_data(np.where(heart, image.data + 600, image.data))
    flagged = check_pair(hot, label, DATA, ranges, name="hot heart")
    assert not flagged.ok
    assert [p.split(":")[0] for p in flagged.problems] == ["heart"]

    shuffled = label.with_data(np.roll(label.data, 10, axis=2))
    misaligned = check_pair(image, shuffled, DATA, ranges, segmenter, name="shuffled")
    assert misaligned.mean_dice < good.mean_dice - 0.3
    assert any(p.startswith("alignment") for p in misaligned.problems)


def test_alignment_counts_only_labels_the_segmenter_is_reliable_on(
    real: Path, segmenter, ranges
) -> None:
    case = discover_pairs(real)[0]
    image, label = load_pair(case.image, case.label)
    reliable = [d is not None and d >= 0.5 for d in segmenter.real_dice]
    assert 0 < sum(reliable) < len(reliable)  # the premise: body and lungs yes, trachea no
    judged = check_pair(image, label, DATA, ranges, segmenter)
    counted = [c.dice for c in judged.labels[1:] if reliable[NAMES.index(c.name) - 1]]
    assert judged.mean_dice == pytest.approx(np.mean(counted))
    unrecorded = Segmenter(segmenter.network, segmenter.num_classes, segmenter.settings)
    everything = check_pair(image, label, DATA, ranges, unrecorded)
    assert everything.mean_dice < judged.mean_dice


def test_check_names_the_file_with_unknown_labels(real: Path, ranges, tmp_path: Path) -> None:
    case = discover_pairs(real)[0]
    image, label = load_pair(case.image, case.label)
    save_volume(image, tmp_path / "odd_image.nii.gz")
    save_volume(
        label.with_data(np.where(label.data == 4, 77, label.data)), tmp_path / "odd_label.nii.gz"
    )
    cases = discover_pairs(tmp_path)
    with pytest.raises(InputError, match=r"odd_label\.nii\.gz"):
        drain(check_pairs(cases, DATA, ranges))


def test_check_command_exit_status_and_json(
    real: Path, ranges, segmenter, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = write_tiny_model(tmp_path / "model", DATA, {"label_intensities": ranges})
    segmenter_file = segmenter.save(tmp_path / "segmenter.pt")
    assert Segmenter.load(segmenter_file).real_dice == segmenter.real_dice
    hot = _copy_with(real, tmp_path / "hot", hu_offset=400.0)
    args = ["check", "--model", str(model), "--segmenter", str(segmenter_file)]
    assert main([*args, str(real / "phantom_0000_image.nii.gz")]) == 0
    out = tmp_path / "check.json"
    assert main([*args, str(hot), "--json", str(out)]) == 1
    found = json.loads(out.read_text())
    assert len(found) == 6 and not any(item["ok"] for item in found)
    assert "FLAGGED" in capsys.readouterr().out


def test_check_needs_a_model_that_recorded_its_intensities(
    real: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = write_tiny_model(tmp_path / "old_model", DATA)
    assert main(["check", "--model", str(model), str(real)]) == 2
    assert "training intensities" in capsys.readouterr().err


def test_evaluate_command_writes_the_report_and_refuses_to_overwrite_it(
    real: Path, segmenter, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = write_tiny_model(tmp_path / "model", DATA)
    segmenter_file = segmenter.save(tmp_path / "segmenter.pt")
    synthetic = shutil.copytree(real, tmp_path / "synthetic")
    out = tmp_path / "report"
    command = ["evaluate", "--real", str(real), "--synthetic", str(synthetic), "--out", str(out)]
    command += ["--model", str(model), "--segmenter", str(segmenter_file), "--no-downstream"]
    assert main(command) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["downstream_dice"] is None and metrics["fidelity"]["fid"] < 1e-6
    assert metrics["segmenter"] == "given"
    report = (out / "report.md").read_text()
    assert "medgen3d evaluate" in report and "the alignment segmenter was given" in report
    assert main(command) == 2
    assert "already exists" in capsys.readouterr().err


def test_evaluate_command_trains_its_segmenter_as_told(real: Path, tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "model", DATA)
    out = tmp_path / "report"
    command = ["evaluate", "--real", str(real), "--synthetic", str(real), "--out", str(out)]
    command += ["--model", str(model), "--no-downstream", "--steps", "3"]
    assert main([*command, "--learning-rate", "0.003", "--init-filters", "16"]) == 0
    settings = Segmenter.load(out / "segmenter.pt").settings
    assert (settings.steps, settings.learning_rate, settings.init_filters) == (3, 0.003, 16)
    assert "16 filters), 3 steps, batch 16, learning rate 0.003" in (out / "report.md").read_text()


def test_model_holdout_scores_on_those_cases_and_is_the_reference(
    real: Path, segmenter, tmp_path: Path
) -> None:
    names = CaseBank.from_folder(real, DATA).names
    held = (names[1], names[4])
    settings = dataclasses.replace(QUICK, held_out_names=held)
    result = drain(evaluate(real, real, DATA, settings, segmenter=segmenter))
    cases = result.metrics["cases"]
    assert (cases["real_held_out"], cases["real_segmenter_training"]) == (2, 4)
    assert result.real.names == held  # fidelity, diversity and anatomy compare with these
    with pytest.raises(InputError, match="none of the model's held-out cases"):
        drain(evaluate(real, real, DATA, dataclasses.replace(QUICK, held_out_names=("x",))))


@pytest.mark.parametrize(("scale", "expect_r"), [(1.0, 1.0), (-1.0, -1.0)])
def test_images_from_real_masks_compare_tissue_by_tissue(
    real: Path, segmenter, tmp_path: Path, monkeypatch, scale: float, expect_r: float
) -> None:
    """A stand-in generator that returns the real image (or its negative) gives r = 1
    (or -1), and the segmenter scores the real image's copy exactly as the real one."""
    from medgen3d.evaluation import from_masks
    from medgen3d.model import load_model

    bank = CaseBank.from_folder(real, DATA)
    pairs = zip(bank.images, bank.labels, strict=True)
    by_labels = {labels.tobytes(): image for image, labels in pairs}

    def stand_in(model, labels, settings):
        yield from ()
        return scale * by_labels[labels.tobytes()]

    monkeypatch.setattr(from_masks, "image_for_channels", stand_in)
    model = load_model(write_tiny_model(tmp_path / "model", DATA))
    found = drain(from_masks.images_from_real_masks(model, bank, [2, 5], segmenter))
    assert found["cases"] == 2
    assert found["pearson_r"] == pytest.approx(expect_r, abs=1e-6)
    if scale == 1.0:
        assert found["dice"]["generated"] == found["dice"]["real"]
        np.testing.assert_allclose(
            found["mean_intensity"]["generated"], found["mean_intensity"]["real"]
        )


def test_images_from_real_masks_generate_with_the_given_settings(
    real: Path, segmenter, tmp_path: Path, monkeypatch
) -> None:
    """Each case is generated with the caller's settings (a benchmark's refiner strength),
    seeded ``seed + case``; without settings, with the defaults ``generate`` uses."""
    from medgen3d.evaluation import from_masks
    from medgen3d.model import load_model
    from medgen3d.settings import DEFAULTS, GenerationSettings, RefineSettings

    received = []

    def stand_in(model, labels, settings):
        received.append(settings)
        yield from ()
        return labels.astype(np.float32)

    monkeypatch.setattr(from_masks, "image_for_channels", stand_in)
    model = load_model(write_tiny_model(tmp_path / "model", DATA))
    bank = CaseBank.from_folder(real, DATA)
    unrefined = GenerationSettings(refiner=RefineSettings(strength=0.0))
    drain(from_masks.images_from_real_masks(model, bank, [2, 5], segmenter, 3, unrefined))
    assert [(s.seed, s.refiner.strength) for s in received] == [(5, 0.0), (8, 0.0)]
    received.clear()
    drain(from_masks.images_from_real_masks(model, bank, [2], segmenter))
    assert received == [DEFAULTS.with_seed(2)]


def test_evaluate_runs_images_from_real_masks_with_the_model(
    real: Path, segmenter, tmp_path: Path
) -> None:
    from medgen3d.model import load_model

    model = load_model(write_tiny_model(tmp_path / "model", DATA))
    settings = dataclasses.replace(QUICK, from_masks=1)
    result = drain(evaluate(real, real, DATA, settings, segmenter=segmenter, model=model))
    found = result.metrics["images_from_real_masks"]
    assert found["cases"] == 1 and len(found["mean_intensity"]["generated"]) == len(NAMES) - 1
    write_report(result, tmp_path / "report")
    assert "## Images from real masks" in (tmp_path / "report" / "report.md").read_text()
    with pytest.raises(InputError, match="need the model"):
        drain(evaluate(real, real, DATA, settings, segmenter=segmenter))


def test_check_judges_the_background_on_the_pairs_own_grid(real: Path, ranges) -> None:
    """On a model grid larger than the pair, padding (air) would dominate the background
    and let a background of noise at -572 HU pass."""
    padded_model = dataclasses.replace(
        DATA, preprocessing=dataclasses.replace(DATA.preprocessing, size=(96, 96))
    )
    case = discover_pairs(real)[0]
    image, label = load_pair(case.image, case.label)
    assert check_pair(image, label, padded_model, ranges).ok
    noise = np.random.default_rng(0).normal(-572.0, 40.0, image.shape)
    noisy = image.with_data(np.where(label.data == 0, noise, image.data).astype(np.float32))
    result = check_pair(noisy, label, padded_model, ranges)
    assert [p.split(":")[0] for p in result.problems] == ["background"]


def test_check_translates_label_maps_with_a_mapping(real: Path, ranges, tmp_path: Path) -> None:
    case = discover_pairs(real)[0]
    image, label = load_pair(case.image, case.label)
    save_volume(image, tmp_path / "x_image.nii.gz")
    save_volume(label.with_data(label.data + 100), tmp_path / "x_label.nii.gz")
    pairs = discover_pairs(tmp_path)
    with pytest.raises(InputError, match=r"x_label\.nii\.gz: label values 100"):
        drain(check_pairs(pairs, DATA, ranges))
    mapping = {100 + v: v for v in DATA.labels.values}
    [result] = drain(check_pairs(pairs, DATA, ranges, label_mapping=mapping))
    assert result.ok and {c.name for c in result.labels} >= {"body", "heart"}


def test_synthetic_masks_are_scored_as_generated_without_deriving_the_subject_again(
    real: Path, segmenter, tmp_path: Path
) -> None:
    """With a derived subject label (the brain's "head"), holes a generator leaves inside the
    subject must still count: deriving the label again would fill them with it."""
    body = DATA.labels.value_of("body")
    derived = dataclasses.replace(DATA, foreground_fill=ForegroundFill(body))
    holed = tmp_path / "holed"
    holed.mkdir()
    in_plane = np.ones((1, 3, 3), bool)
    for case in discover_pairs(real):
        image, label = load_pair(case.image, case.label)
        inner_body = ndimage.binary_erosion(label.data == body, in_plane, iterations=2)
        save_volume(image, holed / case.image.name)
        save_volume(label.with_data(np.where(inner_body, 0, label.data)), holed / case.label.name)
    metrics = drain(evaluate(real, holed, derived, QUICK, segmenter=segmenter)).metrics
    holes = metrics["enclosed_background_ml"]
    assert holes["real"]["max"] == 0.0
    assert holes["synthetic"]["mean"] > 0.1
