"""Stage 1, MC-DPM: multi-label mask sequences by diffusion, chained into whole volumes.

* :mod:`.network`: the network config (:class:`MaskNetworkConfig`), the denoiser and the
  inference wrapper :class:`MaskDiffusionModel` (``from_checkpoint``).
* :mod:`.sampling`: :func:`sample_mask_volume`, the array-level progress generator that
  covers a volume of any depth with sequences, outwards from a start, keeping seeded slices.

Training: :mod:`medgen3d.train.masks`.
"""

from medgen3d.stages.masks.network import (
    LAYOUTS,
    NO_POSITION,
    MaskDenoiser,
    MaskDiffusionModel,
    MaskNetworkConfig,
    label_weights,
    labels_to_signal,
)
from medgen3d.stages.masks.sampling import generation_order, sample_mask_volume

__all__ = [
    "LAYOUTS",
    "NO_POSITION",
    "MaskDenoiser",
    "MaskDiffusionModel",
    "MaskNetworkConfig",
    "generation_order",
    "label_weights",
    "labels_to_signal",
    "sample_mask_volume",
]
