"""The MedGen3D dock widget: gathers settings, runs engine generators, shows results.

The widget only translates. Each button reads the controls into a
:class:`medgen3d.settings.GenerationSettings`, picks the layers it works on, and runs one
engine generator in a napari worker thread: yielded :class:`medgen3d.progress.Progress`
reports drive the widget's progress bar and a live preview layer, ``Cancel`` calls
``worker.quit()`` (honoured between steps), the returned volumes become layers (the
preview layers themselves: :mod:`napari_medgen3d._results`), and an error becomes a
notification. A cancelled or failed job removes its previews, leaving the layers as they
were. The viewer must not stall: the worker prepares previews and results, and the GUI
thread shows at most one preview per half second and makes each layer once. Torch and
MONAI are imported inside the worker functions and, as the widget opens, in a background
thread (:mod:`napari_medgen3d._responsive`), never when napari starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning

from medgen3d.bundled import bundled_models
from medgen3d.errors import InputError
from medgen3d.labels import bundled_mappings
from medgen3d.settings import (
    DEFAULTS,
    Device,
    GenerationSettings,
    MaskSampler,
    MaskSettings,
    RefineSampler,
    RefineSettings,
    choices,
)
from napari_medgen3d._layers import GEOMETRY_KEY, layer_to_volume
from napari_medgen3d._responsive import hold_collector, release_collector, warm_up
from napari_medgen3d._results import (
    CT_WINDOWS,
    Display,
    Generated,
    LiveLayers,
    Report,
    ResultLayer,
    is_preview,
)
from napari_medgen3d._tooltips import TOOLTIPS

if TYPE_CHECKING:
    import napari
    from qtpy.QtCore import QTimer

    from medgen3d.evaluation.check import PairCheck
    from medgen3d.io import Volume
    from medgen3d.model import GenerativeModel

log = logging.getLogger(__name__)

OTHER_FILE = "Other file…"
MODEL_CONVENTION = "model's own"
# Where the widget keeps what it remembers between sessions (QSettings organisation, app)
SETTINGS_SCOPE = ("napari-medgen3d", "widget")
RECENT_MODELS = 5
# The widget's sections, top to bottom, and their controls (attribute names without "_").
SECTIONS = {
    "Model": ("model_name", "model_file", "device", "load"),
    "Generate": (
        "seed",
        "depth",
        "samples",
        "sampler",
        "steps",
        "fill_holes",
        "min_island",
        "overlap",
        "redraws",
        "strength",
        "refine_steps",
        "refine_sampler",
        "guidance",
        "generate_pair",
        "generate_masks",
        "progress",
        "cancel",
    ),
    "Edit and regenerate": (
        "labels_layer",
        "image_layer",
        "label_map",
        "label_map_file",
        "complete",
        "image_from_masks",
        "refine",
        "regenerate",
    ),
    "Inspect and export": (
        "radiological",
        "contours",
        "toggle_3d",
        "volume_3d",
        "window",
        "export_dir",
        "export_format",
        "export",
        "segmenter",
        "check",
        "check_result",
    ),
}
# Labels that wrap the organs; transparent in 3D so the organs inside show.
ENVELOPES = ("body", "head")
# Camera angles of the 3D view, in napari's own axis directions: from the front, above and
# to the side.
CAMERA_3D = (-20.0, 35.0, 150.0)
# Directions of the displayed (vertical, horizontal) world axes. The world is RAS (the
# reader places every volume by its affine), so the vertical axis points anterior (axial
# slices) or superior (coronal, sagittal) and the horizontal one to the patient's right
# (axial, coronal) or anterior (sagittal): radiology viewers show both up and to the
# screen's left (axial slices seen from the feet, coronal from the front, sagittal facing
# left); napari's array convention puts them down and to the right.
RADIOLOGICAL = ("up", "left")
NAPARI_AXES = ("down", "right")
STAGE_FILES = ("masks.pt", "images.pt", "refiner.pt")
# How often the progress bar follows a running job (ms); previews come at most every
# _results.PREVIEW_INTERVAL_S.
UI_INTERVAL_MS = 200


class MedGen3DWidget(Container):
    """Load a model, generate, complete, refine and export aligned image/mask pairs."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._model: GenerativeModel | None = None
        self._model_key: tuple[str, str] | None = None
        self._worker: Any = None
        self._pending: Callable[[], None] | None = None
        self._report: Report | None = None  # the running job's latest, for _on_tick
        self._live = LiveLayers(viewer)
        self._tick = _single_shot(UI_INTERVAL_MS, self._on_tick, self.native)
        warm_up()  # torch, MONAI and napari's first-layer costs, before the first job

        self._build_model_section()
        self._build_generate_section()
        self._build_edit_section()
        self._build_inspect_section()
        self._lay_out()
        self._connect(viewer)

    def _build_model_section(self) -> None:
        self._model_name = ComboBox(choices=self._model_choices, label="Model")
        self._model_file = FileEdit(mode="r", filter="*.pt", label="Model file", value="")
        self._device = ComboBox(choices=choices(Device), value=Device.AUTO.value, label="Device")
        self._load = PushButton(text="Load model")
        self._info = Label(value="Model: not loaded yet")

    def _build_generate_section(self) -> None:
        self._seed = SpinBox(value=DEFAULTS.seed, min=0, max=2**31 - 1, label="Seed")
        # follows the model's typical depth until the user edits it
        self._depth_default = DEFAULTS.depth
        self._depth = SpinBox(value=self._depth_default, min=1, max=4096, label="Depth (slices)")
        self._samples = SpinBox(value=1, min=1, max=64, label="Samples")
        self._sampler = ComboBox(
            choices=choices(MaskSampler), value=DEFAULTS.masks.sampler, label="Sampler"
        )
        self._steps = SpinBox(value=DEFAULTS.masks.steps, min=1, max=1000, label="Steps")
        # set to the loaded model's own setting; unticked shows the masks as sampled
        self._fill_holes = CheckBox(value=False, text="Close holes in generated slices")
        self._min_island = SpinBox(value=0, min=0, max=10**6, label="Islands under (voxels)")
        self._overlap = SpinBox(value=0, min=0, max=4095, label="Overlap (slices)")
        self._redraws = SpinBox(value=DEFAULTS.masks.redraws, min=0, max=20, label="Redraws")
        self._strength = FloatSlider(
            value=DEFAULTS.refiner.strength, min=0.0, max=1.0, step=0.05, label="Refine strength"
        )
        self._refine_steps = SpinBox(
            value=DEFAULTS.refiner.steps, min=1, max=1000, label="Refine steps"
        )
        self._refine_sampler = ComboBox(
            choices=choices(RefineSampler), value=DEFAULTS.refiner.sampler, label="Refine sampler"
        )
        self._guidance = FloatSpinBox(
            value=DEFAULTS.refiner.guidance, min=0.0, max=20.0, step=0.5, label="Guidance"
        )
        self._generate_pair = PushButton(text="Generate pair")
        self._generate_masks = PushButton(text="Generate masks")
        self._cancel = PushButton(text="Cancel", enabled=False)
        # the running job's progress, beside Cancel
        self._progress = ProgressBar(value=0, max=1, visible=False)

    def _build_edit_section(self) -> None:
        self._labels_layer = ComboBox(choices=self._layer_choices(Labels), label="Labels layer")
        self._image_layer = ComboBox(choices=self._layer_choices(Image), label="Image layer")
        self._label_map = ComboBox(
            choices=(MODEL_CONVENTION, *bundled_mappings(), OTHER_FILE), label="Label map"
        )
        self._label_map_file = FileEdit(mode="r", filter="*.txt", label="Label map file")
        self._complete = PushButton(text="Complete from seeds")
        self._image_from_masks = PushButton(text="Generate image from masks")
        self._refine = PushButton(text="Refine image")
        self._regenerate = PushButton(text="Regenerate edited slices")

    def _build_inspect_section(self) -> None:
        self._radiological = CheckBox(value=True, text="Radiological orientation")
        self._contours = CheckBox(value=False, text="Contours only")
        self._toggle_3d = PushButton(text="Switch 2D / 3D")
        self._volume_3d = CheckBox(value=False, text="Image as volume in 3D")
        self._window = ComboBox(choices=("auto", *CT_WINDOWS), value="auto", label="Window")
        self._export_dir = FileEdit(mode="d", label="Export to")
        self._export_format = ComboBox(choices=("NIfTI", "DICOM"), label="Export as")
        self._export = PushButton(text="Export pair")
        self._segmenter = FileEdit(mode="r", filter="*.pt", label="Segmenter", value="")
        self._check = PushButton(text="Check pair")
        self._check_result = Label(value="")

    def _connect(self, viewer: napari.viewer.Viewer) -> None:
        # Choosing a file means "use this file": the name list follows.
        self._model_file.changed.connect(lambda: setattr(self._model_name, "value", OTHER_FILE))
        self._label_map_file.changed.connect(lambda: setattr(self._label_map, "value", OTHER_FILE))
        self._load.changed.connect(lambda: self._with_model(lambda: None, force=True))
        self._generate_pair.changed.connect(self.generate_pair)
        self._generate_masks.changed.connect(self.generate_masks)
        self._complete.changed.connect(self.complete_from_seeds)
        self._image_from_masks.changed.connect(self.image_from_masks)
        self._refine.changed.connect(self.refine_image)
        self._regenerate.changed.connect(self.regenerate_edited_slices)
        self._cancel.changed.connect(self.cancel)
        self._radiological.changed.connect(self._apply_orientation)
        viewer.dims.events.ndisplay.connect(self._apply_orientation)
        self._apply_orientation()
        self._contours.changed.connect(self._apply_contours)
        self._toggle_3d.changed.connect(self._toggle_ndisplay)
        self._window.changed.connect(self._apply_window)
        self._volume_3d.changed.connect(self._show_image_volume)
        self._export.changed.connect(self.export_pair)
        self._check.changed.connect(self.check_pair)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.renamed):  # as napari's dock does
            event.connect(self._refresh_layer_choices)

    def _lay_out(self) -> None:
        """The model line, then one collapsible section per step of the work
        (:data:`SECTIONS`), each control with its tooltip."""
        from superqt import QCollapsible

        self.append(self._info)
        self._check_result.native.setWordWrap(True)
        self._sections = []
        for title, keys in SECTIONS.items():
            widgets = [getattr(self, f"_{key}") for key in keys]
            for key, widget in zip(keys, widgets, strict=True):
                widget.tooltip = TOOLTIPS.get(key, widget.tooltip)
                if isinstance(widget, ComboBox):  # long entries must not widen the dock
                    widget.native.setSizeAdjustPolicy(
                        widget.native.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
                    )
                    widget.native.setMinimumContentsLength(14)
            section = Container(widgets=widgets, labels=True)
            collapsible = QCollapsible(title)
            collapsible.addWidget(section.native)
            collapsible.expand(animate=False)
            self.native.layout().addWidget(collapsible)
            self._sections.append(section)  # keep the magicgui containers alive

    # ---- actions (public so scripts and tests can press them) -------------------------
    def generate_pair(self) -> None:
        self._run_samples("pair")

    def generate_masks(self) -> None:
        self._run_samples("masks")

    def complete_from_seeds(self) -> None:
        layer = self._require_layer(self._labels_layer, "a Labels layer with painted slices")
        if layer is None:
            return
        seed_mask = _volume(layer)

        def work(model: GenerativeModel, settings: GenerationSettings) -> Generator:
            from medgen3d.generate import generate_masks

            label = yield from generate_masks(model, settings, seed_mask=seed_mask)
            return (Generated(label, "labels", f"{layer.name} completed"),)

        self._with_model(lambda: self._start(work))

    def image_from_masks(self) -> None:
        layer = self._require_layer(self._labels_layer, "a Labels layer to use as the mask")
        if layer is None:
            return
        label = _volume(layer)
        mapping_spec = self._mapping_spec()

        def start() -> None:
            # Checked once the model is loaded, on the GUI thread, before any work: a mask
            # it cannot take is an error, one outside its training sizes a warning.
            from medgen3d.generate import check_mask_extent, conform_labels
            from medgen3d.labels import label_mapping

            try:
                mapping = None if mapping_spec is None else label_mapping(mapping_spec)
                conformed = conform_labels(self._model, label, layer.name, mapping)
                warning = check_mask_extent(self._model, conformed, layer.name)
            except InputError as exc:
                show_error(f"MedGen3D: {exc}")
                return
            if warning:
                show_warning(f"MedGen3D: {warning}")

            def work(model: GenerativeModel, settings: GenerationSettings) -> Generator:
                from medgen3d.generate import generate_image

                image = yield from generate_image(model, conformed, settings, source=layer.name)
                return (Generated(image, "image", f"{layer.name} image"),)

            self._start(work)

        self._with_model(start)

    def _mapping_spec(self) -> str | None:
        """The label mapping chosen: ``None`` for the model's own conventions."""
        choice = str(self._label_map.value)
        if choice == MODEL_CONVENTION:
            return None
        return str(self._label_map_file.value) if choice == OTHER_FILE else choice

    def refine_image(self) -> None:
        chosen = self._chosen_pair("an Image layer to refine", "the Labels layer of that image")
        if chosen is None:
            return
        image_layer, label_layer = chosen
        image, label = _volume(image_layer), _volume(label_layer)

        def work(model: GenerativeModel, settings: GenerationSettings) -> Generator:
            from medgen3d.generate import refine_image

            refined = yield from refine_image(model, image, label, settings)
            return (Generated(refined, "image", f"{image_layer.name} refined"),)

        self._with_model(lambda: self._start(work))

    def regenerate_edited_slices(self) -> None:
        chosen = self._chosen_pair("the generated Image layer", "the edited Labels layer")
        if chosen is None:
            return
        image_layer, label_layer = chosen
        before = label_layer.metadata.get(GEOMETRY_KEY, {}).get("generated_labels")
        if before is None or before.shape != label_layer.data.shape:
            show_error(f"{label_layer.name} was not generated by MedGen3D: nothing to compare")
            return
        changed = np.any(np.asarray(label_layer.data) != before, axis=(1, 2))
        if not changed.any():
            show_info("No slice of the labels was edited since generation.")
            return
        image, label = _volume(image_layer), _volume(label_layer)

        def work(model: GenerativeModel, settings: GenerationSettings) -> Generator:
            from medgen3d.generate import regenerate_slices

            updated = yield from regenerate_slices(model, image, label, changed, settings)
            return (Generated(updated, "image", f"{image_layer.name} regenerated"),)

        self._with_model(lambda: self._start(work))

    def export_pair(self) -> None:
        chosen = self._chosen_pair("the Image layer to export", "the Labels layer to export")
        if chosen is None:
            return
        image_layer, label_layer = chosen
        folder = Path(str(self._export_dir.value))
        if not str(self._export_dir.value) or str(self._export_dir.value) == ".":
            show_error("Choose a folder to export into first.")
            return
        image, label = _volume(image_layer), _volume(label_layer)
        name = label_layer.name.replace(" ", "_")
        if self._export_format.value == "DICOM":
            self._export_dicom(image, label, folder / name)
            return
        from medgen3d.batch import write_pair

        settings = label_layer.metadata.get(GEOMETRY_KEY, {}).get("settings", {})
        try:
            paths = write_pair(
                folder,
                name,
                image,
                label,
                settings=settings,
                model=self._model,
            )
        except InputError as exc:
            show_error(str(exc))
            return
        show_info(f"Exported {', '.join(p.name for p in paths)} to {folder}")

    def _export_dicom(self, image: Volume, label: Volume, folder: Path) -> None:
        """Write the pair as a DICOM series and SEG (with the model's label names and
        colours and its modality) in a worker: a whole study takes a while to write."""

        def work(model: GenerativeModel, _settings: GenerationSettings) -> Generator:
            from medgen3d.dicom import write_dicom_pair

            yield from ()
            modality = model.data.preprocessing.window.modality
            return write_dicom_pair(image, label, model.data.labels, modality, folder)

        def done(written: Path) -> None:
            show_info(f"Exported a DICOM series and segmentation to {written}")

        self._with_model(lambda: self._start(work, on_result=done))

    def check_pair(self) -> None:
        """The figures of ``medgen3d check`` for the chosen pair, shown in the widget."""
        chosen = self._chosen_pair("the Image layer to check", "its Labels layer")
        if chosen is None:
            return
        image_layer, label_layer = chosen
        image, label = _volume(image_layer), _volume(label_layer)
        segmenter_path = str(self._segmenter.value or "")
        device = str(self._device.value)

        def work(model: GenerativeModel, _settings: GenerationSettings) -> Generator:
            from medgen3d.evaluation.check import check_pair, training_intensities
            from medgen3d.evaluation.segmenter import Segmenter
            from medgen3d.runtime import resolve_device

            yield from ()
            segmenter = None
            if segmenter_path not in ("", "."):
                segmenter = Segmenter.load(segmenter_path, resolve_device(device))
            ranges = training_intensities(model)
            return check_pair(image, label, model.data, ranges, segmenter, name=label_layer.name)

        def show(result: PairCheck) -> None:
            self._check_result.value = result.describe()
            show_info(result.describe().splitlines()[0])

        self._with_model(lambda: self._start(work, on_result=show))

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.quit()
            self._live.pause.release()  # a worker held between reports sees the quit

    # ---- model loading ------------------------------------------------------------------
    def _with_model(self, then: Callable[[], None], force: bool = False) -> None:
        """Run ``then`` once the chosen model is loaded (loading it in a worker if needed)."""
        try:
            key = (self._model_spec(), str(self._device.value))
        except InputError as exc:
            show_error(str(exc))
            return
        if self._model is not None and self._model_key == key and not force:
            then()
            return

        def load(_no_model: None, _no_settings: None) -> Generator:
            from medgen3d.model import load_model
            from medgen3d.runtime import resolve_device

            yield from ()
            return load_model(key[0], resolve_device(key[1]))

        def loaded(model: GenerativeModel) -> None:
            self._model, self._model_key = model, key
            if key[0] not in bundled_models():
                _remember_model(key[0])
                self._model_name.reset_choices()
            self._info.value = self._model.summary()  # the whole description on hover
            self._info.tooltip = self._model.describe()
            if self._depth.value == self._depth_default:  # not changed by the user
                self._depth.value = self._depth_default = self._model.typical_depth
            if "masks" in model.stages:
                masks = model.stage("masks")
                self._fill_holes.value = masks.config.fill_holes
                self._min_island.value = masks.config.min_island_voxels
                self._overlap.max = masks.length - 1
                self._overlap.value = masks.generation_overlap
            self._pending = then  # runs once this worker has finished and cleaned up

        self._start(load, on_result=loaded, needs_model=False)

    def _model_choices(self, _widget: Any = None) -> list[str]:
        """The bundled models, then the model files loaded recently, then "Other file…"."""
        return [*bundled_models(), *_recent_models(), OTHER_FILE]

    def _model_spec(self) -> str:
        if self._model_name.value != OTHER_FILE:
            return str(self._model_name.value)
        value = str(self._model_file.value or "")
        if value in ("", "."):
            raise InputError("choose a model file, or one of the bundled models")
        path = Path(value)
        return str(path.parent) if path.name in STAGE_FILES else value

    # ---- running engine generators --------------------------------------------------------
    def _run_samples(self, what: str) -> None:
        count = int(self._samples.value)

        def work(model: GenerativeModel, settings: GenerationSettings) -> Generator:
            from medgen3d.batch import sample_seed
            from medgen3d.generate import generate_pair

            results = []
            for index in range(count):
                seeded = settings.with_seed(sample_seed(settings.seed, index))
                pair = yield from generate_pair(
                    model, seeded, stage="all" if what == "pair" else "masks"
                )
                name = f"sample {settings.seed}-{index}"
                warning = None
                if pair.anatomy is not None and not pair.anatomy.passed:
                    warning = (
                        f"{name}: every mask drawn ({pair.anatomy.draws}) failed the anatomy "
                        f"check; kept the one with: {'; '.join(pair.anatomy.faults)}"
                    )
                results.append(Generated(pair.label, "labels", f"{name} labels", seeded, warning))
                if pair.image is not None:
                    results.append(Generated(pair.image, "image", f"{name} image", seeded))
            return tuple(results)

        self._with_model(lambda: self._start(work))

    def _start(
        self,
        work: Callable[[GenerativeModel | None, GenerationSettings | None], Generator],
        on_result: Callable[[Any], None] | None = None,
        needs_model: bool = True,
    ) -> None:
        """Run ``work(model, settings)`` in a worker thread. Without ``on_result``, ``work``
        returns :class:`Generated` volumes and they become layers; else ``on_result`` gets
        what it returns. The settings and the display choices are read from the controls
        here, on the GUI thread (Qt widgets must not be read from another thread), as the
        job starts; its previews and result layers are prepared in the worker."""
        if self._worker is not None:
            show_info("MedGen3D is busy; cancel the running job or wait for it.")
            return
        model, settings = (self._model, self._settings()) if needs_model else (None, None)
        display, pause = self._display(), self._live.pause

        def job(model: GenerativeModel | None, settings: GenerationSettings | None) -> Generator:
            try:
                returned = yield from display.reports(work(model, settings), pause)
            except RuntimeError as exc:  # torch's errors, out of memory among them
                raise _JobError() from exc
            return returned if on_result is not None else display.layers(returned)

        # errors are shown by _on_error; napari must not also re-raise them
        worker = create_worker(job, model, settings, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(lambda report: self._on_progress(report, worker))
        worker.returned.connect(on_result or self._show_results)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(lambda: show_info("MedGen3D: cancelled; layers left unchanged."))
        worker.finished.connect(lambda: self._on_finished(worker))
        self._worker = worker
        self._set_busy(True)
        hold_collector()  # released as the worker finishes
        worker.start()

    def _on_progress(self, report: Report, worker: Any) -> None:
        """Keep the job's latest report for :meth:`_on_tick` to show: reports and previews
        can come faster than the viewer repaints."""
        if worker is not self._worker:  # a report queued before the job ended
            return
        self._report = report
        if report.preview is not None:
            self._live.offer(report.preview)
        if not self._tick.isActive():
            self._tick.start()

    def _on_tick(self) -> None:
        """Show a waiting preview once one is due, else the latest report: each costs a
        repaint of the window, so one per tick."""
        report = self._report
        if self._worker is None or report is None:
            return
        shown = self._live.show_due()
        if shown or self._live.waiting:
            self._tick.start()
        if not shown:
            self._show_progress(report)

    def _show_progress(self, report: Report) -> None:
        """The report in the widget's progress bar, unless the dock is already gone (a
        viewer closed while a job's last reports were queued). A new value repaints the
        window at once (QProgressBar), 15-60 ms under software OpenGL. Not in napari's
        activity dock: its bar takes 0.2 s to create per job and repaints on every update."""
        try:
            self._progress.max = max(report.total, 1)
            self._progress.value = min(report.done, report.total)
            self._progress.label = report.stage
        except RuntimeError:  # the Qt widget was deleted with the viewer
            pass

    def _show_results(self, results: tuple[ResultLayer, ...]) -> None:
        """Show a job's results, in its preview layers where it has some."""
        for layer in self._live.finish(results):
            if isinstance(layer, Labels):
                layer.contour = 1 if self._contours.value else 0
        for result in results:
            if result.warning:
                show_warning(f"MedGen3D: {result.warning}")

    def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, _JobError):
            exc = exc.__cause__
        self._live.discard()
        show_error(f"MedGen3D: {_describe_error(exc)}")
        log.error("MedGen3D job failed", exc_info=exc)

    def _on_finished(self, worker: Any) -> None:
        ours = worker is self._worker
        if ours:
            self._worker = None
            self._report = None
            self._tick.stop()
            # napari runs a full garbage collection per removed layer: quick while held
            self._live.discard()
            self._set_busy(False)
        release_collector()
        pending, self._pending = (self._pending, None) if ours else (None, self._pending)
        if pending is not None:
            pending()

    def _set_busy(self, busy: bool) -> None:
        self._cancel.enabled = busy
        self._progress.visible = busy
        self._progress.value = 0
        for button in (
            self._generate_pair,
            self._generate_masks,
            self._complete,
            self._image_from_masks,
            self._refine,
            self._regenerate,
            self._load,
            self._check,
        ):
            button.enabled = not busy

    # ---- layers ---------------------------------------------------------------------------
    def _settings(self) -> GenerationSettings:
        return GenerationSettings(
            seed=int(self._seed.value),
            depth=int(self._depth.value),
            masks=MaskSettings(
                sampler=str(self._sampler.value),
                steps=int(self._steps.value),
                # before a model is loaded the boxes have not shown its settings yet
                fill_holes=None if self._model is None else bool(self._fill_holes.value),
                min_island_voxels=None if self._model is None else int(self._min_island.value),
                overlap=None if self._model is None else int(self._overlap.value),
                redraws=int(self._redraws.value),
            ),
            refiner=RefineSettings(
                strength=float(self._strength.value),
                steps=int(self._refine_steps.value),
                sampler=str(self._refine_sampler.value),
                guidance=float(self._guidance.value),
            ),
        )

    def _display(self) -> Display:
        """How results are shown: the model's label colours and modality, the chosen
        contrast preset."""
        if self._model is None:
            return Display(window=str(self._window.value))
        window = self._model.data.preprocessing.window
        modality = window.modality if window is not None else None
        return Display(self._model.data.labels, str(self._window.value), modality)

    def _apply_window(self) -> None:
        """Apply the chosen contrast preset to the chosen Image layer."""
        layer = self._image_layer.value
        if layer is not None:
            layer.contrast_limits = self._display().contrast_limits(np.asarray(layer.data))

    def _layer_choices(self, layer_type: type) -> Callable[[Any], list]:
        def choices(_widget: Any = None) -> list:
            return [
                (layer.name, layer)
                for layer in self._viewer.layers
                if isinstance(layer, layer_type) and not is_preview(layer)
            ]

        return choices

    def _refresh_layer_choices(self, _event: Any = None) -> None:
        self._labels_layer.reset_choices()
        self._image_layer.reset_choices()

    def _chosen_pair(self, image_role: str, labels_role: str) -> tuple[Any, Any] | None:
        """The chosen Image and Labels layers, or ``None`` (and a message) when one is missing."""
        image_layer = self._require_layer(self._image_layer, image_role)
        label_layer = self._require_layer(self._labels_layer, labels_role)
        return None if image_layer is None or label_layer is None else (image_layer, label_layer)

    def _require_layer(self, combo: ComboBox, what: str) -> Any:
        if combo.value is None:
            show_error(f"Choose {what} first.")
        return combo.value

    def _apply_orientation(self) -> None:
        """Slices in the radiological orientation when ticked (:data:`RADIOLOGICAL`); the
        3D view keeps napari's axis directions, which :data:`CAMERA_3D` is set in."""
        radiological = self._radiological.value and self._viewer.dims.ndisplay == 2
        self._camera().orientation2d = RADIOLOGICAL if radiological else NAPARI_AXES

    def _camera(self) -> Any:
        # napari 0.9 moved the camera to viewer.scene; earlier versions have viewer.camera
        return getattr(self._viewer, "scene", self._viewer).camera

    def _apply_contours(self) -> None:
        for layer in self._viewer.layers:
            if isinstance(layer, Labels) and GEOMETRY_KEY in layer.metadata:
                layer.contour = 1 if self._contours.value else 0

    def _show_image_volume(self) -> None:
        """In 3D, show or hide the images as volume renderings beside the label surfaces."""
        if self._viewer.dims.ndisplay == 3:
            self._show_images(bool(self._volume_3d.value))

    def _show_images(self, visible: bool) -> None:
        for layer in self._viewer.layers:
            if isinstance(layer, Image) and not is_preview(layer):
                layer.visible = visible

    def _toggle_ndisplay(self) -> None:
        """Switch 2D/3D. In 3D the envelope labels (body, head) become transparent, so the
        organs inside them show as surfaces, the images hide unless *Image as volume in 3D*
        is ticked, and the camera looks at the organs from the front and above; back in 2D
        everything shows again."""
        three_d = self._viewer.dims.ndisplay == 2
        for layer in self._viewer.layers:
            if isinstance(layer, Labels) and "name" in getattr(layer, "features", {}):
                _show_envelopes(layer, not three_d)
        self._show_images(not three_d or bool(self._volume_3d.value))
        self._viewer.dims.ndisplay = 3 if three_d else 2
        if three_d:
            self._camera().angles = CAMERA_3D


