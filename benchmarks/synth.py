"""Benchmark `nisbflow synth`: throughput (Mvoxel/s) and peak memory for given volume sizes.

Each size runs in its own subprocess so its peak resident memory (ru_maxrss) is its own. Usage:

    .venv/bin/python benchmarks/synth.py --shapes 512,512,512 1024,1024,1024 [--workers 2] [--chunks 128,128,128]

Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
from nisbflow.synth.kernel import grow_forest
from nisbflow.synth import make_params, synthesize_seed
shape, chunks, workers, out = json.loads(sys.argv[1])
start = time.perf_counter()
grow_forest(make_params(shape, seed=1))          # the serial global structure, timed on its own
forest_s = time.perf_counter() - start
start = time.perf_counter()
summary = synthesize_seed(out, shape, seed=1, chunks=chunks, num_workers=workers, progress=False)
total_s = time.perf_counter() - start
print(json.dumps(dict(forest_s=forest_s, total_s=total_s, n_neurons=summary.n_neurons,
                      nodes=summary.n_skeleton_nodes, background=summary.background_fraction,
                      peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["512,512,512", "1024,1024,1024"])
    parser.add_argument("--chunks", default="128,128,128")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    chunks = [int(v) for v in args.chunks.split(",")]
    # warm the numba cache once so compilation is not timed
    subprocess.run([sys.executable, "-c", CHILD, json.dumps([[32, 32, 16], chunks, 1, tempfile.mkdtemp() + "/w"])],
                   check=True, capture_output=True)
    print(f"| shape (X,Y,Z) | voxels | forest (s) | total (s) | Mvoxel/s | peak RSS (GiB) | neurons | skeleton nodes | background |")
    print("|---|---|---|---|---|---|---|---|---|")
    for text in args.shapes:
        shape = [int(v) for v in text.split(",")]
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            result = subprocess.run([sys.executable, "-c", CHILD, json.dumps([shape, chunks, args.workers, tmp + "/seed"])],
                                    check=True, capture_output=True, text=True)
        r = json.loads(result.stdout.strip().splitlines()[-1])
        voxels = shape[0] * shape[1] * shape[2]
        print(f"| {'×'.join(map(str, shape))} | {voxels / 1e6:.0f} M | {r['forest_s']:.1f} | {r['total_s']:.1f} | "
              f"{voxels / 1e6 / r['total_s']:.2f} | {r['peak_rss_gib']:.2f} | {r['n_neurons']} | {r['nodes']} | "
              f"{100 * r['background']:.1f} % |", flush=True)


if __name__ == "__main__":
    main()
