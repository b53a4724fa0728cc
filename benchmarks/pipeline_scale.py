"""The whole pipeline on volumes many times the workers' memory (issue 16, goals 2 and 4).

For each ``--shapes`` entry, on one LocalCluster of ``--workers`` workers × 1 thread × ``--memory-limit``:

1. ``synth``: :func:`nisbflow.synth.synthesize_seed` (image, ground truth, skeleton.pkl; 128³ chunks);
2. ``infer``: :func:`nisbflow.infer.blockwise.infer_to_zarr` with the shipped model ``nisb-tiny-synthetic``
   (MedNeXt-S layout, 4 initial filters, trained on synthetic seeds), 64³ windows at **overlap 0** (stride 64, so
   every window runs once), 3 channels, float16, 128³ blocks, CPU float32;
3. ``decode``: :func:`nisbflow.decode.decode_to_zarr`, connected components at the model's threshold 0.7;
4. ``evaluate``: NERL of the segmentation on every node of the seed's skeleton.pkl, in a fresh process
   (``nisbflow.evaluate.nerl`` on the zarr array; the process's peak memory is the stage's, and with a pickle it
   holds the whole networkx graph, about 1.6 KB per node);
5. ``evaluate_npz``: the same from ``skeleton.npz`` (written once from the pickle by ``convert_skeleton``, timed
   apart as ``convert_npz``), which ``nerl`` reads straight into arrays with no graph.

Per stage: seconds, Mvoxel/s, the largest worker's peak resident memory (VmHWM, reset before the stage), the client
process's peak, and the stage's output on disk. Per size: whether any worker was restarted (the set of worker pids
at the start and end). A stage already recorded in ``--json`` for a size is not run again (a re-run after an
interruption picks up there; nisbflow's stages also resume block by block).

    BENCH_TMP=/tmp/bench .venv/bin/python benchmarks/pipeline_scale.py --shapes 256,256,256 768,768,768 1536,1536,1536
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

sys.path.insert(0, str(Path(__file__).parent))
from decode import peak_gib, reset_peak  # noqa: E402

MODEL = "nisb-tiny-synthetic"
THRESHOLD = 0.7  # the shipped model's decoding.threshold


def disk_gib(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**30


def evaluate_in_subprocess(segmentation: str, skeleton: str) -> dict:
    """NERL in a fresh process: its seconds, result and peak memory (the interpreter, the skeleton graph, labels)."""
    code = f"""
import json, time, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from decode import peak_gib
import zarr
from nisbflow.data.volumes import array_url
from nisbflow.evaluate import nerl
start = time.perf_counter()
result = nerl(zarr.open_array(array_url({segmentation!r}), mode="r"), {skeleton!r})
print(json.dumps(dict(seconds=time.perf_counter() - start, nerl=result.nerl, n_nodes=result.n_nodes,
                      n_skeletons=result.n_skeletons, n_mergers=result.n_mergers, n_splits=result.n_splits,
                      process_peak_gib=peak_gib())))
