"""Shared fixtures: the real volumes in ``../shared/data`` and small NIfTI writers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHARED_DATA_ENV = "MEDGEN3D_SHARED_DATA"


def _shared_data_folder() -> Path:
    override = os.environ.get(SHARED_DATA_ENV)
    if override:
        return Path(override).expanduser().resolve()
    # <root>/<clone>/tests/conftest.py -> <root>/shared/data
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real image/label volumes; skips the test when it is absent."""
    folder = _shared_data_folder()
    if not folder.is_dir():
        pytest.skip(
            f"shared data folder not found at {folder}: real-volume tests need ../shared/data "
            f"(or set {SHARED_DATA_ENV})"
        )
    return folder


@pytest.fixture
def real_case(shared_data: Path) -> Callable:
    """``real_case(name)`` -> the :class:`~medgen3d.datasets.CasePaths` of a real case.

    Skips when the case folder or one of its files is missing.
    """

    def _case(name: str):
        from medgen3d.datasets import CasePaths  # imports MONAI; only when needed

        folder = shared_data / name
        image, label = folder / "image.nii.gz", folder / "label.nii.gz"
        for path in (image, label):
            if not path.is_file():
                pytest.skip(f"real case file not found at {path}")
        return CasePaths(name, image, label)

    return _case


@pytest.fixture
def tmp_nifti(tmp_path: Path) -> Callable:
    """``tmp_nifti(data, affine=None, name="volume.nii.gz", header=None)`` -> written path.

    The array is written as given (nibabel index order, on-disk dtype = the array's dtype,
    no scaling); ``name`` may contain sub-folders, which are created.
    """

    def _write(
        data: np.ndarray,
        affine: np.ndarray | None = None,
        name: str = "volume.nii.gz",
        header: nib.Nifti1Header | None = None,
    ) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine, header)
        img.set_data_dtype(data.dtype)
        nib.save(img, path)
        return path

    return _write
