"""The training loop every stage shares.

A stage supplies a :class:`TrainingTask`: how to draw a batch, what one optimisation step
does, and what its state is. :func:`fit` runs the steps on whatever :class:`Runtime` it is
given (CPU, one GPU, ``torchrun``), logs reduced losses, saves periodic checkpoints on rank
0 and resumes from one. :class:`OptimisedNetwork` bundles the per-network machinery
(DDP wrapper, AdamW, gradient clipping, mixed precision, EMA of weights) so tasks only
write their losses.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from medgen3d import __version__
from medgen3d.bundled import bundled_model_of
from medgen3d.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from medgen3d.errors import InputError
from medgen3d.progress import Progress, ProgressGenerator
from medgen3d.recipe import DataSpec, TrainingSettings
from medgen3d.runtime import Runtime, mixed_precision
from medgen3d.train.bank import CaseBank

__all__ = ["OptimisedNetwork", "TrainingResult", "TrainingTask", "fit", "step_rng"]

log = logging.getLogger(__name__)


class OptimisedNetwork:
    """A network with its optimiser, gradient scaler and weight average.

    Args:
        network: the module (moved to ``runtime.device``); call :attr:`model` in forward
            passes, which is the DDP-wrapped module under ``torchrun``.
        settings: learning rate, weight decay, clipping, EMA decay and AMP switch.
        runtime: device and process group.
        learning_rate: overrides ``settings.learning_rate`` (e.g. a discriminator's).
        ema: keep an exponential moving average of the weights for inference.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        settings: TrainingSettings,
        runtime: Runtime,
        *,
        learning_rate: float | None = None,
        ema: bool = True,
    ) -> None:
        self.network = network.to(runtime.device)
        self.model = runtime.wrap(self.network)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(),
            lr=settings.learning_rate if learning_rate is None else learning_rate,
            weight_decay=settings.weight_decay,
        )
        self.grad_clip = settings.grad_clip
        self.ema = (
            AveragedModel(self.network, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay))
            if ema and settings.ema_decay > 0
            else None
        )
        self.device_type = runtime.device.type
        self.precision = mixed_precision(runtime.device, settings.amp)
        # Only float16 needs its loss scaled; bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler(
            self.device_type, enabled=self.precision == torch.float16
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes: a no-op unless the recipe asks for
        AMP and the device has a precision that pays (:func:`mixed_precision`)."""
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.precision)

    def step(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss``, clip, step the optimiser and update the average."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.network)

    def inference_weights(self) -> dict[str, torch.Tensor]:
        """The weights to sample with: the average when kept, else the raw weights."""
        source = self.ema.module if self.ema is not None else self.network
        return source.state_dict()

    def state_dict(self) -> dict[str, Any]:
        return {
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.scaler.load_state_dict(state["scaler"])


class TrainingTask(ABC):
    """What one stage contributes to :func:`fit`.

    Attributes:
        stage: the checkpoint stage name (``"masks"``, ``"images"``, ``"refiner"``).
        networks: name -> :class:`OptimisedNetwork`; all are saved and resumed.
        inference_networks: the names whose weights inference needs.
        sampling_only: keys of :meth:`model_config` that only sampling reads; a resumed
            run takes them from the current recipe even where they changed.
    """

    stage: str
    networks: dict[str, OptimisedNetwork]
    inference_networks: tuple[str, ...]
    sampling_only: tuple[str, ...] = ()

    @abstractmethod
    def make_batch(
        self, bank: CaseBank, batch_size: int, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """The whole global batch on the CPU, every random draw (noise, timesteps, condition
        dropping) taken from ``rng`` so all ranks see the same batch."""

    @abstractmethod
    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimisation step on this rank's share; returns detached scalar losses."""

    @abstractmethod
    def model_config(self) -> dict[str, Any]:
        """The network hyper-parameters the stage's builder needs to rebuild it."""

    def state_dict(self) -> dict[str, Any]:
        return {name: net.state_dict() for name, net in self.networks.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, net in self.networks.items():
            net.load_state_dict(state[name])

    def inference_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {name: self.networks[name].inference_weights() for name in self.inference_networks}

    def initialise_from(self, checkpoint: Checkpoint) -> list[str]:
        """Start the inference networks from ``checkpoint``'s weights (fine-tuning).

        Tensors whose name and shape match are copied; the rest keep their fresh values,
        so a model trained for another label table still lends every layer that does not
        depend on the number of labels. The moving average starts from these weights at
        the first step.

        Returns:
            The names of the tensors left at their initial values.

        Raises:
            InputError: naming the file, when it holds another stage or a network shares
                no tensor with this one.
        """
        if checkpoint.stage != self.stage:
            raise InputError(
                f"holds the {checkpoint.stage!r} stage; cannot start {self.stage!r} from it",
                checkpoint.path,
            )
        skipped = []
        for name in self.inference_networks:
            network = self.networks[name].network
            own = network.state_dict()
            given = checkpoint.weights.get(name, {})
            fitting = {k: v for k, v in given.items() if k in own and v.shape == own[k].shape}
            if not fitting:
                raise InputError(
                    f"its {name} network shares no weights with this one", checkpoint.path
                )
            network.load_state_dict(fitting, strict=False)
            skipped += [f"{name}.{k}" for k in own if k not in fitting]
        return skipped

    def train(self, mode: bool = True) -> None:
        for net in self.networks.values():
            net.network.train(mode)


@dataclass
class TrainingResult:
    """What a run did: steps taken in this call and the reduced loss of each."""

    start_step: int
    end_step: int
    losses: list[dict[str, float]] = field(default_factory=list)


def step_rng(seed: int, step: int) -> torch.Generator:
    """The random stream of step ``step``: a function of (seed, step) only, so resuming or
    changing the number of processes never changes which batch a step sees."""
    state = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def fit(
    task: TrainingTask,
    bank: CaseBank,
    data: DataSpec,
    settings: TrainingSettings,
    runtime: Runtime,
    checkpoint_path: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
    init_from: Checkpoint | None = None,
) -> ProgressGenerator[TrainingResult]:
    """Train ``task`` for ``settings.max_steps`` steps in all, saving to ``checkpoint_path``.

    A progress generator like inference: the command line drains it into a progress bar,
    and stopping it between steps (or an interruption) leaves the last periodic checkpoint,
    from which ``resume`` continues.

    Args:
        task: the stage's networks and step.
        bank: training cases.
        data: the recipe's data section (stored in the checkpoint for inference).
        settings: optimisation settings; ``batch_size`` is global and must divide evenly
            over the processes.
        runtime: device and process group.
        checkpoint_path: written every ``settings.checkpoint_every`` steps and at the end,
            by rank 0, atomically.
        resume: continue from the step and state stored in ``checkpoint_path``.
        overwrite: allow replacing an existing checkpoint when not resuming.
        provenance: facts about the run to record (dataset, command line). Its
            ``init_from`` is recorded here: the checkpoint a fresh run started from, and
            for a resumed run what its checkpoint recorded, so a fine-tuned model keeps
            saying whose weights it started from however often it was resumed.
        init_from: a checkpoint of the same stage whose weights a fresh run starts from
            (ignored when resuming: the run's own state wins).

    Yields:
        ``Progress(stage, step, max_steps, metrics=losses)`` after every step, the losses
        averaged over the processes.

    Raises:
        InputError: for a batch that does not divide over the processes, an existing
            checkpoint without ``resume``/``overwrite``, or a checkpoint to resume from
            that belongs to another stage or network.
    """
    checkpoint_path = Path(checkpoint_path)
    if settings.batch_size % runtime.world_size:
        raise InputError(
            f"batch_size {settings.batch_size} does not divide over {runtime.world_size} processes"
        )
    start, origin = _first_step(task, checkpoint_path, resume, overwrite, init_from)
    provenance = {**(provenance or {}), "init_from": origin}
    result = TrainingResult(start, start)
    task.train()
    for step in range(start, settings.max_steps):
        batch = task.make_batch(bank, settings.batch_size, step_rng(settings.seed, step))
        shard = {
            k: v[runtime.rank :: runtime.world_size].to(runtime.device) for k, v in batch.items()
        }
        losses = task.training_step(shard)
        names = sorted(losses)
        reduced = runtime.all_reduce_mean(torch.stack([losses[n].float() for n in names]))
        values = dict(zip(names, reduced.tolist(), strict=True))
        result.losses.append(values)
        result.end_step = step + 1
        if runtime.is_main and (step + 1) % settings.log_every == 0:
            described = " ".join(f"{n}={v:.4f}" for n, v in values.items())
            log.info("%s step %d/%d %s", task.stage, step + 1, settings.max_steps, described)
        last = step + 1 == settings.max_steps
        if last or (step + 1) % settings.checkpoint_every == 0:
            if runtime.is_main:
                _save(task, data, settings, step + 1, checkpoint_path, provenance)
            runtime.barrier()
        yield Progress(task.stage, step + 1, settings.max_steps, metrics=values)
    return result


def _first_step(
    task: TrainingTask,
    checkpoint_path: Path,
    resume: bool,
    overwrite: bool,
    init_from: Checkpoint | None,
) -> tuple[int, dict[str, Any] | None]:
    """Restore a run to resume, or start a fresh one, from ``init_from``'s weights when
    given (step 0). Returns the first step and where the run's first weights came from
    (``{"source", "steps", "init_from"}``, the last being where those came from in turn;
    ``None`` for a run from scratch)."""
    if resume and checkpoint_path.exists():
        checkpoint = load_checkpoint(checkpoint_path, stage=task.stage)
        start = _restore(task, checkpoint)
        log.info("resuming %s from step %d of %s", task.stage, start, checkpoint_path)
        return start, checkpoint.config.get("provenance", {}).get("init_from")
    if checkpoint_path.exists() and not overwrite and not resume:
        raise InputError(
            "already exists; pass --resume to continue it or --overwrite", checkpoint_path
        )
    if init_from is not None:
        skipped = task.initialise_from(init_from)
        log.info(
            "%s starts from the weights of %s (%d tensors left fresh%s)",
            task.stage,
            init_from.path,
            len(skipped),
            f": {', '.join(skipped[:5])}" if skipped else "",
        )
        provenance = init_from.config.get("provenance", {})
        # a checkpoint built in memory has no file, hence no bundled model, to name
        bundled = None if init_from.path is None else bundled_model_of(init_from.path)
        return 0, {
            "source": str(init_from.path) if bundled is None else f"{bundled} (bundled)",
            "steps": provenance.get("steps"),
            "init_from": provenance.get("init_from"),  # its own start: the whole lineage
        }
    return 0, None


def _save(
    task: TrainingTask,
    data: DataSpec,
    settings: TrainingSettings,
    step: int,
    path: Path,
    provenance: dict[str, Any] | None,
) -> None:
    config = {
        "data": data.to_dict(),
        "model": task.model_config(),
        "training": settings.to_dict(),
        "provenance": {
            **(provenance or {}),
            "steps": step,
            "medgen3d_version": __version__,
            "torch_version": str(torch.__version__),
            "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    training = {"step": step, "state": task.state_dict()}
    checkpoint = Checkpoint(task.stage, config, task.inference_weights(), training)
    save_checkpoint(checkpoint, path, overwrite=True)


def _restore(task: TrainingTask, checkpoint: Checkpoint) -> int:
    path = checkpoint.path
    if checkpoint.training is None:
        raise InputError("holds inference weights only; it cannot be resumed", path)
    stored = checkpoint.config.get("model") or {}
    network = {key: value for key, value in stored.items() if key not in task.sampling_only}
    if not _agrees(network, task.model_config()):
        raise InputError("was trained with a different network configuration; cannot resume", path)
    task.load_state_dict(checkpoint.training["state"])
    return int(checkpoint.training["step"])


def _agrees(stored: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether the config a checkpoint stored matches the current one on every key it has.

    Keys it lacks are newer than the checkpoint, and the current recipe decides them (a
    training-only option switched on mid-run); a new key that changes the network's shape
    still fails, when the weights do not load."""
    return all(
        key in current
        and (
            _agrees(value, current[key])
            if isinstance(value, dict) and isinstance(current[key], dict)
            else value == current[key]
        )
        for key, value in stored.items()
    )
