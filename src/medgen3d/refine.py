"""SDEdit refinement of a generated image volume by the semantic diffusion refiner.

SDEdit (Meng et al. 2022, https://arxiv.org/abs/2108.01073): noise the input to level
``strength`` and denoise it with the label map as condition. Low strengths keep the input's
structure and replace its texture with the refiner's; ``strength = 0`` returns the input
itself without running the network. Slices are refined in batches, yielding after every
denoising step so callers can show progress or stop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medgen3d.errors import InputError
from medgen3d.models.refiner import SemanticRefiner, label_map
from medgen3d.progress import Progress, ProgressGenerator

__all__ = ["RefineSettings", "refine_volume"]


@dataclass(frozen=True)
class RefineSettings:
    """How to refine (the keyword arguments of :func:`refine_volume` that callers keep).

    Attributes:
        strength: SDEdit noise level in [0, 1]; 0 skips refinement.
        steps: denoising steps from that level.
        sampler: ``"ddim"``, ``"ddpm"`` or ``"rflow"`` (whatever the model's objective
            allows), or ``"auto"`` for the one its objective calls for.
        guidance: classifier-free guidance scale (1: plain conditional sampling).
        batch_size: slices per network call.
    """

    strength: float = 0.3
    steps: int = 8
    sampler: str = "auto"
    guidance: float = 1.0
    batch_size: int = 16


def refine_volume(
    refiner: SemanticRefiner,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    strength: float = 0.3,
    steps: int = 8,
    sampler: str = "auto",
    guidance: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> ProgressGenerator[np.ndarray]:
    """Refine ``image`` slice by slice, conditioned on ``labels``.

    Args:
        refiner: the trained refiner.
        image: ``(Z, H, W)`` in [-1, 1].
        labels: ``(Z, H, W)`` channel indices of the refiner's label table.
        strength: SDEdit noise level in [0, 1]; 0 returns ``image`` without running the
            network.
        steps: denoising steps from that level.
        sampler: ``"ddim"``/``"ddpm"`` (DDPM-trained refiner) or ``"rflow"``; ``"auto"``
            picks the one the refiner's training objective calls for.
        guidance: classifier-free guidance scale; 1 is plain conditional sampling, other
            values run the network twice per step.
        seed: the starting noise of every slice is drawn from this seed for the whole
            volume at once, so the result does not depend on ``batch_size`` (for DDIM and
            rectified flow; DDPM's per-step noise is drawn per batch).
        batch_size: slices per network call.
        device: moves the refiner there first; ``None`` keeps its device.

    Yields:
        :class:`Progress` of stage ``"refiner"`` after every denoising step of every batch;
        the last step of a batch carries the volume refined so far as preview.

    Returns:
        The refined ``(Z, H, W)`` float32 volume, or ``image`` itself when ``strength`` is 0.

    Raises:
        InputError: for a strength outside [0, 1], a batch size below 1, or a sampler or
            step count the refiner does not support.
    """
    if image.shape != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} differ in shape")
    if not 0.0 <= strength <= 1.0:
        raise InputError(f"refinement strength must be in [0, 1], got {strength}")
    if batch_size < 1:
        raise InputError(f"refinement batch size must be >= 1, got {batch_size}")
    if strength == 0.0:
        return image
    if device is not None:
        refiner.to(device)
    device = refiner.device
    diffusion = refiner.diffusion
    if sampler == "auto":
        sampler = diffusion.default_sampler
    schedule = diffusion.sampler(sampler, steps, strength, device=device)
    depth = image.shape[0]
    noise = torch.randn((depth, 1, *image.shape[1:]), generator=torch.Generator().manual_seed(seed))
    starts = range(0, depth, batch_size)
    total = len(starts) * len(schedule.timesteps)
    out = image.astype(np.float32, copy=True)
    done = 0
    for start in starts:
        batch = slice(start, min(start + batch_size, depth))
        seg = label_map(torch.from_numpy(labels[batch]).to(device), len(refiner.data.labels))
        clean = torch.from_numpy(out[batch, None]).to(device)
        sample = diffusion.noise_to_start(clean, noise[batch].to(device), schedule)
        ddpm_noise = torch.Generator(device).manual_seed(seed + start)
        for step in diffusion.denoise(
            lambda x, t, seg=seg: refiner.predict(x, t, seg, guidance), sample, schedule, ddpm_noise
        ):
            done += 1
            last = step.index == step.total
            if last:
                out[batch] = step.sample[:, 0].clamp(-1, 1).cpu().numpy()
            yield Progress("refiner", done, total, out.copy() if last else None)
    return out
