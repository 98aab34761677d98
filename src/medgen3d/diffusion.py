"""The diffusion process shared by the mask model (MC-DPM) and the refiner.

Thin glue over ``monai.networks.schedulers``: a :class:`Diffusion` says how a network was
trained (``"ddpm"``: predict the noise; ``"x0"``: the same noise schedule, predict the clean
sample; ``"rflow"``: predict the velocity ``x0 - noise`` of a rectified flow) and gives, per
call, a :class:`SamplingSchedule` for a sampler and a number of steps. A DDPM-trained
network (either prediction) samples with DDPM or DDIM; a rectified-flow network with the
rectified-flow sampler.

:meth:`Diffusion.denoise` is an iterator that yields after every step, so callers show
progress, preview, or stop between steps, and can edit the sample between steps (the mask
model pins known slices there). ``strength < 1`` starts part-way (SDEdit): the input is
noised to ``strength * T`` and only the remaining steps run, which is how the refiner keeps
the structure of its input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler, Scheduler

from medgen3d.errors import InputError

__all__ = ["OBJECTIVES", "SAMPLERS", "DenoiseStep", "Diffusion", "SamplingSchedule"]

OBJECTIVES = ("ddpm", "x0", "rflow")
SAMPLERS = ("ddpm", "ddim", "rflow")
_SAMPLERS_FOR = {"ddpm": ("ddpm", "ddim"), "x0": ("ddpm", "ddim"), "rflow": ("rflow",)}

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplingSchedule:
    """A sampler with its timesteps set, and the timesteps this call will run."""

    name: str
    scheduler: Scheduler
    timesteps: tuple[int, ...]


@dataclass(frozen=True)
class DenoiseStep:
    """State after one denoising step: ``sample`` is the current noisy sample,
    ``predicted`` the network's current estimate of the clean one."""

    index: int
    total: int
    sample: torch.Tensor
    predicted: torch.Tensor


