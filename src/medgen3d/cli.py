"""The ``medgen3d`` command: argument parsing and nothing else.

Each subcommand maps its options onto one engine function. User errors
(:class:`~medgen3d.errors.InputError`) print one line and exit with status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medgen3d import __version__
from medgen3d.errors import InputError
from medgen3d.io import check_output_file, check_output_folder
from medgen3d.settings import (
    DEFAULTS,
    Device,
    GenerationSettings,
    MaskSampler,
    MaskSettings,
    RefineSampler,
    RefineSettings,
    choices,
)

__all__ = ["build_parser", "main"]

log = logging.getLogger("medgen3d")
# Signals that stop a command the way Ctrl-C does (outputs in progress removed, status 130).
_INTERRUPTS = (signal.SIGINT, signal.SIGTERM)

MODEL_HELP = "a bundled model (demo, brain-mri, headneck-ct), a model folder or a .pt file"


def tqdm_progress(
    description: str, unit: str = "case"
) -> tuple[Callable[..., None], Callable[[], None]]:
    """A ``progress(done, total, postfix=None)`` callback drawing a tqdm bar, and a function
    closing it. The bar starts at the first call, so a resumed run starts where it is."""
    bar: tqdm | None = None

    def progress(done: int, total: int, postfix: dict[str, str] | None = None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=total, initial=done - 1, desc=description, unit=unit, dynamic_ncols=True
            )
        if postfix:
            bar.set_postfix(postfix, refresh=False)
        bar.update(done - bar.n)

    def close() -> None:
        if bar is not None:
            bar.close()

    return progress, close


def _add_phantom(subparsers: argparse._SubParsersAction) -> None:
    from medgen3d.phantom import DEFAULT_SHAPE, DEFAULT_SPACING

    p = subparsers.add_parser(
        "phantom",
        help="write procedural thoracic CT phantoms (image + label pairs)",
        description="Write phantom_NNNN_image.nii.gz / phantom_NNNN_label.nii.gz pairs. "
        "Case i depends only on (--seed, i), so -n can grow without changing earlier cases.",
    )
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("-n", type=int, default=1, help="number of cases (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default: %(default)s)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "H", "W"), default=DEFAULT_SHAPE)
    p.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("z", "y", "x"),
        default=DEFAULT_SPACING,
        help="voxel size in mm (default: %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.set_defaults(run=_run_phantom)


def _run_phantom(args: argparse.Namespace) -> None:
    from medgen3d.phantom import write_phantoms

    check_output_folder(args.out)
    if args.n < 1:
        raise InputError(f"-n must be at least 1, got {args.n}")
    progress, close = tqdm_progress("phantoms")
    try:
        pairs = write_phantoms(
            args.out,
            args.n,
            args.seed,
            tuple(args.shape),
            tuple(args.spacing),
            overwrite=args.overwrite,
            progress=progress,
        )
    except ValueError as exc:  # invalid shape or spacing
        raise InputError(str(exc)) from exc
    finally:
        close()
    log.info("wrote %d pairs to %s", len(pairs), args.out)


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train one stage (masks, images or refiner) on a NIfTI dataset",
        description="Train a stage of a recipe on image/label pairs. Runs on CPU, one GPU, "
        "or many processes with `torchrun --nproc-per-node N -m medgen3d.cli train ...`.",
    )
    p.add_argument("stage", choices=("masks", "images", "refiner"))
    p.add_argument("--data", required=True, help="dataset folder (MSD, nnU-Net or pairs)")
    p.add_argument("--config", required=True, help="recipe JSON (see resources/recipes/)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--resume", action="store_true", help="continue from --out")
    p.add_argument("--overwrite", action="store_true", help="replace --out and start afresh")
    p.add_argument("--max-steps", type=int, help="override the recipe's max_steps")
    p.add_argument(
        "--init-from",
        metavar="MODEL|FILE",
        help="start a fresh run from this stage's weights in a model (a bundled name such as "
        "brain-mri, or a folder) or a checkpoint file; layers that depend on a different "
        "label table start fresh",
    )
    p.add_argument("--device", default=Device.AUTO.value, choices=choices(Device))
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from medgen3d.progress import Progress, drain
    from medgen3d.runtime import distributed_runtime
    from medgen3d.train.run import train_stage

    check_output_file(args.out)
    progress, close = tqdm_progress(f"train {args.stage}", unit="step")

    def show(report: Progress) -> None:
        losses = {name: f"{value:.4f}" for name, value in (report.metrics or {}).items()}
        progress(report.done, report.total, losses)

    try:
        with distributed_runtime(args.device) as runtime:
            work = train_stage(
                args.stage,
                args.data,
                args.config,
                args.out,
                resume=args.resume,
                overwrite=args.overwrite,
                max_steps=args.max_steps,
                runtime=runtime,
                init_from=args.init_from,
            )
            drain(work, show if runtime.is_main else None)
    finally:
        close()


def _add_generate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate image/label pairs (or images for your own masks)",
        description="Write sample_NNNN_image.nii.gz, sample_NNNN_label.nii.gz and "
        "sample_NNNN.json per sample. Sample i depends only on (--seed, i). Under "
        "`torchrun --nproc-per-node P -m medgen3d generate ...` samples are shared out "
        "across the processes.",
    )
    p.add_argument("--model", default="demo", help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("-n", type=int, default=1, help="number of samples (default: %(default)s)")
    p.add_argument(
        "--seed", type=int, default=DEFAULTS.seed, help="base seed (default: %(default)s)"
    )
    p.add_argument(
        "--depth",
        type=int,
        help="slices per volume (default: the model's typical training volume; 64 for demo)",
    )
    _add_mask_sampling(p)
    p.add_argument(
        "--redraws",
        type=int,
        default=DEFAULTS.masks.redraws,
        help="draw a mask again, up to this many times, while it fails the anatomy check "
        "against the model's training masks (sidecar: anatomy_check); 0 keeps the first "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--refine-strength",
        type=float,
        default=DEFAULTS.refiner.strength,
        help="0 skips the refiner (default: %(default)s)",
    )
    p.add_argument(
        "--refine-steps",
        type=int,
        default=DEFAULTS.refiner.steps,
        help="refiner denoising steps (default: %(default)s)",
    )
    p.add_argument(
        "--refine-sampler",
        default=DEFAULTS.refiner.sampler,
        choices=choices(RefineSampler),
        help="auto: the one the refiner was trained for (default: %(default)s)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=DEFAULTS.refiner.guidance,
        help="the refiner's classifier-free guidance; 1 is plain (default: %(default)s)",
    )
    p.add_argument(
        "--refine-batch-size",
        type=int,
        default=DEFAULTS.refiner.batch_size,
        help="slices per refiner call; lower it to save memory (default: %(default)s)",
    )
    p.add_argument(
        "--seed-mask", help="label NIfTI: labelled slices are kept, empty ones generated"
    )
    p.add_argument("--masks", help="image from your own masks: a label NIfTI file or a folder")
    p.add_argument(
        "--label-map",
        metavar="FILE|NAME",
        help="translate --masks / --seed-mask values onto the model's table: a file of "
        "'source target' lines or a bundled mapping (e.g. freesurfer_to_brain_mri); by "
        "default masks in the model's table or its training data's convention are accepted",
    )
    p.add_argument(
        "--allow-out-of-range",
        action="store_true",
        help="generate from masks whose size is far from the model's training anatomy",
    )
    p.add_argument("--stage", default="all", choices=("all", "masks"), help="masks: labels only")
    p.add_argument("--device", default=Device.AUTO.value, choices=choices(Device))
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.set_defaults(run=_run_generate)


def _add_mask_sampling(p: argparse.ArgumentParser) -> None:
    """The options of stage 1's sampler, read by :func:`_mask_settings`."""
    p.add_argument(
        "--steps",
        type=int,
        default=DEFAULTS.masks.steps,
        help="mask denoising steps per sequence (default: %(default)s)",
    )
    p.add_argument("--sampler", default=DEFAULTS.masks.sampler, choices=choices(MaskSampler))
    _add_mask_model_settings(p)


