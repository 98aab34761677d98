"""The MedGen3D dock widget with a tiny model, in a real viewer (run under xvfb-run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _stage_data import TINY_DATA as DATA
from _stage_data import write_tiny_model
from napari_medgen3d._layers import GEOMETRY_KEY

pytestmark = pytest.mark.gui

TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def widget(make_napari_viewer, tiny_model: Path, qtbot):
    from napari_medgen3d._widget import MedGen3DWidget

    viewer = make_napari_viewer()
    widget = MedGen3DWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MedGen3D")
    widget._model_file.value = tiny_model / "masks.pt"  # picks the whole folder
    widget._depth.value = 12
    widget._steps.value = 2
    widget._refine_steps.value = 2
    return viewer, widget


@pytest.fixture(autouse=True)
def own_settings(monkeypatch, tmp_path):
    """The widget's remembered settings (recent models) in a scope of this test's own."""
    from qtpy.QtCore import QSettings

    import napari_medgen3d._widget as module

    scope = ("napari-medgen3d-tests", tmp_path.name)
    monkeypatch.setattr(module, "SETTINGS_SCOPE", scope)
    yield
    QSettings(*scope).clear()


def _wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: widget._worker is None and widget._pending is None, timeout=TIMEOUT_MS)


def test_widget_is_contributed_by_the_manifest(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-medgen3d", "MedGen3D")
    assert type(widget).__name__ == "MedGen3DWidget"


def test_generate_pair_adds_aligned_layers_with_label_names(widget, qtbot) -> None:
    from medgen3d.batch import sample_seed

    viewer, w = widget
    w.generate_pair()
    qtbot.waitUntil(lambda: "sample 0-0 image" in viewer.layers, timeout=TIMEOUT_MS)
    _wait_idle(qtbot, w)
    assert len(viewer.layers) == 2  # the previews are gone
    # the labels lie above their image, so the overlay shows at once
    assert [layer.name for layer in viewer.layers] == ["sample 0-0 image", "sample 0-0 labels"]
    labels, image = viewer.layers["sample 0-0 labels"], viewer.layers["sample 0-0 image"]
    assert labels.data.shape == image.data.shape == (12, 16, 16)
    np.testing.assert_allclose(labels.scale, (3.0, 2.0, 2.0))
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    assert list(labels.features["name"]) == list(DATA.labels.names)
    assert "4 heart" in w._info.tooltip and "16x16" in w._info.value
    assert image.opacity == 1.0  # not the preview's half transparency
    # ready to work on: offered in the widget's choices, with what regenerate/export need
    assert w._labels_layer.choices == (labels,) and w._image_layer.choices == (image,)
    geometry = labels.metadata[GEOMETRY_KEY]
    np.testing.assert_array_equal(geometry["generated_labels"], labels.data)
    assert geometry["settings"]["seed"] == sample_seed(0, 0)  # what made this sample


def test_each_sample_gets_its_own_pair_of_layers(widget, qtbot) -> None:
    viewer, w = widget
    w._samples.value = 2
    w.generate_pair()
    qtbot.waitUntil(lambda: "sample 0-1 labels" in viewer.layers, timeout=TIMEOUT_MS)
    _wait_idle(qtbot, w)
    assert [layer.name for layer in viewer.layers] == [
        "sample 0-0 image",
        "sample 0-1 image",
        "sample 0-0 labels",
        "sample 0-1 labels",
    ]
    first, second = viewer.layers["sample 0-0 image"], viewer.layers["sample 0-1 image"]
    assert not np.array_equal(first.data, second.data)  # two seeds, two samples


def test_complete_from_seeds_keeps_painted_slices(widget, qtbot) -> None:
    viewer, w = widget
    painted = np.zeros((12, 16, 16), dtype=np.uint8)
    painted[2, 3:12, 3:12] = 1
    painted[2, 6:9, 6:9] = 4
    painted[9, 4:10, 4:10] = 2
    seeds = viewer.add_labels(painted.copy(), name="seeds", scale=(3.0, 2.0, 2.0))
    w._labels_layer.value = seeds
    w.complete_from_seeds()
    qtbot.waitUntil(lambda: "seeds completed" in viewer.layers, timeout=TIMEOUT_MS)
    _wait_idle(qtbot, w)
    completed = viewer.layers["seeds completed"]
    np.testing.assert_array_equal(completed.data[[2, 9]], painted[[2, 9]])
    np.testing.assert_allclose(completed.scale, seeds.scale)
    np.testing.assert_array_equal(seeds.data, painted)  # the user's layer is untouched


def test_cancel_leaves_layers_as_they_were(widget, qtbot) -> None:
    viewer, w = widget
    w._depth.value = 60
    w._steps.value = 50
    viewer.add_labels(np.zeros((4, 4, 4), dtype=np.uint8), name="existing")
    names = [layer.name for layer in viewer.layers]
    w.generate_pair()
    qtbot.waitUntil(lambda: w._report is not None, timeout=TIMEOUT_MS)  # work under way
    assert not w._progress.native.isHidden() and w._cancel.enabled  # both in the widget
    outcome = []
    w._worker.aborted.connect(lambda: outcome.append("aborted"))
    w._worker.errored.connect(lambda exc: outcome.append(f"failed: {exc}"))
    w.cancel()
    _wait_idle(qtbot, w)
    assert outcome == ["aborted"]  # cancelled, not failed
    assert [layer.name for layer in viewer.layers] == names
    assert _collector_released()


def test_a_failed_job_removes_its_previews_and_says_why(widget, qtbot) -> None:
    import threading

    from napari.utils.notifications import notification_manager

    from medgen3d.progress import Progress

    viewer, w = widget
    messages = []
    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    previewed = threading.Event()

    def work(_model, _settings):
        yield Progress("masks", 1, 2, preview=np.ones((4, 6, 6), np.uint8))
        previewed.wait(TIMEOUT_MS / 1000)
        raise RuntimeError("out of luck")

    w._start(work, needs_model=False)
    qtbot.waitUntil(lambda: "MedGen3D preview (masks)" in viewer.layers, timeout=TIMEOUT_MS)
    previewed.set()
    _wait_idle(qtbot, w)
    # torch raises RuntimeErrors (running out of memory among them), which napari's worker
    # would otherwise swallow, never saying the job ended
    assert any("unexpected RuntimeError: out of luck" in m for m in messages)
    assert len(viewer.layers) == 0
    assert _collector_released()


def test_a_preview_that_becomes_the_result_is_offered_to_work_on(make_napari_viewer, qtbot) -> None:
    """Not docked, so napari does not refresh the widget's layer lists itself."""
    import threading

    from medgen3d.io import Volume
    from medgen3d.progress import Progress
    from napari_medgen3d._results import Generated
    from napari_medgen3d._widget import MedGen3DWidget

    viewer = make_napari_viewer()
    w = MedGen3DWidget(viewer)
    labels = np.zeros((4, 6, 6), np.uint8)
    previewed = threading.Event()

    def work(_model, _settings):
        yield Progress("masks", 1, 2, preview=labels)
        previewed.wait(TIMEOUT_MS / 1000)
        return (Generated(Volume(labels, np.eye(4)), "labels", "made"),)

    w._start(work, needs_model=False)
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=TIMEOUT_MS)
    preview = viewer.layers[0]
    assert preview not in w._labels_layer.choices  # nothing to work on yet
    previewed.set()
    _wait_idle(qtbot, w)
    assert [layer.name for layer in viewer.layers] == ["made"]
    assert viewer.layers["made"] is preview
    assert w._labels_layer.choices == (preview,)


