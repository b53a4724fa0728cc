"""Block-wise sliding-window prediction as a Dask graph, and zarr-to-zarr inference with resume (the driver; the
prediction kernel is :mod:`nisbflow.infer.windows`, devices and memory :mod:`nisbflow.infer.device`).

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
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from nisbflow.blocks import BlockGrid
from nisbflow.region import Region
from nisbflow.staging import BlockwisePass, store_block
from nisbflow.data.chunks import open_for_writing
from nisbflow.infer.geometry import window_grid
from nisbflow.infer.plan import WindowPlan, largest_footprint, plan_windows
from nisbflow.infer.device import fit_to_memory, gpu_annotations, warm_up_workers
from nisbflow.infer.predict import check_image, pad_to_window, predict_whole
from nisbflow.infer.windows import (
    WindowSettings,
    blend_block,
    check_channels,
    default_device,
    is_checkpoint,
    out_channels_of,
    predict_windows,
)
from nisbflow.tasks import Counter, compute_tasks

DEFAULT_BLOCK = (768, 768, 768)
"""Default write-region size: sums over an 832³ footprint per task (16 GB for 6 channels), 32 blocks on NISB's
3000×3000×1350 test cube; every grid window runs once whatever the block (docs/inference.md)."""


def _spatial(image):
    return image[..., 0] if image.ndim == 4 else image


def _pad_piece(piece, read, window) -> np.ndarray:
    """A read region's input from the part of it inside the volume: reflect-padded where an axis is shorter than
    the window (such an axis is then read whole, and the read region is the window)."""
    piece = np.asarray(piece)
    if piece.shape != Region(read).shape:
        piece = pad_to_window(piece, window)
    return piece


def _pieces_for(result: dict, target) -> list:
    """Task (``infer-pieces``): the pieces of one unit's result for block ``target``, so only those travel."""
    return result[tuple(target)]


def prediction_graph(
    image,
    grid: BlockGrid,
    plan: WindowPlan,
    settings: WindowSettings,
    model,
    device,
    token: str,
    topic: str | None = None,
) -> dict:
    """Per pending block index of ``plan``: a delayed ``(C, x, y, z)`` array of its affinities.

    Per unit: a task reading its footprint's input (``infer-read``) and one predicting its windows
    (``infer-predict-windows``, the only task asking for the ``GPU`` resource on CUDA, so the next unit's input is
    read while the GPU predicts); per block a task taking the pieces of the units that reach it (``infer-pieces``,
    run where the unit's result is, so only those pieces travel) and blending them (``infer-blend``)."""
    results = {}
    for key, unit in plan.units.items():
        piece = _read_task(image, unit.footprint, settings, (f"infer-read-{token}",) + key)
        with dask.annotate(**gpu_annotations(device)):
            results[key] = dask.delayed(predict_windows, pure=True)(
                piece,
                model,
                tuple(r.start for r in unit.footprint),
                unit,
                settings,
                device,
                topic,
                dask_key_name=(f"infer-predict-windows-{token}",) + key,
            )
    blocks = {}
    for index, sources in plan.blocks.items():
        parts = [
            dask.delayed(_pieces_for, pure=True)(
                results[key], index, dask_key_name=(f"infer-pieces-{token}",) + key + index
            )
            for key in sources.units
        ]
        blocks[index] = dask.delayed(blend_block, pure=True)(
            parts, sources, settings, dask_key_name=(f"infer-blend-{token}",) + index
        )
    return blocks


def _read_task(image, read, settings: WindowSettings, key):
    """Task reading the input of a read region (padded frame) from ``image``'s chunks."""
    inside = tuple(slice(r.start, min(r.stop, s)) for r, s in zip(read, image.shape))
    # slice the dask array first, so the task depends on the chunks of its read region only
    return dask.delayed(_pad_piece, pure=True)(image[inside], read, settings.window, dask_key_name=key)