def _add_mask_model_settings(p: argparse.ArgumentParser) -> None:
    """The sampling settings a mask model holds as its own (``pack-model`` sets them)."""
    p.add_argument(
        "--undo-weighting",
        type=float,
        help="for masks trained with label weighting: the power of the weights divided out "
        "when sampling, 0-1; lower draws small structures larger (default: the model's)",
    )
    p.add_argument(
        "--fill-holes",
        action=argparse.BooleanOptionalAction,
        help="close the holes sampling leaves inside each generated slice: background (or "
        "the derived head/body label) enclosed by structures takes the nearest structure's "
        "label (default: the model's)",
    )
    p.add_argument(
        "--min-island",
        dest="min_island_voxels",
        type=int,
        metavar="VOXELS",
        help="once a volume is generated, give pieces of a structure smaller than this many "
        "voxels to their neighbours; 0 keeps every piece (default: the model's)",
    )
    p.add_argument(
        "--overlap",
        type=int,
        metavar="SLICES",
        help="slices each generated mask sequence shares with those generated before it, "
        "below the sequence length; more is slower and tells a sequence more of how far a "
        "structure has come (default: the model's)",
    )


def _mask_settings(args: argparse.Namespace) -> MaskSettings:
    return MaskSettings(
        sampler=args.sampler,
        steps=args.steps,
        undo_weighting=args.undo_weighting,
        fill_holes=args.fill_holes,
        min_island_voxels=args.min_island_voxels,
        overlap=args.overlap,
    )