def _collector_released() -> bool:
    """Whether the cycle collector sees every object again (no job holds it)."""
    import gc

    from napari_medgen3d import _responsive

    _responsive._THREAD.join(TIMEOUT_MS / 1000)  # the warm-up's imports hold it too
    return gc.get_freeze_count() == 0


def test_bad_model_path_is_a_notification_not_a_crash(widget, qtbot, tmp_path) -> None:
    viewer, w = widget
    junk = tmp_path / "broken.pt"
    junk.write_bytes(b"not a checkpoint")
    w._model_file.value = junk
    errors = []
    from napari.utils.notifications import notification_manager

    notification_manager.notification_ready.connect(lambda n: errors.append(str(n.message)))
    w.generate_masks()
    _wait_idle(qtbot, w)
    assert any("broken.pt" in message for message in errors)
    assert len(viewer.layers) == 0


def test_check_pair_shows_the_figures_of_medgen3d_check(make_napari_viewer, qtbot, tmp_path):
    from medgen3d.phantom import make_phantom
    from napari_medgen3d._widget import MedGen3DWidget

    ranges = {name: [-1000.0, 0.0, 1000.0] for name in DATA.labels.names}
    ranges["heart"] = [500.0, 600.0, 700.0]  # no phantom heart is that bright
    model = write_tiny_model(tmp_path / "model", provenance={"label_intensities": ranges})
    viewer = make_napari_viewer()
    w = MedGen3DWidget(viewer)
    w._model_file.value = model / "masks.pt"
    case = make_phantom(0, shape=(12, 16, 16), spacing=(3.0, 2.0, 2.0))
    w._image_layer.value = viewer.add_image(case.image.data, name="ct", scale=(3.0, 2.0, 2.0))
    w._labels_layer.value = viewer.add_labels(case.label.data, name="ct labels", scale=(3, 2, 2))
    w.check_pair()
    qtbot.waitUntil(lambda: w._check_result.value != "", timeout=TIMEOUT_MS)
    _wait_idle(qtbot, w)
    shown = w._check_result.value
    assert shown.startswith("FLAGGED: ct labels")
    assert "heart: median intensity" in shown and "body" in shown
    assert len(viewer.layers) == 2  # checking adds no layer


