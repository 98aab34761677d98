"""Write an :class:`~medgen3d.evaluation.evaluate.Evaluation` as a report folder.

``report.md`` (tables and the figures inline), ``metrics.json`` (every number),
``figures/*.png`` (matplotlib) and ``segmenter.pt`` (the alignment segmenter, for
``medgen3d check``). Every file is written under a temporary name and renamed, and an
existing report is only replaced when asked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medgen3d.errors import OutputExistsError
from medgen3d.evaluation.evaluate import DOWNSTREAM_ARMS, Evaluation
from medgen3d.io import atomic_output
from medgen3d.train.bank import CaseBank

__all__ = ["REPORT_FILES", "check_report_folder", "write_report"]

REPORT_FILES = ("report.md", "metrics.json", "segmenter.pt")
_FIGURES = ("samples", "alignment", "anatomy", "downstream")


def write_report(
    evaluation: Evaluation,
    out_dir: str | Path,
    *,
    command: str | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write the report of ``evaluation`` into ``out_dir`` (created if missing).

    Args:
        evaluation: from :func:`medgen3d.evaluation.evaluate.evaluate`.
        out_dir: the report folder.
        command: the command line that made it, quoted in the report.
        overwrite: replace the files of an earlier report there.

    Returns:
        The files written.

    Raises:
        OutputExistsError: when ``out_dir`` already holds a report and not ``overwrite``.
    """
    out_dir = Path(out_dir)
    check_report_folder(out_dir, overwrite)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    written = []
    figures = {
        "samples": _samples_figure(evaluation),
        "alignment": _grouped_bars(
            evaluation.metrics["labels"],
            {
                "real (held out)": evaluation.metrics["alignment_dice"]["real_held_out"],
                "synthetic": evaluation.metrics["alignment_dice"]["synthetic"],
            },
            "Dice of the real-data segmenter",
        ),
        "anatomy": _volumes_figure(evaluation),
    }
    if evaluation.metrics["downstream_dice"] is not None:
        figures["downstream"] = _grouped_bars(
            evaluation.metrics["labels"],
            evaluation.metrics["downstream_dice"]["dice"],
            "Dice on held-out real cases",
        )
    for name, figure in figures.items():
        path = out_dir / "figures" / f"{name}.png"
        with atomic_output(path, overwrite=True) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
        written.append(path)
    path = out_dir / "metrics.json"
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(evaluation.metrics, indent=2) + "\n")
    written.append(path)
    written.append(evaluation.segmenter.save(out_dir / "segmenter.pt", overwrite=True))
    path = out_dir / "report.md"
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(_markdown(evaluation.metrics, command, sorted(figures)))
    written.append(path)
    return written