@dataclass(frozen=True)
class Diffusion:
    """A training objective and its noise schedule.

    Attributes:
        objective: ``"ddpm"`` (epsilon prediction), ``"x0"`` (clean-sample prediction on
            the DDPM schedule: the network need not carry the noise through, which suits
            narrow networks with many input channels) or ``"rflow"`` (velocity prediction).
        num_train_timesteps: ``T``.
        schedule: MONAI beta schedule name (DDPM only).
        input_scale: the clean sample is multiplied by this before it is noised (Chen 2023,
            "On the importance of noise scheduling for diffusion models"), which divides
            the signal-to-noise ratio of every timestep by its square. Data that repeats
            itself, such as the nearly identical slices of a mask sequence, shows its
            signal through far more noise than one image does; without the shift the
            network learns to read a shape into pure noise, and samples follow the noise.
            Samples come back in the scaled range (their arg-max is what matters).
    """

    objective: str = "ddpm"
    num_train_timesteps: int = 1000
    schedule: str = "scaled_linear_beta"
    input_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not 0.0 < self.input_scale <= 1.0:
            raise ValueError(f"input_scale must be in (0, 1], got {self.input_scale}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Diffusion:
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "num_train_timesteps": self.num_train_timesteps,
            "schedule": self.schedule,
            "input_scale": self.input_scale,
        }

    # ---- training -----------------------------------------------------------------------
    def sample_timesteps(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform training timesteps in ``[0, T)`` (long, CPU), drawn from ``generator``."""
        return torch.randint(self.num_train_timesteps, (batch_size,), generator=generator)

    def training_pair(
        self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noisy input at ``timesteps`` and the regression target of the objective."""
        clean = clean * self.input_scale
        noisy = self._make_scheduler(self.objective).add_noise(clean, noise, timesteps)
        targets = {"ddpm": noise, "x0": clean, "rflow": clean - noise}
        return noisy, targets[self.objective]

    def alphas_cumprod(self) -> torch.Tensor:
        """``(T,)`` alpha-bar of each timestep of the DDPM noise schedule (how much of the
        scaled clean sample a noisy one keeps: ``x_t = sqrt(a) x0 + sqrt(1 - a) noise``).

        Raises:
            ValueError: for the ``"rflow"`` objective, which has no such schedule.
        """
        if self.objective == "rflow":
            raise ValueError("a rectified flow has no DDPM noise schedule")
        return self._make_scheduler(self.objective).alphas_cumprod

    # ---- sampling -----------------------------------------------------------------------
    @property
    def default_sampler(self) -> str:
        """The fast sampler this objective calls for: rectified flow for ``rflow``, DDIM
        for the others."""
        return "rflow" if self.objective == "rflow" else "ddim"

    def sampler(
        self,
        name: str,
        steps: int,
        strength: float = 1.0,
        device: torch.device | None = None,
    ) -> SamplingSchedule:
        """A sampler running ``steps`` steps from noise level ``strength`` down to 0.

        Raises:
            InputError: for an unknown sampler, one the objective does not support, a step
                count outside ``[1, T]`` or a strength outside ``(0, 1]``.
        """
        if name not in SAMPLERS:
            raise InputError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
        if name not in _SAMPLERS_FOR[self.objective]:
            raise InputError(
                f"a model trained with the {self.objective!r} objective samples with "
                f"{' or '.join(_SAMPLERS_FOR[self.objective])}, not {name!r}"
            )
        if not 0.0 < strength <= 1.0:
            raise InputError(f"strength must be in (0, 1], got {strength}")
        # Ancestral DDPM visits every timestep; the others spread ``steps`` over [0, sT].
        total = self.num_train_timesteps if name == "ddpm" else round(steps / strength)
        if not 1 <= total <= self.num_train_timesteps:
            raise InputError(
                f"{steps} steps at strength {strength} need {total} scheduler steps; "
                f"the model has {self.num_train_timesteps}"
            )
        scheduler = self._make_scheduler(name)
        scheduler.set_timesteps(total, device=device)
        limit = strength * self.num_train_timesteps
        timesteps = tuple(int(t) for t in scheduler.timesteps if t <= limit)
        if name != "ddpm":
            timesteps = timesteps[-steps:]
        return SamplingSchedule(name, scheduler, timesteps)

    def noise_to_start(
        self, clean: torch.Tensor, noise: torch.Tensor, schedule: SamplingSchedule
    ) -> torch.Tensor:
        """``clean`` noised to the first timestep of ``schedule`` (SDEdit's starting point)."""
        return self.noise_to(clean, noise, schedule, schedule.timesteps[0])

    def noise_to(
        self, clean: torch.Tensor, noise: torch.Tensor, schedule: SamplingSchedule, timestep: int
    ) -> torch.Tensor:
        """``clean`` (unscaled) noised to ``timestep``, as training noised it."""
        t = torch.full((clean.shape[0],), timestep, device=clean.device)
        return schedule.scheduler.add_noise(clean * self.input_scale, noise, t)

    def denoise(
        self,
        predict: Predict,
        sample: torch.Tensor,
        schedule: SamplingSchedule,
        generator: torch.Generator | None = None,
    ) -> Iterator[DenoiseStep]:
        """Run ``schedule`` from ``sample``, yielding after every step.

        Args:
            predict: ``predict(x, t)`` -> network output, ``t`` a ``(B,)`` tensor.
            sample: the starting sample (pure noise, or :meth:`noise_to_start`'s result).
            schedule: from :meth:`sampler`.
            generator: draws the fresh noise of DDPM steps (on ``sample``'s device).

        Yields:
            :class:`DenoiseStep` after every step. A caller may replace
            ``step.sample`` in place between steps.
        """
        scheduler, timesteps = schedule.scheduler, schedule.timesteps
        for i, t in enumerate(timesteps):
            t_batch = torch.full((sample.shape[0],), t, device=sample.device, dtype=torch.long)
            output = predict(sample, t_batch)
            if schedule.name == "rflow":
                next_t = timesteps[i + 1] if i + 1 < len(timesteps) else 0
                sample, predicted = scheduler.step(output, t, sample, next_t)
            elif schedule.name == "ddim":
                sample, predicted = scheduler.step(output, t, sample, eta=0.0)
            else:
                sample, predicted = scheduler.step(output, t, sample, generator=generator)
            yield DenoiseStep(i + 1, len(timesteps), sample, predicted)

    def _make_scheduler(self, name: str) -> Scheduler:
        if name == "rflow":
            return RFlowScheduler(self.num_train_timesteps, use_discrete_timesteps=True)
        kind = DDIMScheduler if name == "ddim" else DDPMScheduler
        prediction = "sample" if self.objective == "x0" else "epsilon"
        return kind(
            self.num_train_timesteps,
            schedule=self.schedule,
            clip_sample=True,
            prediction_type=prediction,
        )
