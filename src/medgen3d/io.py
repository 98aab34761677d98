"""NIfTI in and out with nibabel, keeping geometry exact.

Every volume the engine handles is a :class:`Volume`: voxel data as ``(Z, Y, X)`` axial
slices of the closest RAS-canonical grid (``Z`` increases towards superior, so slice 0 is
the most inferior one), the 4x4 affine of that grid in nibabel's index order ``(i, j, k) =
(x, y, z)``, and the orientation codes of the file it came from. Processing always sees
RAS; :func:`save_volume` writes back in the file's own orientation, so a load/save round
trip reproduces the data and the affine of the original.

Writers never leave half-written files behind (:func:`atomic_output` writes to a temporary
name and renames) and never replace a file unless asked to.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, ornt_transform

from medgen3d.errors import InputError, OutputExistsError

__all__ = [
    "GRID_TOLERANCE_MM",
    "NIFTI_SUFFIXES",
    "Volume",
    "atomic_folder",
    "atomic_output",
    "atomic_outputs",
    "check_folder_free",
    "check_output_file",
    "check_output_folder",
    "check_same_geometry",
    "is_nifti_path",
    "load_pair",
    "load_volume",
    "load_volume_any",
    "nifti_stem",
    "save_volume",
    "stored_form",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
RAS = ("R", "A", "S")
# Affines closer than this (mm) describe one grid: far below any voxel size, above the
# float32 rounding of a NIfTI header.
GRID_TOLERANCE_MM = 1e-4
VolumeKind = Literal["image", "label"]


@dataclass(frozen=True)
class Volume:
    """One 3D volume on a RAS-canonical grid.

    Attributes:
        data: voxel values, shape ``(Z, Y, X)``; float32 for images, unsigned integers
            for labels.
        affine: 4x4 voxel-to-world (mm, RAS+) matrix of the canonical grid, indexed like
            nibabel ``(x, y, z)``: ``affine @ [x, y, z, 1]`` is the world position of
            ``data[z, y, x]``.
        source_axcodes: orientation codes of the file the volume came from (e.g.
            ``("L", "P", "S")``); :func:`save_volume` writes in this orientation.
        header: the NIfTI header of the source file, when there is one, so that units and
            intent codes survive a round trip.
    """

    data: np.ndarray
    affine: np.ndarray
    source_axcodes: tuple[str, str, str] = RAS
    header: nib.Nifti1Header | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise ValueError(f"Volume data must be (Z, Y, X), got shape {self.data.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``(Z, Y, X)`` (column norms of the affine)."""
        sx, sy, sz = np.linalg.norm(self.affine[:3, :3], axis=0)
        return float(sz), float(sy), float(sx)

    @property
    def zyx_affine(self) -> np.ndarray:
        """The affine with voxel and world axes both in ``(z, y, x)`` order.

        This is the matrix a viewer that indexes ``data[z, y, x]`` needs (napari's layer
        ``affine``), with world axes ordered like the array axes.
        """
        perm = np.eye(4)[[2, 1, 0, 3]]
        return perm @ self.affine @ perm

    def on_grid_of(self, other: Volume) -> bool:
        """Whether ``other`` has this volume's shape and affine, within
        :data:`GRID_TOLERANCE_MM` (float32 rounding in a header must not part a pair)."""
        return self.shape == other.shape and np.allclose(
            self.affine, other.affine, atol=GRID_TOLERANCE_MM
        )

    def with_data(self, data: np.ndarray) -> Volume:
        """The same geometry around new voxel data of the same shape (e.g. a generated mask)."""
        if data.shape != self.data.shape:
            raise ValueError(f"shape {data.shape} differs from the volume's {self.data.shape}")
        return replace(self, data=data)


