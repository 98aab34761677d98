"""What jobs return and how it reaches the viewer: typed results, previews reused as result
layers, the worker held while a layer is made (the viewer tests run under xvfb-run)."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from _stage_data import TINY_DATA as DATA
from medgen3d.io import Volume
from medgen3d.progress import Progress
from medgen3d.settings import DEFAULTS
from napari_medgen3d._layers import GEOMETRY_KEY
from napari_medgen3d._results import Display, Generated, LiveLayers, Pause

SHAPE = (6, 8, 8)
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _labels() -> Volume:
    data = np.zeros(SHAPE, np.uint8)
    data[1:5, 2:6, 2:6] = 1
    return Volume(data, AFFINE)


def _image() -> Volume:
    return Volume(
        np.linspace(-200.0, 300.0, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE), AFFINE
    )


def test_results_are_typed_and_frozen() -> None:
    result = Generated(_labels(), "labels", "organs", DEFAULTS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.name = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        result.volum  # type: ignore[attr-defined]  # noqa: B018 (a typo fails at once)


def test_display_puts_images_first_and_keeps_what_export_and_regenerate_need() -> None:
    display = Display(DATA.labels, "auto", "ct")
    labels, image = _labels(), _image()
    image_layer, labels_layer = display.layers(
        [Generated(labels, "labels", "a labels", DEFAULTS), Generated(image, "image", "a image")]
    )
    assert (image_layer.kind, labels_layer.kind) == ("image", "labels")
    assert image_layer.kwargs["contrast_limits"] == (-160.0, 240.0)  # CT: soft tissue
    geometry = labels_layer.kwargs["metadata"][GEOMETRY_KEY]
    assert geometry["settings"] == DEFAULTS.to_dict()
    np.testing.assert_array_equal(geometry["generated_labels"], labels.data)
    assert not np.shares_memory(geometry["generated_labels"], labels_layer.data)  # edits differ
    np.testing.assert_allclose(labels_layer.kwargs["scale"], (3.0, 2.0, 2.0))


def test_mri_contrast_follows_the_image_and_a_preset_wins() -> None:
    image = _image().data
    low, high = Display(window="auto", modality="mri").contrast_limits(image)
    assert image.min() < low < high < image.max()
    assert Display(window="lung", modality="mri").contrast_limits(image) == (-1350.0, 150.0)


def test_reports_carry_prepared_previews_and_the_return_value() -> None:
    def work():
        yield Progress("masks", 1, 2)
        yield Progress("masks", 2, 2, preview=_labels().data, affine=AFFINE)
        yield Progress("images", 1, 1, preview=_image().data)
        return "done"

    reports = Display(DATA.labels, "auto", "ct").reports(work())
    seen = []
    with pytest.raises(StopIteration) as stop:
        while True:
            seen.append(next(reports))
    assert stop.value.value == "done"
    assert [r.preview is None for r in seen] == [True, False, False]
    masks, images = seen[1].preview, seen[2].preview
    assert (masks.kind, masks.stage, images.kind) == ("labels", "masks", "image")
    np.testing.assert_allclose(masks.style["scale"], (3.0, 2.0, 2.0))  # where the result goes
    assert "colormap" in masks.style and images.style["contrast_limits"] == (-160.0, 240.0)


def test_a_worker_waits_at_the_pause_until_released() -> None:
    pause = Pause(longest_s=30.0)
    pause.request()
    passed = threading.Event()

    def worker() -> None:
        pause.checkpoint()
        passed.set()

    thread = threading.Thread(target=worker)
    thread.start()
    for _ in range(300):
        if pause.parked:
            break
        threading.Event().wait(0.01)
    assert pause.parked and not passed.is_set()
    pause.release()
    thread.join(5.0)
    assert passed.is_set() and not pause.parked


def test_a_worker_never_waits_longer_than_the_pause_allows() -> None:
    pause = Pause(longest_s=0.01)
    pause.request()
    pause.checkpoint()  # returns although nobody released it
    assert not pause.parked


@pytest.mark.gui
def test_previews_become_the_result_layers_labels_above_image(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros(SHAPE, np.float32), name="mine")
    live = LiveLayers(viewer, interval=0.0, hold_s=0.0)
    display = Display(DATA.labels, "auto", "ct")
    live.offer(display.preview("masks", _labels().data, AFFINE))
    assert live.show_due()
    live.offer(display.preview("images", _image().data, AFFINE))
    assert live.show_due()
    previews = [layer for layer in viewer.layers][1:]
    # the image preview went in below the labels preview
    assert [layer.name for layer in previews] == [
        "MedGen3D preview (images)",
        "MedGen3D preview (masks)",
    ]
    results = display.layers(
        [
            Generated(_labels(), "labels", "s labels", DEFAULTS),
            Generated(_image(), "image", "s image"),
        ]
    )
    shown = live.finish(results)
    assert [layer.name for layer in viewer.layers] == ["mine", "s image", "s labels"]
    assert shown == previews  # the same layers, not new ones
    image, labels = shown
    assert image.opacity == 1.0 and labels.opacity == 0.5  # previews were half transparent
    assert tuple(image.contrast_limits) == (-160.0, 240.0)
    assert GEOMETRY_KEY in labels.metadata and GEOMETRY_KEY in image.metadata


@pytest.mark.gui
def test_results_without_previews_get_new_layers_and_leftover_previews_go(
    make_napari_viewer,
) -> None:
    viewer = make_napari_viewer()
    live = LiveLayers(viewer, interval=0.0, hold_s=0.0)
    display = Display(DATA.labels, "auto", "ct")
    live.offer(display.preview("images", _image().data, AFFINE))
    live.show_due()
    live.finish(
        display.layers(
            [Generated(_labels(), "labels", "0 labels"), Generated(_labels(), "labels", "1 labels")]
        )
    )
    assert [layer.name for layer in viewer.layers] == ["0 labels", "1 labels"]
    live.offer(display.preview("masks", _labels().data, AFFINE))
    live.show_due()
    live.discard()  # a cancelled job
    assert [layer.name for layer in viewer.layers] == ["0 labels", "1 labels"]


@pytest.mark.gui
def test_previews_coming_too_fast_wait_and_only_the_newest_shows(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    live = LiveLayers(viewer, interval=3600.0, hold_s=0.0)
    display = Display(DATA.labels, "auto", "ct")
    first, second, third = (np.full(SHAPE, value, np.uint8) for value in (1, 2, 3))
    live.offer(display.preview("masks", first, AFFINE))
    assert live.show_due()
    live.offer(display.preview("masks", second, AFFINE))
    live.offer(display.preview("masks", third, AFFINE))
    assert not live.show_due() and live.waiting  # too soon: kept, not queued
    live._interval = 0.0
    assert live.show_due() and not live.waiting
    np.testing.assert_array_equal(viewer.layers["MedGen3D preview (masks)"].data, third)
    assert len(viewer.layers) == 1
