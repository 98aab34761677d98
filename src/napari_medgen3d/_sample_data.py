"""Sample data: a procedural thoracic CT phantom with its labels."""

from __future__ import annotations

from napari_medgen3d._layers import LayerDataTuple, volume_to_layer


def thoracic_phantom() -> list[LayerDataTuple]:
    """A seeded phantom (seed 0) as a CT image and its aligned labels."""
    from medgen3d.phantom import PHANTOM_TABLE, make_phantom

    case = make_phantom(seed=0)
    image = volume_to_layer(case.image, "image", "phantom image")
    image[1]["contrast_limits"] = (-1000.0, 600.0)
    labels = volume_to_layer(case.label, "labels", "phantom labels", PHANTOM_TABLE)
    labels[1]["opacity"] = 0.5
    return [image, labels]
