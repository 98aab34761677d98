"""The ``medgen3d`` command: argument parsing and nothing else.

Each subcommand maps its options onto one engine function. User errors
(:class:`~medgen3d.errors.InputError`) print one line and exit with status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from tqdm import tqdm

from medgen3d import __version__
from medgen3d.errors import InputError

__all__ = ["build_parser", "main"]

log = logging.getLogger("medgen3d")


def tqdm_progress(description: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar, and a function closing it."""
    bar: tqdm | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=description, unit="case", dynamic_ncols=True)
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
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from medgen3d.train.run import train_stage

    bar: tqdm | None = None

    def progress(step: int, total: int, losses: dict[str, float]) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=step - 1, desc=f"train {args.stage}", unit="step")
        bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()}, refresh=False)
        bar.update(step - bar.n)

    try:
        train_stage(
            args.stage,
            args.data,
            args.config,
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            max_steps=args.max_steps,
            device=args.device,
            progress=progress,
        )
    finally:
        if bar is not None:
            bar.close()


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="turn generated pairs into an nnU-Net or MSD training dataset",
        description="Write imagesTr/, labelsTr/, dataset.json (label names) and provenance/ "
        "(each sample's sidecar JSON) from a folder of pairs.",
    )
    p.add_argument("--in", dest="source", required=True, help="folder of generated pairs")
    p.add_argument("--out", required=True, help="dataset folder (absent or empty)")
    p.add_argument("--format", required=True, choices=("nnunet", "msd"))
    p.add_argument("--labels", help="label table file (default: from the sidecar JSON)")
    p.add_argument("--name", default="MedGen3DSynthetic", help="dataset name in dataset.json")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    from medgen3d.export import export_dataset
    from medgen3d.labels import LabelTable

    table = LabelTable.read(args.labels) if args.labels else None
    progress, close = tqdm_progress("export")
    try:
        manifest = export_dataset(
            args.source,
            args.out,
            args.format,
            table=table,
            name=args.name,
            overwrite=args.overwrite,
            progress=progress,
        )
    finally:
        close()
    log.info("wrote %s", manifest)


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
    _add_export(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medgen3d`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.run(args)
    except InputError as exc:
        print(f"medgen3d {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medgen3d {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