def test_previews_appear_where_the_result_will(widget) -> None:
    from medgen3d.generate import model_grid

    viewer, w = widget
    affine = model_grid(DATA, 12)
    w._live.offer(w._display().preview("masks", np.zeros((12, 16, 16), np.uint8), affine))
    w._live._hold_s = 0.0  # no worker to hold
    assert w._live.show_due()
    preview = viewer.layers["MedGen3D preview (masks)"]
    np.testing.assert_allclose(preview.scale, (3.0, 2.0, 2.0))
    np.testing.assert_allclose(preview.translate, affine[[2, 1, 0], 3])


def test_model_list_offers_the_bundled_models_and_follows_a_chosen_file(
    make_napari_viewer, tiny_model: Path
) -> None:
    from medgen3d.bundled import bundled_models
    from napari_medgen3d._widget import OTHER_FILE, MedGen3DWidget

    w = MedGen3DWidget(make_napari_viewer())
    assert list(w._model_name.choices) == [*bundled_models(), OTHER_FILE]
    assert w._model_name.value == "demo" and w._model_spec() == "demo"
    w._model_file.value = tiny_model / "images.pt"
    assert w._model_name.value == OTHER_FILE
    assert w._model_spec() == str(tiny_model)


def test_a_loaded_model_file_is_offered_by_name_next_time(
    make_napari_viewer, tiny_model: Path, qtbot
) -> None:
    from medgen3d.bundled import bundled_models
    from napari_medgen3d._widget import OTHER_FILE, MedGen3DWidget

    w = MedGen3DWidget(make_napari_viewer())
    w._model_file.value = tiny_model / "masks.pt"
    w._with_model(lambda: None)
    _wait_idle(qtbot, w)
    again = MedGen3DWidget(make_napari_viewer())
    assert list(again._model_name.choices) == [*bundled_models(), str(tiny_model), OTHER_FILE]
    again._model_name.value = str(tiny_model)
    assert again._model_spec() == str(tiny_model)


def test_controls_are_read_on_the_gui_thread(widget, qtbot) -> None:
    """Qt widgets must not be read from the worker thread: the settings are taken on the
    GUI thread as the job starts."""
    import threading

    viewer, w = widget
    read_in = []
    settings = w._settings

    def recording():
        read_in.append(threading.current_thread() is threading.main_thread())
        return settings()

    w._settings = recording
    w.generate_masks()
    qtbot.waitUntil(lambda: "sample 0-0 labels" in viewer.layers, timeout=TIMEOUT_MS)
    _wait_idle(qtbot, w)
    assert read_in == [True]


def test_cli_and_widget_take_their_defaults_from_the_settings(make_napari_viewer) -> None:
    from medgen3d.cli import _generation_settings, build_parser
    from medgen3d.settings import DEFAULTS
    from napari_medgen3d._widget import MedGen3DWidget

    cli = build_parser().parse_args(["generate", "--out", "x"])
    widget = MedGen3DWidget(make_napari_viewer())._settings()
    assert widget == DEFAULTS
    assert _generation_settings(cli) == DEFAULTS  # every stage's options, nested
    assert cli.depth is None  # the command line leaves the depth to the model


