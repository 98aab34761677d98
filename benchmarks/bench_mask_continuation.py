"""Whether a mask model starts and continues structures through as many slices as the
training masks do, one sequence at a time.

    python benchmarks/bench_mask_continuation.py MODEL --data TRAINING_DATA [--cases 3]
        [--steps 25]

For each of the first ``--cases`` training cases (never a held-out one) on the model grid
and each sequence window of :func:`medgen3d.sequences.sequence_starts`, samples the window
three ways, as whole-volume generation does: with no slice known (a volume's first
sequence), with its first ``k`` slices known (extending upwards) and with its last ``k``
known (downwards), the known ones taken from the real mask. Per structure it sums, over
windows and cases, the unknown slices holding it in the samples and in the real mask: a
sampler that carries structures on too long or starts them too readily draws them through
more slices than the real masks have. Calls the sampler's single-sequence step
(``sampling._sample_sequence``) directly, so that each window is sampled alone.
Run by hand, never in CI.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from medgen3d.model import load_model
from medgen3d.sequences import sequence_starts
from medgen3d.stages.masks import sampling
from recipe_cases import first_training_cases

MODES = ("none known", "first k known", "last k known")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model name or model folder")
    parser.add_argument("--data", required=True, help="the model's training data folder")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = load_model(args.model)
    masks = model.stage("masks")
    length, overlap, table = masks.length, masks.overlap, model.data.labels
    schedule = masks.diffusion.sampler("ddim", args.steps, device=masks.device)
    rng = torch.Generator().manual_seed(0)
    slices = {mode: np.zeros((2, len(table)), dtype=np.int64) for mode in MODES}
    cases = first_training_cases(args.data, model.data, args.cases)
    for name, real in zip(cases.names, cases.labels, strict=True):
        for start in sequence_starts(real.shape[0], length, overlap):
            for mode in MODES:
                filled = np.ones(real.shape[0], dtype=bool)
                filled[start : start + length] = False
                if mode == "first k known":
                    filled[start : start + overlap] = True
                elif mode == "last k known":
                    filled[start + length - overlap : start + length] = True
                output = np.where(filled[:, None, None], real, 0).astype(np.uint8)
                for _ in sampling._sample_sequence(
                    masks, schedule, output, filled, start, rng, None, masks.config.fill_holes
                ):
                    pass
                unknown = ~filled[start : start + length]
                for row, volume in enumerate((output, real)):
                    window = volume[start : start + length][unknown]
                    for channel in range(1, len(table)):
                        slices[mode][row, channel] += (window == channel).any(axis=(1, 2)).sum()
        print(f"{name} done", flush=True)

    print(f"\nunknown slices holding each structure, sampled / real ({len(cases)} cases)")
    print(f"{'structure':28s}" + "".join(f"{mode:>18s}" for mode in MODES))
    for channel, label in enumerate(table.names[1:], start=1):
        cells = "".join(
            f"{f'{slices[m][0, channel]} / {slices[m][1, channel]}':>18s}" for m in MODES
        )
        print(f"{label:28s}{cells}")


if __name__ == "__main__":
    main()
