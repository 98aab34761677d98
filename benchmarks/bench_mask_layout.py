"""MC-DPM layout: 2D (slices as channels) vs 3D (convolutions over L, H, W), measured.

For each layout, on the procedural phantom and this machine:

* seconds per training step (batch 1) and per sampling step (one sequence) at the demo
  geometry (L=16, 64x64, 9 labels), untrained weights (timing does not depend on them);
* sample quality after the same short training at a small geometry (L=4, 16x16): the L1
  distance between the per-label voxel fractions of sampled volumes and of the data, and
  the final training loss.

Run by hand, never in CI:  python benchmarks/bench_mask_layout.py [--steps 150] [--layouts 2d 3d]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medgen3d.labels import bundled_table
from medgen3d.phantom import write_phantoms
from medgen3d.preprocessing import Preprocessing
from medgen3d.progress import drain
from medgen3d.recipe import DataSpec, StageRecipe, TrainingSettings
from medgen3d.runtime import Runtime
from medgen3d.stages.masks import MaskDiffusionModel, MaskNetworkConfig, sample_mask_volume
from medgen3d.train.bank import CaseBank
from medgen3d.train.loop import fit
from medgen3d.train.masks import build_task

TABLE = bundled_table("thorax_phantom")
CPU = Runtime(torch.device("cpu"))
LAYOUTS = {
    "2d": {"layout": "2d", "channels": [32, 64], "attention_levels": [False, False]},
    "3d": {"layout": "3d", "channels": [16, 32], "attention_levels": [False, False]},
}
DIFFUSION = {"objective": "x0", "num_train_timesteps": 1000, "schedule": "scaled_linear_beta"}


def step_times(config: dict, repeats: int = 2) -> tuple[float, float, int]:
    """Seconds per training step (batch 1) and per sampling step at the demo geometry."""
    data = DataSpec(TABLE, Preprocessing(size=(64, 64)), sequence_length=16, overlap=4)
    model = MaskDiffusionModel.build(
        data, MaskNetworkConfig.from_dict({**config, "diffusion": DIFFUSION})
    )
    params = sum(p.numel() for p in model.network.parameters())
    optimiser = torch.optim.AdamW(model.network.parameters())

    def run(batch: int, train: bool) -> float:
        x = torch.randn(batch, len(TABLE), 16, 64, 64)
        known = torch.zeros(batch, 16, dtype=torch.bool)
        t, p = torch.randint(1000, (batch,)), torch.rand(batch)
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            with torch.set_grad_enabled(train):
                out = model.network(x, t, x, known, p)
                if train:
                    optimiser.zero_grad()
                    out.square().mean().backward()
                    optimiser.step()
            times.append(time.perf_counter() - start)
        return float(np.median(times[1:]))

    return run(1, True), run(1, False), params


def quality(config: dict, root: Path, steps: int) -> tuple[float, float, float]:
    """Training loss at the end, label-fraction L1 of samples vs data, and wall time."""
    data = DataSpec(TABLE, Preprocessing(), sequence_length=4, overlap=1)
    bank = CaseBank.from_folder(root, data)
    settings = TrainingSettings(
        max_steps=steps,
        batch_size=4,
        learning_rate=2e-3,
        ema_decay=0.0,
        checkpoint_every=10**6,
        log_every=10**6,
    )
    torch.manual_seed(0)
    task = build_task(data, StageRecipe({**config, "diffusion": DIFFUSION}, settings), CPU)
    start = time.perf_counter()
    result = drain(
        fit(task, bank, data, settings, CPU, root / f"{config['layout']}.pt", overwrite=True)
    )
    wall = time.perf_counter() - start
    task.train(False)
    volumes = [
        drain(sample_mask_volume(task.model, 24, seed=s, steps=10, size=(16, 16))) for s in range(3)
    ]
    fractions = np.bincount(np.concatenate(volumes).ravel(), minlength=len(TABLE))
    truth = np.bincount(np.concatenate(bank.labels).ravel(), minlength=len(TABLE))
    l1 = float(np.abs(fractions / fractions.sum() - truth / truth.sum()).sum())
    loss = float(np.mean([x["mse"] for x in result.losses[-20:]]))
    return loss, l1, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps for quality")
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_phantoms(root, 4, 0, (24, 16, 16), (10.0, 12.0, 12.0))
        for name in args.layouts:
            config = LAYOUTS[name]
            train_s, sample_s, params = step_times(config)
            loss, l1, wall = quality(config, root, args.steps)
            print(
                f"{name}: {params / 1e6:.2f} M params | demo geometry: train step {train_s:.3f} s,"
                f" sampling step {sample_s:.3f} s | {args.steps} steps at L=4 16x16: "
                f"{wall:.0f} s, final loss {loss:.4f}, label-fraction L1 {l1:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
