"""Time one full pair of a model, end to end and per stage, and its peak memory.

    .venv/bin/python benchmarks/bench_pair.py [--model demo] [--depth N] [--steps 25]
        [--refine-steps 8]

Prints the wall time and peak resident memory of `medgen3d generate --model MODEL -n 1` as
a user runs it (a fresh process: imports, model loading, the three stages, writing the
files), then the per-stage split measured in-process from the progress reports and how
many masks the anatomy check had drawn (the default settings: up to 3 redraws). The depth
defaults to the model's own (its typical training volume). Record the figures in
benchmarks/README.md with the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--depth", type=int)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--refine-steps", type=int, default=8)
    args = parser.parse_args()
    depth = ["--depth", str(args.depth)] if args.depth else []
    settings = [
        *depth,
        "--steps",
        str(args.steps),
        "--refine-steps",
        str(args.refine_steps),
        "--device",
        "cpu",
    ]

    with tempfile.TemporaryDirectory() as out:
        script = Path(sys.executable).with_name("medgen3d")
        start = time.perf_counter()
        subprocess.run(
            [script, "generate", "--model", args.model, "--out", out, *settings],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"end to end (fresh process, CLI): {wall:.1f} s  [load {os.getloadavg()[0]:.1f}]")
    print(f"peak resident memory of that process: {peak_mb:.0f} MB")

    from medgen3d.generate import generate_pair
    from medgen3d.model import load_model
    from medgen3d.progress import drain
    from medgen3d.settings import GenerationSettings, MaskSettings, RefineSettings

    start = time.perf_counter()
    model = load_model(args.model, "cpu")
    print(f"model loading: {time.perf_counter() - start:.1f} s")
    stage_times: dict[str, float] = {}
    last = time.perf_counter()

    def clock(report) -> None:
        nonlocal last
        now = time.perf_counter()
        stage_times[report.stage] = stage_times.get(report.stage, 0.0) + now - last
        last = now

    settings = GenerationSettings(
        depth=args.depth or model.typical_depth,
        masks=MaskSettings(steps=args.steps),
        refiner=RefineSettings(steps=args.refine_steps),
    )
    pair = drain(generate_pair(model, settings), clock)
    for stage, seconds in stage_times.items():
        print(f"{stage:8s} {seconds:6.1f} s")
    if pair.anatomy is not None:  # masks drawn again while the anatomy check flagged them
        verdict = "passed" if pair.anatomy.passed else "flagged"
        print(f"masks drawn: {pair.anatomy.draws} (the kept one {verdict})")


if __name__ == "__main__":
    main()
