"""The derived label for the subject a dataset's masks leave unlabelled."""

from __future__ import annotations

import numpy as np
import pytest

from medgen3d.foreground import ForegroundFill


def _head() -> tuple[np.ndarray, np.ndarray]:
    """A bright disc (the head) with a dark hole (a sinus) and a labelled core (the brain),
    and a small bright speck of noise in the air."""
    yy, xx = np.mgrid[:4, :32, :32][1:]
    radius = np.hypot(yy - 16, xx - 16)
    image = np.where(radius < 12, 0.5, -1.0).astype(np.float32)
    image[:, 24:26, 15:17] = -1.0  # air inside the head: a hole to fill
    image[:, 1:3, 1:3] = 0.8  # noise outside the head
    labels = np.where(radius < 6, 3, 0).astype(np.uint8)
    return image, labels


def test_unlabelled_subject_gets_the_value_and_air_stays_background() -> None:
    image, labels = _head()
    filled = ForegroundFill(value=9, threshold=0.1).apply(image, labels)
    radius = np.hypot(*np.mgrid[:32, :32] - 16)
    np.testing.assert_array_equal(filled[labels == 3], 3)  # labels are never overwritten
    assert (filled[:, (radius >= 6) & (radius < 11)] == 9).all()
    assert (filled[:, 24:26, 15:17] == 9).all()  # the hole inside the head is filled
    assert (filled[:, 1:3, 1:3] == 0).all()  # the speck is not the largest region
    assert (filled[:, radius > 13] == 0).all()


def test_threshold_must_lie_inside_the_window() -> None:
    with pytest.raises(ValueError, match="threshold"):
        ForegroundFill(1, threshold=1.5)
    assert ForegroundFill.from_dict(ForegroundFill(4, 0.2).to_dict()) == ForegroundFill(4, 0.2)
