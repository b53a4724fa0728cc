"""GPU measurements (issue 16, part 6): MedNeXt-S float16 inference through ``nisbflow infer --cluster dask-cuda``
against MONAI's ``sliding_window_inference`` on the same GPU and volume, GPU utilisation while it runs, the cupy
decoder against the numba one on the same affinities, and the projected time of a NISB test cube.

Steps (``--steps``, comma separated; each result goes to ``--json``):

``model``   the network alone: random ``(N, 1, 128, 128, 128)`` batches, float16 autocast, windows/s per batch size
            (the ceiling every sliding-window driver is measured against), peak GPU memory;
``forward`` the network alone per variant (eager, compiled, channels-last, CUDA graphs, max-autotune): windows/s,
            compilation seconds, max |Δ| to eager after the sigmoid and the same partition at 0.75 on synthetic
            crops, and a kernel-by-kernel profile of the compiled pass (issue 27, part 3);
``variants`` the network alone at batch 8 with cuDNN autotuning, channels-last 3-D, bfloat16, torch.compile;
``monai``   ``monai.inferers.sliding_window_inference`` over the whole image held on the GPU (roi 128³, overlap 0.5,
            ``sw_batch_size`` 8, float16 autocast), then scale_sigmoid, channels 0-2, float16, copied to the host;
``infer``   ``nisbflow infer IMG OUT --checkpoint CKPT --cluster dask-cuda`` as a user runs it (a subprocess; zarr in,
            zarr out, settings resolved from the checkpoint), with ``nvidia-smi`` sampled every 100 ms; windows/s and
            Mvoxel/s from its summary line, mean GPU utilisation over the prediction;
``train``   ``nisbflow train --config configs/base_banis.yaml`` (MedNeXt-S, 16-mixed) on synthetic seeds for
            ``--train-seconds``: steps/s, GPU memory and utilisation, the loss over the first steps (TensorBoard);
``decode``  a synthetic segmentation → noisy short-range affinities (σ 0.15) → ``decode_affinity_cc`` in memory with
            the numba kernel and with ``backend="cupy"``: same partition (identical ids), seconds each (after a warm-up).

The image is uniform random uint8 (MedNeXt's cost does not depend on content). The checkpoint is MedNeXt-S (MONAI
``create_mednext("S")``, 32 filters) with random weights, written by ``save_random_checkpoint``. Run on the device::

    python benchmarks/gpu.py --shape 1024,1024,512 --decode-shape 512,512,512 --json $OUT/gpu.json

On a CPU machine ``--arch tiny --cluster local --steps model,monai,infer`` runs the same code small (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

NISB_TEST_CUBE = (3000, 3000, 1350)


def log(*parts) -> None:
    print(*parts, flush=True)


class GpuSampler:
    """``nvidia-smi`` utilisation and memory every ``interval_ms`` in a background process; ``window(t0, t1)``
    gives the samples between two ``time.time()`` stamps."""

    def __init__(self, interval_ms: int = 100):
        self.samples: list[tuple[float, float, float]] = []
        self.process = None
        self.interval_ms = interval_ms

    def __enter__(self):
        try:
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
                 f"-lms={self.interval_ms}"], stdout=subprocess.PIPE, text=True)
        except FileNotFoundError:
            return self
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self):
        for line in self.process.stdout:
            try:
                utilisation, memory = (float(v) for v in line.strip().split(","))
            except ValueError:
                continue
            self.samples.append((time.time(), utilisation, memory))

    def __exit__(self, *exc):
        if self.process is not None:
            self.process.terminate()
            self.process.wait()

    def window(self, start: float, stop: float) -> dict:
        inside = [(u, m) for t, u, m in self.samples if start <= t <= stop]
        if not inside:
            return {"samples": 0}
        utilisation = np.array([u for u, _ in inside])
        return {"samples": len(inside), "mean_utilisation_percent": float(utilisation.mean()),
                "median_utilisation_percent": float(np.median(utilisation)),
                "fraction_of_samples_at_least_85_percent": float((utilisation >= 85).mean()),
                "peak_memory_mib": float(max(m for _, m in inside))}


def n_windows(shape, window=128, stride=64) -> int:
    from nisbflow.infer.geometry import window_grid

    return int(np.prod([len(g) for g in window_grid(shape, window, stride)]))


def step_model(model_config, device, results, batches=(1, 4, 8, 16), repeats=6) -> None:
    import torch

    from nisbflow.model import build
    from nisbflow.infer.predict import apply_model

    model = build(model_config).to(device).eval()
    out = {}
    for batch in batches:
        crops = torch.randint(0, 255, (batch, 128, 128, 128), dtype=torch.uint8, device=device)
        try:
            for _ in range(2):
                apply_model(model, crops, "scale_sigmoid")
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            for _ in range(repeats):
                apply_model(model, crops, "scale_sigmoid")
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        except torch.OutOfMemoryError:
            out[batch] = "out of memory"
            break
        out[batch] = {"windows_per_second": batch * repeats / seconds,
                      "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}
        log(f"model alone, batch {batch}: {out[batch]['windows_per_second']:.1f} windows/s")
    results["model"] = out


def step_model_variants(model_config, device, results, variants, batch=8, repeats=6) -> None:
    """The network alone at one batch size under settings that may speed it up: cuDNN autotuning
    (``cudnn.benchmark``), channels-last 3-D memory layout, bfloat16 instead of float16 autocast, torch.compile."""
    import torch

    from nisbflow.model import build

    out = {}
    for variant in variants:
        torch.backends.cudnn.benchmark = variant in ("cudnn-benchmark", "channels-last", "compile")
        model = build(model_config).to(device).eval()
        layout = torch.channels_last_3d if variant == "channels-last" else torch.contiguous_format
        model = model.to(memory_format=layout)
        dtype = torch.bfloat16 if variant == "bf16" else torch.float16
        forward = torch.compile(model) if variant == "compile" else model
        crops = torch.randint(0, 255, (batch, 128, 128, 128), dtype=torch.uint8, device=device)

        def run():
            inputs = crops.to(torch.float32).div_(255.0).unsqueeze(1).contiguous(memory_format=layout)
            with torch.inference_mode(), torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda"):
                return torch.sigmoid(0.2 * forward(inputs).float())

        try:
            start = time.perf_counter()
            for _ in range(2):
                run()
            torch.cuda.synchronize()
            warm = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(repeats):
                run()
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            out[variant] = {"windows_per_second": batch * repeats / seconds, "warm_up_seconds": warm}
            log(f"model alone, batch {batch}, {variant}: {out[variant]['windows_per_second']:.1f} windows/s "
                f"(warm-up {warm:.0f} s)")
        except Exception as error:  # a variant this torch build cannot run
            out[variant] = f"failed: {type(error).__name__}: {str(error)[:300]}"
            log(variant, out[variant])
        del model
        torch.cuda.empty_cache()
        results["model_variants"] = out
    torch.backends.cudnn.benchmark = False


FORWARD_VARIANTS = {
    # name: (torch.compile mode or None for eager, channels-last 3-D)
    "eager": (None, False),
    "channels-last": (None, True),
    "compiled": ("default", False),
    "compiled-channels-last": ("default", True),
    "reduce-overhead": ("reduce-overhead", False),
    "max-autotune": ("max-autotune", True),
}


def forward_variant(model, name: str):
    """The network of ``model`` run as variant ``name`` of :data:`FORWARD_VARIANTS`: a function of
    ``crops (N, X, Y, Z) uint8`` giving scale-sigmoid affinities ``(N, C, X, Y, Z)`` float32 (autocast float16 on
    CUDA, as :func:`nisbflow.infer.predict.apply_model`)."""
    import torch

    import copy

    mode, channels_last = FORWARD_VARIANTS[name]
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    network = copy.deepcopy(model).to(memory_format=layout)  # ``to`` converts in place: keep the eager one as it is
    if mode is not None:
        network = torch.compile(network, mode=None if mode == "default" else mode, dynamic=False)

    def run(crops):
        batch = crops.to(torch.float32).div_(255.0).unsqueeze(1).contiguous(memory_format=layout)
        with torch.inference_mode(), torch.autocast(device_type=crops.device.type, dtype=torch.float16,
                                                    enabled=crops.device.type == "cuda"):
            logits = network(batch)
        return torch.sigmoid(0.2 * logits.float())

    return run


def step_forward(model_config, device, results, variants, batch=8, repeats=6, threshold=0.75,
                 profile_rows=25) -> None:
    """Part 3 of issue 27: the network alone per variant (:data:`FORWARD_VARIANTS`) at ``batch`` windows of 128³:
    windows/s, warm-up (compilation) seconds, and agreement with the eager network on the same crops of a
    synthetic EM-like image (max |Δ| after the sigmoid; goal ≤ 2e-3) and the same partition at ``threshold``
    (``decode_affinity_cc`` of channels 0-2 of each window, identical ids). The compiled variant is profiled kernel
    by kernel (``torch.profiler``, the largest CUDA times)."""
    import torch

    from nisbflow.decode import decode_affinity_cc
    from nisbflow.model import build
    from nisbflow.synth import synthesize_seed

    with tempfile.TemporaryDirectory() as folder:
        synthesize_seed(f"{folder}/seed", (256, 256, 128), 3, progress=False)
        import zarr

        image = zarr.open_array(f"{folder}/seed/data.zarr/img", mode="r")[..., 0]
    starts = [(x, y, 0) for x in (0, 64, 128) for y in (0, 64, 128)][:batch]
    while len(starts) < batch:
        starts.append(starts[len(starts) % 9])
    crops = torch.from_numpy(np.stack([image[x:x + 128, y:y + 128, z:z + 128] for x, y, z in starts])).to(device)
    torch.manual_seed(0)
    model = build(model_config).to(device).eval()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    reference, out = None, {}
    for name in variants:
        try:
            run = forward_variant(model, name)
            start = time.perf_counter()
            for _ in range(2):
                values = run(crops)
            sync()
            warm = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(repeats):
                values = run(crops)
            sync()
            seconds = time.perf_counter() - start
            values = values.cpu().numpy()
            entry = {"windows_per_second": batch * repeats / seconds, "warm_up_seconds": warm}
            if reference is None:
                reference = values
                reference_labels = [decode_affinity_cc(v[:3], threshold) for v in reference]
            entry["max_abs_difference_to_eager"] = float(np.abs(values - reference).max())
            labels = [decode_affinity_cc(v[:3], threshold) for v in values]
            entry["same_partition_at_threshold"] = all(np.array_equal(a, b) for a, b in zip(labels, reference_labels))
            entry["segments"] = int(sum(int(a.max()) for a in labels))
            if name == "compiled" and device == "cuda":
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CUDA]) as profiler:
                    run(crops)
                    sync()
                entry["profile"] = profiler.key_averages().table(sort_by="cuda_time_total", row_limit=profile_rows)
            out[name] = entry
            log(f"network alone, batch {batch}, {name}: {entry['windows_per_second']:.1f} windows/s "
                f"(warm-up {warm:.0f} s), max |Δ| {entry['max_abs_difference_to_eager']:.2e}, "
                f"same partition {entry['same_partition_at_threshold']}")
        except Exception as error:  # a variant this torch build cannot run
            out[name] = f"failed: {type(error).__name__}: {str(error)[:300]}"
            log(name, out[name])
        if device == "cuda":
            torch.cuda.empty_cache()
        results["forward"] = out
    if "eager" in out and isinstance(out["eager"], dict):
        for name, entry in out.items():
            if isinstance(entry, dict):
                entry["speed_up_over_eager"] = entry["windows_per_second"] / out["eager"]["windows_per_second"]


def step_monai(model_config, image: np.ndarray, device, results, sw_batch_size=8) -> None:
    import torch
    from monai.inferers import sliding_window_inference

    from nisbflow.model import build

    model = build(model_config).to(device).eval()
    volume = torch.from_numpy(image).to(device)

    def run():
        batch = volume.to(torch.float32).div_(255.0)[None, None]
        with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.float16,
                                                    enabled=device == "cuda"):
            logits = sliding_window_inference(batch, (128, 128, 128), sw_batch_size, model, overlap=0.5,
                                              mode="constant")
        return torch.sigmoid(0.2 * logits[0, :3].float()).to(torch.float16).cpu().numpy()

    warm = tuple(min(s, 256) for s in image.shape)
    small = volume[:warm[0], :warm[1], :warm[2]]  # warm-up on a crop: cuDNN autotuning, the allocator
    with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.float16, enabled=device == "cuda"):
        sliding_window_inference(small.to(torch.float32)[None, None] / 255, (128, 128, 128), sw_batch_size, model,
                                 overlap=0.5)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    output = run()
    seconds = time.perf_counter() - start
    windows = n_windows(image.shape)  # MONAI's scan: the same 50 % grid, snapped last window
    results["monai"] = {"seconds": seconds, "windows": windows, "windows_per_second": windows / seconds,
                        "mvoxel_per_second": image.size / seconds / 1e6, "output_shape": list(output.shape)}
    log(f"MONAI sliding_window_inference: {seconds:.1f} s, {windows / seconds:.1f} windows/s")


def step_infer(image_path: str, checkpoint: str, work: Path, cluster: str, results, sampler: GpuSampler | None,
               extra=()) -> None:
    output = work / "affinities.zarr"
    command = [sys.executable, "-c", "from nisbflow_cli.main import app; app()", "infer", image_path, str(output),
               "--checkpoint", checkpoint, "--cluster", cluster, "--overwrite", *extra]
    log("$ nisbflow " + " ".join(command[3:]))
    start = time.time()
    finished = subprocess.run(command, capture_output=True, text=True)
    stop = time.time()
    log(finished.stdout[-3000:], finished.stderr[-3000:])
    text = " ".join(finished.stdout.split())  # Rich wraps the summary line at the console width
    line = text[text.rfind("wrote "):] if "Mvoxel/s" in text else ""
    found = re.search(r"([\d.]+) Mvoxel/s, (\d+) windows for a grid of (\d+) \(redundancy ([\d.]+)\)", line)
    entry = {"extra": list(extra), "returncode": finished.returncode,
             "wall_seconds_including_cluster_start": stop - start, "summary": line.strip()}
    compiled = re.search(r"compiled in ([\d.]+) s", line)
    if compiled:
        entry["compile_warm_up_seconds"] = float(compiled[1])
    if found:
        mvoxel, computed, grid, redundancy = float(found[1]), int(found[2]), int(found[3]), float(found[4])
        voxels = np.prod(results["image_shape"])
        seconds = voxels / (mvoxel * 1e6)
        entry.update(mvoxel_per_second=mvoxel, windows_computed=computed, windows_in_grid=grid,
                     redundancy=redundancy, predict_seconds=seconds, windows_per_second=computed / seconds,
                     grid_windows_per_second=grid / seconds)
        if sampler is not None:
            entry["gpu"] = sampler.window(stop - seconds, stop)
    results.setdefault("infer", []).append(entry)


def step_decode(shape, results, threshold=0.75) -> None:
    from nisbflow.decode import decode_affinity_cc
    from nisbflow.synth import synthesize_seed
    from nisbflow.synth.affinities import noisy_affinities

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        synthesize_seed(f"{folder}/seed", shape, 5, progress=False)
        import zarr

        segmentation = zarr.open_array(f"{folder}/seed/data.zarr/seg", mode="r")[...]
        log(f"synthesized {shape} in {time.perf_counter() - start:.0f} s")
    affinities = noisy_affinities(segmentation, 0.15, seed=0)
    warm = affinities[:, :64, :64, :64].copy()
    entry = {"shape": list(shape), "threshold": threshold}
    for backend in ("numba", "cupy"):
        try:
            decode_affinity_cc(warm, threshold, backend=backend)  # JIT / kernel compilation
            start = time.perf_counter()
            labels = decode_affinity_cc(affinities, threshold, backend=backend)
            entry[backend] = {"seconds": time.perf_counter() - start, "segments": int(labels.max())}
            entry[f"{backend}_labels"] = labels
            log(f"decode {backend}: {entry[backend]['seconds']:.2f} s, {int(labels.max())} segments")
        except Exception as error:  # cupy missing on a CPU machine
            entry[backend] = f"failed: {type(error).__name__}: {error}"
    if "numba_labels" in entry and "cupy_labels" in entry:
        entry["identical_partition"] = bool(np.array_equal(entry["numba_labels"], entry["cupy_labels"]))
        entry["cupy_speed_up"] = entry["numba"]["seconds"] / entry["cupy"]["seconds"]
    entry.pop("numba_labels", None)
    entry.pop("cupy_labels", None)
    results["decode"] = entry


def step_train(work: Path, seconds: int, shape, results, sampler: GpuSampler | None, extra=()) -> None:
    """``nisbflow train --config configs/base_banis.yaml`` (MedNeXt-S, 128³ patches, batch 4, 16-mixed, the BANIS
    schedule) on synthetic seeds for ``seconds``, then steps/s, GPU memory and the loss curve from TensorBoard."""
    import signal

    from nisbflow.synth import synthesize_seed

    data = work / "train-data"
    start = time.perf_counter()
    for name, seed in (("train/seed0", 0), ("train/seed1", 1), ("val/seed100", 100)):
        if not (data / name / "skeleton.pkl").exists():
            synthesize_seed(str(data / name), shape, seed, overwrite=True, progress=False)
    log(f"synthesized 3 training seeds of {shape} in {time.perf_counter() - start:.0f} s")
    run = work / "train-run"
    command = [sys.executable, "-c", "from nisbflow_cli.main import app; app()", "train", "--config",
               "configs/base_banis.yaml", "--run-dir", str(run), f"data.train.path={data / 'train'}",
               f"data.val.path={data / 'val' / 'seed100'}", "optimization.val_check_interval=500",
               "optimization.val_steps_per_epoch=10", f"save_path={work}", *extra]
    log("$ nisbflow " + " ".join(command[3:]))
    began = time.time()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    ended = time.time()
    log(output[-2000:])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = []
    if (run / "tensorboard").exists():
        events = EventAccumulator(str(run / "tensorboard"))
        events.Reload()
        tags = events.Tags().get("scalars", [])
    losses = events.Scalars("train_loss") if "train_loss" in tags else []
    validation = events.Scalars("val_loss_total") if "val_loss_total" in tags else []
    entry: dict = {"steps_logged": len(losses), "wall_seconds": ended - began, "returncode": process.returncode}
    if len(losses) > 60:
        first, last = losses[50], losses[-1]
        entry["steps_per_second"] = (last.step - first.step) / (last.wall_time - first.wall_time)
        curve = {}
        for low in range(0, losses[-1].step, 250):
            chunk = [e.value for e in losses if low < e.step <= low + 250]
            if chunk:
                curve[low + 250] = float(np.mean(chunk))
        entry["train_loss_mean_per_250_steps"] = curve
        entry["val_loss"] = {int(e.step): float(e.value) for e in validation}
        if sampler is not None:
            entry["gpu"] = sampler.window(first.wall_time, last.wall_time)
    results["train"] = entry
    log(json.dumps(entry, indent=1))


def project(results) -> None:
    """The NISB test cube from the measured rates: its grid at the default 768³ blocks (windows run from the window
    plan: each grid window once), at the end-to-end windows/s of ``nisbflow infer``."""
    from nisbflow.blocks import BlockGrid
    from nisbflow.infer.blockwise import DEFAULT_BLOCK, WindowSettings
    from nisbflow.infer.plan import plan_windows

    settings = WindowSettings()
    plan = plan_windows(BlockGrid.regular(NISB_TEST_CUBE, DEFAULT_BLOCK), settings.window, settings.stride,
                        settings.sw_batch_size)
    computed, grid = plan.windows_run, n_windows(NISB_TEST_CUBE)
    projection = {"cube": list(NISB_TEST_CUBE), "windows_in_grid": grid, "windows_computed_768_blocks": computed,
                  "redundancy": computed / grid}
    runs = [r for r in results.get("infer", []) if "windows_per_second" in r]
    if runs:
        rate = max(r["windows_per_second"] for r in runs)
        projection.update(nisbflow_windows_per_second=rate, projected_minutes=computed / rate / 60,
                          projected_mvoxel_per_second=np.prod(NISB_TEST_CUBE) / (computed / rate) / 1e6)
    if "monai" in results:
        projection["monai_projected_minutes"] = grid / results["monai"]["windows_per_second"] / 60
    for name, entry in (results.get("forward") or {}).items():
        if isinstance(entry, dict) and "windows_per_second" in entry:
            projection[f"network_alone_{name}_minutes"] = grid / entry["windows_per_second"] / 60
    results["nisb_projection"] = projection
    log(json.dumps(projection, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1024,1024,512", help="inference volume X,Y,Z")
    parser.add_argument("--decode-shape", default="512,512,512")
    parser.add_argument("--arch", default="mednext-s", choices=["mednext-s", "tiny"])
    parser.add_argument("--cluster", default="dask-cuda")
    parser.add_argument("--steps", default="model,monai,infer,decode")
    parser.add_argument("--model-batches", default="1,4,8,16", help="batch sizes of the model-alone step")
    parser.add_argument("--model-variants", default="fp16,cudnn-benchmark,channels-last,bf16,compile",
                        help="settings tried by the variants step")
    parser.add_argument("--forward-variants", default=",".join(FORWARD_VARIANTS),
                        help="variants of the forward step (eager first: the others are compared with it)")
    parser.add_argument("--forward-batch", type=int, default=8)
    parser.add_argument("--train-seconds", type=int, default=420)
    parser.add_argument("--train-shape", default="256,256,256")
    parser.add_argument("--train-extra", default="", help="extra KEY=VALUE for nisbflow train")
    parser.add_argument("--infer-extra", default="", help="extra arguments for nisbflow infer, e.g. '--chunks 512,512,512'")
    parser.add_argument("--work", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch
    import zarr

    from nisbflow.model import ARCHITECTURES, save_random_checkpoint

    device = "cuda" if torch.cuda.is_available() else "cpu"
    steps = args.steps.split(",")
    shape = tuple(int(v) for v in args.shape.split(","))
    results: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
                     "arch": args.arch, "image_shape": list(shape)}
    log(json.dumps(results))
    work = Path(args.work or tempfile.mkdtemp(prefix="nisbflow-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    model_config = ARCHITECTURES[args.arch]
    checkpoint = str(work / "mednext.pt")
    save_random_checkpoint(checkpoint, model_config, seed=0)

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))

    try:
        if "model" in steps:
            step_model(model_config, device, results, tuple(int(b) for b in args.model_batches.split(",")),
                       repeats=6 if device == "cuda" else 1)
            save()
        if "forward" in steps:
            step_forward(model_config, device, results, args.forward_variants.split(","), batch=args.forward_batch,
                         repeats=6 if device == "cuda" else 1)
            save()
        if "variants" in steps:
            step_model_variants(model_config, device, results, args.model_variants.split(","))
            save()
        image = None
        if {"monai", "infer"} & set(steps):
            rng = np.random.default_rng(0)
            image = rng.integers(0, 256, shape, dtype=np.uint8)
            target = zarr.create_array(str(work / "img.zarr"), shape=shape + (1,), chunks=(128, 128, 128, 1),
                                       dtype="uint8", overwrite=True)
            target[..., 0] = image
        if "monai" in steps:
            step_monai(model_config, image, device, results)
            save()
        if device == "cuda":  # give the GPU back to the subprocesses below
            torch.cuda.empty_cache()
        if "infer" in steps:
            extras = [e.split() for e in args.infer_extra.split(";")] if args.infer_extra else [[]]
            with GpuSampler() as sampler:
                for extra in extras:
                    step_infer(str(work / "img.zarr"), checkpoint, work, args.cluster, results,
                               sampler if device == "cuda" else None, extra)
                    save()
        if "decode" in steps:
            step_decode(tuple(int(v) for v in args.decode_shape.split(",")), results)
            save()
        if "train" in steps:
            with GpuSampler() as sampler:
                step_train(work, args.train_seconds, tuple(int(v) for v in args.train_shape.split(",")), results,
                           sampler if device == "cuda" else None, args.train_extra.split())
            save()
    finally:
        project(results)
        save()
    log(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
