"""napari-medgen3d: the napari face of the MedGen3D engine (``medgen3d``).

Everything here is a thin layer over the engine: readers, writers and sample data convert
between engine volumes and napari layer data; widgets run engine generators in worker
threads.
"""

from medgen3d import __version__

__all__ = ["__version__"]
