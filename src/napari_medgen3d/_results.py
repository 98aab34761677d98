"""What the widget's jobs return, and how it reaches the viewer without stalling it.

A job runs in a worker thread and returns :class:`Generated` volumes. Still in the worker,
a :class:`Display` turns each into a :class:`ResultLayer` (layer data, geometry, contrast
limits, label colours) and each engine preview into a :class:`Preview`, so the GUI thread
only hands finished data to napari. On the GUI thread, :class:`LiveLayers` keeps at most
one preview layer of each kind, updates it at most every :data:`PREVIEW_INTERVAL_S`, and
turns it into the result layer when the job ends. Creating and removing napari layers is
what stalls the viewer (0.1-0.3 s each under software OpenGL; updating one's data takes a
few ms plus one repaint), so a job creates each layer once and removes none when it
succeeds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from napari_medgen3d._layers import GEOMETRY_KEY, labels_style, placement, volume_to_layer

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

    from medgen3d.io import Volume
    from medgen3d.labels import LabelTable
    from medgen3d.progress import Progress
    from medgen3d.settings import GenerationSettings

__all__ = [
    "CT_WINDOWS",
    "Display",
    "Generated",
    "LiveLayers",
    "Pause",
    "Preview",
    "Report",
    "ResultLayer",
    "is_preview",
]

T = TypeVar("T")
LayerKind = Literal["image", "labels"]

PREVIEW_LAYER = "MedGen3D preview"
# The least time between two preview updates: each costs a repaint (~0.1 s under llvmpipe).
PREVIEW_INTERVAL_S = 0.5
# The longest a preview layer waits for the worker to pause before it is made beside it.
HOLD_S = 1.0
# CT display windows (low, high) in HU: level -/+ half the width
CT_WINDOWS = {
    "soft tissue": (-160.0, 240.0),
    "lung": (-1350.0, 150.0),
    "bone": (-450.0, 1050.0),
    "brain": (0.0, 80.0),
}


@dataclass(frozen=True)
class Generated:
    """A volume a job made, to appear as a layer.

    Attributes:
        volume: the data with its geometry.
        kind: ``"image"`` or ``"labels"``.
        name: the layer's name.
        settings: the settings it was generated with, kept in a labels layer's metadata
            (exporting the pair writes them beside it); ``None`` when not one set.
        warning: what the user should know about it, shown when the layer appears (on the
            GUI thread, where napari's notifications belong).
    """

    volume: Volume
    kind: LayerKind
    name: str
    settings: GenerationSettings | None = None
    warning: str | None = None


@dataclass(frozen=True)
class ResultLayer:
    """A :class:`Generated` volume as napari layer data, prepared in the worker.

    Attributes:
        kind: ``"image"`` or ``"labels"``.
        data: the layer data, ``(Z, Y, X)``.
        kwargs: the keyword arguments of ``viewer.add_image`` / ``viewer.add_labels``
            (name, metadata, placement, colours, contrast limits, opacity).
        warning: :attr:`Generated.warning`.
    """

    kind: LayerKind
    data: np.ndarray
    kwargs: dict[str, Any]
    warning: str | None = None

    @property
    def name(self) -> str:
        return self.kwargs["name"]


@dataclass(frozen=True)
class Preview:
    """The current estimate of a stage's output, ready to show.

    Attributes:
        stage: the engine stage that made it (``"masks"``, ``"images"``, ``"refiner"``).
        kind: ``"labels"`` for masks, ``"image"`` otherwise.
        data: ``(Z, Y, X)``.
        style: layer keyword arguments: placement where the result will appear (when the
            engine told it), label colours or gray scale and contrast limits.
    """

    stage: str
    kind: LayerKind
    data: np.ndarray
    style: dict[str, Any]

    @property
    def layer_name(self) -> str:
        return f"{PREVIEW_LAYER} ({self.stage})"


@dataclass(frozen=True)
class Report:
    """A progress report as the GUI thread receives it: ``done`` of ``total`` units of
    ``stage``, and sometimes a preview."""

    stage: str
    done: int
    total: int
    preview: Preview | None = None


@dataclass(frozen=True)
class Display:
    """How a job's volumes are shown; read from the controls and the model on the GUI
    thread as the job starts, applied in its worker.

    Attributes:
        labels: the model's label table (colours and names), if a model is loaded.
        window: the contrast preset: ``"auto"`` or a key of :data:`CT_WINDOWS`.
        modality: the model's modality (``"ct"``, ``"mri"``), if known.
    """

    labels: LabelTable | None = None
    window: str = "auto"
    modality: str | None = None

    def contrast_limits(self, image: np.ndarray) -> tuple[float, float]:
        """The chosen preset's window in HU, or (``auto``) the soft-tissue window for CT and
        the 1st-99.5th percentiles for MRI, which has no absolute unit."""
        preset = self.window
        if preset == "auto":
            if self.modality == "ct":
                preset = "soft tissue"
            else:
                low, high = np.percentile(image, [1.0, 99.5])
                return float(low), float(max(high, low + 1e-6))
        return CT_WINDOWS[preset]

    def reports(
        self, work: Generator[Progress, Any, T], pause: Pause | None = None
    ) -> Generator[Report, None, T]:
        """``work``'s reports with their previews prepared (in the calling thread, the
        worker's), and its return value; ``work`` waits at ``pause`` between reports."""
        while True:
            if pause is not None:
                pause.checkpoint()
            try:
                progress = next(work)
            except StopIteration as stop:
                return stop.value
            preview = None
            if progress.preview is not None:
                preview = self.preview(progress.stage, progress.preview, progress.affine)
            yield Report(progress.stage, progress.done, progress.total, preview)

    def preview(self, stage: str, data: np.ndarray, affine: np.ndarray | None) -> Preview:
        """A preview from ``stage``: masks as labels, anything else as an image."""
        style: dict[str, Any] = {}
        if affine is not None:  # where the result will appear
            from medgen3d.io import Volume

            style.update(placement(Volume(data, affine)))
        kind: LayerKind = "labels" if stage == "masks" else "image"
        if kind == "labels" and self.labels is not None:
            style.update(labels_style(self.labels))
        if kind == "image":
            style.update(colormap="gray", contrast_limits=self.contrast_limits(data))
        return Preview(stage, kind, data, style)

    def layer(self, generated: Generated) -> ResultLayer:
        """``generated`` as layer data: its geometry in the metadata; labels half
        transparent, with the model's colours and, to compare edits against, a copy of
        what was generated; images in gray with the chosen contrast."""
        table = self.labels if generated.kind == "labels" else None
        data, kwargs, _ = volume_to_layer(generated.volume, generated.kind, generated.name, table)
        if generated.kind == "labels":
            kwargs["opacity"] = 0.5
            geometry = kwargs["metadata"][GEOMETRY_KEY]
            geometry["generated_labels"] = data.copy()
            if generated.settings is not None:
                geometry["settings"] = generated.settings.to_dict()
        else:
            kwargs["contrast_limits"] = self.contrast_limits(data)
        return ResultLayer(generated.kind, data, kwargs, generated.warning)

    def layers(self, results: Iterable[Generated]) -> tuple[ResultLayer, ...]:
        """The results as layer data, images first: each labels layer then lies above the
        images, so its overlay shows without reordering."""
        ordered = sorted(results, key=lambda result: result.kind == "labels")
        return tuple(self.layer(result) for result in ordered)


class Pause:
    """Lets the GUI thread hold a worker between two reports while it makes a layer.

    A generating worker's Python code competes with the GUI thread for the GIL and makes
    napari's layer creation 2-3 times slower (a Labels layer: ~0.1 s alone, 0.2-0.6 s
    beside the worker). The GUI thread asks (:meth:`request`), makes the layer once the
    worker waits (:attr:`parked`) and lets it go on (:meth:`release`). A worker never
    waits more than ``longest_s``, whatever happens to the GUI.
    """

    def __init__(self, longest_s: float = 2.0) -> None:
        self._go = threading.Event()
        self._go.set()
        self._parked = threading.Event()
        self._longest_s = longest_s

    def request(self) -> None:
        self._go.clear()

    @property
    def parked(self) -> bool:
        """Whether the worker waits at the pause."""
        return self._parked.is_set()

    def release(self) -> None:
        self._go.set()

    def checkpoint(self) -> None:
        """In the worker: wait here while a pause is requested."""
        if not self._go.is_set():
            self._parked.set()
            self._go.wait(self._longest_s)
            self._parked.clear()


class LiveLayers:
    """A job's preview layers in ``viewer``, reused as its result layers.

    There is at most one preview layer of each kind (labels for masks, an image for the
    image stages); it is created by the first preview of its kind, then only its data
    changes. :meth:`show_due` shows at most one waiting preview, and only
    ``interval`` seconds after the last one was shown, so that previews arriving faster
    than the viewer repaints are skipped rather than queued. Before it makes a layer, it
    holds the job's worker at :attr:`pause` (for at most ``hold_s``). An image layer goes
    below a labels layer of the same job, so the labels stay on top.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        interval: float = PREVIEW_INTERVAL_S,
        hold_s: float = HOLD_S,
    ) -> None:
        self._viewer = viewer
        self._interval = interval
        self._hold_s = hold_s
        self._layers: dict[str, Layer] = {}
        self._waiting: dict[str, Preview] = {}
        self._shown_at = -np.inf
        self._requested_at: float | None = None
        self.pause = Pause()

    @property
    def waiting(self) -> bool:
        """Whether a preview waits to be shown."""
        return bool(self._waiting)

    def offer(self, preview: Preview) -> None:
        """Keep ``preview`` to show; it replaces one of its kind still waiting."""
        self._waiting[preview.kind] = preview

    def show_due(self) -> bool:
        """Show the oldest waiting preview if the last one was shown long enough ago;
        whether one was."""
        if not self._waiting or time.monotonic() - self._shown_at < self._interval:
            return False
        kind = next(iter(self._waiting))
        layer = self._layer(kind)
        if layer is None and not self._worker_held():
            return False  # again at the next tick
        preview = self._waiting.pop(kind)
        if layer is None:
            kwargs = {"name": preview.layer_name, "opacity": 0.5, **preview.style}
            layer = _new_layer(kind, preview.data, kwargs)
            self._insert(layer)
            self._layers[kind] = layer
            self._release()
        else:
            layer.data = preview.data
            if "contrast_limits" in preview.style:
                layer.contrast_limits = preview.style["contrast_limits"]
            layer.name = preview.layer_name  # the stage, e.g. refiner after images
        self._shown_at = time.monotonic()
        return True

    def finish(self, results: Sequence[ResultLayer]) -> list[Layer]:
        """Show ``results`` (images first): each in the preview layer of its kind where
        there is one, else in a new layer; the previews left over are removed. Returns the
        result layers."""
        self._waiting.clear()
        shown = []
        for result in results:
            layer = self._layer(result.kind)
            if layer is None:
                layer = _new_layer(result.kind, result.data, result.kwargs)
                self._insert(layer)
            else:
                del self._layers[result.kind]
                _become(layer, result)
            shown.append(layer)
        self.discard()
        return shown

    def discard(self) -> None:
        """Remove the preview layers (a job cancelled or failed) and forget what waits."""
        self._release()
        self._waiting.clear()
        for kind in list(self._layers):
            layer = self._layer(kind)
            del self._layers[kind]
            if layer is not None:
                self._viewer.layers.remove(layer)
        self._shown_at = -np.inf

    def _worker_held(self) -> bool:
        """Whether the worker waits at the pause, or has been asked to for ``hold_s``
        (its step takes longer: the layer is made beside it)."""
        if self._requested_at is None:
            self.pause.request()
            self._requested_at = time.monotonic()
        return self.pause.parked or time.monotonic() - self._requested_at >= self._hold_s

    def _release(self) -> None:
        self.pause.release()
        self._requested_at = None

    def _layer(self, kind: str) -> Layer | None:
        """The preview layer of ``kind``, unless there is none or the user removed it."""
        layer = self._layers.get(kind)
        return layer if layer is not None and layer in self._viewer.layers else None

    def _insert(self, layer: Layer) -> None:
        """Add ``layer`` on top, or an image just below the preview labels layer."""
        from napari.layers import Image

        labels = self._layer("labels")
        if isinstance(layer, Image) and labels is not None:
            self._viewer.layers.insert(self._viewer.layers.index(labels), layer)
        else:
            self._viewer.layers.append(layer)


def is_preview(layer: Any) -> bool:
    """Whether ``layer`` is a preview of a running job (not something to work on)."""
    return layer.name.startswith(PREVIEW_LAYER)


def _new_layer(kind: str, data: np.ndarray, kwargs: dict[str, Any]) -> Layer:
    from napari.layers import Image, Labels

    return (Labels if kind == "labels" else Image)(data, **kwargs)


# What a result layer shows where its keyword arguments leave something out: no
# placement, fully opaque (previews are half transparent).
_UNSET = {
    "scale": (1.0, 1.0, 1.0),
    "translate": (0.0, 0.0, 0.0),
    "affine": np.eye(4),
    "opacity": 1.0,
}


def _become(layer: Layer, result: ResultLayer) -> None:
    """Turn a preview layer into ``result``'s layer: new data, geometry, metadata and
    style. A property that already has its value is left alone (setting a label colormap
    again re-uploads its texture: ~0.15 s). The name changes last, once the layer shows
    the result."""
    kwargs = {**_UNSET, **result.kwargs}
    name = kwargs.pop("name")
    layer.data = result.data
    for key, value in kwargs.items():
        if not _same(getattr(layer, key), value):
            setattr(layer, key, value)
    layer.name = name


def _same(current: Any, value: Any) -> bool:
    """Whether a layer property ``current`` already is ``value``; ``False`` when unsure."""
    current = getattr(current, "affine_matrix", current)  # a napari Affine
    if hasattr(value, "color_dict"):  # a label colormap
        mine, theirs = getattr(current, "color_dict", {}), value.color_dict
        return mine.keys() == theirs.keys() and all(
            np.allclose(mine[key], theirs[key]) for key in theirs
        )
    if isinstance(value, str):  # a colormap by name
        return getattr(current, "name", current) == value
    if isinstance(value, tuple | list | np.ndarray | float | int):
        try:
            return np.allclose(np.asarray(current, dtype=float), np.asarray(value, dtype=float))
        except (TypeError, ValueError):
            return False
    return False  # metadata, features: cheap to set
