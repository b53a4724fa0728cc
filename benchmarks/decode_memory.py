"""Benchmark: the decode label-task memory estimate (nisbflow.decode.memory) against the measured peak, on the CPU.

For each block size, affinity dtype and threshold count, a fresh process imports nisbflow's decoder, labels a tiny
block once (numba compiles; its resident memory then is the worker runtime the estimate allows for), then labels one
random block of affinities with its three halo planes, as a ``decode-label-block`` task does
(:func:`nisbflow.decode.stitch.label_block`). Reported: the runtime's resident memory, the peak above it (VmHWM,
the input block included) and ``tracemalloc``'s peak of numpy allocations inside the task, against
``label_task_bytes`` (runtime + bytes per voxel × voxels).

    .venv/bin/python benchmarks/decode_memory.py [--blocks 128,256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

ONE = r"""
import json, tracemalloc
import numpy as np
from nisbflow.decode.stitch import label_block

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

def halo(a):
    return (np.ascontiguousarray(a[:, :1]), np.ascontiguousarray(a[:, :, :1]), np.ascontiguousarray(a[:, :, :, :1]))

small = np.random.default_rng(1).random((3, 16, 16, 16)).astype({dtype!r})
label_block(small, halo(small), [0.5] * {thresholds})
runtime = status("VmRSS")
affinities = np.random.default_rng(0).random((3,) + ({block},) * 3).astype({dtype!r})
import gc; gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # VmHWM back to VmRSS: the float64 random numbers are not the task's
before = status("VmRSS") - affinities.nbytes  # the input block counts as the task's
tracemalloc.start()
label_block(affinities, halo(affinities), [0.5] * {thresholds})
traced = tracemalloc.get_traced_memory()[1] + affinities.nbytes
print(json.dumps(dict(runtime=runtime, above=status("VmHWM") - before, traced=traced)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="128,256")
    args = parser.parse_args()
    from dask.utils import format_bytes

    from nisbflow.decode.memory import RUNTIME_BYTES, label_task_bytes

    print("| block | affinities | thresholds | runtime (RSS) | measured above it (VmHWM) | traced (numpy) | estimate "
          "above runtime | estimate / measured |")
    print("|---|---|---|---|---|---|---|---|")
    for block in (int(b) for b in args.blocks.split(",")):
        for dtype, thresholds in (("float16", 1), ("float16", 3), ("float32", 1)):
            out = subprocess.run([sys.executable, "-c", ONE.format(dtype=dtype, thresholds=thresholds, block=block)],
                                 capture_output=True, text=True, check=True).stdout
            got = json.loads(out)
            itemsize = 2 if dtype == "float16" else 4
            estimate = label_task_bytes((block,) * 3, itemsize, thresholds) - RUNTIME_BYTES
            print(f"| {block}³ | {dtype} | {thresholds} | {format_bytes(got['runtime'])} | "
                  f"{format_bytes(got['above'])} | {format_bytes(got['traced'])} | {format_bytes(estimate)} | "
                  f"{estimate / max(got['above'], got['traced']):.2f} |")


if __name__ == "__main__":
    main()