def check_report_folder(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse a folder that holds a report unless ``overwrite``; callers check before the
    evaluation, which takes minutes, as well as :func:`write_report` does after it.

    Raises:
        OutputExistsError: naming the first report file found.
    """
    existing = [Path(out_dir) / name for name in REPORT_FILES if (Path(out_dir) / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(existing[0])


# ---- markdown ----------------------------------------------------------------------------
def _markdown(metrics: dict[str, Any], command: str | None, figures: Sequence[str]) -> str:
    cases = metrics["cases"]
    seg = metrics["settings"]["segmenter"]
    lines = ["# Evaluation of synthetic pairs", ""]
    if command:
        lines += ["Made with:", "", "```", command, "```", ""]
    if metrics["segmenter"] == "given":
        split = f"the alignment segmenter was given; {cases['real_held_out']} held out score it"
    else:
        split = (
            f"{cases['real_segmenter_training']} train the segmenter, "
            f"{cases['real_held_out']} held out to score it"
        )
    if metrics["settings"].get("held_out_names"):
        split += (
            "; the held-out cases are the model's own, never trained on, and are the real "
            "reference of fidelity, diversity and anatomy"
        )
    lines += [
        f"Real cases: {cases['real']} ({split}); synthetic cases: {cases['synthetic']}. "
        f"Segmenters: MONAI SegResNet (2D, axial slices, {seg['init_filters']} filters), "
        f"{seg['steps']} steps, batch {seg['batch_size']}, learning rate "
        f"{seg['learning_rate']:g}, seed {metrics['settings']['seed']}.",
        "",
    ]
    if "samples" in figures:
        lines += ["![samples](figures/samples.png)", ""]

    for section in (
        _alignment_section,
        _from_masks_section,
        _fidelity_section,
        _diversity_section,
        _anatomy_section,
        _downstream_section,
    ):
        lines += section(metrics)
    return "\n".join(lines)


def _alignment_section(metrics: dict[str, Any]) -> list[str]:
    align = metrics["alignment_dice"]
    return [
        "## Alignment",
        "",
        "A segmenter trained on real pairs, applied to each synthetic image and scored "
        "against the synthetic mask. Near its Dice on held-out real pairs = image and mask agree.",
        "",
        "| label | Dice, real held out | Dice, synthetic |",
        "|---|---|---|",
        *(
            f"| {name} | {_num(r)} | {_num(s)} |"
            for name, r, s in zip(
                metrics["labels"],
                align["real_held_out"]["per_label"],
                align["synthetic"]["per_label"],
                strict=True,
            )
        ),
        f"| **mean** | **{_num(align['real_held_out']['mean'])}** | "
        f"**{_num(align['synthetic']['mean'])}** |",
        "",
        "![alignment](figures/alignment.png)",
        "",
    ]


def _fidelity_section(metrics: dict[str, Any]) -> list[str]:
    fid = metrics["fidelity"]
    return [
        "## Fidelity",
        "",
        "Fréchet and kernel distances between the segmenter's encoder features of axial, "
        "coronal and sagittal slices (2.5D). Real vs real (two halves of the real set) is "
        "the floor a perfect generator would reach with this many cases.",
        "",
        "| | FID | KID |",
        "|---|---|---|",
        f"| real vs synthetic | {_num(fid['fid'])} | {_num(fid['kid'], 4)} |",
        f"| real vs real (floor) | {_num(fid['fid_real_vs_real'])} | "
        f"{_num(fid['kid_real_vs_real'], 4)} |",
        "",
    ]


def _diversity_section(metrics: dict[str, Any]) -> list[str]:
    div = metrics["diversity"]
    return [
        "## Diversity",
        "",
        "Mean pairwise MS-SSIM between images of one set (lower = more diverse).",
        "",
        "| synthetic | real |",
        "|---|---|",
        f"| {_num(div['ms_ssim_synthetic'])} | {_num(div['ms_ssim_real'])} |",
        "",
    ]


def _anatomy_section(metrics: dict[str, Any]) -> list[str]:
    anatomy = metrics["anatomy"]
    columns = list(next(iter(anatomy.values())))
    lines = [
        "## Mask anatomy",
        "",
        "| label | " + " | ".join(c.replace("_", " ") for c in columns) + " |",
        "|---|" + "---|" * len(columns),
        *(
            f"| {name} | " + " | ".join(_num(anatomy[name][c]) for c in columns) + " |"
            for name in anatomy
        ),
        "",
        "![anatomy](figures/anatomy.png)",
        "",
    ]
    if enclosed := metrics.get("enclosed_background_ml"):  # absent from older reports
        real, synthetic = enclosed["real"], enclosed["synthetic"]
        lines += [
            "Background enclosed by labelled tissue (holes within axial slices): "
            f"{_num(synthetic['mean'])} ml per synthetic mask on average (at most "
            f"{_num(synthetic['max'])}), {_num(real['mean'])} ml per real one (at most "
            f"{_num(real['max'])}).",
            "",
        ]
    if checks := metrics.get("generation_checks"):
        lines += [
            f"Generation drew {checks['draws']} masks for {checks['samples']} samples: each was "
            "checked against the model's training masks and drawn again while flagged "
            f"(`generate --redraws`); {checks['passed']} of the {checks['samples']} kept "
            "passed that check. The verdicts below compare them with the real reference "
            "instead.",
            "",
        ]
    flagged, total = metrics["implausible_samples"], metrics["cases"]["synthetic"]
    if flagged:
        lines += [f"Implausible synthetic masks ({len(flagged)} of {total}):", ""]
        lines += [f"- `{case}`: {'; '.join(reasons)}" for case, reasons in flagged.items()]
    else:
        lines += ["No synthetic mask was flagged as implausible."]
    return [*lines, ""]


def _downstream_section(metrics: dict[str, Any]) -> list[str]:
    down = metrics["downstream_dice"]
    if down is None:
        return []
    dice = down["dice"]
    return [
        "## Downstream segmentation",
        "",
        f"The same segmenter trained on {down['real_cases']} real cases, on those plus "
        f"{down['synthetic_cases']} synthetic ones, and on the synthetic ones alone "
        f"({down['steps']} steps each), scored on {down['held_out_cases']} held-out real "
        "cases.",
        "",
        "| label | " + " | ".join(DOWNSTREAM_ARMS) + " |",
        "|---|" + "---|" * len(DOWNSTREAM_ARMS),
        *(
            f"| {name} | "
            + " | ".join(_num(dice[arm]["per_label"][i]) for arm in DOWNSTREAM_ARMS)
            + " |"
            for i, name in enumerate(metrics["labels"])
        ),
        "| **mean** | "
        + " | ".join(f"**{_num(dice[arm]['mean'])}**" for arm in DOWNSTREAM_ARMS)
        + " |",
        "",
        "![downstream](figures/downstream.png)",
        "",
    ]


def _from_masks_section(metrics: dict[str, Any]) -> list[str]:
    """The "images from real masks" section, when the evaluation ran it."""
    found = metrics.get("images_from_real_masks")
    if not found:
        return []
    means, dice = found["mean_intensity"], found["dice"]
    rows = zip(
        metrics["labels"],
        means["real"],
        means["generated"],
        dice["real"]["per_label"],
        dice["generated"]["per_label"],
        strict=True,
    )
    return [
        "## Images from real masks",
        "",
        f"The model's images for {found['cases']} held-out real masks, beside the real "
        "images of those masks: each label's mean intensity (physical units, averaged over "
        "cases) and the segmenter's Dice against the real mask. Pearson r of the mean "
        f"intensities over labels: **{_num(found['pearson_r'])}**.",
        "",
        "| label | mean, real | mean, generated | Dice, real image | Dice, generated image |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {_significant(rm)} | {_significant(gm)} | {_num(rd)} | {_num(gd)} |"
            for name, rm, gm, rd, gd in rows
        ),
        f"| **mean** | | | **{_num(dice['real']['mean'])}** | "
        f"**{_num(dice['generated']['mean'])}** |",
        "",
    ]


def _significant(value: float | None) -> str:
    """Three significant digits: HU and MRI's [0, 1] scale alike."""
    return "–" if value is None else f"{value:.3g}"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


# ---- figures -----------------------------------------------------------------------------
def _grouped_bars(labels: Sequence[str], groups: dict[str, dict], title: str) -> Figure:
    """One bar per group and label, plus the mean: Dice tables at a glance."""
    figure = Figure(figsize=(max(6.0, 0.8 * len(labels) + 2), 3.6), layout="constrained")
    axes = figure.add_subplot()
    names = [*labels, "mean"]
    width = 0.8 / len(groups)
    for g, (group, scores) in enumerate(groups.items()):
        values = [np.nan if v is None else v for v in [*scores["per_label"], scores["mean"]]]
        axes.bar(np.arange(len(names)) + g * width, values, width, label=group)
    axes.set_xticks(np.arange(len(names)) + width * (len(groups) - 1) / 2, names, rotation=30)
    axes.set_ylim(0, 1)
    axes.set_ylabel("Dice")
    axes.set_title(title)
    axes.legend(fontsize="small")
    return figure


def _volumes_figure(evaluation: Evaluation) -> Figure:
    """Per-label volume distributions, real beside synthetic, one panel per label."""
    labels = evaluation.metrics["labels"]
    columns = min(4, len(labels))
    rows = -(-len(labels) // columns)
    figure = Figure(figsize=(3 * columns, 2.4 * rows), layout="constrained")
    for i, name in enumerate(labels):
        axes = figure.add_subplot(rows, columns, i + 1)
        sets = [evaluation.volumes_ml["real"][:, i], evaluation.volumes_ml["synthetic"][:, i]]
        axes.boxplot(sets)
        for x, values in enumerate(sets, start=1):
            axes.plot(np.full(len(values), x), values, ".", alpha=0.6)
        axes.set_xticks([1, 2], ["real", "synthetic"])
        axes.set_title(name, fontsize="small")
        axes.set_ylabel("ml", fontsize="small")
    return figure


def _samples_figure(evaluation: Evaluation, per_set: int = 3) -> Figure:
    """Mid axial and coronal slices of a few real and synthetic pairs, masks as contours."""
    banks = {"real": evaluation.real, "synthetic": evaluation.synthetic}
    count = min(per_set, min(len(b) for b in banks.values()))
    figure = Figure(figsize=(2.2 * 2 * count, 2.2 * len(banks)), layout="constrained")
    colours = [label.colour for label in evaluation.data.labels.labels]
    for row, (name, bank) in enumerate(banks.items()):
        for i in range(count):
            for j, (image, labels) in enumerate(_mid_planes(bank, i)):
                axes = figure.add_subplot(len(banks), 2 * count, row * 2 * count + 2 * i + j + 1)
                axes.imshow(image, cmap="gray", vmin=-1, vmax=1, origin="lower")
                for channel in range(1, len(colours)):
                    if (labels == channel).any():
                        axes.contour(
                            labels == channel, [0.5], colors=[colours[channel]], linewidths=0.6
                        )
                axes.set_axis_off()
                if j == 0:
                    axes.set_title(f"{name} {bank.names[i]}", fontsize="x-small")
    return figure


def _mid_planes(bank: CaseBank, index: int) -> list[tuple[np.ndarray, np.ndarray]]:
    image, labels = bank.images[index], bank.labels[index]
    z, y = image.shape[0] // 2, image.shape[1] // 2
    return [(image[z], labels[z]), (image[:, y], labels[:, y])]
