"""Benchmark inference on the CPU: MONAI's sliding_window_inference against nisbflow whole-volume and block-wise.

A 256³ crop of the 512³ synthetic seed's image (uint8 zarr, 128³ chunks) and a randomly initialised small MedNeXt
(``nisbflow model init --arch tiny``: MONAI MedNeXt-S layout with 4 initial filters). 128³ windows, overlap 0.5,
sw_batch_size 8, float32 on the CPU. Each method runs in its own process:

(a) ``monai.inferers.sliding_window_inference`` on the in-memory volume (constant blending), then scale_sigmoid;
(b) ``nisbflow.infer.predict.predict_whole`` on the in-memory volume (BANIS geometry and blending);
(c) ``nisbflow.infer.blockwise.infer_to_zarr``, zarr to zarr, on a LocalCluster (``--workers`` × 1 thread),
    write regions of ``--block`` voxels;
(d) as (c) with ``--split-block`` blocks, each block's windows split among ``--split`` tasks (no window twice).

Peak memory is the process's VmHWM over the timed call ((c), (d): the largest worker). (c), (d) are compared with
(b).

    BENCH_TMP=/tmp/bench .venv/bin/python benchmarks/infer.py [--block 256,128,256] [--workers 2] \
        [--split-block 256,256,256] [--split 2]
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

sys.path.insert(0, str(Path(__file__).parent))
from decode import peak_gib, reset_peak, seed_segmentation  # noqa: E402
from nisbflow.data.volumes import array_url

WINDOW = (128, 128, 128)


def prepare(cache: Path, size: int) -> tuple[str, str]:
    import torch
    import zarr

    from nisbflow.model import ARCHITECTURES, build, save_checkpoint

    image = cache / f"image-{size}.zarr"
    if not image.exists():
        seed_segmentation(cache, (512, 512, 512))  # makes the seed if needed
        source = zarr.open_array(str(cache / "seed-512x512x512" / "data.zarr" / "img"), mode="r")
        target = zarr.create_array(str(image) + ".tmp", shape=(size,) * 3, chunks=(128,) * 3, dtype="uint8",
                                   zarr_format=2)
        target[...] = source[:size, :size, :size, 0]
        os.rename(str(image) + ".tmp", image)
    checkpoint = cache / "tiny-seed0.pt"
    if not checkpoint.exists():
        torch.manual_seed(0)
        save_checkpoint(checkpoint, build(ARCHITECTURES["tiny"]), ARCHITECTURES["tiny"])
    return str(image), str(checkpoint)


def child(spec: dict) -> dict:
    import torch
    import zarr

    from nisbflow.model import load_checkpoint

    method, image_path, checkpoint, out = spec["method"], spec["image"], spec["checkpoint"], spec["out"]
    if method in ("monai", "whole"):
        image = zarr.open_array(array_url(image_path), mode="r")[...]
        model, _ = load_checkpoint(checkpoint)
        reset_peak()
        start = time.perf_counter()
        if method == "monai":
            from monai.inferers import sliding_window_inference

            with torch.inference_mode():
                batch = torch.from_numpy(image).float().div_(255)[None, None]
                logits = sliding_window_inference(batch, WINDOW, 8, model, overlap=0.5, mode="constant")
                result = torch.sigmoid(0.2 * logits)[0].numpy().astype(np.float16)
        else:
            from nisbflow.infer.predict import predict_whole

            result = predict_whole(image, model, window=WINDOW, stride=(64, 64, 64), sw_batch_size=8)
        seconds = time.perf_counter() - start
        peak = peak_gib()
        np.save(out, result)
        return dict(seconds=seconds, peak_gib=peak)
    from nisbflow.cluster import cluster_client
    from nisbflow.infer.blockwise import WindowSettings, infer_to_zarr

    with cluster_client("local", n_workers=spec["workers"], memory_limit="6GiB") as client:
        client.run(reset_peak)
        split = spec["method"] == "split"
        summary = infer_to_zarr(image_path, out, checkpoint, window=WindowSettings(WINDOW, (64, 64, 64), 8),
                                block=tuple(spec["split_block"] if split else spec["block"]),
                                split=spec["split"] if split else 1, progress=False, device="cpu")
        peaks = client.run(peak_gib)
    return dict(seconds=summary.seconds, peak_gib=max(peaks.values()), redundancy=summary.redundancy,
                windows=summary.windows_computed, grid=summary.windows_in_grid)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--block", default="256,128,256")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--split-block", default="256,256,256", help="block size for (d)")
    parser.add_argument("--split", type=int, default=2, help="tasks per block for (d)")
    args = parser.parse_args()
    import zarr

    cache = Path(os.environ.get("BENCH_TMP", tempfile.gettempdir())) / "nisbflow-decode-bench"
    cache.mkdir(parents=True, exist_ok=True)
    image, checkpoint = prepare(cache, args.size)
    block = [int(v) for v in args.block.split(",")]
    results = {}
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        for method in ("monai", "whole", "blockwise", "split"):
            out = f"{tmp}/{method}" + (".zarr" if method in ("blockwise", "split") else ".npy")
            print(f"running {method} …", file=sys.stderr, flush=True)
            os.sync()
            process = subprocess.run([sys.executable, __file__, "--child", json.dumps(dict(
                method=method, image=image, checkpoint=checkpoint, out=out, workers=args.workers, block=block,
                split_block=[int(v) for v in args.split_block.split(",")], split=args.split))],
                capture_output=True, text=True)
            if process.returncode:
                raise RuntimeError(process.stderr[-3000:])
            results[method] = json.loads(process.stdout.strip().splitlines()[-1])
            results[method]["values"] = (zarr.open_array(array_url(out), mode="r")[...]
                                         if method in ("blockwise", "split") else np.load(out)).astype(np.float32)
    voxels = args.size ** 3
    difference = float(np.abs(results["blockwise"]["values"] - results["whole"]["values"]).max())
    split_difference = float(np.abs(results["split"]["values"] - results["whole"]["values"]).max())
    base = results["monai"]["seconds"]
    print(f"\n{args.size}³ uint8 image, tiny MedNeXt (4 initial filters), 128³ windows, overlap 0.5, "
          f"sw_batch_size 8, CPU float32; (c): {args.workers} workers × 1 thread, blocks "
          f"{'×'.join(map(str, block))}; (d): the same workers, blocks {args.split_block.replace(',', '×')}, "
          f"each split among {args.split} tasks\n")
    print("| method | seconds | Mvoxel/s | time / (a) | peak memory (GiB) | windows |")
    print("|---|---|---|---|---|---|")
    names = {"monai": "(a) MONAI sliding_window_inference, in memory", "whole": "(b) nisbflow whole volume, in memory",
             "blockwise": "(c) nisbflow block-wise, zarr → zarr, LocalCluster",
             "split": f"(d) as (c), blocks split among {args.split} tasks (`--split {args.split}`)"}
    for method, r in results.items():
        windows = f"{r['windows']} (grid {r['grid']}, redundancy {r['redundancy']:.2f})" \
            if method in ("blockwise", "split") \
            else "—"
        print(f"| {names[method]} | {r['seconds']:.1f} | {voxels / 1e6 / r['seconds']:.3f} | "
              f"{r['seconds'] / base:.2f} | {r['peak_gib']:.2f} | {windows} |")
    print(f"\nmax |(c) − (b)| = {difference:.2e}, max |(d) − (b)| = {split_difference:.2e} (float16 output)")


if __name__ == "__main__":
    main()
