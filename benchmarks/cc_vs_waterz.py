"""Benchmark the two decoders on one synthetic seed whose noisy affinities make connected components merge:
connected components (``decoding.method: cc``) against watershed + agglomeration (``waterz``).

Data: a synthetic seed (``--shape``, its skeleton and dense ground truth) and float16 affinities made from its ground
truth with Gaussian noise (``--noise``, default 0.3: a boundary edge then exceeds 0.75 one time in 160, and one such
edge is enough for CC to merge two neurons).

For each method, in memory (numpy in, numpy out) over a grid of thresholds:
NERL (the seed's skeleton), adapted Rand error and VOI (dense ground truth) and segment count per threshold; the best
threshold by NERL (chosen on this seed: an oracle for both methods alike); time and peak memory (VmHWM of its own
subprocess, the input affinities included) for the whole grid, and for the best threshold alone.

Block-wise (zarr → zarr on a LocalCluster of ``--workers`` workers at ``--memory-limit``, ``--chunks`` blocks) at
each method's best threshold: time, the largest worker's peak, NERL/ARE/VOI; for waterz also with 0, 2, 4 and 8
voxels of watershed context, each compared with the in-memory result (adapted Rand error and VOI between the two:
the block-wise gap), and the region adjacency graph's size against the voxel count.

    BENCH_TMP=/tmp/bench .venv/bin/python benchmarks/cc_vs_waterz.py --shape 256,256,256

Prints Markdown for docs/BENCHMARKS.md and writes the numbers to $BENCH_TMP/waterz-<shape>.json.
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

import numpy as np

from decode import peak_gib, reset_peak  # benchmarks/decode.py: VmHWM of this process

CC_GRID = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
WATERZ_GRID = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
CONTEXTS = [0, 2, 4, 8]


# ---------------------------------------------------------------------------------------------------------------
# children: one measurement each, in its own process


def in_memory(spec: dict) -> dict:
    import zarr

    from nisbflow.data.volumes import array_url
    from nisbflow.decode import decode_affinity_cc
    from nisbflow.decode.agglomerate import decode_affinity_waterz

    affinities = zarr.open_array(array_url(spec["affinities"]), mode="r")[:3]
    warm = np.random.default_rng(0).random((3, 8, 8, 8)).astype(affinities.dtype)
    decode = (lambda a, t: decode_affinity_cc(a, thresholds=t)) if spec["method"] == "cc" else \
        (lambda a, t: decode_affinity_waterz(a, t, scoring=spec["scoring"]))
    decode(warm, [0.5])  # compile numba kernels outside the timing
    reset_peak()
    start = time.perf_counter()
    segmentations = decode(affinities, spec["thresholds"])
    seconds = time.perf_counter() - start
    peak = peak_gib()
    if spec.get("out"):
        np.savez(spec["out"], **{f"{t:g}": s for t, s in zip(spec["thresholds"], segmentations)})
    return dict(seconds=seconds, peak_gib=peak)


def block_wise(spec: dict) -> dict:
    import os as _os

    from nisbflow.cluster import cluster_client
    from nisbflow.decode import decode_to_zarr
    from nisbflow.decode.agglomerate_blockwise import WaterzOptions

    options = WaterzOptions(scoring=spec["scoring"], context=spec.get("context", 8))
    with cluster_client("local", n_workers=spec["workers"], memory_limit=spec["memory_limit"]) as client:
        pids = client.run(_os.getpid)
        client.run(reset_peak)
        start = time.perf_counter()
        decoded = decode_to_zarr(spec["affinities"], spec["out"], thresholds=spec["thresholds"],
                                chunks=spec["chunks"], progress=False, overwrite=True, method=spec["method"],
                                waterz=options)
        seconds = time.perf_counter() - start
        worker_peaks = client.run(peak_gib)
        restarted = client.run(_os.getpid) != pids
    return dict(seconds=seconds, peak_gib=max(worker_peaks.values()), client_peak_gib=peak_gib(),
                restarted=restarted, graph=decoded.region_graph)


def in_subprocess(spec: dict) -> dict:
    os.sync()
    process = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if process.returncode:
        raise RuntimeError(f"{spec} failed:\n{process.stderr[-4000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# the parent: data, scoring, tables


def prepare(cache: Path, shape, noise: float) -> tuple[Path, str]:
    from nisbflow.synth import synthesize_seed
    from nisbflow.synth.affinities import write_noisy_affinities

    name = "x".join(map(str, shape))
    seed = cache / f"waterz-seed-{name}"
    if not (seed / "skeleton.pkl").exists():
        print(f"synthesising a {name} seed …", file=sys.stderr, flush=True)
        synthesize_seed(str(seed), shape, seed=11, progress=False, overwrite=True)
    affinities = cache / f"waterz-affinities-{name}-noise{noise:g}.zarr"
    if not affinities.exists():
        write_noisy_affinities(seed / "data.zarr" / "seg", affinities, noise=noise, seed=0, chunks=(128, 128, 128),
                               progress=False)
    return seed, str(affinities)


def score(segmentation, seed: Path, truth) -> dict:
    from nisbflow.evaluate import dense_metrics, nerl

    skeleton = nerl(segmentation, seed / "skeleton.pkl", voxel_size=(9, 9, 20))
    dense = dense_metrics(truth, segmentation)
    return dict(nerl=skeleton.nerl, mergers=skeleton.n_mergers, splits=skeleton.n_splits,
                are=dense.adapted_rand_error, voi_split=dense.voi_split, voi_merge=dense.voi_merge,
                segments=int(segmentation.max()))


def gap(reference, other) -> dict:
    from nisbflow.evaluate.kernel import contingency, dense_metrics_from_contingency

    metrics = dense_metrics_from_contingency(*contingency(reference, other))
    return dict(are=metrics.adapted_rand_error, voi_split=metrics.voi_split, voi_merge=metrics.voi_merge)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="256,256,256")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--scoring", default="aff85_his256")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="2GiB")
    parser.add_argument("--chunks", default="128,128,128")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(block_wise(spec) if spec["where"] == "block-wise" else in_memory(spec)))
        return
    import zarr

    from nisbflow.data.volumes import array_url

    shape = tuple(int(s) for s in args.shape.split(","))
    chunks = [int(c) for c in args.chunks.split(",")]
    cache = Path(os.environ.get("BENCH_TMP", tempfile.gettempdir()))
    cache.mkdir(parents=True, exist_ok=True)
    seed, affinities = prepare(cache, shape, args.noise)
    truth = zarr.open_array(str(seed / "data.zarr" / "seg"), mode="r")[...]
    voxels = int(np.prod(shape))
    report = dict(shape=shape, noise=args.noise, scoring=args.scoring, workers=args.workers,
                  memory_limit=args.memory_limit, chunks=chunks, methods={})
    in_memory_best = {}
    for method, grid in (("cc", CC_GRID), ("waterz", WATERZ_GRID)):
        out = str(cache / f"waterz-bench-{method}.npz")
        common = dict(where="in-memory", method=method, affinities=affinities, scoring=args.scoring)
        whole_grid = in_subprocess(dict(common, thresholds=grid, out=out))
        with np.load(out) as saved:
            curve = {t: score(saved[f"{t:g}"], seed, truth) for t in grid}
        best = max(grid, key=lambda t: curve[t]["nerl"])
        one = in_subprocess(dict(common, thresholds=[best]))
        with np.load(out) as saved:
            in_memory_best[method] = saved[f"{best:g}"]
        entry = dict(curve=curve, best=best, grid_seconds=whole_grid["seconds"], grid_peak_gib=whole_grid["peak_gib"],
                     best_seconds=one["seconds"], best_peak_gib=one["peak_gib"], block_wise={})
        contexts = CONTEXTS if method == "waterz" else [None]
        for context in contexts:
            target = str(cache / f"waterz-bench-{method}-{context}.zarr")
            measured = in_subprocess(dict(where="block-wise", method=method, affinities=affinities, thresholds=[best],
                                          out=target, workers=args.workers, memory_limit=args.memory_limit,
                                          chunks=chunks, scoring=args.scoring, context=context or 0))
            segmentation = zarr.open_array(array_url(target), mode="r")[...]
            measured.update(score(segmentation, seed, truth), gap=gap(in_memory_best[method], segmentation))
            entry["block_wise"][str(context)] = measured
            print(f"{method} block-wise context {context}: {measured['seconds']:.1f} s", file=sys.stderr, flush=True)
        report["methods"][method] = entry
    (cache / f"waterz-{args.shape.replace(',', 'x')}.json").write_text(json.dumps(report, indent=1))
    print_markdown(report, voxels)


def print_markdown(report: dict, voxels: int) -> None:
    shape = "×".join(map(str, report["shape"]))
    print(f"Seed {shape} ({voxels / 1e6:.1f} Mvoxel), noise {report['noise']:g}, waterz scoring "
          f"{report['scoring']}.\n")
    for method, entry in report["methods"].items():
        print(f"**{method}**, in memory, by threshold (best by NERL: {entry['best']:g})\n")
        print("| threshold | segments | NERL | mergers | splits | adapted Rand error | VOI split | VOI merge |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for t, row in entry["curve"].items():
            mark = " ◀" if float(t) == entry["best"] else ""
            print(f"| {float(t):g}{mark} | {row['segments']} | {row['nerl']:.3f} | {row['mergers']} | {row['splits']} | "
                  f"{row['are']:.4f} | {row['voi_split']:.3f} | {row['voi_merge']:.3f} |")
        print()
    print("| method | where | thresholds | time (s) | Mvoxel/s | peak memory (GiB) | NERL | ARE | VOI split | "
          "VOI merge |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for method, entry in report["methods"].items():
        best = entry["curve"][entry["best"]] if entry["best"] in entry["curve"] else entry["curve"][str(entry["best"])]
        print(f"| {method} | in memory | grid of {len(entry['curve'])} | {entry['grid_seconds']:.1f} | "
              f"{voxels / entry['grid_seconds'] / 1e6:.2f} | {entry['grid_peak_gib']:.2f} | | | | |")
        print(f"| {method} | in memory | {entry['best']:g} | {entry['best_seconds']:.1f} | "
              f"{voxels / entry['best_seconds'] / 1e6:.2f} | {entry['best_peak_gib']:.2f} | {best['nerl']:.3f} | "
              f"{best['are']:.4f} | {best['voi_split']:.3f} | {best['voi_merge']:.3f} |")
        for context, row in entry["block_wise"].items():
            where = "block-wise" + ("" if context == "None" else f", context {context}")
            print(f"| {method} | {where} | {entry['best']:g} | {row['seconds']:.1f} | "
                  f"{voxels / row['seconds'] / 1e6:.2f} | {row['peak_gib']:.2f} (worker) | {row['nerl']:.3f} | "
                  f"{row['are']:.4f} | {row['voi_split']:.3f} | {row['voi_merge']:.3f} |")
    print("\nBlock-wise against in memory (same method, same threshold):\n")
    print("| method | context | adapted Rand error | VOI split | VOI merge | graph |")
    print("|---|---:|---:|---:|---:|---|")
    for method, entry in report["methods"].items():
        for context, row in entry["block_wise"].items():
            graph = row.get("graph")
            size = "" if not graph else (f"{graph['fragments']:,} fragments, {graph['edges']:,} edges "
                                         f"({voxels / graph['fragments']:.0f} voxels per fragment)")
            print(f"| {method} | {'' if context == 'None' else context} | {row['gap']['are']:.4f} | "
                  f"{row['gap']['voi_split']:.3f} | {row['gap']['voi_merge']:.3f} | {size} |")


if __name__ == "__main__":
    main()
