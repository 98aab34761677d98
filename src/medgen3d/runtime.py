"""Where computation runs: device choice and ``torchrun`` process groups.

One code path serves a laptop CPU, one GPU and ``torchrun --nproc-per-node N``: a
:class:`Runtime` says which device this process uses, its rank and the world size, and
offers the few collective operations training and generation need. Without ``torchrun``
it is a world of one and every collective is the identity.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from medgen3d.errors import InputError

__all__ = ["DeviceName", "Runtime", "distributed_runtime", "mixed_precision", "resolve_device"]

DeviceName = Literal["auto", "cpu", "cuda", "mps"]


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for ``name``; ``auto`` prefers CUDA, then MPS, then CPU.

    Raises:
        InputError: when the named device is not available on this machine.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda was asked for, but no CUDA GPU is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise InputError("--device mps was asked for, but MPS is not available")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or mps")


def mixed_precision(device: torch.device, amp: bool = True) -> torch.dtype | None:
    """The reduced precision a training's forward passes run in on ``device``, or None
    (float32) when its recipe asks for none (``amp`` false) or none pays there.

    CUDA: float16, with loss scaling. CPU: bfloat16 where the processor computes it natively
    (AVX512-BF16 or AMX): every real-anatomy stage then takes 1.4-1.9x the steps per
    CPU-hour, the mask networks with losses within 0.1% of float32's and gradients at a
    cosine of 0.999 or more (``benchmarks/bench_mask_precision.py``, and
    ``bench_stage_precision.py`` for whole steps of any stage). Elsewhere bfloat16 is
    emulated and slower than float32. torch tells the CPU's features only through private
    helpers; a torch without them counts as no native bfloat16.
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu":
        native = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        if any(getattr(torch.cpu, name, lambda: False)() for name in native):
            return torch.bfloat16
    return None


@dataclass(frozen=True)
class Runtime:
    """This process's device and its place among ``world_size`` processes."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes files (rank 0)."""
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This rank's share of ``n`` indices, strided so every rank gets a fair part."""
        return range(self.rank, n, self.world_size)

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of ``values`` over all ranks (identity in a world of one)."""
        if not self.distributed:
            return values
        values = values.detach().clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world_size

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` in ``DistributedDataParallel`` when distributed, else as it is."""
        if not self.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


@contextlib.contextmanager
def distributed_runtime(device: str = "auto") -> Iterator[Runtime]:
    """A :class:`Runtime` for this process; joins the process group under ``torchrun``.

    ``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; the backend is NCCL on
    CUDA and gloo otherwise. The group is torn down on exit.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield Runtime(resolve_device(device))
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_device(device, local_rank)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    try:
        yield Runtime(torch_device, dist.get_rank(), dist.get_world_size())
    finally:
        dist.destroy_process_group()