def test_holes_islands_and_overlap_follow_the_loaded_model(
    make_napari_viewer, qtbot, tmp_path
) -> None:
    from medgen3d.checkpoint import load_checkpoint, save_checkpoint
    from medgen3d.settings import DEFAULTS
    from napari_medgen3d._widget import MedGen3DWidget

    folder = write_tiny_model(tmp_path / "model")
    masks = load_checkpoint(folder / "masks.pt")
    masks.config["model"]["fill_holes"] = True
    masks.config["model"]["min_island_voxels"] = 7
    masks.config["model"]["sampling_overlap"] = 2
    save_checkpoint(masks, folder / "masks.pt", overwrite=True)
    w = MedGen3DWidget(make_napari_viewer())
    w._model_file.value = folder / "masks.pt"
    unloaded = w._settings().masks  # not loaded: the model's own
    assert unloaded.fill_holes is None and unloaded.min_island_voxels is None
    assert unloaded.overlap is None
    w._with_model(lambda: None)
    _wait_idle(qtbot, w)
    loaded = w._settings().masks
    assert loaded.fill_holes is True and loaded.min_island_voxels == 7
    assert loaded.overlap == 2 and w._overlap.max == 7  # sequences of 8
    w._fill_holes.value, w._min_island.value, w._overlap.value = False, 0, 1
    assert w._settings().masks.fill_holes is False
    assert w._settings().masks.min_island_voxels == 0
    assert w._settings().masks.overlap == 1
    assert loaded.redraws == DEFAULTS.masks.redraws
    w._redraws.value = 0
    assert w._settings().masks.redraws == 0


def test_image_from_masks_with_a_label_map_and_a_size_warning(
    make_napari_viewer, qtbot, tmp_path
) -> None:
    from napari.utils.notifications import notification_manager

    from napari_medgen3d._widget import OTHER_FILE, MedGen3DWidget

    anatomy = {"extent_mm": {"min": [10.0, 28.0, 28.0], "max": [60.0, 30.0, 30.0]}}
    model = write_tiny_model(tmp_path / "model", provenance={"anatomy": anatomy})
    viewer = make_napari_viewer()
    w = MedGen3DWidget(viewer)
    w._model_file.value = model / "masks.pt"
    user = np.zeros((12, 16, 16), dtype=np.uint8)
    user[:, 2:14, 2:14] = 42  # "body" in the user's numbering: 24 mm, below the 28 mm seen
    viewer.add_labels(user, name="mine", scale=(3.0, 2.0, 2.0))
    (tmp_path / "map.txt").write_text("0 0\n42 1\n")  # without it, 42 is an error
    w._labels_layer.value = viewer.layers["mine"]
    w._label_map_file.value = tmp_path / "map.txt"
    assert w._label_map.value == OTHER_FILE
    messages = []
    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    w.image_from_masks()
    qtbot.waitUntil(lambda: "mine image" in viewer.layers, timeout=TIMEOUT_MS)
    _wait_idle(qtbot, w)
    assert viewer.layers["mine image"].data.shape == user.shape
    assert any("trained on 28-30" in m for m in messages)


def test_a_mask_failing_every_anatomy_check_is_shown_with_a_warning(
    make_napari_viewer, qtbot, tmp_path
) -> None:
    from napari.utils.notifications import notification_manager

    from _stage_data import TINY_DATA
    from medgen3d.evaluation.anatomy import AnatomyReference, mask_anatomy
    from napari_medgen3d._widget import MedGen3DWidget

    table = TINY_DATA.labels
    body = np.zeros((12, 16, 16), dtype=np.uint8)
    body[:, 2:14, 2:14] = 1  # channel 1, body: what no untrained mask model draws
    anatomy = mask_anatomy(body, len(table), TINY_DATA.preprocessing.spacing)
    reference = AnatomyReference.from_anatomies([anatomy], table.names[1:])
    model = write_tiny_model(
        tmp_path / "model", provenance={"anatomy": {"reference": reference.to_dict()}}
    )
    viewer = make_napari_viewer()
    w = MedGen3DWidget(viewer)
    w._model_file.value = model / "masks.pt"
    w._depth.value, w._steps.value, w._redraws.value = 12, 2, 1
    messages = []
    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    w.generate_masks()
    qtbot.waitUntil(lambda: "sample 0-0 labels" in viewer.layers, timeout=TIMEOUT_MS)
    _wait_idle(qtbot, w)
    warned = [m for m in messages if "failed the anatomy check" in m]
    assert len(warned) == 1 and "every mask drawn (2)" in warned[0]
    assert "body is missing" in warned[0]


def test_export_pair_as_dicom(widget, qtbot, tmp_path) -> None:
    import pydicom

    viewer, w = widget
    labels = np.zeros((9, 16, 16), dtype=np.uint8)
    labels[:, 3:13, 3:13] = 1  # body
    labels[2:7, 6:10, 6:10] = 4  # heart
    hu = np.where(labels == 4, 40.0, np.where(labels == 1, -80.0, -1000.0)).astype(np.float32)
    viewer.add_image(hu, name="ct", scale=(3.0, 2.0, 2.0))
    viewer.add_labels(labels, name="organs", scale=(3.0, 2.0, 2.0))
    w._image_layer.value = viewer.layers["ct"]
    w._labels_layer.value = viewer.layers["organs"]
    w._export_dir.value = tmp_path
    w._export_format.value = "DICOM"
    w.export_pair()
    _wait_idle(qtbot, w)
    slices = sorted((tmp_path / "organs" / "image").glob("*.dcm"))
    assert len(slices) == 9
    segments = pydicom.dcmread(tmp_path / "organs" / "seg.dcm").SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["body", "heart"]


