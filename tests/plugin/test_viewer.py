"""The plugin inside a real viewer (needs an OpenGL context: run under xvfb-run)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_sample_phantom_shows_aligned_layers_and_renders(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-medgen3d", "thoracic_phantom")
    image, labels = layers
    assert image.data.shape == labels.data.shape
    np.testing.assert_allclose(image.scale, labels.scale)
    np.testing.assert_allclose(image.translate, labels.translate)
    viewer.dims.ndisplay = 3
    screenshot = viewer.screenshot(canvas_only=True, flash=False)
    assert screenshot.std() > 5  # a blank canvas is one colour


def test_open_and_save_keep_the_file_geometry(make_napari_viewer, tmp_nifti, tmp_path) -> None:
    labels = np.zeros((8, 9, 10), dtype=np.uint8)
    labels[2:6, 3:7, 4:8] = 2
    affine = np.diag([-1.2, -0.9, 2.5, 1.0])
    affine[:3, 3] = [30.0, 20.0, -40.0]
    path = tmp_nifti(labels, affine, "seg.nii.gz")
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-medgen3d")
    assert layer._type_string == "labels"
    out = tmp_path / "saved.nii.gz"
    viewer.layers.save(str(out), selected=False, plugin="napari-medgen3d")
    saved = nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), labels)
    np.testing.assert_allclose(saved.affine, affine, atol=1e-6)
    # shown in world units: RAS axes (z, y, x) at the file's spacing
    np.testing.assert_allclose(layer.scale, (2.5, 0.9, 1.2))
