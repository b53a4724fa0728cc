"""Benchmark decoding (affinity connected components): throughput (Mvoxel/s) and peak memory.

On float16 noisy affinities made from a synthetic seed's ground truth (``nisbflow.synth.affinities``), four ways to
decode the same graph, each in its own subprocess (its peak memory is its own):

(a) ``banis``      BANIS's flood fill (a numba DFS with a list as its stack) on the in-memory array — the baseline;
(b) ``cc3d``       ``cc3d.color_connectivity_graph`` on the same graph as a 6-connectivity bitfield;
(c) ``in-memory``  ``nisbflow.decode.decode_affinity_cc`` on the numpy array (numba raster scan + union-find);
(d) ``block-wise`` ``nisbflow.decode.decode_to_zarr``, zarr to zarr, on a LocalCluster of ``--workers`` workers.

Each method runs --repeat times (default 3) and the fastest run is reported, all runs are printed too.
(a)-(c) start from the affinities already in memory (loading is not timed) and include thresholding; (d) includes
reading the affinities from zarr and writing the segmentation. Every result is checked to be the same partition as
(c). Peak memory is the process's VmHWM, reset (``/proc/self/clear_refs``) just before the timed runs, so it covers
the timed runs only (for (a)-(c) it includes the input affinities already held); for (d) it is the largest worker's.

``--larger-than-memory X,Y,Z`` instead decodes an affinity volume of that size (made by mirroring the seed's
ground truth, so the structure stays realistic) block-wise with ``--workers`` workers at ``--memory-limit`` each,
and reports wall time, the largest worker peak and whether any worker restarted.

    BENCH_TMP=/tmp/bench .venv/bin/python benchmarks/decode.py --shape 512,512,512
    BENCH_TMP=/tmp/bench .venv/bin/python benchmarks/decode.py --larger-than-memory 1024,1024,1024 --memory-limit 1.5GiB

Data is cached under $BENCH_TMP (default: the system temporary folder). Prints Markdown for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from nisbflow.data.volumes import array_url

METHODS = {"a": "banis", "b": "cc3d", "c": "in-memory", "d": "block-wise"}


# ---------------------------------------------------------------------------------------------------------------
# the compared decoders


@numba.njit
def banis_flood_fill(hard_aff):
    """BANIS ``compute_connected_component_segmentation``: depth-first flood fill from every voxel with a hard edge,
    in raster order; a numba list of (x, y, z) tuples is the stack. ``hard_aff``: (3, X, Y, Z) bool."""
    shape = hard_aff.shape[1:]
    visited = np.zeros(shape, dtype=numba.boolean)
    seg = np.zeros(shape, dtype=np.uint32)
    cur_id = 1
    for i in range(shape[0]):
        for j in range(shape[1]):
            for k in range(shape[2]):
                if (hard_aff[0, i, j, k] or hard_aff[1, i, j, k] or hard_aff[2, i, j, k]) and not visited[i, j, k]:
                    cur_to_visit = [(i, j, k)]
                    visited[i, j, k] = True
                    while cur_to_visit:
                        x, y, z = cur_to_visit.pop()
                        seg[x, y, z] = cur_id
                        if x + 1 < shape[0] and hard_aff[0, x, y, z] and not visited[x + 1, y, z]:
                            cur_to_visit.append((x + 1, y, z))
                            visited[x + 1, y, z] = True
                        if y + 1 < shape[1] and hard_aff[1, x, y, z] and not visited[x, y + 1, z]:
                            cur_to_visit.append((x, y + 1, z))
                            visited[x, y + 1, z] = True
                        if z + 1 < shape[2] and hard_aff[2, x, y, z] and not visited[x, y, z + 1]:
                            cur_to_visit.append((x, y, z + 1))
                            visited[x, y, z + 1] = True
                        if x - 1 >= 0 and hard_aff[0, x - 1, y, z] and not visited[x - 1, y, z]:
                            cur_to_visit.append((x - 1, y, z))
                            visited[x - 1, y, z] = True
                        if y - 1 >= 0 and hard_aff[1, x, y - 1, z] and not visited[x, y - 1, z]:
                            cur_to_visit.append((x, y - 1, z))
                            visited[x, y - 1, z] = True
                        if z - 1 >= 0 and hard_aff[2, x, y, z - 1] and not visited[x, y, z - 1]:
                            cur_to_visit.append((x, y, z - 1))
                            visited[x, y, z - 1] = True
                    cur_id += 1
    return seg


def banis(affinities: np.ndarray, threshold: float) -> np.ndarray:
    return banis_flood_fill(affinities[:3] > affinities.dtype.type(threshold))


def cc3d_graph(affinities: np.ndarray, threshold: float) -> np.ndarray:
    """Hard edges as cc3d's 6-connectivity bitfield (bits +x -x +y -y +z -z), labelled by
    ``color_connectivity_graph``; voxels without a hard edge are set to 0. Ids are not made consecutive."""
    import cc3d

    hard = affinities[:3] > affinities.dtype.type(threshold)
    graph = np.zeros(hard.shape[1:], dtype=np.uint8)
    for axis, (plus, minus) in enumerate(((1, 2), (4, 8), (16, 32))):
        edges = hard[axis]
        graph[edges] |= plus  # the source end; an edge leaving the volume still makes its voxel foreground
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis], upper[axis] = slice(0, -1), slice(1, None)
        graph[tuple(upper)] |= np.where(edges[tuple(lower)], np.uint8(minus), np.uint8(0))
    labels = cc3d.color_connectivity_graph(graph, connectivity=6)
    labels[graph == 0] = 0
    return labels


def in_memory(affinities: np.ndarray, threshold: float) -> np.ndarray:
    from nisbflow.decode import decode_affinity_cc

    return decode_affinity_cc(affinities, threshold)


# ---------------------------------------------------------------------------------------------------------------
# memory


def reset_peak() -> None:
    """Reset this process's peak resident memory (VmHWM), Linux ≥ 4.0."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


