"""Find image/label pairs on disk and load them onto a model's grid.

Layouts recognised by :func:`discover_pairs`, tried in this order:

* **MSD / nnU-Net**: ``imagesTr/`` and ``labelsTr/``. Images are ``CASE.nii.gz`` (MSD) or
  ``CASE_0000.nii.gz`` (nnU-Net; only channel ``_0000`` is used, the models are
  single-modality); labels are ``CASE.nii.gz``.
* **Paired files**: ``CASE_image.nii.gz`` beside ``CASE_label.nii.gz`` (what
  ``medgen3d phantom`` and ``medgen3d generate`` write).
* **Case folders**: ``CASE/image.nii.gz`` and ``CASE/label.nii.gz``, or the given folder is
  itself one case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from medgen3d.errors import InputError
from medgen3d.foreground import ForegroundFill
from medgen3d.io import NIFTI_SUFFIXES, Volume, is_nifti_path, load_pair, nifti_stem
from medgen3d.labels import LabelTable
from medgen3d.preprocessing import Preprocessing, preprocess_pair

__all__ = ["CasePaths", "case_from_file", "discover_pairs", "find_pairs", "load_case"]


@dataclass(frozen=True)
class CasePaths:
    """Where one case's image and label map are."""

    name: str
    image: Path
    label: Path


def discover_pairs(root: str | Path) -> list[CasePaths]:
    """List the image/label pairs under ``root``, sorted by case name.

    Raises:
        InputError: naming ``root``, when it does not exist, holds no pairs in any known
            layout, or an image has no label map.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError("no such folder", root)
    for finder in (_msd_or_nnunet, _paired_files, _case_folders):
        pairs = finder(root)
        if pairs:
            return sorted(pairs, key=lambda p: p.name)
    raise InputError(
        "no image/label pairs found; expected imagesTr/ + labelsTr/ (MSD, nnU-Net), "
        "CASE_image.nii.gz + CASE_label.nii.gz files, or CASE/image.nii.gz + CASE/label.nii.gz",
        root,
    )


def case_from_file(path: str | Path) -> CasePaths:
    """The pair that a file of a ``CASE_image`` / ``CASE_label`` pair belongs to.

    ``path`` may be either file of the pair, or ``CASE.json`` (the sidecar ``medgen3d
    generate`` writes beside them).

    Raises:
        InputError: naming ``path``, when it is not part of such a pair or its partner is
            missing.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    stem = path.name[: -len(".json")] if path.suffix == ".json" else nifti_stem(path)
    case = stem.removesuffix("_image").removesuffix("_label")
    image = _first_existing(path.parent, f"{case}_image")
    label = _first_existing(path.parent, f"{case}_label")
    if image is None or label is None:
        raise InputError(
            f"is not part of a {case}_image.nii.gz + {case}_label.nii.gz pair in its folder", path
        )
    return CasePaths(case, image, label)


def find_pairs(paths: Sequence[str | Path]) -> list[CasePaths]:
    """The pairs named by ``paths``: folders in any :func:`discover_pairs` layout, or files
    of single pairs (:func:`case_from_file`), in the order given."""
    cases = []
    for path in paths:
        found = discover_pairs(path) if Path(path).is_dir() else [case_from_file(path)]
        cases.extend(found)
    return cases


def load_case(
    case: CasePaths,
    table: LabelTable,
    preprocessing: Preprocessing,
    label_mapping: Mapping[int, int] | None = None,
    fill: ForegroundFill | None = None,
) -> tuple[Volume, Volume]:
    """Load a pair, translate its labels onto ``table`` and bring it onto the model grid.

    Args:
        case: the pair's paths.
        table: the model's label table.
        preprocessing: target spacing, in-plane size and intensity window.
        label_mapping: dataset value -> table value; ``None`` when the dataset already uses
            the table's values.
        fill: derives a label for the unlabelled subject (e.g. the head around a brain
            parcellation) on the model grid.

    Returns:
        ``(image in [-1, 1], label with table values)``, sharing one affine.

    Raises:
        InputError: naming the file, for unreadable files, mismatched grids or label values
            the table (or mapping) does not cover.
    """
    image, label = load_pair(case.image, case.label)
    if label_mapping is None:
        table.check_values(label.data, case.label)
    else:
        label = label.with_data(table.remap(label.data, label_mapping, case.label))
    image, label = preprocess_pair(image, label, preprocessing)
    if fill is not None:
        label = label.with_data(fill.apply(image.data, label.data))
    return image, label


def _nifti_files(folder: Path) -> list[Path]:
    """NIfTI files in ``folder``, skipping hidden ones (temporary outputs start with a dot)."""
    found = (p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in found if is_nifti_path(p))


def _msd_or_nnunet(root: Path) -> list[CasePaths]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not (images_dir.is_dir() and labels_dir.is_dir()):
        return []
    labels = {nifti_stem(p): p for p in _nifti_files(labels_dir)}
    pairs = []
    for image in _nifti_files(images_dir):
        stem = nifti_stem(image)
        case, channel = _split_nnunet_channel(stem)
        if stem in labels:  # MSD, checked first: case ids such as "case_0001" look like channels
            pairs.append(CasePaths(stem, image, labels[stem]))
        elif channel not in (None, "0000"):
            continue  # further nnU-Net modalities: the models use channel 0000 only
        elif case in labels:
            pairs.append(CasePaths(case, image, labels[case]))
        else:
            raise InputError(f"image has no label map in {labels_dir}", image)
    return pairs


def _split_nnunet_channel(stem: str) -> tuple[str, str | None]:
    """``"lung_001_0000"`` -> ``("lung_001", "0000")``; no channel suffix -> ``(stem, None)``."""
    case, _, channel = stem.rpartition("_")
    if case and len(channel) == 4 and channel.isdigit():
        return case, channel
    return stem, None


def _paired_files(root: Path) -> list[CasePaths]:
    pairs = []
    for image in _nifti_files(root):
        stem = nifti_stem(image)
        if not stem.endswith("_image"):
            continue
        case = stem[: -len("_image")]
        label = _first_existing(root, f"{case}_label")
        if label is None:
            raise InputError(f"image has no {case}_label.nii.gz beside it", image)
        pairs.append(CasePaths(case, image, label))
    return pairs


def _case_folders(root: Path) -> list[CasePaths]:
    folders = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    pairs = []
    for folder in folders:
        image = _first_existing(folder, "image")
        label = _first_existing(folder, "label")
        if image is not None and label is None:
            raise InputError("image has no label.nii.gz beside it", image)
        if image is not None:
            pairs.append(CasePaths(folder.name, image, label))
    return pairs


def _first_existing(folder: Path, stem: str) -> Path | None:
    candidates = (folder / f"{stem}{suffix}" for suffix in NIFTI_SUFFIXES)
    return next((path for path in candidates if path.is_file()), None)
