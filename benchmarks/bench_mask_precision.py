"""Mixed precision for mask training: what it buys and what it changes.

With ``amp`` on, training runs forward passes in the device's reduced precision
(:func:`medgen3d.runtime.mixed_precision`: bfloat16 on CPUs that compute it natively). This
times a mask model's training step (forward, backward, AdamW) both ways on real training
batches, and compares the loss and gradient of each batch in reduced precision with
float32's, starting from the model's weights (the held-out cases are never read).

    OMP_NUM_THREADS=1 python benchmarks/bench_mask_precision.py brain-mri \\
        --data ../shared/data/mri_brain_ixi

Run with OMP_NUM_THREADS=1 to match the CPU trainings.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time

import torch

from medgen3d.model import load_model
from medgen3d.recipe import TrainingSettings
from medgen3d.runtime import Runtime, mixed_precision
from medgen3d.train.masks import MaskTask, masked_mse
from recipe_cases import first_training_cases

CPU = Runtime(torch.device("cpu"))


def loss_and_gradient(task: MaskTask, batch: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor]:
    """``task``'s training loss on ``batch`` and its gradient, without an optimiser step."""
    net = task.networks["network"]
    net.network.zero_grad(set_to_none=True)
    noisy, target = task.model.diffusion.training_pair(
        batch["clean"], batch["noise"], batch["timesteps"]
    )
    with net.autocast():
        prediction = net.model(
            noisy, batch["timesteps"], batch["clean"], batch["known"], batch["position"]
        )
    loss = masked_mse(prediction.float(), target, ~batch["known"], batch["weight"])
    loss.backward()
    gradient = torch.cat([p.grad.flatten() for p in net.network.parameters() if p.grad is not None])
    return loss.item(), gradient


def seconds_per_step(task: MaskTask, batch: dict[str, torch.Tensor], repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first call pays one-off allocations
        start = time.perf_counter()
        task.training_step(batch)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model name or folder with a masks stage")
    parser.add_argument("--data", required=True, help="the model's training data folder")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()

    precision = mixed_precision(CPU.device)
    if precision is None:
        raise SystemExit("this CPU has no native bfloat16: amp trains in float32 here")
    name = str(precision).removeprefix("torch.")
    model = load_model(args.model)
    bank = first_training_cases(args.data, model.data, args.cases)
    masks = model.stage("masks")
    settings = TrainingSettings(batch_size=4, learning_rate=1e-5, ema_decay=0)
    tasks = {
        amp: MaskTask(copy.deepcopy(masks), dataclasses.replace(settings, amp=amp), CPU)
        for amp in (False, True)
    }
    for task in tasks.values():
        task.networks["network"].network.train()
    print(
        f"{args.model}: C={masks.num_classes} L={masks.length}, batch 4, "
        f"{torch.get_num_threads()} thread(s), mixed precision {name}"
    )
    rng = torch.Generator().manual_seed(0)
    batches = [tasks[True].make_batch(bank, 4, rng) for _ in range(args.batches)]
    for n, batch in enumerate(batches):
        full_loss, full_gradient = loss_and_gradient(tasks[False], batch)
        mixed_loss, mixed_gradient = loss_and_gradient(tasks[True], batch)
        cosine = torch.nn.functional.cosine_similarity(full_gradient, mixed_gradient, dim=0)
        print(
            f"batch {n} (t = {batch['timesteps'].tolist()}): loss {full_loss:.5f} float32, "
            f"{mixed_loss:.5f} mixed ({abs(mixed_loss / full_loss - 1):.3%} apart); gradient "
            f"cosine {cosine:.4f}, norm ratio {mixed_gradient.norm() / full_gradient.norm():.3f}"
        )
    for amp, task in tasks.items():
        seconds = seconds_per_step(task, batches[0], args.repeats)
        print(f"{name if amp else 'float32':>8}: {seconds:.2f} s/step")


if __name__ == "__main__":
    main()
