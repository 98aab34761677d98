"""How long the napari event loop stalls while the MedGen3D widget loads a model and
generates a pair.

    xvfb-run -a .venv/bin/python benchmarks/bench_gui_latency.py [--model demo] [--depth 32]

A 20 ms QTimer records when it actually fires; a gap much longer than 20 ms is a moment
the viewer could not repaint or react. Prints the longest gap and the 99th percentile for
the whole run (widget creation, model loading, generation with live previews, adding the
result). Record the figures in benchmarks/README.md with the machine.
"""

from __future__ import annotations

import argparse
import time

import napari
import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)

    from napari_medgen3d._widget import MedGen3DWidget

    start = time.perf_counter()
    widget = MedGen3DWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MedGen3D")
    widget._model_name.value = args.model
    widget._depth.value = args.depth
    widget._steps.value = args.steps
    widget.generate_pair()
    while widget._worker is not None or widget._pending is not None or not ticks:
        app.processEvents()
        time.sleep(0.002)
    for _ in range(50):  # let the result be drawn
        app.processEvents()
        time.sleep(0.005)
    total = time.perf_counter() - start
    gaps = np.diff(ticks) * 1000
    print(f"{args.model}, {args.depth} slices, {args.steps} steps: {total:.1f} s in all")
    print(
        f"event-loop gaps: longest {gaps.max():.0f} ms, 99th percentile "
        f"{np.percentile(gaps, 99):.0f} ms, median {np.median(gaps):.0f} ms "
        f"({len(gaps)} ticks)"
    )
    viewer.close()


if __name__ == "__main__":
    main()