def _run_generate(args: argparse.Namespace) -> None:
    from medgen3d.batch import generate_samples, mask_files, pairs_for_mask_files
    from medgen3d.generate import conform_labels
    from medgen3d.io import load_volume
    from medgen3d.labels import label_mapping
    from medgen3d.model import load_model
    from medgen3d.progress import Progress, drain
    from medgen3d.runtime import distributed_runtime

    if args.masks and (args.seed_mask or args.stage != "all"):
        raise InputError("--masks cannot be combined with --seed-mask or --stage masks")
    check_output_folder(args.out)  # before loading the model, not after the work
    if args.n < 1:
        raise InputError(f"-n must be at least 1, got {args.n}")
    settings = _generation_settings(args)
    with distributed_runtime(args.device) as runtime:
        model = load_model(args.model, runtime.device)
        mapping = label_mapping(args.label_map) if args.label_map else None
        depth = args.depth if args.depth is not None else model.typical_depth
        settings = dataclasses.replace(settings, depth=depth)
        if args.masks:
            masks = mask_files(args.masks)
            jobs = pairs_for_mask_files(
                model,
                masks,
                args.out,
                settings,
                indices=runtime.shard(len(masks)),
                overwrite=args.overwrite,
                label_mapping=mapping,
                allow_out_of_range=args.allow_out_of_range,
            )
            count = len(runtime.shard(len(masks)))
        else:
            seed_mask = None
            if args.seed_mask:
                seed_mask = load_volume(args.seed_mask, "label")
                seed_mask = conform_labels(model, seed_mask, args.seed_mask, mapping)
            jobs = generate_samples(
                model,
                args.out,
                args.n,
                settings,
                seed_mask=seed_mask,
                stage=args.stage,
                indices=runtime.shard(args.n),
                overwrite=args.overwrite,
            )
            count = len(runtime.shard(args.n))
        with tqdm(total=count, desc="generate", unit="sample", disable=not runtime.is_main) as bar:

            def show(report: Progress, index: int) -> None:
                bar.set_postfix_str(f"sample {index} {report.stage} {report.done}/{report.total}")

            for index, work in jobs:
                drain(work, functools.partial(show, index=index))
                bar.update()
        runtime.barrier()
    log.info("wrote %d samples to %s", count, args.out)


