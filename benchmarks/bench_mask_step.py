"""Where a mask-diffusion training step's time goes, with and without a 1x1 stem.

With ``C`` labels and ``L`` slices the 2-D layout feeds ``2 L C + L`` channels to the UNet's
first 3x3 convolution and asks ``L C`` channels of its last one; with the brain model's 24
labels those two convolutions are most of a step. This prints seconds per training step
(forward + backward + AdamW, batch 4) of a recipe's mask network as configured and with
``stem_channels`` set, and the share of the first and last convolutions.

    python benchmarks/bench_mask_step.py resources/recipes/brain_mri_ixi.json [--stems 64 128]

Run with OMP_NUM_THREADS=1 to match the CPU trainings.
"""

from __future__ import annotations

import argparse
import time

import torch

from medgen3d.recipe import load_recipe
from medgen3d.stages.masks import MaskDiffusionModel, MaskNetworkConfig


def seconds_per_step(model: MaskDiffusionModel, size: tuple[int, int], repeats: int) -> float:
    net = model.network.train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-4)
    b, c, length = 4, model.num_classes, model.length
    x = torch.randn(b, c, length, *size)
    known = torch.zeros(b, length, dtype=torch.bool)
    t = torch.randint(0, 1000, (b,))
    position = torch.rand(b)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        loss = net(x, t, x, known, position).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def conv_share(model: MaskDiffusionModel, size: tuple[int, int]) -> float:
    """Fraction of the forward pass's multiply-adds spent in the convolutions that read the
    packed input and write the packed output (the UNet's first and last, and a stem)."""
    ends = ("unet.conv_in.conv", "unet.out.2.conv", "stem", "head")
    macs: dict[str, int] = {}

    def counter(name: str):
        def hook(module, inputs, output):
            macs[name] = output[0].numel() * module.weight[0].numel()

        return hook

    for name, module in model.network.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(counter(name))
    x = torch.randn(1, model.num_classes, model.length, *size)
    known = torch.zeros(1, model.length, dtype=torch.bool)
    with torch.no_grad():
        model.network(x, torch.zeros(1), x, known, torch.zeros(1))
    return sum(v for n, v in macs.items() if n in ends) / sum(macs.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--stems", type=int, nargs="*", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    data, config = recipe.data, recipe.stage("masks").model
    size = data.preprocessing.size
    print(
        f"{args.recipe}: C={len(data.labels)} L={data.sequence_length} size={size}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    for stem in [config.get("stem_channels"), *args.stems]:
        model = MaskDiffusionModel.build(
            data, MaskNetworkConfig.from_dict({**config, "stem_channels": stem})
        )
        params = sum(p.numel() for p in model.network.parameters()) / 1e6
        print(
            f"stem {stem!s:>5}: {seconds_per_step(model, size, args.repeats):6.2f} s/step, "
            f"first+last conv {100 * conv_share(model, size):4.1f}% of MACs, "
            f"{params:.2f} M parameters"
        )


if __name__ == "__main__":
    main()
