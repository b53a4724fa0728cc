"""What test-time augmentation costs against plain inference (issue 37's goal: k views at most k × 1.05 the time).

One process predicts the same image (``--shape``, synthetic) with ``predict_whole`` plainly and with k views
(``--views``: 8 flips, or 16 with xy quarter turns), interleaved over ``--repeats`` rounds after a warm-up, with a
MedNeXt of ``--width`` initial filters (random weights: the cost does not depend on them) on ``--window``³ windows.
The ratio (TTA time / plain time) / k is the overhead per view: turning crops and predictions back, re-anchoring
and the ensemble.

    .venv/bin/python benchmarks/tta_cost.py --shape 96,96,96 --window 64 --width 8

Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from nisbflow.config.schema import BANIS_AFFINITY_OFFSETS, ModelConfig, parse_offset
from nisbflow.infer.predict import Augmentation, predict_whole
from nisbflow.infer.tta import views
from nisbflow.model import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="96,96,96")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    torch.manual_seed(0)
    network = build(ModelConfig(init_filters=args.width)).eval()
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    offsets = tuple(parse_offset(o) for o in BANIS_AFFINITY_OFFSETS)
    setups = {"plain": None,
              "8 flips, mean": Augmentation(tuple(views("all")), ("mean",) * 3, offsets),
              "16 (flips × xy turns), min/mean": Augmentation(tuple(views("all", [[0, 1]], [0, 1])),
                                                              ("min", "min", "mean"), offsets)}
    window = (args.window,) * 3
    stride = tuple(w // 2 for w in window)
    times = {name: [] for name in setups}
    for round_ in range(args.repeats + 1):
        for name, augmentation in setups.items():
            start = time.perf_counter()
            predict_whole(image, network, window=window, stride=stride, sw_batch_size=2, channels=(0, 1, 2),
                          augmentation=augmentation)
            if round_:
                times[name].append(time.perf_counter() - start)
    plain = statistics.median(times["plain"])
    print(f"predict_whole on {'×'.join(map(str, shape))}, {args.window}³ windows, MedNeXt-S width {args.width}, "
          f"{torch.get_num_threads()} CPU threads, median of {args.repeats}\n")
    print("| inference | views k | time | time / plain | per view (÷ k) |")
    print("|---|---:|---:|---:|---:|")
    for name, augmentation in setups.items():
        k = 1 if augmentation is None else len(augmentation.views)
        median = statistics.median(times[name])
        print(f"| {name} | {k} | {median:.2f} s | {median / plain:.2f} | {median / plain / k:.3f} |")


if __name__ == "__main__":
    main()