# ---------------------------------------------------------------------------------------------------------------
# children


def run_in_memory(method: str, affinities_path: str, threshold: float, out: str, repeat: int) -> dict:
    import zarr

    function = {"banis": banis, "cc3d": cc3d_graph, "in-memory": in_memory}[method]
    affinities = zarr.open_array(array_url(affinities_path), mode="r")[:3]
    function(np.random.default_rng(0).random((3, 8, 8, 8)).astype(affinities.dtype), threshold)  # compile
    reset_peak()
    times = []
    for _ in range(repeat):
        segmentation = None  # the previous result is freed first, so peaks do not add up
        start = time.perf_counter()
        segmentation = function(affinities, threshold)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    peak = peak_gib()
    np.save(out, segmentation)
    return dict(seconds=seconds, all_seconds=times, peak_gib=peak)


def run_block_wise(affinities_path: str, threshold: float, out: str, workers: int, chunks, memory_limit: str,
                   repeat: int) -> dict:
    import os as _os

    import zarr

    from nisbflow.cluster import cluster_client
    from nisbflow.decode import decode_to_zarr

    with cluster_client("local", n_workers=workers, memory_limit=memory_limit) as client:
        warm = str(Path(out).parent / "warm")  # compile the numba kernels on every worker
        zarr.create_array(warm + "-aff.zarr", shape=(3, 16, 16, 16), chunks=(3, 8, 8, 8), dtype="float16")[...] = 0.9
        decode_to_zarr(warm + "-aff.zarr", warm + "-seg.zarr", thresholds=(threshold,), progress=False, overwrite=True)
        pids = client.run(_os.getpid)
        client.run(reset_peak)
        reset_peak()
        times = []
        for attempt in range(repeat):
            start = time.perf_counter()
            counts = decode_to_zarr(affinities_path, out, thresholds=(threshold,), chunks=chunks, progress=False,
                                    overwrite=attempt > 0).counts
            times.append(time.perf_counter() - start)
            os.sync()
        seconds = min(times)
        worker_peaks = client.run(peak_gib)
        restarted = client.run(_os.getpid) != pids
    return dict(seconds=seconds, all_seconds=times, peak_gib=max(worker_peaks.values()), client_peak_gib=peak_gib(),
                restarted=restarted, n_segments=counts[threshold])


def child(arguments: list[str]) -> None:
    spec = json.loads(arguments[0])
    if spec["method"] == "block-wise":
        result = run_block_wise(spec["affinities"], spec["threshold"], spec["out"], spec["workers"], spec["chunks"],
                                spec["memory_limit"], spec["repeat"])
    else:
        result = run_in_memory(spec["method"], spec["affinities"], spec["threshold"], spec["out"], spec["repeat"])
    print(json.dumps(result))


