"""Benchmark NERL evaluation on a 1024³ zarr segmentation: nisbflow against BANIS's per-node zarr loop.

Data (cached under $BENCH_TMP/nisbflow-decode-bench, shared with benchmarks/decode.py): the 512³ synthetic seed's
ground truth mirrored to 1024³ (uint32 zarr, 128³ chunks), and its skeleton placed twice — in the first octant as
it is and in the opposite octant mirrored along every axis — so skeleton nodes lie all through the volume and the
ground truth scores NERL 1.0 (a correctness check).

(a) BANIS ``metrics.py``: ``pred_seg[x, y, z]`` on the zarr array once per node. Timed on ``--sample`` random
    nodes and extrapolated to all of them (the whole loop takes many minutes); the ERL arithmetic is not included.
(b) ``nisbflow.evaluate.nerl``: node labels gathered chunk by chunk on the local threaded scheduler, then every
    metric. Timed whole; peak memory is the process's VmHWM over the call.

    BENCH_TMP=/tmp/bench .venv/bin/python benchmarks/evaluate.py [--sample 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from decode import mirrored_segmentation, peak_gib, reset_peak  # noqa: E402
from nisbflow.data.volumes import array_url


def segmentation_store(cache: Path, seed_shape, shape) -> str:
    import dask.array as da
    import zarr

    from nisbflow.data.volumes import fast_compressors

    path = cache / f"segmentation-{'x'.join(map(str, shape))}-mirrored.zarr"
    if not path.exists():
        print(f"writing {path} …", file=sys.stderr, flush=True)
        segmentation = mirrored_segmentation(cache, seed_shape, shape).rechunk((128, 128, 128))
        staged = str(path) + ".tmp"
        target = zarr.create_array(staged, shape=shape, chunks=(128, 128, 128), dtype=segmentation.dtype,
                                   fill_value=0, zarr_format=2, compressors=fast_compressors(2, shuffle=False),
                                   overwrite=True)
        da.store(segmentation, target, lock=False)
        os.rename(staged, path)
    return str(path)


def two_octant_skeleton(cache: Path, seed_shape, shape):
    import networkx as nx

    from nisbflow.data import load_skeleton, open_seed

    seed = cache / f"seed-{'x'.join(map(str, seed_shape))}"
    graph = load_skeleton(seed / "skeleton.pkl")
    offset = max(graph.nodes) + 1
    mirrored = nx.relabel_nodes(graph, {n: offset + n for n in graph}, copy=True)
    last = np.asarray(shape) - 1
    voxel = np.asarray(open_seed(str(seed)).voxel_size, dtype=np.float64)
    for node, attrs in mirrored.nodes(data=True):
        attrs["index_position"] = last - np.asarray(attrs["index_position"])
        attrs["nm_position"] = attrs["index_position"] * voxel
    return nx.union(graph, mirrored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed-shape", default="512,512,512")
    parser.add_argument("--shape", default="1024,1024,1024")
    parser.add_argument("--sample", type=int, default=2000, help="nodes timed in the per-node loop")
    args = parser.parse_args()
    import zarr

    from nisbflow.data import skeleton_arrays
    from nisbflow.evaluate import nerl

    seed_shape = tuple(int(v) for v in args.seed_shape.split(","))
    shape = tuple(int(v) for v in args.shape.split(","))
    cache = Path(os.environ.get("BENCH_TMP", tempfile.gettempdir())) / "nisbflow-decode-bench"
    cache.mkdir(parents=True, exist_ok=True)
    store = segmentation_store(cache, seed_shape, shape)
    graph = two_octant_skeleton(cache, seed_shape, shape)
    positions = skeleton_arrays(graph).index_position
    n_nodes = len(positions)
    segmentation = zarr.open_array(array_url(store), mode="r")

    rng = np.random.default_rng(0)
    sample = positions[rng.choice(n_nodes, size=min(args.sample, n_nodes), replace=False)]
    start = time.perf_counter()
    looped = np.array([segmentation[x, y, z] for x, y, z in sample])
    per_node = (time.perf_counter() - start) / len(sample)

    reset_peak()
    start = time.perf_counter()
    result = nerl(segmentation, graph)
    seconds = time.perf_counter() - start
    peak = peak_gib()
    from nisbflow.evaluate import node_labels

    assert np.array_equal(node_labels(segmentation, sample), looped)  # the same ids as the loop

    projected = per_node * n_nodes
    print(f"\n{'×'.join(map(str, shape))} uint32 segmentation ({store}), 128³ chunks; {n_nodes} skeleton nodes "
          f"in {result.n_skeletons} skeletons\n")
    print("| method | seconds | nodes/s | × (a) | peak memory (GiB) | NERL |")
    print("|---|---|---|---|---|---|")
    print(f"| (a) per-node zarr loop (BANIS metrics.py), {len(sample)} nodes timed, projected to {n_nodes} | "
          f"{projected:.0f} | {1 / per_node:.0f} | 1 | — | — |")
    print(f"| (b) nisbflow.evaluate.nerl, all nodes, all metrics | {seconds:.1f} | {n_nodes / seconds:.0f} | "
          f"{projected / seconds:.0f} | {peak:.2f} | {result.nerl:.4f} |")


if __name__ == "__main__":
    main()