"""
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def run_shape(shape, root: Path, args, record: dict, save) -> None:
    import numpy as np

    from nisbflow.cluster import cluster_client
    from nisbflow.data.volumes import array_url
    from nisbflow.decode import decode_to_zarr
    from nisbflow.infer.blockwise import WindowSettings, infer_to_zarr
    from nisbflow.synth import synthesize_seed

    name = "x".join(map(str, shape))
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    voxels = int(np.prod(shape))
    entry = record.setdefault(name, {"shape": list(shape), "voxels": voxels})
    seed, affinities, segmentation = folder / "seed", folder / "affinities.zarr", folder / "segmentation.zarr"
    settings = WindowSettings((64, 64, 64), (64, 64, 64), 2, channels=(0, 1, 2))
    block = (128, 128, 128)

    with cluster_client("local", n_workers=args.workers, memory_limit=args.memory_limit) as client:
        pids = set(client.run(os.getpid).values())

        def stage(label: str, run, output: Path) -> None:
            if label in entry:
                return
            print(f"[{name}] {label} …", file=sys.stderr, flush=True)
            client.run(reset_peak)
            reset_peak()
            start = time.perf_counter()
            extra = run() or {}
            seconds = time.perf_counter() - start
            entry[label] = dict(seconds=seconds, mvoxel_per_second=voxels / seconds / 1e6,
                                worker_peak_gib=max(client.run(peak_gib).values()), client_peak_gib=peak_gib(),
                                disk_gib=disk_gib(output), **extra)
            print(f"[{name}] {label}: {json.dumps(entry[label])}", file=sys.stderr, flush=True)
            save()

        def synth():
            # an interrupted synth resumes: its finished chunks (all 128³ here) are not rendered again, and the
            # throughput counts the chunks this run rendered
            done = seed / ".data.zarr.nisbflow-run" / "done" / "synth"
            resumed = len(list(done.iterdir())) if done.exists() else 0
            began = time.perf_counter()
            summary = synthesize_seed(seed, shape, args.seed, progress=True)
            seconds = time.perf_counter() - began
            rendered = voxels - resumed * 128**3
            return dict(neurons=summary.n_neurons, skeleton_nodes=summary.n_skeleton_nodes,
                        skeletons=summary.n_skeletons, resumed_chunks=resumed,
                        rendered_mvoxel_per_second=rendered / seconds / 1e6)

        def infer():
            summary = infer_to_zarr(f"{seed}/data.zarr/img", affinities, MODEL, window=settings, block=block,
                                    overwrite=True, progress=True, device="cpu")
            return dict(windows=summary.windows_computed, redundancy=summary.redundancy)

        def decode():
            result = decode_to_zarr(affinities, segmentation, thresholds=(THRESHOLD,), overwrite=True,
                                    progress=True)
            return dict(segments=int(result.counts[THRESHOLD]))

        stage("synth", synth, seed)
        stage("infer", infer, affinities)
        stage("decode", decode, segmentation)
        entry["workers_restarted"] = len(pids - set(client.run(os.getpid).values()))
        save()
    if "convert_npz" not in entry and not args.skip_npz:
        code = (f"import json, sys, time; sys.path.insert(0, {str(Path(__file__).parent)!r}); from decode import "
                f"peak_gib; from nisbflow.data import convert_skeleton; t = time.perf_counter(); "
                f"convert_skeleton({str(seed / 'skeleton.pkl')!r}, {str(seed / 'skeleton.npz')!r}); "
                f"print(json.dumps(dict(seconds=time.perf_counter() - t, process_peak_gib=peak_gib())))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        entry["convert_npz"] = json.loads(done.stdout.strip().splitlines()[-1])
        save()
    for label, skeleton in (("evaluate", seed / "skeleton.pkl"), ("evaluate_npz", seed / "skeleton.npz")):
        if label in entry or (label == "evaluate_npz" and args.skip_npz):
            continue
        print(f"[{name}] {label} …", file=sys.stderr, flush=True)
        entry[label] = evaluate_in_subprocess(array_url(segmentation), str(skeleton))
        entry[label]["mvoxel_per_second"] = voxels / entry[label]["seconds"] / 1e6
        print(f"[{name}] {label}: {json.dumps(entry[label])}", file=sys.stderr, flush=True)
        save()


def markdown(record: dict, args) -> str:
    from dask.utils import parse_bytes

    total = args.workers * parse_bytes(args.memory_limit)
    lines = [f"{args.workers} workers × 1 thread × {args.memory_limit} ({total / 2**30:.0f} GiB in all)", "",
             "| shape | affinities (float16, 3 ch) ÷ workers' memory | stage | seconds | Mvoxel/s | largest worker "
             "peak (GiB) | client / process peak (GiB) | on disk (GiB) |", "|---|---|---|---|---|---|---|---|"]
    for name, entry in record.items():
        ratio = 3 * 2 * entry["voxels"] / total
        for label in ("synth", "infer", "decode", "evaluate", "convert_npz", "evaluate_npz"):
            if label not in entry:
                continue
            e = entry[label]
            worker = f"{e['worker_peak_gib']:.2f}" if "worker_peak_gib" in e else "—"
            client = e.get("client_peak_gib", e.get("process_peak_gib"))
            rate = f"{e['mvoxel_per_second']:.2f}" if "mvoxel_per_second" in e else "—"
            lines.append(f"| {name} | {ratio:.1f} | {label} | {e['seconds']:.0f} | {rate} | "
                         f"{worker} | {client:.2f} | {e.get('disk_gib', 0):.2f} |")
        lines.append(f"| {name} | | restarts: {entry.get('workers_restarted', '?')}; NERL "
                     f"{entry.get('evaluate', {}).get('nerl', float('nan')):.3f} on "
                     f"{entry.get('evaluate', {}).get('n_nodes', '?')} nodes | | | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["256,256,256", "768,768,768", "1536,1536,1536"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="1GiB")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-npz", action="store_true", help="evaluate from skeleton.pkl only")
    parser.add_argument("--json", default=None, help="results (default: BENCH_TMP/nisbflow-pipeline/results.json)")
    args = parser.parse_args()

    root = Path(os.environ.get("BENCH_TMP", tempfile.gettempdir())) / "nisbflow-pipeline"
    root.mkdir(parents=True, exist_ok=True)
    path = Path(args.json or root / "results.json")
    record = json.loads(path.read_text()) if path.exists() else {}

    def save():
        path.write_text(json.dumps(record, indent=1))

    for text in args.shapes:
        run_shape(tuple(int(v) for v in text.split(",")), root, args, record, save)
    print(markdown(record, args))


if __name__ == "__main__":
    main()