def is_nifti_path(path: str | Path) -> bool:
    """Whether the file name ends in ``.nii`` or ``.nii.gz``."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | Path) -> str:
    """The file name without ``.nii`` / ``.nii.gz`` (in any case)."""
    name = Path(path).name
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_volume(path: str | Path, kind: VolumeKind = "image") -> Volume:
    """Read a NIfTI file and bring it to the RAS-canonical grid.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        kind: ``"image"`` gives float32 data; ``"label"`` requires integer values >= 0 and
            gives uint8 (or uint16 when a value exceeds 255).

    Returns:
        The volume, data ``(Z, Y, X)``.

    Raises:
        InputError: naming the file, when it is not NIfTI, cannot be read (corrupt or
            truncated), is not 3D, holds NaN/Inf, or (labels) holds non-integer or
            negative values.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    if not is_nifti_path(path):
        raise InputError("not a NIfTI file (expected .nii or .nii.gz)", path)
    try:
        img = nib.load(path)
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise InputError(f"not a NIfTI image ({type(img).__name__})", path)
        img = _squeeze_to_3d(img, path)
        source_axcodes = tuple(nib.aff2axcodes(img.affine))
        canonical = nib.as_closest_canonical(img)
        raw = np.asanyarray(canonical.dataobj)
    except InputError:
        raise
    except Exception as exc:  # nibabel raises many types for unreadable/truncated files
        raise InputError(f"cannot be read as NIfTI ({type(exc).__name__}: {exc})", path) from exc
    data = np.ascontiguousarray(raw.transpose(2, 1, 0))
    data = _check_label_values(data, path) if kind == "label" else _check_image_values(data, path)
    header = img.header.copy()
    # nibabel moves the scale factors from the header into the data proxy on loading; put
    # them back, so the header says how the file stored its values (see stored_form)
    header.set_slope_inter(getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0))
    return Volume(data, canonical.affine.copy(), source_axcodes, header)


def load_pair(image_path: str | Path, label_path: str | Path) -> tuple[Volume, Volume]:
    """Read an image and its label map, which must share one grid.

    Affines that differ only by header rounding (:func:`check_same_geometry`) are made one:
    the label takes the image's, so the pair never carries two geometries onwards.

    Raises:
        InputError: as :func:`load_volume`, or when shapes or affines differ.
    """
    image = load_volume(image_path, "image")
    label = load_volume(label_path, "label")
    check_same_geometry(image, label, label_path, image_path)
    return image, replace(label, affine=image.affine.copy())


def check_same_geometry(
    reference: Volume, other: Volume, other_path: str | Path | None, reference_name: object
) -> None:
    """Raise an :class:`InputError` naming ``other_path`` when grids differ
    (:meth:`Volume.on_grid_of`)."""
    if reference.shape != other.shape:
        raise InputError(
            f"shape {other.shape} (Z, Y, X) differs from {reference.shape} of {reference_name}",
            other_path,
        )
    if not reference.on_grid_of(other):
        raise InputError(f"affine differs from that of {reference_name}", other_path)


def save_volume(
    volume: Volume,
    path: str | Path,
    *,
    overwrite: bool = False,
    dtype: np.dtype | type | None = None,
    scaling: tuple[float, float] = (1.0, 0.0),
) -> Path:
    """Write a volume as NIfTI in its source orientation, atomically.

    Args:
        volume: what to write.
        path: destination ending in ``.nii`` or ``.nii.gz``.
        overwrite: replace an existing file; otherwise an existing file is an error.
        dtype: on-disk data type; defaults to the data's own.
        scaling: ``(slope, intercept)`` of the NIfTI header: the data are stored as
            ``(value - intercept) / slope`` in ``dtype`` (see :func:`stored_form`).

    Returns:
        The written path.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise InputError("output name must end in .nii or .nii.gz", path)
    slope, intercept = scaling
    data = volume.data if scaling == (1.0, 0.0) else (volume.data - intercept) / slope
    if dtype is not None and np.dtype(dtype).kind in "iu" and data.dtype.kind == "f":
        data = np.rint(data)
    data = data if dtype is None else data.astype(dtype)
    header = volume.header.copy() if volume.header is not None else None
    xyz = np.ascontiguousarray(data.transpose(2, 1, 0))
    canonical = nib.Nifti1Image(xyz, volume.affine, header)
    canonical.set_data_dtype(data.dtype)
    canonical.header.set_xyzt_units("mm", canonical.header.get_xyzt_units()[1] or "sec")
    to_source = ornt_transform(axcodes2ornt(RAS), axcodes2ornt(volume.source_axcodes))
    out = canonical.as_reoriented(to_source)
    out.set_sform(out.affine, code=1)
    out.set_qform(out.affine, code=1)
    # Unscaled unless asked: labels and floats round-trip exactly.
    out.header.set_slope_inter(slope, intercept)
    with atomic_output(path, overwrite=overwrite) as tmp:
        nib.save(out, tmp)
    return path


def stored_form(volume: Volume) -> tuple[np.dtype, tuple[float, float]] | None:
    """The on-disk data type and ``(slope, intercept)`` of the file ``volume`` was read
    from, when its values (perhaps edited) still fit them exactly; ``None`` otherwise.

    Saving in the source's form keeps an int16 CT int16 and an 8-bit MRI with a scale
    factor as it was, instead of widening both to float32.
    """
    header = volume.header
    if header is None:
        return None
    dtype = np.dtype(header.get_data_dtype())
    slope, intercept = header.get_slope_inter()
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    intercept = 0.0 if intercept is None or not np.isfinite(intercept) else float(intercept)
    if dtype.kind == "f":
        return dtype, (slope, intercept)
    if dtype.kind not in "iu":
        return None
    raw = (volume.data.astype(np.float64) - intercept) / slope
    info = np.iinfo(dtype)
    fits = raw.min() >= info.min and raw.max() <= info.max
    if not fits or not np.allclose(raw, np.rint(raw), atol=1e-3):
        return None
    return dtype, (slope, intercept)


@contextlib.contextmanager
def atomic_output(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the file's suffixes (nibabel chooses compression by them).
    On any error the temporary file is removed and ``path`` is left as it was.

    Raises:
        OutputExistsError: when ``path`` exists and ``overwrite`` is false.
    """
    with atomic_outputs([path], overwrite=overwrite) as (tmp,):
        yield tmp


