"""Evaluation of a generative model: fidelity, diversity, alignment, anatomy, downstream use.

``medgen3d evaluate`` and ``medgen3d check`` are built from these modules; each one computes
one family of figures on plain arrays, so they are usable (and tested) on their own.
"""
