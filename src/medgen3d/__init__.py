"""MedGen3D engine: paired 3D medical image and multi-label mask generation.

The engine is headless: nothing under ``medgen3d`` imports Qt or napari, so the same
functions serve the command line, ``torchrun`` jobs, notebooks and the napari plugin.
"""

__version__ = "0.1.0"
