"""Time and peak memory of whole-volume mask sampling with the demo configuration.

Each configuration (depth, sampler, steps) runs in a fresh subprocess that reports its own
peak resident memory (``ru_maxrss``): torch's CPU allocations bypass ``tracemalloc``, and a
fresh process keeps one run's peak out of the next. Weights are
untrained (timing does not depend on them); the rectified-flow runs use the same network
with an ``rflow`` objective.

Ancestral DDPM runs all 1000 training steps per sequence, which takes a long time on a CPU,
so it is timed over its first ``--ddpm-steps`` reports and extrapolated (marked ``*``).
``--quick`` does the same for every configuration, timing the first sequence and one step
of the next: time is linear in the number of network calls, and the memory peak (one
sequence on the device, the output, one preview copy) is reached by then.

Run by hand, never in CI:  python benchmarks/bench_mask_sampling.py [--depths 64 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "resources" / "recipes" / "demo_phantom.json"
SAMPLERS = [("ddim", 10), ("ddim", 25), ("ddim", 50), ("rflow", 10), ("rflow", 25), ("rflow", 50)]


def run_one(depth: int, sampler: str, steps: int, limit: int | None) -> dict:
    """Sample one volume in this process: seconds, whether extrapolated, peak RSS in MiB."""
    import torch

    from medgen3d.recipe import load_recipe
    from medgen3d.stages.masks import MaskDiffusionModel, MaskNetworkConfig, sample_mask_volume

    recipe = load_recipe(RECIPE)
    config = dict(recipe.stage("masks").model)
    if sampler == "rflow":
        config["diffusion"] = {**config["diffusion"], "objective": "rflow"}
    torch.manual_seed(0)
    model = MaskDiffusionModel.build(recipe.data, MaskNetworkConfig.from_dict(config))
    model.network.eval()
    start = time.perf_counter()
    reports = 0
    for report in sample_mask_volume(model, depth, seed=0, sampler=sampler, steps=steps):
        reports += 1
        if limit is not None and reports == limit:
            elapsed = time.perf_counter() - start
            return _result(elapsed * report.total / reports, True)
    return _result(time.perf_counter() - start, False)


def _result(seconds: float, extrapolated: bool) -> dict:
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"seconds": seconds, "extrapolated": extrapolated, "peak_mib": peak_mib}


def measure(depth: int, sampler: str, steps: int, limit: int | None) -> dict:
    """Run one configuration in a fresh subprocess and return what it reports."""
    args = [sys.executable, __file__, "--child", str(depth), sampler, str(steps)]
    args += [] if limit is None else [str(limit)]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--ddpm-steps", type=int, default=100, help="DDPM reports timed")
    parser.add_argument("--quick", action="store_true", help="extrapolate from 1 sequence")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        depth, sampler, steps, *limit = args.child
        limit_value = int(limit[0]) if limit else None
        print(json.dumps(run_one(int(depth), sampler, int(steps), limit_value)))
        return
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()}, recipe {RECIPE.name}", flush=True)
    print("depth | sampler | steps | seconds | peak RSS (MiB)", flush=True)
    quick = {n: n + 1 if args.quick else None for _, n in SAMPLERS}
    configurations = [("ddpm", 1000, args.ddpm_steps), *((s, n, quick[n]) for s, n in SAMPLERS)]
    for depth in args.depths:
        for sampler, steps, limit in configurations:
            r = measure(depth, sampler, steps, limit)
            mark = "*" if r["extrapolated"] else ""
            print(
                f"{depth} | {sampler} | {steps} | {r['seconds']:.1f}{mark} | {r['peak_mib']:.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