def _single_shot(interval_ms: int, slot: Callable[[], None], parent: Any) -> QTimer:
    from qtpy.QtCore import QTimer

    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(interval_ms)
    timer.timeout.connect(slot)
    return timer


def _recent_models() -> list[str]:
    """Model files and folders loaded recently (Qt settings), those that still exist."""
    from qtpy.QtCore import QSettings

    value = QSettings(*SETTINGS_SCOPE).value("recent_models", [])
    paths = [value] if isinstance(value, str) else list(value or [])
    return [p for p in paths if Path(p).exists()]


def _remember_model(path: str) -> None:
    from qtpy.QtCore import QSettings

    recent = [path, *[p for p in _recent_models() if p != path]][:RECENT_MODELS]
    QSettings(*SETTINGS_SCOPE).setValue("recent_models", recent)


def _show_envelopes(layer: Any, visible: bool) -> None:
    """Make a Labels layer's envelope labels (:data:`ENVELOPES`) transparent or restore
    their colours."""
    from napari.utils.colormaps import DirectLabelColormap

    names = list(layer.features["name"])
    values = list(layer.features["index"])
    colours = dict(layer.colormap.color_dict)
    saved = layer.metadata.setdefault("medgen3d_envelope_colours", {})
    for value, name in zip(values, names, strict=True):
        if name not in ENVELOPES:
            continue
        if visible and value in saved:
            colours[value] = saved.pop(value)
        elif not visible:
            saved.setdefault(value, colours.get(value))
            colours[value] = np.zeros(4)
    layer.colormap = DirectLabelColormap(color_dict=colours)


def _volume(layer: Any) -> Volume:
    """The engine volume a layer shows, with the geometry it was read or made with."""
    return layer_to_volume(layer.data, _layer_meta(layer))


def _layer_meta(layer: Any) -> dict[str, Any]:
    """What napari hands a writer for ``layer``: its metadata, scale and translate."""
    return {
        "metadata": layer.metadata,
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
    }


class _JobError(Exception):
    """A job's ``RuntimeError``, carried out of the worker as its ``__cause__``: napari
    takes a ``RuntimeError`` for a deleted worker and then reports neither the error nor
    the end of the job, which would leave the widget busy for good."""


def _describe_error(exc: Exception) -> str:
    from medgen3d.errors import InputError

    if isinstance(exc, InputError):
        return str(exc)
    if type(exc).__name__ == "OutOfMemoryError":
        return "the GPU ran out of memory; lower the depth or the number of samples, or use the CPU"
    return f"unexpected {type(exc).__name__}: {exc}"