def _generation_settings(args: argparse.Namespace) -> GenerationSettings:
    """The settings the ``generate`` options give (the depth is the model's unless given)."""
    return GenerationSettings(
        seed=args.seed,
        masks=dataclasses.replace(_mask_settings(args), redraws=args.redraws),
        refiner=RefineSettings(
            strength=args.refine_strength,
            steps=args.refine_steps,
            sampler=args.refine_sampler,
            guidance=args.guidance,
            batch_size=args.refine_batch_size,
        ),
    )


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="turn generated pairs into an nnU-Net or MSD training dataset, or DICOM",
        description="Write imagesTr/, labelsTr/, dataset.json (label names) and provenance/ "
        "(each sample's sidecar JSON) from a folder of pairs; with --format dicom, per pair "
        "CASE/image/*.dcm (a CT or MR series) and CASE/seg.dcm (a DICOM SEG), marked "
        "synthetic.",
    )
    p.add_argument("--in", dest="source", required=True, help="folder of generated pairs")
    p.add_argument("--out", required=True, help="dataset folder (absent or empty)")
    p.add_argument(
        "--format",
        required=True,
        choices=("nnunet", "msd", "dicom"),
        help="dicom: per pair an image series and a DICOM SEG, for PACS, Slicer or OHIF",
    )
    p.add_argument("--labels", help="label table file (default: from the sidecar JSON)")
    p.add_argument("--name", default="MedGen3DSynthetic", help="dataset name in dataset.json")
    p.add_argument(
        "--label-map",
        metavar="FILE|NAME",
        help="translate the pairs' label values onto the table (a mapping file or name)",
    )
    p.add_argument(
        "--channel-name",
        help="the image channel's name in dataset.json, e.g. CT or T1 (default: the "
        "modality recorded in the sidecars)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset in --out wholly"
    )
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    from medgen3d.export import export_dataset
    from medgen3d.labels import LabelTable, label_mapping

    check_output_folder(args.out)
    table = LabelTable.read(args.labels) if args.labels else None
    progress, close = tqdm_progress("export")
    try:
        manifest = export_dataset(
            args.source,
            args.out,
            args.format,
            table=table,
            name=args.name,
            channel_name=args.channel_name,
            label_mapping=label_mapping(args.label_map) if args.label_map else None,
            overwrite=args.overwrite,
            progress=progress,
        )
    finally:
        close()
    log.info("wrote %s", manifest)


def stage_progress() -> tuple[Callable[..., None], Callable[[], None]]:
    """A callback for :class:`~medgen3d.progress.Progress` reports drawing one tqdm bar per
    stage (a new bar whenever the stage changes), and a function closing the last one."""
    current: dict[str, Any] = {"stage": None, "close": lambda: None}

    def show(report: Any) -> None:
        if report.stage != current["stage"]:
            current["close"]()
            current["update"], current["close"] = tqdm_progress(report.stage, unit="step")
            current["stage"] = report.stage
        current["update"](report.done, report.total)

    return show, lambda: current["close"]()


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="measure fidelity, diversity, alignment, anatomy and downstream use of pairs",
        description="Compare synthetic pairs with real ones on the model's grid and write "
        "report.md, metrics.json, figures/ and segmenter.pt (for `medgen3d check`) to --out. "
        "A segmenter (MONAI SegResNet) is trained on part of the real set unless --segmenter "
        "is given; the rest of the real set scores it.",
    )
    p.add_argument("--real", required=True, help="folder of real pairs (any layout)")
    p.add_argument("--synthetic", required=True, help="folder of generated pairs")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--model", default="demo", help="the model whose grid, window and labels apply")
    p.add_argument("--segmenter", help="a segmenter.pt from an earlier report, instead of training")
    # Segmenter training; unset options keep SegmenterSettings' defaults (600 steps, rate
    # 1e-2, 8 filters: enough for the demo's large labels). Real anatomy with small organs
    # needs more (scripts/model_report.sh, benchmarks/README.md).
    p.add_argument("--steps", type=int, help="training steps of each segmenter")
    p.add_argument("--learning-rate", type=float, help="AdamW learning rate of each segmenter")
    p.add_argument(
        "--init-filters", type=int, help="width of each segmenter's first level (a multiple of 8)"
    )
    p.add_argument("--held-out", type=float, default=0.25, help="fraction of real cases held out")
    p.add_argument("--downstream-real", type=int, default=2, help="real cases, downstream arms")
    p.add_argument("--no-downstream", action="store_true", help="skip the downstream experiment")
    p.add_argument(
        "--model-holdout",
        action="store_true",
        help="score on the model's own held-out cases (its recipe's list, never trained on) "
        "and train segmenters on the other real cases, instead of a random split",
    )
    p.add_argument(
        "--from-masks",
        type=int,
        default=0,
        metavar="N",
        help="turn N held-out real masks into images with the model and compare them with "
        "the real images (default: %(default)s, skipped)",
    )
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument("--device", default=Device.AUTO.value, choices=choices(Device))
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    import shlex

    from medgen3d.evaluation.evaluate import EvaluationSettings, evaluate
    from medgen3d.evaluation.report import check_report_folder, write_report
    from medgen3d.evaluation.segmenter import Segmenter, SegmenterSettings
    from medgen3d.model import load_model
    from medgen3d.progress import drain
    from medgen3d.runtime import resolve_device

    check_output_folder(args.out)
    check_report_folder(args.out, args.overwrite)  # before the work, not after it
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    data = model.data
    if args.model_holdout and not data.holdout:
        raise InputError(f"model {args.model} lists no held-out cases; drop --model-holdout")
    segmenter_options = {
        name: getattr(args, name)
        for name in ("steps", "learning_rate", "init_filters")
        if getattr(args, name) is not None
    }
    settings = EvaluationSettings(
        segmenter=SegmenterSettings(**segmenter_options),
        held_out=args.held_out,
        downstream=not args.no_downstream,
        downstream_real=args.downstream_real,
        seed=args.seed,
        held_out_names=data.holdout if args.model_holdout else (),
        from_masks=args.from_masks,
    )
    segmenter = Segmenter.load(args.segmenter, device) if args.segmenter else None
    show, close = stage_progress()
    try:
        evaluation = drain(
            evaluate(
                args.real,
                args.synthetic,
                data,
                settings,
                segmenter=segmenter,
                model=model,
                device=device,
            ),
            show,
        )
    finally:
        close()
    command = "medgen3d " + shlex.join(args.argv)
    write_report(evaluation, args.out, command=command, overwrite=args.overwrite)
    log.info("wrote %s", Path(args.out) / "report.md")


