"""Screenshots of a generated pair in napari, 2D and 3D, for the README.

    xvfb-run -a .venv/bin/python scripts/screenshots.py out/demo/sample_0000 resources/docs \
        [--name pair] [--model demo] [--window -1000 600] [--hide body]

Opens the pair with the plugin's reader (so placement and label colours are the ones users
see), docks the MedGen3D widget with ``--model`` loaded (as the user who made the pair would
have it: its name, summary and sampling settings in the widget), and saves ``NAME_2d.png``
(the middle axial slice, with the widget) and ``NAME_3d.png`` (the structures in 3D); the
envelope labels of ``--hide`` are transparent in both, so the image and the organs inside
show. Without ``--window`` the contrast spans the image's 1st to 99.5th percentile (MRI
has no absolute unit).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
import numpy as np
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtWidgets import QApplication


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pair", help="path prefix of the pair, e.g. out/demo/sample_0000")
    parser.add_argument("out", help="folder for the PNG files")
    parser.add_argument("--name", default="pair", help="file name prefix (default: pair)")
    parser.add_argument("--model", default="demo", help="model shown loaded in the widget")
    parser.add_argument("--window", type=float, nargs=2, metavar=("LOW", "HIGH"))
    parser.add_argument("--hide", nargs="*", default=["body"], help="labels left transparent")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 800)
    _, widget = viewer.window.add_plugin_dock_widget("napari-medgen3d", "MedGen3D")
    _load_model(widget, args.model)
    image, labels = (
        viewer.open(f"{args.pair}_{kind}.nii.gz", plugin="napari-medgen3d")[0]
        for kind in ("image", "label")
    )
    window = args.window or np.percentile(image.data, [1.0, 99.5]).tolist()
    image.contrast_limits = tuple(window)
    labels.opacity = 0.5
    names = list(labels.features["name"])
    hidden = [int(labels.features["index"][names.index(h)]) for h in args.hide]
    colours = dict(labels.colormap.color_dict)
    for value in hidden:  # an envelope (body, head) would cover the image and the organs
        colours[value] = np.zeros(4)
    labels.colormap = DirectLabelColormap(color_dict=colours)
    middle = image.data.shape[0] // 2
    viewer.dims.set_point(0, image.data_to_world((middle, 0, 0))[0])
    camera = getattr(viewer, "scene", viewer).camera  # napari 0.9: viewer.scene.camera
    viewer.reset_view()
    in_slice = np.zeros(labels.data.shape, dtype=bool)
    in_slice[middle] = labels.data[middle] > 0
    _frame(camera, labels, in_slice, axes=(1, 2), fill=0.95)
    flat, solid = out / f"{args.name}_2d.png", out / f"{args.name}_3d.png"
    viewer.screenshot(str(flat), canvas_only=False, flash=False)

    viewer.window.remove_dock_widget("all")  # the 3D view gets the window's width
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    image.visible = False
    labels.opacity = 0.9
    camera.angles = (-20, 35, 150)
    _frame(camera, labels, (labels.data > 0) & ~np.isin(labels.data, hidden))
    shot = viewer.screenshot(str(solid), canvas_only=True, flash=False)
    print(f"wrote {flat} and {solid} (3D std {np.std(shot):.1f})")
    viewer.close()


def _load_model(widget, name: str, timeout: float = 120.0) -> None:
    """Choose ``name`` in the widget and press "Load model", then let Qt run until the
    loading worker has put the model's summary in the widget."""
    widget._model_name.value = name
    widget._load.changed.emit(True)
    deadline = time.monotonic() + timeout
    while widget._model is None or widget._worker is not None:
        if time.monotonic() > deadline:
            raise SystemExit(f"the widget did not load {name} within {timeout:.0f} s")
        QApplication.processEvents()
        time.sleep(0.05)


def _frame(
    camera, labels, shown: np.ndarray, axes: tuple[int, ...] = (0, 1, 2), fill: float = 0.8
) -> None:
    """Centre the camera on the ``shown`` voxels (a mask over ``labels``) and zoom so that
    they, not the whole (mostly empty) volume, take ``fill`` of the view along ``axes``
    (the displayed ones; in 3D less, room for the rotation); ``reset_view`` has fitted the
    volume."""
    shown = np.argwhere(shown)
    if not len(shown):
        return
    low, high = (np.asarray(labels.data_to_world(c)) for c in (shown.min(0), shown.max(0)))
    whole = np.asarray(labels.data_to_world(np.array(labels.data.shape) - 1)) - np.asarray(
        labels.data_to_world(np.zeros(3))
    )
    camera.center = tuple((low + high) / 2)
    shown_extent = np.abs(high - low)[list(axes)].max()
    camera.zoom *= fill * np.abs(whole)[list(axes)].max() / max(shown_extent, 1e-6)


if __name__ == "__main__":
    main()
