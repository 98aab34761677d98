"""Screenshots of a generated pair in napari, 2D and 3D, for the README.

    xvfb-run -a .venv/bin/python scripts/screenshots.py out/demo/sample_0000 resources/docs

Opens the pair with the plugin's reader (so placement and label colours are the ones users
see), docks the MedGen3D widget, and saves ``pair_2d.png`` (the middle axial slice, with
the widget) and ``pair_3d.png`` (the organs in 3D, the body made transparent).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import napari
import numpy as np
from napari.utils.colormaps import DirectLabelColormap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pair", help="path prefix of the pair, e.g. out/demo/sample_0000")
    parser.add_argument("out", help="folder for the PNG files")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 800)
    viewer.window.add_plugin_dock_widget("napari-medgen3d", "MedGen3D")
    image, labels = (
        viewer.open(f"{args.pair}_{kind}.nii.gz", plugin="napari-medgen3d")[0]
        for kind in ("image", "label")
    )
    image.contrast_limits = (-1000, 600)
    labels.opacity = 0.5
    middle = image.data.shape[0] // 2
    viewer.dims.set_point(0, image.data_to_world((middle, 0, 0))[0])
    viewer.screenshot(str(out / "pair_2d.png"), canvas_only=False, flash=False)

    viewer.dims.ndisplay = 3
    image.visible = False
    labels.opacity = 0.9
    body = labels.features["index"][list(labels.features["name"]).index("body")]
    colours = dict(labels.colormap.color_dict)
    colours[int(body)] = np.zeros(4)  # the body would hide the organs inside it
    labels.colormap = DirectLabelColormap(color_dict=colours)
    viewer.camera.angles = (-20, 35, 150)
    viewer.camera.zoom = 1.1
    shot = viewer.screenshot(str(out / "pair_3d.png"), canvas_only=True, flash=False)
    print(f"wrote {out / 'pair_2d.png'} and {out / 'pair_3d.png'} (3D std {np.std(shot):.1f})")
    viewer.close()


if __name__ == "__main__":
    main()
