"""How long the napari event loop stalls while the MedGen3D widget opens, loads a model and
generates pairs.

    xvfb-run -a .venv/bin/python benchmarks/bench_gui_latency.py [--model demo] [--depth 32]
        [--settle 8] [--jobs 2] [--over 100]

A 20 ms QTimer records when it actually fires; a gap much longer than 20 ms is a moment
the viewer could not repaint or react. Prints the longest gap, the 99th percentile and the
longest garbage collection for each phase (the seconds after opening the widget, with
``--settle``; then each job: model loading, generation with live previews, adding the
result), then every gap over ``--over`` ms with what ran inside it: the widget's own
GUI-thread callbacks, canvas paints and garbage collections, each with its duration. Record
the figures in benchmarks/README.md with the machine.
"""

from __future__ import annotations

import argparse
import functools
import gc
import time

import napari
import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

# The widget's methods that run on the GUI thread during a job, and its live layers'.
TRACED = (
    "_on_progress",
    "_on_tick",
    "_show_progress",
    "_show_results",
    "_on_error",
    "_on_finished",
    "_refresh_layer_choices",
)
TRACED_LIVE = ("show_due", "finish", "discard")


def trace(obj: object, names: tuple[str, ...], calls: list[tuple[str, float, float]]) -> None:
    """Replace ``obj``'s methods ``names`` with ones that record (name, start, end)."""
    for name in names:
        method = getattr(obj, name, None)
        if method is None:
            continue

        @functools.wraps(method)
        def timed(*args, _method=method, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                calls.append((_name, start, time.perf_counter()))

        setattr(obj, name, timed)


def trace_paint(viewer: napari.Viewer, calls: list[tuple[str, float, float]]) -> None:
    """Record each repaint of the canvas as ("paint", start, end) (napari internals: a
    benchmark may use them)."""
    native = viewer.window._qt_viewer.canvas._scene_canvas.native
    paint = native.paintGL

    def timed() -> None:
        start = time.perf_counter()
        try:
            paint()
        finally:
            calls.append(("paint", start, time.perf_counter()))

    native.paintGL = timed


def trace_gc(calls: list[tuple[str, float, float]]) -> None:
    """Record each garbage collection as ("gc genN", start, end)."""
    started = {}

    def callback(phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            started["at"] = now
        elif "at" in started:
            calls.append((f"gc gen{info['generation']}", started.pop("at"), now))

    gc.callbacks.append(callback)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--over", type=float, default=100.0, help="list gaps over this (ms)")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds between opening the widget and pressing Generate (0: at once)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="pairs generated one after another")
    args = parser.parse_args()

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)

    def run_events(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while True:
            app.processEvents()
            time.sleep(0.002)
            if time.perf_counter() >= end:
                return

    from napari_medgen3d._widget import MedGen3DWidget

    start = time.perf_counter()
    widget = MedGen3DWidget(viewer)
    calls: list[tuple[str, float, float]] = [("widget created", start, time.perf_counter())]
    viewer.window.add_dock_widget(widget, name="MedGen3D")
    trace(widget, TRACED, calls)
    trace(widget._live, TRACED_LIVE, calls)
    widget._tick.timeout.disconnect()  # the timer holds the method it was given
    widget._tick.timeout.connect(lambda: widget._on_tick())
    trace_paint(viewer, calls)
    trace_gc(calls)
    widget._model_name.value = args.model
    widget._depth.value = args.depth
    widget._steps.value = args.steps
    run_events(args.settle)
    phases = {"after opening": (start, time.perf_counter())} if args.settle else {}
    for job in range(args.jobs):
        pressed = time.perf_counter()
        widget._seed.value = job
        widget.generate_pair()
        while widget._worker is not None or widget._pending is not None or not ticks:
            run_events(0.0)
        run_events(0.3)  # let the result be drawn
        phases[f"job {job + 1}"] = (pressed, time.perf_counter())

    print(f"{args.model}, {args.depth} slices, {args.steps} steps")
    print(f"widget created in {1000 * (calls[0][2] - start):.0f} ms")
    for phase, (begin, end) in phases.items():
        inside = np.array([t for t in ticks if begin <= t <= end])
        gaps = np.diff(inside) * 1000
        collections = [b - a for name, a, b in calls if name.startswith("gc") and begin <= a <= end]
        print(
            f"{phase} ({end - begin:.1f} s): event-loop gaps longest {gaps.max():.0f} ms, "
            f"99th percentile {np.percentile(gaps, 99):.0f} ms, median {np.median(gaps):.0f} ms "
            f"({len(gaps)} ticks); longest garbage collection "
            f"{1000 * max(collections, default=0):.0f} ms"
        )
    gaps = np.diff(ticks) * 1000
    for index in np.flatnonzero(gaps > args.over):
        low, high = ticks[index], ticks[index + 1]
        inside = [
            f"{name} {1000 * (end - begin):.0f} ms"
            for name, begin, end in calls
            if begin < high and end > low
        ]
        print(
            f"  gap {gaps[index]:.0f} ms at {low - start:.2f} s: "
            + (", ".join(inside) or "no widget callback (napari/Qt drawing, or the GIL)")
        )
    viewer.close()


if __name__ == "__main__":
    main()
