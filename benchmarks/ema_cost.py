"""What BANIS+'s EMA of the weights costs a training step (issue 37's goal: at most 5 %).

For each MedNeXt size given, one process builds the network (``model.init_filters``, kernel 3) and an AdamW
optimizer as nisbflow's training loop does, and times, interleaved over ``--repeats`` rounds after one warm-up:

- a training step: forward on a ``--patch``³ crop (batch ``--batch``), the per-channel loss, backward, clipping,
  AdamW's update;
- the EMA update that follows it (:meth:`nisbflow.train.ema.WeightAverage.update`: one multi-tensor mul/add over
  every parameter).

The ratio (median EMA update / median step) is what the EMA adds to each step. The EMA is O(parameters) while the
step is O(parameters × voxels), so a smaller patch is the harder case.

    .venv/bin/python benchmarks/ema_cost.py --sizes S,L --patch 64 --repeats 5

Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nisbflow.config.schema import ModelConfig
from nisbflow.model import build
from nisbflow.train.ema import WeightAverage
from nisbflow.train.loss import per_channel_loss


def measure(size: str, width: int, patch: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build(ModelConfig(size=size, init_filters=width))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    average = WeightAverage(model, 0.999, 0)
    image = torch.rand(batch, 1, patch, patch, patch)
    target = (torch.rand(batch, 6, patch, patch, patch) < 0.7).float()
    mask = torch.ones_like(target)
    steps, updates = [], []
    for round_ in range(repeats + 1):
        start = time.perf_counter()
        loss = per_channel_loss(model(image), target, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        middle = time.perf_counter()
        average.update()
        end = time.perf_counter()
        if round_:  # the first round warms up
            steps.append(middle - start)
            updates.append(end - middle)
    step, update = statistics.median(steps), statistics.median(updates)
    return {"size": size, "width": width, "parameters": sum(p.numel() for p in model.parameters()), "step_s": step,
            "ema_s": update, "ratio": update / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="S,L", help="MedNeXt sizes, comma-separated")
    parser.add_argument("--width", type=int, default=32, help="model.init_filters")
    parser.add_argument("--patch", type=int, default=64, help="training crop side, voxels")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"training step and EMA update on the CPU ({torch.get_num_threads()} threads), {args.patch}³ crop, "
          f"batch {args.batch}, median of {args.repeats}\n")
    print("| MedNeXt | parameters | training step | EMA update | EMA / step |")
    print("|---|---:|---:|---:|---:|")
    for size in args.sizes.split(","):
        row = measure(size, args.width, args.patch, args.batch, args.repeats)
        print(f"| {size}, width {row['width']} | {row['parameters'] / 1e6:.2f} M | {row['step_s']:.3f} s | "
              f"{row['ema_s'] * 1e3:.2f} ms | {100 * row['ratio']:.2f} % |", flush=True)


if __name__ == "__main__":
    main()
