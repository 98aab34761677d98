"""A generative model: the three stages, loaded together and checked against each other.

On disk a model is a folder holding any of ``masks.pt``, ``images.pt`` and
``refiner.pt`` (one checkpoint per stage), or a single stage's checkpoint file. A stage may
be missing: a masks-only model generates label maps, an images-only model turns a user's
masks into images. ``"demo"`` names the small model bundled with the package.

All stages present must agree on the data they were trained for (label table, grid,
intensity window, sequence length and overlap); a model whose stages disagree is refused
with the file that differs.

Models bundled with the package are loaded by name (:data:`BUNDLED_MODELS`): ``demo``
(the phantom), ``brain-mri`` and ``headneck-ct``.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medgen3d.bundled import BUNDLED_MODELS, DEMO, bundled_model_path, bundled_models
from medgen3d.checkpoint import MODEL_STAGES, Checkpoint, load_checkpoint, save_checkpoint
from medgen3d.errors import InputError
from medgen3d.recipe import DataSpec
from medgen3d.settings import MaskSettings
from medgen3d.train.bank import CaseBank

__all__ = [
    "BUNDLED_MODELS",
    "DEMO",
    "GenerativeModel",
    "bundled_model_path",
    "bundled_models",
    "demo_model_path",
    "load_model",
    "pack_model",
    "save_model",
    "stage_file",
]


# Slices generated when neither the user nor the model says otherwise.
DEFAULT_DEPTH = 64
# stage -> (module, class) whose ``from_checkpoint(checkpoint, device)`` builds it
STAGE_MODELS = {
    "masks": ("medgen3d.stages.masks", "MaskDiffusionModel"),
    "images": ("medgen3d.stages.images", "ImageGenerator"),
    "refiner": ("medgen3d.stages.refiner", "SemanticRefiner"),
}


@dataclass
class GenerativeModel:
    """The loaded stages of one model and the data spec they share.

    Attributes:
        data: labels, grid, window, ``L`` and ``k``.
        stages: stage name -> loaded stage object; missing stages are absent.
        checkpoints: stage name -> the checkpoint it came from (config, provenance).
        source: the folder or file the model was loaded from, or ``"demo"``.
        digest: SHA-256 over the stage files, recorded with every generated sample.
    """

    data: DataSpec
    stages: dict[str, Any]
    checkpoints: dict[str, Checkpoint]
    source: str
    digest: str

    def stage(self, name: str) -> Any:
        """The loaded stage, or an :class:`InputError` saying the model lacks it."""
        if name not in self.stages:
            raise InputError(
                f"model {self.source} has no {name!r} stage (it has: {', '.join(self.stages)})"
            )
        return self.stages[name]

    def recorded(self, key: str) -> Any:
        """What training recorded under ``key`` in the provenance of the first stage that
        has it (stages in mask, image, refiner order), or ``None``."""
        for checkpoint in self.checkpoints.values():
            value = checkpoint.config.get("provenance", {}).get(key)
            if value:
                return value
        return None

    @property
    def typical_depth(self) -> int:
        """Slices of a typical training volume (the median training recorded), the
        default depth of a generated volume; 64 for models that did not record it."""
        depth = self.recorded("depth")
        return int(depth["median"]) if depth else DEFAULT_DEPTH

    def summary(self) -> str:
        """One short line: what the model generates, on which grid."""
        pre = self.data.preprocessing
        return (
            f"{Path(self.source).name or self.source}: {pre.window.modality.upper()}, "
            f"{_size(pre.size)} at {_spacing(pre.spacing)}, {len(self.data.labels) - 1} labels"
        )

    def describe(self) -> str:
        """A few readable lines: what the model generates and how it was trained."""
        pre = self.data.preprocessing
        window = pre.window
        lines = [
            f"model:  {self.source}  (sha256 {self.digest[:12]})",
            "labels: "
            + ", ".join(
                f"{v} {n}"
                for v, n in zip(self.data.labels.values, self.data.labels.names, strict=True)
            ),
            f"grid:   {_size(pre.size)} in-plane, spacing {_spacing(pre.spacing)} (z, y, x); "
            f"sequences of {self.data.sequence_length} slices overlapping by {self.data.overlap}",
            f"intensity: {window.modality.upper()} "
            + (
                f"window [{window.low:g}, {window.high:g}] HU"
                if window.modality == "ct"
                else f"percentiles [{window.low:g}, {window.high:g}]"
            ),
        ]
        about = self._training_data()
        if about:
            lines += about
        for name in MODEL_STAGES:
            if name not in self.checkpoints:
                lines.append(f"{name + ':':9s}(missing)")
                continue
            provenance = self.checkpoints[name].config.get("provenance", {})
            lines.append(
                f"{name + ':':9s}trained {provenance.get('steps', '?')} steps"
                + _lineage(provenance.get("init_from"))
                + f" on {provenance.get('cases', '?')} cases, saved {provenance.get('saved', '?')}"
            )
            calibration = provenance.get("calibration")
            if calibration:
                lines.append(
                    f"{'':9s}volumes calibrated on {len(calibration['target_ml'])} structures "
                    f"(mean |log volume / training median| {calibration['error']:.2f}, "
                    f"{calibration['masks']['sampler']} {calibration['masks']['steps']} steps)"
                )
            network = self.checkpoints[name].config["model"]
            if network.get("fill_holes"):
                lines.append(f"{'':9s}closes the holes in each generated slice (fill_holes)")
            if islands := network.get("min_island_voxels"):
                lines.append(
                    f"{'':9s}gives a structure's pieces under {islands} voxels, all but its "
                    "largest, to their neighbours (min_island_voxels)"
                )
            if (overlap := network.get("sampling_overlap")) is not None:
                lines.append(
                    f"{'':9s}generates each sequence from the {overlap} slices it shares with "
                    "those before it (sampling_overlap)"
                )
        lines.append(self._anatomy_check())
        return "\n".join(lines)

    def _anatomy_check(self) -> str:
        """Whether generated masks can be checked against the training anatomy."""
        reference = (self.recorded("anatomy") or {}).get("reference")
        if reference is None:
            return "check:  none (no training anatomy recorded; pack-model --anatomy-data adds it)"
        return (
            "check:  generated masks against the training masks' anatomy (the central "
            f"{reference['coverage']:.0%} of the cases), drawn again while flagged"
        )

    def _training_data(self) -> list[str]:
        """What the recipe says the model was trained on, its licence and held-out cases."""
        provenance = next(iter(self.checkpoints.values())).config.get("provenance", {})
        dataset = provenance.get("dataset") or {}
        lines = []
        if dataset.get("name"):
            lines.append(f"data:   {dataset['name']}")
        if dataset.get("licence"):
            lines.append(f"licence: {dataset['licence']}")
        if self.data.holdout:
            lines.append(
                f"held out: {len(self.data.holdout)} cases never trained on "
                f"({', '.join(self.data.holdout[:3])}, ...)"
            )
        return lines


def demo_model_path() -> Path:
    """The folder of the bundled demo model inside the installed package."""
    return bundled_model_path(DEMO)


def stage_file(spec: str | Path, stage: str) -> Path:
    """The checkpoint file of ``stage`` in a model (bundled name or folder), or ``spec``
    itself when it is a file.

    Raises:
        InputError: naming the path, when the model has no such stage.
    """
    source = str(spec)
    path = bundled_model_path(source) if source in BUNDLED_MODELS else Path(spec)
    files = _stage_files(path, source)
    if None in files:
        return files[None]
    if stage not in files:
        raise InputError(f"has no {stage}.pt (it has: {', '.join(map(str, files))})", path)
    return files[stage]


def load_model(spec: str | Path = DEMO, device: torch.device | str = "cpu") -> GenerativeModel:
    """Load a model folder, a single stage file, or a bundled model by name.

    Raises:
        InputError: naming the file, for a missing path, a folder with no stage files, an
            unreadable or unsafe checkpoint, a file whose stage differs from its name, or
            stages trained for different labels or grids.
    """
    source = str(spec)
    path = bundled_model_path(source) if source in BUNDLED_MODELS else Path(spec)
    files = _stage_files(path, source)
    checkpoints: dict[str, Checkpoint] = {}
    for expected, file in files.items():
        checkpoint = _load_stage(file, expected)
        checkpoints[checkpoint.stage] = checkpoint
    data = _shared_data_spec(checkpoints)
    stages = {name: _build_stage(name, ckpt, device) for name, ckpt in checkpoints.items()}
    return GenerativeModel(data, stages, checkpoints, source, _digest(list(files.values())))


def pack_model(
    source: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    masks: MaskSettings | None = None,
    anatomy_data: str | Path | None = None,
) -> list[Path]:
    """Copy the stage checkpoints in ``source`` to ``out`` with inference weights only,
    and ``masks``' sampling settings, where given, as the mask stage's own
    (:func:`with_mask_sampling`).

    Training runs save optimiser state and raw weights for ``--resume``; a model to ship
    needs neither, which makes it several times smaller. The stages are checked against
    each other (:func:`load_model`'s rules) before anything is written.

    ``anatomy_data``, the model's training data folder, records the anatomy of its
    training cases (held-out cases left out) afresh in every stage, and the reference the
    anatomy check reads in the mask stage only, as training does
    (:meth:`~medgen3d.train.bank.CaseBank.anatomy_ranges`): a model trained before a
    statistic was recorded gets it without retraining.

    Raises:
        InputError: for sampling settings and a source without a mask stage, or naming
            the file, for unreadable training data.
    """
    files = _stage_files(Path(source), str(source))
    checkpoints: dict[str, Checkpoint] = {}
    for expected, file in files.items():
        checkpoint = _load_stage(file, expected)
        checkpoints[checkpoint.stage] = checkpoint
    spec = _shared_data_spec(checkpoints)
    if anatomy_data is not None:
        bank = CaseBank.from_folder(anatomy_data, spec, exclude=spec.holdout)
        anatomy = bank.anatomy_ranges(spec.preprocessing.spacing, spec.labels.names)
        ranges = {key: value for key, value in anatomy.items() if key != "reference"}
        checkpoints = {
            stage: _with_provenance(checkpoint, anatomy=anatomy if stage == "masks" else ranges)
            for stage, checkpoint in checkpoints.items()
        }
    if masks is not None:
        if "masks" not in checkpoints:
            raise InputError("has no masks stage to set sampling settings for", source)
        checkpoints["masks"] = with_mask_sampling(checkpoints["masks"], masks)
    return save_model(checkpoints.values(), out, overwrite=overwrite)


def with_mask_sampling(checkpoint: Checkpoint, masks: MaskSettings) -> Checkpoint:
    """The mask stage ``checkpoint`` with ``masks``' ``undo_weighting``, ``fill_holes``,
    ``min_island_voxels`` and ``overlap`` (as ``sampling_overlap``), where given, as its
    own: settings read only when sampling, so a model is shipped with the ones chosen for
    it, without retraining."""
    network = dict(checkpoint.config["model"])
    for key, setting in (
        ("undo_weighting", "undo_weighting"),
        ("fill_holes", "fill_holes"),
        ("min_island_voxels", "min_island_voxels"),
        ("sampling_overlap", "overlap"),
    ):
        value = getattr(masks, setting)
        if value is not None:
            network[key] = value
    config = {**checkpoint.config, "model": network}
    return Checkpoint(checkpoint.stage, config, checkpoint.weights, checkpoint.training)


def _with_provenance(checkpoint: Checkpoint, **facts: Any) -> Checkpoint:
    """``checkpoint`` with ``facts`` recorded in (or replacing those of) its provenance."""
    provenance = {**checkpoint.config.get("provenance", {}), **facts}
    config = {**checkpoint.config, "provenance": provenance}
    return Checkpoint(checkpoint.stage, config, checkpoint.weights, checkpoint.training)


def save_model(
    checkpoints: Iterable[Checkpoint], out: str | Path, *, overwrite: bool = False
) -> list[Path]:
    """Write each checkpoint to ``out/<stage>.pt`` with its config and inference weights
    only (no training state), and return the paths written."""
    written = []
    for checkpoint in checkpoints:
        slim = Checkpoint(checkpoint.stage, checkpoint.config, checkpoint.weights)
        written.append(
            save_checkpoint(slim, Path(out) / f"{checkpoint.stage}.pt", overwrite=overwrite)
        )
    return written


def _stage_files(path: Path, source: str) -> dict[str | None, Path]:
    """stage -> file (``None`` as key: a single file whose stage is read from it)."""
    if path.is_file():
        return {None: path}
    if not path.is_dir() or (source in BUNDLED_MODELS and not any(path.glob("*.pt"))):
        if source in BUNDLED_MODELS:
            raise InputError(
                f"the {source} model is not bundled with this installation (bundled: "
                f"{', '.join(bundled_models()) or 'none'})",
                path,
            )
        raise InputError("no such model file or folder", path)
    files = {
        stage: path / f"{stage}.pt" for stage in MODEL_STAGES if (path / f"{stage}.pt").is_file()
    }
    if not files:
        raise InputError(
            f"no stage checkpoints ({', '.join(s + '.pt' for s in MODEL_STAGES)})", path
        )
    return files


def _load_stage(file: Path, expected: str | None) -> Checkpoint:
    """The checkpoint in ``file``, which must hold ``expected`` or, if ``None``, any model stage
    (a file of another kind, such as an evaluation segmenter, is no part of a model)."""
    checkpoint = load_checkpoint(file, stage=expected)
    if checkpoint.stage not in MODEL_STAGES:
        raise InputError(
            f"holds the {checkpoint.stage!r} stage, not a model stage ({', '.join(MODEL_STAGES)})",
            file,
        )
    return checkpoint


def _shared_data_spec(checkpoints: dict[str, Checkpoint]) -> DataSpec:
    reference_name, reference = next(iter(checkpoints.items()))
    for checkpoint in checkpoints.values():
        mine, theirs = checkpoint.config["data"], reference.config["data"]
        for key, what in (
            ("labels", "label table"),
            ("size", "in-plane size"),
            ("spacing", "spacing"),
            ("window", "intensity window"),
            ("sequence_length", "sequence length"),
            ("overlap", "overlap"),
        ):
            if mine.get(key) != theirs.get(key):
                raise InputError(
                    f"its {what} ({mine.get(key)}) differs from that of the {reference_name} "
                    f"stage ({theirs.get(key)}); all stages of a model must match",
                    checkpoint.path,
                )
    return DataSpec.from_dict(reference.config["data"])


def _build_stage(name: str, checkpoint: Checkpoint, device: torch.device | str) -> Any:
    module_name, class_name = STAGE_MODELS[name]
    stage_class = getattr(importlib.import_module(module_name), class_name)
    try:
        return stage_class.from_checkpoint(checkpoint, device)
    except (KeyError, ValueError, RuntimeError) as exc:  # missing or mis-shaped weights
        raise InputError(f"weights do not fit the {name} network ({exc})", checkpoint.path) from exc


def _digest(files: list[Path]) -> str:
    sha = hashlib.sha256()
    for file in sorted(files):
        sha.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()


def _size(size: tuple[int, int] | None) -> str:
    return "any size" if size is None else f"{size[0]}x{size[1]}"


def _spacing(spacing: tuple[float, float, float] | None) -> str:
    return "as the input" if spacing is None else " x ".join(f"{s:g}" for s in spacing) + " mm"


def _lineage(init_from: dict[str, Any] | None) -> str:
    """`` (after N steps of A, after M steps of B)``: the runs whose weights a stage's
    training started from, nearest first (``provenance["init_from"]``, nested)."""
    runs = []
    while init_from:
        runs.append(f"after {init_from.get('steps', '?')} steps of {init_from['source']}")
        init_from = init_from.get("init_from")
    return f" ({', '.join(runs)})" if runs else ""
