"""The models shipped inside the package, by name.

Kept apart from :mod:`medgen3d.model` (which needs torch) so the napari widget can list the
bundled models when it opens without importing the engine's heavy dependencies.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["BUNDLED_MODELS", "DEMO", "bundled_model_of", "bundled_model_path", "bundled_models"]

DEMO = "demo"
# model name -> its folder inside the installed package
BUNDLED_MODELS = {DEMO: "demo", "brain-mri": "brain_mri", "headneck-ct": "headneck_ct"}
# The files a model folder may hold, one per stage (see medgen3d.checkpoint.MODEL_STAGES).
_STAGE_FILES = ("masks.pt", "images.pt", "refiner.pt")


def bundled_model_path(name: str) -> Path:
    """The folder of the bundled model ``name`` (a key of :data:`BUNDLED_MODELS`)."""
    return Path(str(resources.files("medgen3d") / BUNDLED_MODELS[name]))


def bundled_models() -> list[str]:
    """The names of the bundled models this installation holds stage files of."""
    return [
        name
        for name in BUNDLED_MODELS
        if any((bundled_model_path(name) / file).is_file() for file in _STAGE_FILES)
    ]


def bundled_model_of(stage_file: str | Path) -> str | None:
    """The name of the bundled model ``stage_file`` belongs to, or None for any other file:
    a run started from a bundled model records its name, not this installation's path."""
    folder = Path(stage_file).resolve().parent
    for name in BUNDLED_MODELS:
        if bundled_model_path(name).resolve() == folder:
            return name
    return None
