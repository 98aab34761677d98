"""One checkpoint format for every stage, loaded without executing code.

A checkpoint is a ``torch.save`` file holding only tensors and plain Python values::

    {"format": "medgen3d-checkpoint", "version": 1, "stage": "masks",
     "config": {...},            # everything needed to rebuild and use the model
     "weights": {name: state_dict},   # for inference (EMA weights where kept)
     "training": {...} | None}   # raw weights, optimisers, step: for --resume only

Loading uses ``torch.load(weights_only=True)``, whose unpickler refuses any object that is
not a tensor or a plain container, so a crafted file cannot run code. Networks are rebuilt
from ``config`` by the stage's own builder, never from a class named in the file.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medgen3d.errors import InputError
from medgen3d.io import atomic_output

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MODEL_STAGES",
    "STAGES",
    "Checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT = "medgen3d-checkpoint"
FORMAT_VERSION = 1
# The stages of a generative model (a model folder holds one file per stage) ...
MODEL_STAGES = ("masks", "images", "refiner")
# ... and every stage a checkpoint may hold: those, plus the evaluation segmenter.
STAGES = (*MODEL_STAGES, "segmenter")


@dataclass(frozen=True)
class Checkpoint:
    """The contents of a checkpoint file."""

    stage: str
    config: dict[str, Any]
    weights: dict[str, dict[str, torch.Tensor]]
    training: dict[str, Any] | None = None
    version: int = FORMAT_VERSION
    path: Path | None = None


def save_checkpoint(checkpoint: Checkpoint, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``checkpoint`` atomically (a crash never leaves a truncated file).

    Tensors are moved to the CPU first, so a file saved on a GPU loads anywhere.
    """
    if checkpoint.stage not in STAGES:
        raise ValueError(f"unknown stage {checkpoint.stage!r}; expected one of {STAGES}")
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "stage": checkpoint.stage,
        # A JSON round trip keeps the config to plain values that the safe loader accepts
        # (and that ``medgen3d info`` can print); a non-JSON value fails here, at save time.
        "config": json.loads(json.dumps(checkpoint.config)),
        "weights": _to_cpu(checkpoint.weights),
        "training": _to_cpu(checkpoint.training),
    }
    with atomic_output(path, overwrite=overwrite) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, stage: str | None = None) -> Checkpoint:
    """Read a checkpoint onto the CPU, refusing anything that could execute code.

    Args:
        path: the file.
        stage: when given, the stage the file must hold.

    Raises:
        InputError: naming the file, when it is missing, not a checkpoint, truncated or
            corrupt, written by a newer format version, holds another stage, or carries
            pickled objects other than tensors and plain values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such checkpoint file", path)
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives
        raise InputError("not a medgen3d checkpoint (not a PyTorch checkpoint archive)", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(
            "refused: the file holds Python objects other than weights and plain values "
            "(loading it could run code); only medgen3d checkpoints are accepted",
            path,
        ) from exc
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError) as exc:
        raise InputError(f"not a readable checkpoint (truncated or corrupt: {exc})", path) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError("not a medgen3d checkpoint", path)
    version = payload.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(
            f"checkpoint format version {version} is newer than this medgen3d supports "
            f"({FORMAT_VERSION}); upgrade medgen3d",
            path,
        )
    for key, kind in (("stage", str), ("config", dict), ("weights", dict)):
        if not isinstance(payload.get(key), kind):
            raise InputError(f"damaged checkpoint: its {key!r} entry is missing or invalid", path)
    if stage is not None and payload.get("stage") != stage:
        raise InputError(f"holds the {payload.get('stage')!r} stage, not {stage!r}", path)
    return Checkpoint(
        stage=payload["stage"],
        config=payload["config"],
        weights=payload["weights"],
        training=payload.get("training"),
        version=version,
        path=path,
    )


def _to_cpu(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_to_cpu(v) for v in tree)
    return tree