def check_output_folder(path: str | Path) -> None:
    """Refuse an output folder that cannot be written, before any work starts.

    Raises:
        InputError: naming ``path``, when it is an existing file, or it (or the nearest
            existing folder above it, where it would be created) is not writable.
    """
    check_output_location(path, folder=True)


def check_output_file(path: str | Path) -> None:
    """:func:`check_output_folder` for an output file: refuse an existing folder, or a
    location whose folder cannot be written."""
    check_output_location(path, folder=False)


def check_output_location(path: str | Path, *, folder: bool) -> None:
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise InputError("is a file, not a folder; choose a folder for the output", path)
    if not folder and path.is_dir():
        raise InputError("is a folder; give the path of the file to write", path)
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot be created: {existing} is a file", path)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot be written: no write permission in {existing}", path)


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[str | Path], *, overwrite: bool = False) -> Iterator[list[Path]]:
    """:func:`atomic_output` for files that belong together (an image, its label map and
    their sidecar): all are written to temporary names, and renamed onto ``paths`` only
    when every one is written, in order (put the file that marks completion last).

    On any error or interruption (``KeyboardInterrupt``, or ``SystemExit`` from a SIGTERM
    handler) the temporary files are removed, and targets already renamed in this call are
    removed again, so no half of a set is left behind.

    Raises:
        OutputExistsError: when a path exists and ``overwrite`` is false, before anything is
            written.
    """
    paths = [Path(p) for p in paths]
    for path in paths:
        if path.exists() and not overwrite:
            raise OutputExistsError(path)
    with contextlib.ExitStack() as stack:
        temporaries = [stack.enter_context(_temporary_beside(path)) for path in paths]
        yield temporaries
        renamed: list[Path] = []
        try:
            for tmp, path in zip(temporaries, paths, strict=True):
                if path.exists() and not overwrite:  # appeared while we were writing
                    raise OutputExistsError(path)
                os.replace(tmp, path)
                renamed.append(path)
        except BaseException:
            for path in renamed:
                path.unlink(missing_ok=True)
            raise


