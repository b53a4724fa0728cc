"""Benchmark: the inference memory estimate (nisbflow.infer.memory) against the measured peak, on the CPU.

For each window batch, a fresh process loads torch and a randomly initialised network (MedNeXt-S by default, BANIS's
architecture), then predicts a random 192³ image (8 windows of 128³ on the grid) with ``nisbflow.infer.predict.predict_whole``
(float32, CPU): the task an inference block runs, with the block equal to one window. Its peak resident memory
(VmHWM) is compared with ``task_peak``'s total (runtime + batch × counted activations + weighted sums), which is what
``fit_to_memory`` plans with before a run.

    .venv/bin/python benchmarks/infer_memory.py [--arch mednext-s] [--batches 1,2] [--window 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

ONE = r"""
import json, sys, time
sys.path.insert(0, {bench!r})
from decode import peak_gib
import numpy as np, torch
from nisbflow.model import ARCHITECTURES, build
from nisbflow.infer.predict import predict_whole
torch.set_num_threads({threads})
model = build(ARCHITECTURES[{arch!r}]).eval()
window = ({w}, {w}, {w})
image = np.random.default_rng(0).integers(0, 255, tuple(w + w // 2 for w in window) + (1,), dtype=np.uint8)
before = peak_gib()
start = time.perf_counter()
predict_whole(image, model, window=window, stride=tuple(x // 2 for x in window), sw_batch_size={batch}, device="cpu")
print(json.dumps({{"loaded_gib": before, "peak_gib": peak_gib(), "seconds": time.perf_counter() - start}}))
"""


def measure(arch: str, window: int, batch: int, threads: int) -> dict:
    code = ONE.format(bench=str(Path(__file__).parent), arch=arch, w=window, batch=batch, threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mednext-s")
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from nisbflow.infer.memory import task_peak
    from nisbflow.model import ARCHITECTURES

    config = ARCHITECTURES[args.arch]
    window = (args.window,) * 3
    print(f"{args.arch}, {args.window}³ windows, CPU float32, {args.threads} threads")
    print(f"{'batch':>5} {'estimate GiB':>12} {'(network)':>9} {'measured GiB':>12} {'loaded':>7} {'est/meas':>8} "
          f"{'s':>6}")
    for batch in (int(b) for b in args.batches.split(",")):
        block = tuple(w + w // 2 for w in window)  # 8 windows on the grid, so a batch of 2 is full
        estimate = task_peak(config, window, block, config.out_channels, batch)
        got = measure(args.arch, args.window, batch, args.threads)
        print(f"{batch:>5} {estimate.total / 2**30:>12.2f} {estimate.network / 2**30:>9.2f} "
              f"{got['peak_gib']:>12.2f} {got['loaded_gib']:>7.2f} {estimate.total / 2**30 / got['peak_gib']:>8.2f} "
              f"{got['seconds']:>6.1f}")


if __name__ == "__main__":
    main()