def predict_affinities(
    image,
    model,
    settings: WindowSettings | None = None,
    *,
    block=DEFAULT_BLOCK,
    split: int = 1,
    device: str | None = None,
    progress: bool = False,
) -> da.Array:
    """Affinities ``(C, X, Y, Z)`` of an image ``(X, Y, Z)`` or ``(X, Y, Z, 1)`` uint8, as a lazy dask array chunked
    by ``block`` whose blocks are computed as the module docstring describes (``infer-predict-windows`` tasks, with
    a ``GPU`` resource annotation when ``device`` is CUDA, and ``infer-blend`` tasks). A numpy image is read as a
    dask array of ``block`` chunks; :func:`predict_affinities_whole` is the single-process reference. ``model``: a
    torch module, or a :class:`~nisbflow.model.Checkpoint`. ``split``: tasks per block, each predicting a share of
    its windows (:mod:`nisbflow.infer.plan`).
    """
    settings = settings or WindowSettings()
    check_image(image)
    if not isinstance(image, da.Array):
        image = da.from_array(np.asarray(image), chunks=tuple(block) + tuple(image.shape[3:]))
    if device is None:
        from nisbflow.cluster import cluster_device

        device = cluster_device()
    spatial = _spatial(image)
    grid = BlockGrid.regular(spatial.shape, block)
    plan = plan_windows(grid, settings.window, settings.stride, settings.sw_batch_size, split)
    n_channels = len(settings.channels) if settings.channels is not None else out_channels_of(model)
    token = dask.base.tokenize(
        spatial.name,
        settings,
        block,
        split,
        (model.path, model.sha256, model.weights) if is_checkpoint(model) else id(model),
    )
    shared_model = model if is_checkpoint(model) else dask.delayed(model, name=f"infer-model-{token}")
    blocks = np.empty(grid.blocks_per_axis, dtype=object)
    for index, task in prediction_graph(spatial, grid, plan, settings, shared_model, device, token).items():
        write = plan.blocks[index].write
        blocks[index] = da.from_delayed(task, shape=(n_channels,) + write.shape, dtype=settings.output_dtype)
    return da.block([blocks.tolist()])  # the outer list is the channel axis


def predict_affinities_whole(
    image: np.ndarray, model, settings: WindowSettings | None = None, *, device: str | None = None
) -> np.ndarray:
    """The whole-volume reference: affinities ``(C, X, Y, Z)`` in ``settings.output_dtype`` of an image ``(X, Y, Z)``
    or ``(X, Y, Z, 1)`` uint8 held in memory, in one process (:func:`nisbflow.infer.predict.predict_whole`);
    :func:`predict_affinities` equals it for any block."""
    settings = settings or WindowSettings()
    check_image(image)
    device = device or default_device()
    if is_checkpoint(model):
        model = model.network(device)
    return predict_whole(
        np.asarray(image),
        model,
        window=settings.window,
        stride=settings.stride,
        sw_batch_size=settings.sw_batch_size,
        activation=settings.activation,
        channels=settings.channels,
        output_dtype=settings.output_dtype,
        device=device,
        augmentation=settings.augmentation,
    )


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
            return (
                f"{self.windows_computed} windows for a grid of {self.windows_in_grid} "
                f"(redundancy {self.redundancy:.2f})"
            )
        left = self.blocks - self.blocks_skipped
        return (
            f"{self.windows_computed} windows for the {self.windows_needed} grid windows (of "
            f"{self.windows_in_grid}) the {left} remaining block{'s' if left != 1 else ''} need "
            f"(redundancy {self.redundancy:.2f})"
        )

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


AFFINITY_DESCRIPTION = (
    "affinities: sigmoid(0.2 logit) blended over BANIS windows; channel c is the edge "
    "v → v + offset_c (source-voxel storage)"
)


def affinity_attrs(run, settings: WindowSettings, source, description: str = AFFINITY_DESCRIPTION, **extra) -> dict:
    """What an affinities array records: provenance (:func:`~nisbflow.data.volumes.output_attrs`), the checkpoint's
    name and hash, each channel's offset, and ``nisbflow_settings`` (the run's settings with the window geometry
    that actually ran), which ``decode`` reads its threshold back from."""
    from nisbflow.data.formats import staged_source
    from nisbflow.data.volumes import output_attrs, voxel_size_of

    handle = run.checkpoint
    offsets = list(handle.model.affinity_offsets)
    return output_attrs(
        description,
        voxel_size_of(source),
        "cxyz",
        run.config,
        nisbflow_output="affinities",
        checkpoint=handle.name,
        checkpoint_sha256=handle.sha256,
        checkpoint_weights=handle.weights,
        offsets=offsets if settings.channels is None else [offsets[c] for c in settings.channels],
        nisbflow_settings=dict(run.record(), inference=settings.record()),
        **staged_source(source.attrs),
        **extra,
    )


