"""Block-wise sliding-window prediction as a Dask graph, and zarr-to-zarr inference with resume.

Every window of the global grid is predicted exactly once, whatever the block size (:mod:`nisbflow.infer.plan`):
by the task of the block holding its start, which reads the union of its windows (its footprint), runs them in
batches of ``sw_batch_size`` and sums them, weighted, over the footprint. Each output block (write region) then
blends the pieces of the tasks reaching it: values divided by the one task reaching a voxel, float32 sums added
where several do. Windows and weights are those of the whole volume, so the result equals
:func:`nisbflow.infer.predict.predict_whole` for any chunking (up to float16 rounding).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from nisbflow.blocks import BlockGrid
from nisbflow.region import Region
from nisbflow.staging import store_block
from nisbflow.data.chunks import open_for_writing
from nisbflow.infer.geometry import blending_weight, window_grid
from nisbflow.infer.plan import FINAL, BlockSources, Unit, WindowPlan, largest_footprint, plan_windows
from nisbflow.infer.predict import (Augmentation, check_image, pad_to_window, predict_crops,
                                    predict_whole)
from nisbflow.tasks import Counter, compute_tasks
from nisbflow.worker_setup import release_compile_workers

DEFAULT_BLOCK = (768, 768, 768)
"""Default write-region size: sums over an 832³ footprint per task (16 GB for 6 channels), 32 blocks on NISB's
3000×3000×1350 test cube; every grid window runs once whatever the block (docs/inference.md)."""


class PredictedPiece(NamedTuple):
    """What a prediction task hands a block for one :class:`~nisbflow.infer.plan.Piece` of the plan: the plan's
    ``box`` (:data:`~nisbflow.infer.plan.FINAL` or a shared box's number) and ``region``, and the values there:
    for the final box the divided affinities ``(C, x, y, z)`` in the output dtype and ``weights`` None; for a shared
    box Σ p·w ``(C, x, y, z)`` and Σ w ``(x, y, z)``, float32."""

    box: int
    region: Region
    values: np.ndarray
    weights: np.ndarray | None


@dataclass(frozen=True)
class WindowSettings:
    window: tuple[int, int, int] = (128, 128, 128)
    stride: tuple[int, int, int] = (64, 64, 64)
    sw_batch_size: int = 8
    activation: str = "scale_sigmoid"
    channels: tuple[int, ...] | None = None
    output_dtype: str = "float16"
    compile: bool | str = False
    augmentation: Augmentation | None = None

    @classmethod
    def from_config(cls, inference, channels=None, offsets=None) -> WindowSettings:
        """From an ``inference`` configuration section: stride = window × (1 − overlap), channels
        ``inference.select_channel`` unless ``channels`` is given; with ``test_time_augmentation.enabled``, its views
        and ensemble modes, and ``offsets``: the network's affinity offsets (X, Y, Z), which it then needs."""
        window = tuple(int(w) for w in inference.window_size)
        stride = tuple(max(1, int(round(w * (1 - inference.overlap)))) for w in window)
        channels = tuple(int(c) for c in (inference.select_channel if channels is None else channels))
        tta = inference.test_time_augmentation
        augmentation = None
        if tta.enabled:
            from nisbflow.infer.tta import ensemble_modes, views

            if offsets is None:  # re-anchoring needs the network's own offsets: no default could be right
                raise ValueError("test-time augmentation needs the network's affinity offsets (offsets=…)")
            augmentation = Augmentation(tuple(views(tta.flip_axes, tta.rotation90_axes, tta.rotate90_k)),
                                        tuple(ensemble_modes(tta.ensemble_mode, len(channels))),
                                        tuple(tuple(int(v) for v in o) for o in offsets))
        return cls(window, stride, inference.sw_batch_size, inference.activation, channels,
                   inference.output_dtype, inference.compile, augmentation)

    def record(self) -> dict:
        """JSON-ready, for output attributes (and the identities resume and tuning key on: the augmentation's views
        and modes only when it is on, so records without it stay as they were)."""
        record = {"window": list(self.window), "stride": list(self.stride), "sw_batch_size": self.sw_batch_size,
                  "activation": self.activation, "channels": None if self.channels is None else list(self.channels),
                  "output_dtype": self.output_dtype, "compile": self.compile}
        if self.augmentation is not None:
            record["test_time_augmentation"] = self.augmentation.record()
        return record

    @property
    def views(self) -> int:
        """Predictions per window: 1, or the augmentation's views."""
        return 1 if self.augmentation is None else len(self.augmentation.views)

    def compiled_on(self, device: str) -> bool:
        """Whether the network runs through ``torch.compile`` on ``device`` (``auto``: on CUDA only; a mode name:
        always)."""
        return device.startswith("cuda") if self.compile == "auto" else bool(self.compile)

    def compile_mode(self, device: str) -> str | bool:
        """What :meth:`~nisbflow.model.Checkpoint.network` compiles with on ``device``: False (eager), True
        (``torch.compile``'s default mode) or a mode name (``reduce-overhead``, ``max-autotune``, …)."""
        if not self.compiled_on(device):
            return False
        return self.compile if isinstance(self.compile, str) and self.compile != "auto" else True


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def predict_windows(piece: np.ndarray, model, read_start, unit: Unit, settings: WindowSettings,
                    device: str | None = None, topic: str | None = None) -> dict[tuple, list[PredictedPiece]]:
    """Task (``infer-predict-windows``): one :class:`~nisbflow.infer.plan.Unit`'s windows, on the model's device.

    ``piece``: the (padded-frame) input of the unit's footprint starting at ``read_start``, uint8 ``(x, y, z)``;
    ``model``: a torch module or a :class:`~nisbflow.model.Checkpoint` (:meth:`~nisbflow.model.Checkpoint.network`:
    loaded once per process, its sha256 checked against the client's). The footprint goes to the device once; the
    unit's batches run there (float16 autocast on CUDA), weighted and summed in float32 over the footprint, each
    batch counted to ``topic`` (:func:`nisbflow.tasks.count_done`). Returns, per target block index, its
    :class:`PredictedPiece` list."""
    import torch

    from nisbflow.tasks import count_done

    device = device or default_device()
    total, weights = _weighted_sum(piece, model, read_start, unit.footprint, unit.windows, settings, device,
                                   report=lambda n: count_done(topic, n))
    pieces: dict[tuple, list[PredictedPiece]] = {}
    for part in unit.pieces:
        local = part.region.local(unit.footprint)
        sums, weight = total[(slice(None),) + local], weights[local]
        if part.box == FINAL:
            entry = PredictedPiece(part.box, part.region,
                                   (sums / weight).to(getattr(torch, settings.output_dtype)).cpu().numpy(), None)
        else:  # copies, so the footprint's sums are freed when the task ends
            entry = PredictedPiece(part.box, part.region, sums.to("cpu", copy=True).numpy(),
                                   weight.to("cpu", copy=True).numpy())
        pieces.setdefault(part.target, []).append(entry)
    return pieces


def _pieces_for(result: dict, target) -> list:
    """Task (``infer-pieces``): the pieces of one unit's result for block ``target``, so only those travel."""
    return result[tuple(target)]


def blend_block(sources: list, block: BlockSources, settings: WindowSettings) -> np.ndarray:
    """Task (``infer-blend``): one block's affinities ``(C, x, y, z)`` in ``settings.output_dtype`` from the pieces
    of the units reaching it (:func:`predict_windows`, in the order of ``block.units``): the exclusive box's values
    as they are, each shared box's float32 sums added and divided."""
    write = block.write
    pieces = [piece for unit_pieces in sources for piece in unit_pieces]
    if block.exclusive == write:  # one unit reaches the whole block
        return pieces[0].values
    n_channels = pieces[0].values.shape[0]
    values = np.empty((n_channels,) + write.shape, dtype=settings.output_dtype)
    for box, region, part, _ in pieces:
        if box == FINAL:
            values[(slice(None),) + region.local(write)] = part
    for number, box in enumerate(block.shared):
        total = np.zeros((n_channels,) + box.shape, dtype=np.float32)
        weights = np.zeros(box.shape, dtype=np.float32)
        for piece_box, region, sums, weight in pieces:
            if piece_box == number:
                total[(slice(None),) + region.local(box)] += sums
                weights[region.local(box)] += weight
        total /= weights
        values[(slice(None),) + box.local(write)] = total
    return values


def _weighted_sum(piece, model, read_start, region, windows, settings: WindowSettings, device: str, report=None):
    """Σ prediction × blending weight of ``windows`` over ``region`` (slices, padded frame) and Σ blending weight:
    float32 torch tensors ``(C, x, y, z)`` and ``(x, y, z)`` on ``device``. Windows run in batches of
    ``sw_batch_size``; the weights are summed on the device beside the predictions, so no host work waits on the
    block's last batch. ``report(n)`` is called after each batch of ``n`` windows."""
    import torch

    compiled = settings.compiled_on(device)
    if _is_checkpoint(model):  # loaded once per process, its sha256 checked against the client's
        model = model.network(device, settings.compile_mode(device))
    else:
        model = model.to(device).eval()
    image = torch.from_numpy(np.ascontiguousarray(piece)).to(device)
    weight = torch.from_numpy(blending_weight(settings.window)).to(device)
    shape = Region(region).shape
    total, weights = None, torch.zeros(shape, dtype=torch.float32, device=device)
    for i in range(0, len(windows), settings.sw_batch_size):
        batch = windows[i:i + settings.sw_batch_size]
        crops = torch.stack([image[tuple(slice(s - r, s - r + w) for s, r, w in zip(start, read_start,
                                                                                    settings.window))]
                             for start in batch])
        if compiled and len(batch) < settings.sw_batch_size:  # one batch shape: no recompilation for the last
            crops = torch.cat([crops, crops[-1:].expand(settings.sw_batch_size - len(batch), *crops.shape[1:])])
        predictions = predict_crops(model, crops, settings.activation, settings.channels,
                                    settings.augmentation)[:len(batch)]
        if total is None:
            total = torch.zeros((predictions.shape[1],) + shape, dtype=torch.float32, device=device)
        for start, prediction in zip(batch, predictions):
            # the part of this window inside the region, in window and in region coordinates
            inside = [(max(s, r.start), min(s + w, r.stop)) for s, r, w in zip(start, region, settings.window)]
            local = tuple(slice(a - s, b - s) for (a, b), s in zip(inside, start))
            target = tuple(slice(a - r.start, b - r.start) for (a, b), r in zip(inside, region))
            total[(slice(None),) + target] += prediction[(slice(None),) + local] * weight[local]
            weights[target] += weight[local]
        if report is not None:
            report(len(batch) * settings.views)
    return total, weights


def warm_up(model, settings: WindowSettings, device: str | None = None) -> float:
    """Task (``infer-warm-up``): load the model on this worker (:meth:`~nisbflow.model.Checkpoint.network`) and run
    one batch of ``sw_batch_size`` empty windows through :func:`_weighted_sum`, so ``torch.compile``'s compilation
    (59 s for MedNeXt-S on an H200) and cuDNN's set-up are done before the first block. Returns the seconds it
    took."""
    import torch

    device = device or default_device()
    start = time.perf_counter()
    window = settings.window
    _weighted_sum(np.zeros(window, dtype=np.uint8), model, (0, 0, 0), tuple(slice(0, w) for w in window),
                  [(0, 0, 0)], settings, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    release_compile_workers()
    return time.perf_counter() - start


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def runs_on_cpu(device: str | None) -> bool:
    """Whether prediction tasks will run on a CPU: ``device`` when given, else whether no worker of the current
    client (or, without one, this process) sees a GPU."""
    if device is not None:
        return not device.startswith("cuda")
    from nisbflow.tasks import current_client

    client = current_client()
    if client is None:
        return not _cuda_available()
    answers = client.run(_cuda_available, on_error="return")
    for address, answer in answers.items():
        if isinstance(answer, BaseException):
            from nisbflow.tasks import WorkerDiedError, worker_memory_limit

            raise WorkerDiedError(f"Dask worker {address} failed while importing torch to look for a GPU "
                                  f"({type(answer).__name__}: {answer}); with {worker_memory_limit(client, address)} "
                                  "this is usually its memory: torch alone needs about 0.45 GiB per worker before "
                                  "any block, so give workers more memory (--memory-limit, system.memory_limit)")
    return not any(answers.values())


def fit_to_memory(settings: WindowSettings, model_config, block_shape, n_channels: int, device: str | None,
                  log, threads: int | None = None) -> WindowSettings:
    """On a CPU: ``settings`` with the largest ``sw_batch_size`` (at most the configured one) whose task (its sums
    over ``block_shape``, a unit's footprint) fits the
    workers' memory (:mod:`nisbflow.infer.memory`), saying so through ``log`` when it is lowered; refused with the
    numbers when one window does not fit. On a GPU: ``settings`` as they are."""
    if not runs_on_cpu(device):
        return settings
    from dataclasses import replace

    from dask.utils import format_bytes

    from nisbflow.infer.memory import fit_batch
    from nisbflow.tasks import current_client, memory_per_task

    limit, where = memory_per_task(current_client(), threads)
    estimate = fit_batch(model_config, settings.window, block_shape, n_channels, settings.sw_batch_size, limit, where)
    if estimate.batch == settings.sw_batch_size:
        log(f"inference: about {format_bytes(estimate.total)} per prediction task on the CPU (network "
            f"{format_bytes(estimate.network)} for {estimate.batch} window(s) at once, weighted sums "
            f"{format_bytes(estimate.block_sums)} over a {'×'.join(map(str, block_shape))} footprint); {where} has "
            f"{format_bytes(limit)} per task")
        return settings
    log(f"inference.sw_batch_size {settings.sw_batch_size} → {estimate.batch} on the CPU, so a task fits {where}'s "
        f"{format_bytes(limit)}: about {format_bytes(estimate.total)} (network {format_bytes(estimate.network)} for "
        f"{estimate.batch} window(s), weighted sums {format_bytes(estimate.block_sums)} over a "
        f"{'×'.join(map(str, block_shape))} footprint)")
    return replace(settings, sw_batch_size=estimate.batch)


def warm_up_workers(model, settings: WindowSettings, device: str | None, log=None) -> float | None:
    """Run :func:`warm_up` once on every worker of the current Dask client when the network is compiled
    (``inference.compile``), so compilation is neither inside a block's task nor in the measured throughput.
    Returns the slowest worker's seconds, or None when nothing was compiled or there is no client."""
    from nisbflow.tasks import current_client

    client = current_client()
    if client is None or not settings.compiled_on(device or ""):
        return None
    workers = list(client.scheduler_info().get("workers", {}))
    if log is not None:
        log(f"compiling the network (inference.compile) on {len(workers)} worker(s)")
    futures = [client.submit(warm_up, model, settings, device, workers=[address], allow_other_workers=False,
                             pure=False, key=f"infer-warm-up-{i}-{dask.base.tokenize(model, settings)}",
                             **_gpu_annotations(device))
               for i, address in enumerate(workers)]
    return max(client.gather(futures))


def _spatial(image):
    return image[..., 0] if image.ndim == 4 else image


def _pad_piece(piece, read, window) -> np.ndarray:
    """A read region's input from the part of it inside the volume: reflect-padded where an axis is shorter than
    the window (such an axis is then read whole, and the read region is the window)."""
    piece = np.asarray(piece)
    if piece.shape != Region(read).shape:
        piece = pad_to_window(piece, window)
    return piece


def _gpu_annotations(device: str | None) -> dict:
    """Dask annotations for prediction tasks: a ``GPU`` resource on CUDA, so a GPU runs one block at a time."""
    return {"resources": {"GPU": 1}} if (device or "").startswith("cuda") else {}


def prediction_graph(image, grid: BlockGrid, plan: WindowPlan, settings: WindowSettings, model, device,
                     token: str, topic: str | None = None) -> dict:
    """Per pending block index of ``plan``: a delayed ``(C, x, y, z)`` array of its affinities.

    Per unit: a task reading its footprint's input (``infer-read``) and one predicting its windows
    (``infer-predict-windows``, the only task asking for the ``GPU`` resource on CUDA, so the next unit's input is
    read while the GPU predicts); per block a task taking the pieces of the units that reach it (``infer-pieces``,
    run where the unit's result is, so only those pieces travel) and blending them (``infer-blend``)."""
    results = {}
    for key, unit in plan.units.items():
        piece = _read_task(image, unit.footprint, settings, (f"infer-read-{token}",) + key)
        with dask.annotate(**_gpu_annotations(device)):
            results[key] = dask.delayed(predict_windows, pure=True)(
                piece, model, tuple(r.start for r in unit.footprint), unit, settings, device, topic,
                dask_key_name=(f"infer-predict-windows-{token}",) + key)
    blocks = {}
    for index, sources in plan.blocks.items():
        parts = [dask.delayed(_pieces_for, pure=True)(results[key], index,
                                                     dask_key_name=(f"infer-pieces-{token}",) + key + index)
                 for key in sources.units]
        blocks[index] = dask.delayed(blend_block, pure=True)(parts, sources, settings,
                                                           dask_key_name=(f"infer-blend-{token}",) + index)
    return blocks


def _read_task(image, read, settings: WindowSettings, key):
    """Task reading the input of a read region (padded frame) from ``image``'s chunks."""
    inside = tuple(slice(r.start, min(r.stop, s)) for r, s in zip(read, image.shape))
    # slice the dask array first, so the task depends on the chunks of its read region only
    return dask.delayed(_pad_piece, pure=True)(image[inside], read, settings.window, dask_key_name=key)


def predict_affinities(image, model, settings: WindowSettings = WindowSettings(), *, block=DEFAULT_BLOCK,
                       split: int = 1, device: str | None = None, progress: bool = False):
    """Affinities ``(C, X, Y, Z)`` of an image ``(X, Y, Z)`` or ``(X, Y, Z, 1)`` uint8.

    A numpy image gives the whole-volume reference (numpy); a dask image gives a lazy dask array chunked by
    ``block`` whose blocks are computed as described in the module docstring (``infer-predict-windows`` tasks, with a
    ``GPU`` resource annotation when ``device`` is CUDA, and ``infer-blend`` tasks). ``model``: a torch module, or a
    :class:`~nisbflow.model.Checkpoint`.
    ``split``: tasks per block, each predicting a share of its windows (:mod:`nisbflow.infer.plan`).
    """
    check_image(image)
    if device is None and isinstance(image, da.Array):
        from nisbflow.cluster import cluster_device

        device = cluster_device()
    if not isinstance(image, da.Array):
        if _is_checkpoint(model):
            model = model.network(device or default_device())
        return predict_whole(image, model, window=settings.window, stride=settings.stride,
                             sw_batch_size=settings.sw_batch_size, activation=settings.activation,
                             channels=settings.channels, output_dtype=settings.output_dtype,
                             device=device or default_device(), augmentation=settings.augmentation)
    spatial = _spatial(image)
    grid = BlockGrid.regular(spatial.shape, block)
    plan = plan_windows(grid, settings.window, settings.stride, settings.sw_batch_size, split)
    n_channels = len(settings.channels) if settings.channels is not None else _out_channels(model)
    token = dask.base.tokenize(spatial.name, settings, block, split,
                               (model.path, model.sha256, model.weights) if _is_checkpoint(model) else id(model))
    shared_model = model if _is_checkpoint(model) else dask.delayed(model, name=f"infer-model-{token}")
    blocks = np.empty(grid.blocks_per_axis, dtype=object)
    for index, task in prediction_graph(spatial, grid, plan, settings, shared_model, device, token).items():
        write = plan.blocks[index].write
        blocks[index] = da.from_delayed(task, shape=(n_channels,) + write.shape,
                                        dtype=settings.output_dtype)
    return da.block([blocks.tolist()])  # the outer list is the channel axis


def check_channels(settings: WindowSettings, out_channels: int, where: str) -> None:
    """Raise :class:`~nisbflow.errors.ConfigError` unless every selected channel is one the model outputs."""
    from nisbflow.errors import ConfigError

    if settings.channels is not None and (not settings.channels or
                                          any(c < 0 or c >= out_channels for c in settings.channels)):
        raise ConfigError(f"inference.select_channel / --channels {list(settings.channels)}: {where} outputs "
                          f"{out_channels} channels (0 to {out_channels - 1})")


def _is_checkpoint(model) -> bool:
    """Whether ``model`` is a :class:`~nisbflow.model.Checkpoint` handle rather than a torch module (imported here:
    torch loads only where a network runs)."""
    from nisbflow.model.checkpoint import Checkpoint

    return isinstance(model, Checkpoint)


def _out_channels(model) -> int:
    if _is_checkpoint(model):
        return model.model.out_channels
    if hasattr(model, "out_0"):  # MONAI MedNeXt's output block
        return int(model.out_0.conv_out.out_channels)
    raise ValueError("cannot tell the model's output channels; pass WindowSettings(channels=...)")


# ----------------------------------------------------------------------------------------------------------------
# zarr to zarr, resumable


@dataclass
class InferSummary:
    output: str
    shape: tuple
    seconds: float
    voxels: int
    windows_computed: int
    windows_in_grid: int
    blocks: int
    blocks_skipped: int
    warm_up_seconds: float | None = None
    """``torch.compile``'s warm-up on the workers before the blocks (not in ``seconds``), when compiled."""
    windows_needed: int | None = None
    """Grid windows reaching the blocks this run wrote (the whole grid unless it resumed); None: the grid."""

    @property
    def redundancy(self) -> float:
        """Windows computed per window the blocks written needed (1.0: none twice; after a resume, the blocks left)."""
        needed = self.windows_in_grid if self.windows_needed is None else self.windows_needed
        return self.windows_computed / needed if needed else 1.0

    def windows_line(self) -> str:
        """``1575 windows for a grid of 1575 (redundancy 1.00)``, or after a resume ``… for the 420 grid windows the
        3 remaining blocks need (redundancy 1.00)``."""
        if self.blocks_skipped == 0 or self.windows_needed is None:
            return (f"{self.windows_computed} windows for a grid of {self.windows_in_grid} "
                    f"(redundancy {self.redundancy:.2f})")
        left = self.blocks - self.blocks_skipped
        return (f"{self.windows_computed} windows for the {self.windows_needed} grid windows (of "
                f"{self.windows_in_grid}) the {left} remaining block{'s' if left != 1 else ''} need "
                f"(redundancy {self.redundancy:.2f})")

    @property
    def voxels_per_second(self) -> float:
        return self.voxels / self.seconds if self.seconds > 0 else float("inf")


def output_chunks(block, shape) -> tuple[int, ...]:
    """Zarr chunks of the output: 128 voxels where the block is a multiple of 128 (what decoding reads), else the
    block itself; a block always covers whole chunks, so blocks never write the same chunk."""
    return tuple(min(128 if b % 128 == 0 else b, s) for b, s in zip(block, shape))


def _store_block(values: np.ndarray, target: str, write_region, marker: str, run_id: str, n_windows: int) -> int:
    """Task (``infer-store-block``): write one predicted block into the staged output, then its marker
    (:func:`nisbflow.staging.store_block`). A separate task from the prediction, so a GPU worker predicts the next
    block while this one is compressed and written. Returns the block's window count."""
    store_block(values, target, (slice(None),) + tuple(write_region), marker, run_id)
    return n_windows


AFFINITY_DESCRIPTION = ("affinities: sigmoid(0.2 logit) blended over BANIS windows; channel c is the edge "
                        "v → v + offset_c (source-voxel storage)")


def affinity_attrs(run, settings: WindowSettings, source, description: str = AFFINITY_DESCRIPTION, **extra) -> dict:
    """What an affinities array records: provenance (:func:`~nisbflow.data.volumes.output_attrs`), the checkpoint's
    name and hash, each channel's offset, and ``nisbflow_settings`` (the run's settings with the window geometry
    that actually ran), which ``decode`` reads its threshold back from."""
    from nisbflow.data.formats import staged_source
    from nisbflow.data.volumes import output_attrs, voxel_size_of

    handle = run.checkpoint
    offsets = list(handle.model.affinity_offsets)
    return output_attrs(description, voxel_size_of(source), "cxyz", run.config, nisbflow_output="affinities",
                        checkpoint=handle.name,
                        checkpoint_sha256=handle.sha256, checkpoint_weights=handle.weights,
                        offsets=offsets if settings.channels is None else [offsets[c] for c in settings.channels],
                        nisbflow_settings=dict(run.record(), inference=settings.record()),
                        **staged_source(source.attrs), **extra)


def infer_to_zarr(image_path: str | Path, output: str | Path, run, *, window: WindowSettings | None = None,
                  block=DEFAULT_BLOCK, split: int = 1,
                  overwrite: bool = False, force: bool = False, progress: bool = True, device: str | None = None,
                  log=None, layout: str = "ngff") -> InferSummary:
    """Predict affinities of a zarr image into a zarr array ``(C, X, Y, Z)``, block by block, resumably.

    ``run``: the run's :class:`~nisbflow.settings.RunSettings` (its checkpoint handle included), or a checkpoint (a
    path, a shipped model's name or a :class:`~nisbflow.model.Checkpoint`) to run with the settings it records
    (:func:`nisbflow.settings.resolve_settings`), so a checkpoint runs with the window geometry, channels and
    threshold it records wherever it is called from. ``window`` overrides the window settings (geometry, batch,
    channels, dtype) for experiments. Tasks receive the checkpoint handle and load it once per worker process,
    checking its sha256 against the client's (:meth:`~nisbflow.model.Checkpoint.network`). The output's attributes
    record the settings (``nisbflow_settings``, with the
    checkpoint's hash and the decoding threshold that ``decode`` reads back).

    The output is a :class:`~nisbflow.staging.StagedRun`: written in a staging folder next to ``output`` under a lock,
    each finished block leaving a marker, published when every block is done. A re-run after an interruption
    skips finished blocks when the image (content fingerprint), checkpoint, settings and block size are those of
    the interrupted run, and starts fresh (saying why, through ``log``) otherwise. ``overwrite`` replaces an
    affinities output nisbflow wrote; ``force`` anything else; an output overlapping the image is always refused.

    ``split``: tasks per block, each predicting a share of the block's windows, their weighted sums added (no window
    runs twice): with few large blocks it keeps every worker busy at redundancy 1 (``nisbflow infer --split``).
    ``layout``: ``ngff`` (an OME-NGFF image group) or ``plain`` (the array at ``output``, as BANIS's tools read it).
    """
    from nisbflow.errors import ConfigError

    if int(split) < 1:
        raise ConfigError(f"--split {split}: the number of tasks per block must be at least 1")

    from nisbflow.staging import StagedRun, default_log
    from nisbflow.cluster import cluster_device
    from nisbflow.data.ngff import create_image
    from nisbflow.data.volumes import fast_compressors, open_image
    from nisbflow.settings import run_settings_of

    run = run_settings_of(run)
    handle = run.checkpoint
    window_settings = window or WindowSettings.from_config(run.config.inference,
                                                           offsets=run.checkpoint.model.offsets())
    check_channels(window_settings, handle.model.out_channels, f"checkpoint {handle.name}")
    source = open_image(image_path)  # uint8, (X, Y, Z) or (X, Y, Z, 1)
    device = device or cluster_device()
    image = _spatial(da.from_zarr(source))
    grid = BlockGrid.regular(image.shape, block)
    n_channels = handle.model.out_channels if window_settings.channels is None else len(window_settings.channels)
    footprint = largest_footprint(grid, window_settings.window, window_settings.stride)
    window_settings = fit_to_memory(window_settings, handle.model, footprint, n_channels, device, log or default_log)
    identity = dict(**handle.identity(), settings=window_settings.record(), block=list(grid.block_shape))
    with StagedRun(output, kind="affinities", inputs={"image": image_path}, identity=identity, overwrite=overwrite,
                   force=force, log=log or default_log, checkpoint=handle, layout=layout) as staged:
        zarr_format = source.metadata.zarr_format
        work = staged.pending(
            "predict", grid, owner=staged.image, arrays=(staged.image,),
            region=lambda index: (slice(None),) + grid.write_region(index),
            create=lambda: create_image(
                staged.data, attributes=affinity_attrs(run, window_settings, source, nisbflow_run=staged.run_id),
                zarr_format=zarr_format, name="affinities", layout=layout, shape=(n_channels,) + grid.shape,
                chunks=(n_channels,) + output_chunks(grid.block_shape, grid.shape),
                dtype=window_settings.output_dtype, compressors=fast_compressors(zarr_format)))
        plan = plan_windows(grid, window_settings.window, window_settings.stride, window_settings.sw_batch_size,
                            split, pending=work.pending)
        token = dask.base.tokenize(staged.run_id, window_settings, grid, split, sorted(work.pending))
        topic = f"nisbflow-infer-windows-{token}"
        predicted = prediction_graph(image, grid, plan, window_settings, handle, device, token, topic)
        tasks, voxels = [], 0
        for index in work.pending:
            write = grid.write_region(index)
            voxels += write.size
            tasks.append(dask.delayed(_store_block, pure=True)(
                predicted[index], staged.image, write, staged.marker("predict", grid.key(index)), staged.run_id,
                plan.counted(index), dask_key_name=(f"infer-store-block-{token}",) + index))
        warm = warm_up_workers(handle, window_settings, device, log=log or default_log) if tasks else None
        start = time.perf_counter()
        views = window_settings.views  # each window predicted once per view
        counter = Counter(topic, "infer: windows" + (f" × {views} views" if views > 1 else ""),
                          plan.windows_run * views, "predictions" if views > 1 else "windows")
        computed = sum(compute_tasks(tasks, "infer: predict blocks", progress=progress, counter=counter)) \
            if tasks else 0
        seconds = time.perf_counter() - start
    return InferSummary(str(output), grid.shape, seconds, voxels, computed, plan.windows_in_grid, grid.n_blocks,
                        grid.n_blocks - len(tasks), warm, plan.windows_needed)


def infer_whole_to_zarr(image_path: str | Path, output: str | Path, run, *, overwrite: bool = False,
                        force: bool = False, device: str | None = None,
                        log=None, layout: str = "ngff") -> InferSummary:
    """The single-process reference of :func:`infer_to_zarr`: load the whole image, predict it in one process
    (:func:`~nisbflow.infer.predict.predict_whole`) and write ``(C, X, Y, Z)`` affinities with the same settings and
    attributes. For checking block-wise results on volumes that fit in memory. ``run``: as for
    :func:`infer_to_zarr`."""
    from nisbflow.staging import StagedRun, default_log
    from nisbflow.data.ngff import create_image
    from nisbflow.data.volumes import fast_compressors, open_image
    from nisbflow.settings import run_settings_of

    run = run_settings_of(run)
    handle = run.checkpoint
    window_settings = WindowSettings.from_config(run.config.inference, offsets=run.checkpoint.model.offsets())
    check_channels(window_settings, handle.model.out_channels, f"checkpoint {handle.name}")
    source = open_image(image_path)  # uint8, (X, Y, Z) or (X, Y, Z, 1)
    n_channels = handle.model.out_channels if window_settings.channels is None else len(window_settings.channels)
    window_settings = fit_to_memory(window_settings, handle.model, source.shape[:3], n_channels,
                                    device or default_device(), log or default_log, threads=1)
    identity = dict(**handle.identity(), settings=window_settings.record(), whole=True)
    with StagedRun(output, kind="affinities", inputs={"image": image_path}, identity=identity,
                   overwrite=overwrite, force=force, log=log or default_log, layout=layout) as staged:
        model = handle.network(device or default_device())
        start = time.perf_counter()
        values = predict_whole(source[...], model, window=window_settings.window, stride=window_settings.stride,
                               sw_batch_size=window_settings.sw_batch_size, activation=window_settings.activation,
                               channels=window_settings.channels, output_dtype=window_settings.output_dtype,
                               device=device or default_device(), augmentation=window_settings.augmentation)
        seconds = time.perf_counter() - start
        fmt = source.metadata.zarr_format
        level = create_image(staged.data, attributes=affinity_attrs(run, window_settings, source,
                                                                    AFFINITY_DESCRIPTION + " (whole-volume reference)"),
                             zarr_format=fmt, name="affinities", layout=layout, shape=values.shape,
                             chunks=(values.shape[0], 128, 128, 128), dtype=values.dtype,
                             compressors=fast_compressors(fmt))
        open_for_writing(level)[...] = values
    grid = window_grid(values.shape[1:], window_settings.window, window_settings.stride)
    n_windows = int(np.prod([len(g) for g in grid]))
    return InferSummary(str(output), tuple(values.shape[1:]), seconds, int(values[0].size), n_windows, n_windows,
                        1, 0)
