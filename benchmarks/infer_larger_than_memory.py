"""Inference whose output is several times the workers' total memory: it must complete with bounded worker memory.

Image: the synthetic demo seed's image (``--tile``, 256×256×128) mirrored along every axis until it fills
``--size`` (uint8 zarr, 128³ chunks; the content only has to look like EM). Model: MONAI's MedNeXt-S layout with
``--init-filters`` initial filters and random weights (seed 0): the run tests the block-wise machinery, not accuracy.
64³ windows, sw_batch_size 2, CPU float32, float16 output, all 6 channels. ``--overlap`` defaults to 0 to keep the
CPU time of a 896³ run in minutes (BANIS's 0.5 runs 15× more windows per block); a block's memory does not depend
on it: the accumulators are write-region-sized and one batch of windows is in flight at a time.

A LocalCluster of ``--workers`` workers × 1 thread with ``--memory-limit`` each runs
``nisbflow.infer.blockwise.infer_to_zarr`` with write regions of ``--block``. Reported: the output's logical size
against the workers' total memory limit, time, Mvoxel/s, each worker's peak resident memory (VmHWM) and whether
any worker was restarted (the nanny restarts a worker that passes 95 % of its limit).

    BENCH_TMP=/tmp/bench .venv/bin/python benchmarks/infer_larger_than_memory.py --size 896,896,896
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from decode import peak_gib, reset_peak  # noqa: E402
from nisbflow.data.volumes import array_url


def mirrored_image(tile_seed: Path, shape, out: Path) -> str:
    """Write a ``shape`` uint8 zarr image by mirroring the tile seed's image (cached)."""
    import dask.array as da
    import zarr

    from nisbflow.data.volumes import fast_compressors
    from nisbflow.synth import synthesize_seed

    path = out / f"image-{'x'.join(map(str, shape))}.zarr"
    if path.exists():
        return str(path)
    if not (tile_seed / "data.zarr").exists():
        synthesize_seed(tile_seed, (256, 256, 128), seed=101, overwrite=True, progress=False)
    tile = da.from_zarr(str(tile_seed / "data.zarr" / "img"))[..., 0]
    for axis, n in enumerate(shape):
        pieces, length, flip = [], 0, False
        while length < n:
            pieces.append(da.flip(tile, axis) if flip else tile)
            length += tile.shape[axis]
            flip = not flip
        tile = da.concatenate(pieces, axis=axis)
    image = tile[: shape[0], : shape[1], : shape[2]].rechunk((128, 128, 128))
    staged = str(path) + ".tmp"
    target = zarr.create_array(staged, shape=shape, chunks=(128, 128, 128), dtype="uint8", zarr_format=2,
                               compressors=fast_compressors(2), overwrite=True)
    da.store(image, target, lock=False)
    os.rename(staged, path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="896,896,896")
    parser.add_argument("--block", default="128,128,128")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="1GiB")
    parser.add_argument("--init-filters", type=int, default=2)
    parser.add_argument("--overlap", type=float, default=0.0)
    args = parser.parse_args()

    import numpy as np
    import torch
    from dask.utils import parse_bytes

    from nisbflow.cluster import cluster_client
    from nisbflow.config.schema import ModelConfig
    from nisbflow.infer.blockwise import WindowSettings, infer_to_zarr
    from nisbflow.model import build, save_checkpoint

    shape = tuple(int(v) for v in args.size.split(","))
    block = tuple(int(v) for v in args.block.split(","))
    cache = Path(os.environ.get("BENCH_TMP", tempfile.gettempdir())) / "nisbflow-infer-ltm"
    cache.mkdir(parents=True, exist_ok=True)
    print("preparing the image …", file=sys.stderr, flush=True)
    image = mirrored_image(cache / "tile-seed101", shape, cache)
    config = ModelConfig(init_filters=args.init_filters)
    checkpoint = cache / f"mednext-s-f{args.init_filters}-seed0.pt"
    torch.manual_seed(0)
    save_checkpoint(checkpoint, build(config), config, initialised="random", seed=0)
    stride = max(1, int(round(64 * (1 - args.overlap))))
    settings = WindowSettings((64, 64, 64), (stride,) * 3, 2)
    output_bytes = 6 * int(np.prod(shape)) * 2
    total_limit = args.workers * parse_bytes(args.memory_limit)
    print(f"output {output_bytes / 2**30:.2f} GiB float16 = {output_bytes / total_limit:.2f} × the workers' total "
          f"memory limit ({args.workers} × {args.memory_limit})", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp, \
            cluster_client("local", n_workers=args.workers, memory_limit=args.memory_limit) as client:
        before = set(client.scheduler_info()["workers"])
        client.run(reset_peak)
        start = time.perf_counter()
        summary = infer_to_zarr(image, f"{tmp}/affinities.zarr", checkpoint, window=settings, block=block,
                                progress=True, device="cpu")
        seconds = time.perf_counter() - start
        peaks = client.run(peak_gib)
        after = set(client.scheduler_info()["workers"])
        on_disk = sum(f.stat().st_size for f in Path(f"{tmp}/affinities.zarr").rglob("*") if f.is_file())
        import zarr

        result = zarr.open_array(array_url(f"{tmp}/affinities.zarr"), mode="r")
        sample = np.asarray(result[:, ::97, ::97, ::97], dtype=np.float32)
    voxels = int(np.prod(shape))
    restarted = len(before - after)
    print(f"\n{'×'.join(map(str, shape))} uint8 image, MedNeXt-S layout with {args.init_filters} initial filters "
          f"(random weights), 64³ windows, overlap {args.overlap:g}, CPU float32; {args.workers} workers × 1 thread × "
          f"{args.memory_limit}, write regions {'×'.join(map(str, block))}\n")
    print("| output (float16, 6 ch) | workers' total limit | ratio | seconds | Mvoxel/s | peak worker RSS (GiB) "
          "| workers restarted | redundancy |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {output_bytes / 2**30:.2f} GiB ({on_disk / 2**30:.2f} GiB compressed on disk) | "
          f"{total_limit / 2**30:.2f} GiB | {output_bytes / total_limit:.2f} | {seconds:.0f} | "
          f"{voxels / seconds / 1e6:.3f} | {max(peaks.values()):.2f} | {restarted} | {summary.redundancy:.2f} |")
    print(f"\noutput shape {result.shape} {result.dtype}; sampled values in [{sample.min():.3f}, {sample.max():.3f}], "
          f"{int(np.isnan(sample).sum())} NaN; blocks {summary.blocks}")


if __name__ == "__main__":
    main()