def test_contrast_follows_the_models_modality_and_the_chosen_preset(widget, qtbot) -> None:
    viewer, w = widget
    w.generate_pair()
    qtbot.waitUntil(lambda: "sample 0-0 image" in viewer.layers, timeout=TIMEOUT_MS)
    _wait_idle(qtbot, w)
    image = viewer.layers["sample 0-0 image"]
    assert tuple(image.contrast_limits) == (-160.0, 240.0)  # CT model: soft tissue
    w._image_layer.value = image
    w._window.value = "lung"
    assert tuple(image.contrast_limits) == (-1350.0, 150.0)


def test_3d_view_makes_the_body_transparent_and_2d_restores_it(widget, qtbot) -> None:
    from napari_medgen3d._results import Generated

    viewer, w = widget
    labels = np.zeros((9, 16, 16), dtype=np.uint8)
    labels[:, 2:14, 2:14] = 1
    labels[3:6, 6:10, 6:10] = 4
    w._with_model(lambda: None)  # the tiny model's table names and colours
    _wait_idle(qtbot, w)
    w._show_results(w._display().layers([Generated(_volume_of(labels), "labels", "organs")]))
    layer = viewer.layers["organs"]
    body_colour = np.array(layer.colormap.color_dict[1])
    image = viewer.add_image(np.zeros(labels.shape, np.float32), name="ct")
    w._toggle_ndisplay()
    assert viewer.dims.ndisplay == 3
    assert layer.colormap.color_dict[1][3] == 0  # the body is transparent
    assert layer.colormap.color_dict[4][3] > 0  # the heart is not
    assert not image.visible  # the organs first; the image volume on request
    w._volume_3d.value = True
    assert image.visible
    w._toggle_ndisplay()
    assert viewer.dims.ndisplay == 2 and image.visible
    np.testing.assert_allclose(layer.colormap.color_dict[1], body_colour)


def test_slices_show_in_radiological_orientation_unless_unticked(make_napari_viewer) -> None:
    """In the RAS world the reader places volumes in, a block anterior and on the patient's
    right shows at the top left of an axial slice, as radiology viewers show it; unticked,
    napari's array convention puts it at the bottom right. 3D keeps napari's axes."""
    from napari_medgen3d._widget import MedGen3DWidget

    viewer = make_napari_viewer(show=True)  # a hidden 2D canvas renders blank
    w = MedGen3DWidget(viewer)
    ras = np.zeros((3, 40, 40), np.float32)
    ras[:, 28:, 28:] = 1  # y anterior, x right
    viewer.add_image(ras, contrast_limits=(0, 1))

    def bright_corner() -> tuple[str, str]:
        shot = viewer.screenshot(canvas_only=True, flash=False)[..., 0].astype(float)
        assert shot.std() > 5  # not a blank canvas
        half = np.array(shot.shape) // 2
        corners = {
            (v, h): shot[rows, cols].mean()
            for v, rows in (("top", slice(0, half[0])), ("bottom", slice(half[0], None)))
            for h, cols in (("left", slice(0, half[1])), ("right", slice(half[1], None)))
        }
        return max(corners, key=corners.get)

    assert bright_corner() == ("top", "left")
    w._radiological.value = False
    assert bright_corner() == ("bottom", "right")
    w._radiological.value = True
    camera = getattr(viewer, "scene", viewer).camera
    w._toggle_ndisplay()
    assert tuple(camera.orientation2d) == ("down", "right")
    w._toggle_ndisplay()
    assert tuple(camera.orientation2d) == ("up", "left")


def _volume_of(labels: np.ndarray):
    from medgen3d.io import Volume

    return Volume(labels, np.diag([2.0, 2.0, 3.0, 1.0]))


def test_widget_fits_beside_the_canvas_after_loading_a_model(widget, qtbot) -> None:
    from superqt import QCollapsible

    _, w = widget
    w._with_model(lambda: None)
    _wait_idle(qtbot, w)
    assert w._model is not None
    titles = [c.text() for c in w.native.findChildren(QCollapsible)]
    assert titles == ["Model", "Generate", "Edit and regenerate", "Inspect and export"]
    assert w.native.sizeHint().width() <= 420