def infer_to_zarr(
    image_path: str | Path,
    output: str | Path,
    run,
    *,
    window: WindowSettings | None = None,
    block=DEFAULT_BLOCK,
    split: int = 1,
    overwrite: bool = False,
    force: bool = False,
    progress: bool = True,
    device: str | None = None,
    log=None,
    layout: str = "ngff",
) -> InferSummary:
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
    window_settings = window or WindowSettings.from_config(run.config.inference, offsets=handle.model.offsets())
    check_channels(window_settings, handle.model.out_channels, f"checkpoint {handle.name}")
    source = open_image(image_path)  # uint8, (X, Y, Z) or (X, Y, Z, 1)
    device = device or cluster_device()
    image = _spatial(da.from_zarr(source))
    grid = BlockGrid.regular(image.shape, block)
    n_channels = handle.model.out_channels if window_settings.channels is None else len(window_settings.channels)
    footprint = largest_footprint(grid, window_settings.window, window_settings.stride)
    window_settings = fit_to_memory(window_settings, handle.model, footprint, n_channels, device, log or default_log)
    identity = dict(**handle.identity(), settings=window_settings.record(), block=list(grid.block_shape))
    with StagedRun(
        output,
        kind="affinities",
        inputs={"image": image_path},
        identity=identity,
        overwrite=overwrite,
        force=force,
        log=log or default_log,
        checkpoint=handle,
        layout=layout,
    ) as staged:
        zarr_format = source.metadata.zarr_format
        work = staged.pending(
            BlockwisePass.into_array(
                "predict",
                grid,
                staged.image,
                region=lambda index: (slice(None),) + grid.write_region(index),
                create=lambda: create_image(
                    staged.data,
                    attributes=affinity_attrs(run, window_settings, source, nisbflow_run=staged.run_id),
                    zarr_format=zarr_format,
                    name="affinities",
                    layout=layout,
                    shape=(n_channels,) + grid.shape,
                    chunks=(n_channels,) + output_chunks(grid.block_shape, grid.shape),
                    dtype=window_settings.output_dtype,
                    compressors=fast_compressors(zarr_format),
                ),
            )
        )
        plan = plan_windows(
            grid,
            window_settings.window,
            window_settings.stride,
            window_settings.sw_batch_size,
            split,
            pending=work.pending,
        )
        token = dask.base.tokenize(staged.run_id, window_settings, grid, split, sorted(work.pending))
        topic = f"nisbflow-infer-windows-{token}"
        predicted = prediction_graph(image, grid, plan, window_settings, handle, device, token, topic)
        tasks, voxels = [], 0
        for index in work.pending:
            write = grid.write_region(index)
            voxels += write.size
            tasks.append(
                dask.delayed(_store_block, pure=True)(
                    predicted[index],
                    staged.image,
                    write,
                    staged.marker("predict", grid.key(index)),
                    staged.run_id,
                    plan.counted(index),
                    dask_key_name=(f"infer-store-block-{token}",) + index,
                )
            )
        warm = warm_up_workers(handle, window_settings, device, log=log or default_log) if tasks else None
        start = time.perf_counter()
        views = window_settings.views  # each window predicted once per view
        counter = Counter(
            topic,
            "infer: windows" + (f" × {views} views" if views > 1 else ""),
            plan.windows_run * views,
            "predictions" if views > 1 else "windows",
        )
        computed = (
            sum(compute_tasks(tasks, "infer: predict blocks", progress=progress, counter=counter)) if tasks else 0
        )
        seconds = time.perf_counter() - start
    return InferSummary(
        str(output),
        grid.shape,
        seconds,
        voxels,
        computed,
        plan.windows_in_grid,
        grid.n_blocks,
        grid.n_blocks - len(tasks),
        warm,
        plan.windows_needed,
    )


def infer_whole_to_zarr(
    image_path: str | Path,
    output: str | Path,
    run,
    *,
    overwrite: bool = False,
    force: bool = False,
    device: str | None = None,
    log=None,
    layout: str = "ngff",
) -> InferSummary:
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
    window_settings = fit_to_memory(
        window_settings,
        handle.model,
        source.shape[:3],
        n_channels,
        device or default_device(),
        log or default_log,
        threads=1,
    )
    identity = dict(**handle.identity(), settings=window_settings.record(), whole=True)
    with StagedRun(
        output,
        kind="affinities",
        inputs={"image": image_path},
        identity=identity,
        overwrite=overwrite,
        force=force,
        log=log or default_log,
        layout=layout,
    ) as staged:
        model = handle.network(device or default_device())
        start = time.perf_counter()
        values = predict_whole(
            source[...],
            model,
            window=window_settings.window,
            stride=window_settings.stride,
            sw_batch_size=window_settings.sw_batch_size,
            activation=window_settings.activation,
            channels=window_settings.channels,
            output_dtype=window_settings.output_dtype,
            device=device or default_device(),
            augmentation=window_settings.augmentation,
        )
        seconds = time.perf_counter() - start
        fmt = source.metadata.zarr_format
        level = create_image(
            staged.data,
            attributes=affinity_attrs(run, window_settings, source, AFFINITY_DESCRIPTION + " (whole-volume reference)"),
            zarr_format=fmt,
            name="affinities",
            layout=layout,
            shape=values.shape,
            chunks=(values.shape[0], 128, 128, 128),
            dtype=values.dtype,
            compressors=fast_compressors(fmt),
        )
        open_for_writing(level)[...] = values
    grid = window_grid(values.shape[1:], window_settings.window, window_settings.stride)
    n_windows = int(np.prod([len(g) for g in grid]))
    return InferSummary(str(output), tuple(values.shape[1:]), seconds, int(values[0].size), n_windows, n_windows, 1, 0)