def _add_check(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check",
        help="flag generated pairs with implausible intensities or poor alignment",
        description="Check each pair's per-label intensities against the model's training "
        "ranges and, with --segmenter, its image/mask alignment. Exit status 1 when any "
        "pair is flagged, so scripts can drop them before export.",
    )
    p.add_argument("pairs", nargs="+", help="pair files (image, label or .json) or folders")
    p.add_argument("--model", default="demo", help="the model that generated them")
    p.add_argument("--segmenter", help="segmenter.pt written by `medgen3d evaluate`")
    p.add_argument("--min-dice", type=float, default=None, help="lowest mean Dice accepted")
    p.add_argument("--json", help="also write the findings to this JSON file")
    p.add_argument(
        "--label-map",
        metavar="FILE|NAME",
        help="translate the pairs' label values onto the model's table",
    )
    p.add_argument("--device", default=Device.AUTO.value, choices=choices(Device))
    p.set_defaults(run=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    import json

    from medgen3d.datasets import find_pairs
    from medgen3d.evaluation.check import DEFAULT_MIN_DICE, check_pairs, training_intensities
    from medgen3d.evaluation.segmenter import Segmenter
    from medgen3d.io import atomic_output
    from medgen3d.labels import label_mapping
    from medgen3d.model import load_model
    from medgen3d.progress import drain
    from medgen3d.runtime import resolve_device

    if args.json:
        check_output_file(args.json)
    device = resolve_device(args.device)
    model = load_model(args.model)
    segmenter = Segmenter.load(args.segmenter, device) if args.segmenter else None
    min_dice = DEFAULT_MIN_DICE if args.min_dice is None else args.min_dice
    mapping = label_mapping(args.label_map) if args.label_map else None
    work = check_pairs(
        find_pairs(args.pairs),
        model.data,
        training_intensities(model),
        segmenter,
        min_dice,
        label_mapping=mapping,
    )
    progress, close = tqdm_progress("check", unit="pair")
    try:
        results = drain(work, lambda report: progress(report.done, report.total))
    finally:
        close()
    for result in results:
        print(result.describe())
    if args.json:
        with atomic_output(args.json, overwrite=True) as tmp:
            tmp.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    return 0 if all(r.ok for r in results) else 1


def _add_info(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info", help="say what a model holds (without a model: every bundled model)"
    )
    p.add_argument("model", nargs="?", help=MODEL_HELP)
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> None:
    from medgen3d.model import bundled_models, load_model

    names = [args.model] if args.model else bundled_models()
    print("\n\n".join(load_model(name).describe() for name in names))


def _add_pack_model(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pack-model",
        help="bundle trained stage checkpoints into a model folder (inference weights only)",
    )
    p.add_argument("--in", dest="source", required=True, help="folder with masks.pt etc.")
    p.add_argument("--out", required=True, help="model folder to write")
    _add_mask_model_settings(p)
    p.add_argument(
        "--anatomy-data",
        metavar="DATA",
        help="the model's training data folder: record its training anatomy (held-out cases "
        "left out) afresh, for the anatomy check of generated masks",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing stage files")
    p.set_defaults(run=_run_pack_model)


def _run_pack_model(args: argparse.Namespace) -> None:
    from medgen3d.model import pack_model

    check_output_folder(args.out)
    masks = MaskSettings(
        undo_weighting=args.undo_weighting,
        fill_holes=args.fill_holes,
        min_island_voxels=args.min_island_voxels,
        overlap=args.overlap,
    )
    if masks == MaskSettings():  # none given: a source without a mask stage packs as well
        masks = None
    written = pack_model(
        args.source, args.out, overwrite=args.overwrite, masks=masks, anatomy_data=args.anatomy_data
    )
    for path in written:
        log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)


def _add_calibrate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="fit a mask model's per-structure volume factors to its training cases",
        description="Sample whole label volumes and fit one factor per structure so that each "
        "is drawn at its median volume over the training cases in --data (the model's "
        "held-out cases are never read); write the model, so calibrated, to --out. Weights "
        "are unchanged; generating from --out uses the factors.",
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--data", required=True, help="the model's training data folder")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--iterations", type=int, default=8, help="fits to make (default: %(default)s)")
    p.add_argument(
        "--samples", type=int, default=2, help="volumes sampled per fit (default: %(default)s)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=1000,
        help="seed of the first sample; apart from generate's, so that volumes generated "
        "afterwards check the fit on samples it never saw (default: %(default)s)",
    )
    _add_mask_sampling(p)
    p.add_argument("--device", default=Device.AUTO.value, choices=choices(Device))
    p.add_argument("--overwrite", action="store_true", help="replace existing stage files")
    p.set_defaults(run=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> None:
    from medgen3d.calibration import calibrate_masks, save_calibrated, training_volumes
    from medgen3d.model import load_model
    from medgen3d.progress import Progress, drain
    from medgen3d.runtime import resolve_device

    check_output_folder(args.out)
    masks = _mask_settings(args)
    model = load_model(args.model, resolve_device(args.device))
    model.stage("masks")  # a model without one is refused before the data is read
    targets = training_volumes(model, args.data)
    log.info("median volumes of %d structures over the training cases", len(targets))
    progress, close = tqdm_progress("calibrate", unit="volume")

    def show(report: Progress) -> None:
        errors = {name: f"{value:.3f}" for name, value in (report.metrics or {}).items()}
        progress(report.done, report.total, errors)

    try:
        calibration = drain(
            calibrate_masks(
                model,
                targets,
                iterations=args.iterations,
                samples=args.samples,
                seed=args.seed,
                masks=masks,
            ),
            show,
        )
    finally:
        close()
    for name, target in calibration.target_ml.items():
        sampled = ", ".join(f"{v:.1f}" for v in calibration.volumes_ml[name])
        log.info("%-28s median %8.1f ml, sampled %s", name, target, sampled)
    log.info(
        "kept fit %d of %d (mean |log volume / median| %.2f)",
        calibration.iteration,
        calibration.iterations,
        calibration.error,
    )
    written = save_calibrated(
        model, calibration, args.out, data=args.data, overwrite=args.overwrite
    )
    for path in written:
        log.info("wrote %s", path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medgen3d",
        description="Generate paired 3D medical images and multi-label masks (MedGen3D).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_phantom(subparsers)
    _add_train(subparsers)
    _add_generate(subparsers)
    _add_export(subparsers)
    _add_evaluate(subparsers)
    _add_check(subparsers)
    _add_info(subparsers)
    _add_pack_model(subparsers)
    _add_calibrate(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medgen3d`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # quoted in what a command writes, so its output says how it was made
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        with _signals_as_interrupt():
            status = args.run(args)
    except InputError as exc:
        print(f"medgen3d {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"medgen3d {args.command}: interrupted; files in progress were removed",
            file=sys.stderr,
        )
        return 130
    return status or 0


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM (a scheduler's kill, ``timeout``) and SIGINT into ``KeyboardInterrupt``
    while a command runs, so the clean-up of partly written outputs runs as it does on
    Ctrl-C. SIGINT too, rather than trusting Python's default: a host that embeds
    :func:`main` (an event loop, a test session) may have put its own handler there."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return
    previous = {signum: signal.signal(signum, interrupt) for signum in _INTERRUPTS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