def in_subprocess(**spec) -> dict:
    os.sync()  # flush the previous method's output so its write-back does not slow this one down
    process = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if process.returncode:
        raise RuntimeError(f"{spec['method']} failed:\n{process.stderr[-4000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# data


def seed_segmentation(cache: Path, shape) -> str:
    from nisbflow.synth import synthesize_seed

    seed = cache / f"seed-{'x'.join(map(str, shape))}"
    if not seed.exists():
        print(f"synthesising {shape} seed …", file=sys.stderr, flush=True)
        synthesize_seed(str(seed), shape, seed=1, progress=False)
    return str(seed / "data.zarr" / "seg")


def noisy_affinity_store(cache: Path, shape, noise: float) -> str:
    from nisbflow.synth.affinities import write_noisy_affinities

    path = cache / f"affinities-{'x'.join(map(str, shape))}-noise{noise:g}.zarr"
    if not path.exists():
        print(f"writing noisy affinities {path} …", file=sys.stderr, flush=True)
        write_noisy_affinities(seed_segmentation(cache, shape), path, noise=noise, seed=0, chunks=(128, 128, 128),
                               progress=False)
    return str(path)


def mirrored_affinity_store(cache: Path, seed_shape, shape, noise: float) -> str:
    """Affinities of the seed's segmentation mirrored along each axis until it covers ``shape``."""
    import dask.array as da
    import zarr

    from nisbflow.synth.affinities import noisy_affinities

    path = cache / f"affinities-{'x'.join(map(str, shape))}-mirrored-noise{noise:g}.zarr"
    if path.exists():
        return str(path)
    segmentation = mirrored_segmentation(cache, seed_shape, shape)
    affinities = noisy_affinities(segmentation.rechunk((128, 128, 128)), noise, seed=0)
    print(f"writing mirrored affinities {path} …", file=sys.stderr, flush=True)
    staged = str(path) + ".tmp"
    target = zarr.create_array(staged, shape=affinities.shape, chunks=(3, 128, 128, 128), dtype="float16",
                               fill_value=0, overwrite=True)
    da.store(affinities, target, lock=False)
    os.rename(staged, path)
    return str(path)


def mirrored_segmentation(cache: Path, seed_shape, shape):
    """The seed's ground truth (dask) mirrored along each axis until it covers ``shape``."""
    import dask.array as da

    segmentation = da.from_zarr(seed_segmentation(cache, seed_shape))
    for axis, n in enumerate(shape):
        tiles, flipped = [], False
        while sum(t.shape[axis] for t in tiles) < n:
            index = [slice(None)] * 3
            index[axis] = slice(None, None, -1) if flipped else slice(None)
            tiles.append(segmentation[tuple(index)])
            flipped = not flipped
        index = [slice(None)] * 3
        index[axis] = slice(0, n)
        segmentation = da.concatenate(tiles, axis=axis)[tuple(index)]
    return segmentation


# ---------------------------------------------------------------------------------------------------------------


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal background and a one-to-one map between ids (checked through the first-voxel ids of each segment)."""
    if not np.array_equal(a == 0, b == 0):
        return False
    a, b = a.ravel(), b.ravel()
    foreground = np.flatnonzero(a)
    a, b = a[foreground].astype(np.int64), b[foreground].astype(np.int64)
    forward = np.zeros(a.max() + 1, dtype=np.int64)
    forward[a] = b  # any representative: a one-to-one map must then hold everywhere
    backward = np.zeros(b.max() + 1, dtype=np.int64)
    backward[b] = a
    return bool(np.array_equal(forward[a], b) and np.array_equal(backward[b], a))


def compare(args, cache: Path) -> None:
    import zarr

    shape = tuple(int(v) for v in args.shape.split(","))
    chunks = tuple(int(v) for v in args.chunks.split(","))
    affinities = noisy_affinity_store(cache, shape, args.noise)
    voxels = int(np.prod(shape))
    rows, results = [], {}
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        for key in sorted(args.methods, key=lambda k: k != "c"):  # (c) first: the others are compared with it
            method = METHODS[key]
            out = f"{tmp}/{method}.zarr" if method == "block-wise" else f"{tmp}/{method}.npy"
            print(f"running ({key}) {method} …", file=sys.stderr, flush=True)
            r = in_subprocess(method=method, affinities=affinities, threshold=args.threshold, out=out,
                              workers=args.workers, chunks=chunks, memory_limit=args.memory_limit,
                              repeat=args.repeat)
            segmentation = zarr.open_array(array_url(out), mode="r")[...] if method == "block-wise" else np.load(out)
            results[key] = r
            if key == "c":
                reference = segmentation
            elif "c" in results:
                r["same"] = same_partition(segmentation, reference)
            r["n_segments"] = int(len(np.unique(segmentation)) - 1) if key == "b" else int(segmentation.max())
            del segmentation
    baseline = results.get("a", {}).get("seconds")
    print(f"\nshape {'×'.join(map(str, shape))} ({voxels / 1e6:.0f} M voxels), float16, noise {args.noise:g}, "
          f"threshold {args.threshold:g}; block-wise: {args.workers} workers × 1 thread, blocks "
          f"{'×'.join(map(str, chunks))}, memory limit {args.memory_limit}; best of {args.repeat} runs\n")
    print("| method | seconds | Mvoxel/s | × baseline (a) | peak memory (GiB) | segments | same partition as (c) |")
    print("|---|---|---|---|---|---|---|")
    for key, r in sorted(results.items()):
        speedup = f"{baseline / r['seconds']:.2f}" if baseline else "—"
        same = "—" if key == "c" else ("not compared" if "same" not in r else "yes" if r["same"] else "NO")
        print(f"| ({key}) {METHODS[key]} | {r['seconds']:.2f} | {voxels / 1e6 / r['seconds']:.1f} | {speedup} | "
              f"{r['peak_gib']:.2f} | {r['n_segments']} | {same} |")
    print("\nall runs (s): " + "; ".join(f"({k}) " + ", ".join(f"{t:.2f}" for t in r["all_seconds"])
                                      for k, r in sorted(results.items())))
    if "d" in results:
        print(f"\n(d) client process peak: {results['d']['client_peak_gib']:.2f} GiB; "
              f"workers restarted: {results['d']['restarted']}")


def larger_than_memory(args, cache: Path) -> None:
    shape = tuple(int(v) for v in args.larger_than_memory.split(","))
    seed_shape = tuple(int(v) for v in args.shape.split(","))
    chunks = tuple(int(v) for v in args.chunks.split(","))
    affinities = mirrored_affinity_store(cache, seed_shape, shape, args.noise)
    voxels = int(np.prod(shape))
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        r = in_subprocess(method="block-wise", affinities=affinities, threshold=args.threshold,
                          out=f"{tmp}/seg.zarr", workers=args.workers, chunks=chunks, memory_limit=args.memory_limit,
                          repeat=1)
    print(f"\n| shape | affinities (GiB, float16) | workers × memory limit | blocks | seconds | Mvoxel/s | "
          f"largest worker peak (GiB) | client peak (GiB) | restarts | segments |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {'×'.join(map(str, shape))} | {3 * 2 * voxels / 2**30:.1f} | {args.workers} × {args.memory_limit} | "
          f"{'×'.join(map(str, chunks))} | {r['seconds']:.0f} | {voxels / 1e6 / r['seconds']:.1f} | "
          f"{r['peak_gib']:.2f} | {r['client_peak_gib']:.2f} | {'yes' if r['restarted'] else 'none'} | "
          f"{r['n_segments']} |")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="512,512,512", help="seed shape X,Y,Z (voxels)")
    parser.add_argument("--methods", default="abcd", help="which of a, b, c, d to run")
    parser.add_argument("--threshold", type=float, default=0.75)
    parser.add_argument("--noise", type=float, default=0.15, help="Gaussian noise on 0.9/0.1 affinities")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per method; the fastest is reported")
    parser.add_argument("--chunks", default="128,128,128", help="block-wise block size X,Y,Z")
    parser.add_argument("--memory-limit", default="4GiB", help="per worker, for (d)")
    parser.add_argument("--larger-than-memory", metavar="X,Y,Z", help="decode a mirrored volume of this size instead")
    args = parser.parse_args()
    cache = Path(os.environ.get("BENCH_TMP", tempfile.gettempdir())) / "nisbflow-decode-bench"
    cache.mkdir(parents=True, exist_ok=True)
    if args.larger_than_memory:
        larger_than_memory(args, cache)
    else:
        compare(args, cache)


if __name__ == "__main__":
    main()
