"""Keeping costs the widget's own code doesn't see out of the viewer's event loop.

Two kinds (figures: 2-core CPU, llvmpipe; benchmarks/README.md):

- Once per process: importing torch and MONAI (3-4 s; ``import`` holds the GIL for the
  0.2 s libtorch takes to load), napari's unit registry (pint, ~0.15 s) and vispy's dash
  patterns (~0.1 s) for the first Labels layer. :func:`warm_up` pays them as the widget
  opens instead of in the middle of the first job: the imports in a background thread,
  the unit registry on the GUI thread, where napari uses it (initialising it elsewhere
  could race with a layer being made meanwhile). The collector is off during the import,
  whose objects are then frozen at once instead of walked by several full collections.
- Python's cycle collector: once torch, MONAI and napari are loaded, a full collection
  walks ~400 000 objects and stops every Python thread for 0.15-0.25 s; it comes
  whenever enough new objects have piled up, e.g. in the middle of making a layer.
  :func:`hold_collector` (from a job's start to its end, and while the warm-up imports)
  has it leave alone the objects that existed before (``gc.freeze``), so collections
  only walk what is new; :func:`release_collector` hands everything back.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.util
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_THREAD: threading.Thread | None = None
_HOLDS = 0
_LOCK = threading.Lock()


def warm_up() -> None:
    """Start the one-time imports in the background (once per process) and initialise
    napari's unit registry here. A job that imports the engine meanwhile simply waits for
    the import under way (Python's import locks)."""
    global _THREAD
    if _THREAD is None:
        hold_collector()
        _THREAD = threading.Thread(target=_import_in_background, name="medgen3d warm-up")
        _THREAD.start()
    import pint

    pint.get_application_registry().pixel  # noqa: B018 (napari's first layer does this)


def hold_collector() -> None:
    """Have the cycle collector skip every object that exists now, until the last
    :func:`hold_collector` is matched by :func:`release_collector`."""
    global _HOLDS
    with _LOCK:
        if _HOLDS == 0:
            gc.freeze()
        _HOLDS += 1


def release_collector() -> None:
    """Undo one :func:`hold_collector`; after the last, the collector sees all again."""
    global _HOLDS
    with _LOCK:
        _HOLDS -= 1
        if _HOLDS == 0:
            gc.unfreeze()


def _import_in_background() -> None:
    """Import what the first job and the first Labels layer need, with the collector off:
    the new objects (~250 000) join the frozen ones, never walked by a collection while
    the import runs or while a job holds the collector."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        _load_libtorch()
        importlib.import_module("medgen3d.generate")  # the stages, torch and MONAI
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()  # computes and caches the patterns every Labels layer's outline uses
    except Exception:  # a job imports them again and reports what fails
        log.debug("warming up in the background failed", exc_info=True)
    finally:
        with _LOCK:
            gc.freeze()
        if collecting:
            gc.enable()
        release_collector()


def _load_libtorch() -> None:
    """Load torch's core library with ctypes before ``import torch`` does: ctypes lets go
    of the GIL while the dynamic loader runs the library's initialisers (0.2 s here),
    which ``import`` does holding it, freezing the GUI thread meanwhile."""
    spec = importlib.util.find_spec("torch")
    if os.name == "nt" or spec is None or spec.origin is None:
        return
    for library in sorted((Path(spec.origin).parent / "lib").glob("libtorch_cpu.*")):
        try:
            ctypes.CDLL(str(library))
        except OSError:  # then ``import torch`` loads it, as usual
            return