def check_folder_free(path: str | Path, *, overwrite: bool = False) -> None:
    """Refuse ``path`` as a folder to fill when something is already there (a non-empty
    folder or a file), unless ``overwrite``: :func:`atomic_folder`'s check, for callers
    that want it before their work starts.

    Raises:
        OutputExistsError: naming ``path``.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise OutputExistsError(path)


@contextlib.contextmanager
def atomic_folder(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder beside ``path`` that replaces ``path`` wholly once the block
    succeeds (a dataset, a DICOM study); on any error or interruption it is removed and
    ``path`` is left as it was. Nothing of an earlier folder at ``path`` survives.

    Raises:
        OutputExistsError: when ``path`` exists and is not empty, and not ``overwrite``.
    """
    path = Path(path)
    check_folder_free(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        os.chmod(staging, 0o777 & ~_current_umask())
        yield staging
        if path.exists():
            retired = path.with_name(f".{path.name}.replaced-{staging.name}")
            os.replace(path, retired)
            os.replace(staging, path)
            shutil.rmtree(retired)
        else:
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` with its suffixes and normal permissions; removed
    on leaving unless it was renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".part{suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates the file private (0600); give it the permissions of a normal file
    os.chmod(tmp, 0o666 & ~_current_umask())
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _squeeze_to_3d(img: nib.Nifti1Image, path: Path) -> nib.Nifti1Image:
    shape = img.shape
    if len(shape) == 3:
        return img
    if len(shape) == 4 and shape[3] == 1:
        return img.slicer[..., 0]
    if len(shape) > 3 and all(s == 1 for s in shape[3:]):
        data = np.asanyarray(img.dataobj).reshape(shape[:3])
        return nib.Nifti1Image(data, img.affine, img.header)
    if len(shape) == 4:
        raise InputError(f"is 4D with {shape[3]} volumes; give one 3D volume", path)
    raise InputError(f"is {len(shape)}D with shape {shape}; a 3D volume is needed", path)


def _check_image_values(data: np.ndarray, path: Path) -> np.ndarray:
    data = data.astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        raise InputError("contains NaN or infinite values", path)
    return data


def _check_label_values(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise InputError("label map contains NaN or infinite values", path)
        if not np.array_equal(data, np.round(data)):
            raise InputError("label map contains non-integer values", path)
    elif data.dtype.kind not in "iub":
        raise InputError(f"label map has unsupported data type {data.dtype}", path)
    low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
    if low < 0:
        raise InputError(f"label map contains negative values (min {low})", path)
    if high > np.iinfo(np.uint16).max:
        raise InputError(f"label map value {high} exceeds 65535", path)
    return data.astype(np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16)


# Words in a file name that mark a label map (``CASE_label``, ``aseg``, ``aparc+aseg``,
# ``tumor_seg``, ``brain_mask``, ``parcellation``) or an image.
_LABEL_NAME_HINTS = ("label", "seg", "parc", "mask", "annot")
_IMAGE_NAME_HINTS = ("image", "t1", "t2", "flair", "dwi", "_ct", "ct_", "img")
# Share of neighbouring foreground voxels with the same value above which a volume is
# piecewise constant, as label maps are (images, even 8-bit MRI, vary voxel to voxel).
_PIECEWISE_CONSTANT = 0.8


def load_volume_any(path: str | Path, max_labels: int = 256) -> tuple[Volume, VolumeKind]:
    """Read a NIfTI file as a label map or an image, the choice a viewer makes when a user
    drops a file on it.

    The file's name decides first (``_label``, ``seg``, ``aseg``, ``parc``, ``mask`` mark a
    label map; ``_image``, ``T1``, ``FLAIR``, ``CT`` an image), then its content: a label
    map holds non-negative whole numbers (in any data type: float-typed label maps are
    common) with at most ``max_labels`` distinct values, and is piecewise constant. That
    last test keeps an 8-bit MRI, whose few hundred grey levels are whole numbers too, an
    image.
    """
    path = Path(path)
    volume = load_volume(path, "image")
    data = volume.data
    name = nifti_stem(path).lower()
    if not _whole_non_negative(data):
        return volume, "image"
    if any(hint in name for hint in _LABEL_NAME_HINTS):
        return volume.with_data(_check_label_values(data, path)), "label"
    if any(hint in name for hint in _IMAGE_NAME_HINTS):
        return volume, "image"
    if np.unique(data).size <= max_labels and _piecewise_constant(data):
        return volume.with_data(_check_label_values(data, path)), "label"
    return volume, "image"


def _whole_non_negative(data: np.ndarray) -> bool:
    return bool(
        np.isfinite(data).all() and data.min() >= 0 and np.array_equal(data, np.round(data))
    )


def _piecewise_constant(data: np.ndarray) -> bool:
    """Whether neighbouring voxels along x that are not both zero mostly share a value."""
    left, right = data[..., :-1], data[..., 1:]
    foreground = (left != 0) | (right != 0)
    if not foreground.any():
        return True
    return bool(np.mean(left[foreground] == right[foreground]) > _PIECEWISE_CONSTANT)
