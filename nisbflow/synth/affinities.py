"""Noisy affinities from a ground-truth segmentation: stand-in predictions for decoding tests, benchmarks and the
demo before a model is trained.

Each edge's value is ``0.9`` (same neuron) or ``0.1`` (different neurons or background) plus Gaussian noise,
clipped to [0, 1] and stored as float16, in the source-voxel convention of docs/design.md (channels offsets
x, y, z; an edge leaving the volume is 0). Noise is drawn per block from a generator seeded by ``(seed, block
index)``, so the result is deterministic for a chunking.
"""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np

from nisbflow.blocks import BlockGrid
from nisbflow.paths import storage_url
from nisbflow.region import Region
from nisbflow.staging import BlockwisePass, StagedRun, default_log, store_block
from nisbflow.data.chunks import open_checked
from nisbflow.data.ngff import create_image
from nisbflow.data.volumes import (
    SHORT_RANGE_OFFSETS,
    array_url,
    fast_compressors,
    open_segmentation,
    output_attrs,
    voxel_size_of,
)
from nisbflow.errors import ConfigError
from nisbflow.tasks import compute_tasks


def _same_neuron(segmentation, axis: int):
    """``(X, Y, Z) bool``: ``seg[v] == seg[v + e_axis] and seg[v] > 0``; False where ``v + e_axis`` leaves the
    volume."""
    n = segmentation.shape[axis]
    lower = [slice(None)] * 3
    upper = [slice(None)] * 3
    lower[axis], upper[axis] = slice(0, n - 1), slice(1, n)
    inside = (segmentation[tuple(lower)] == segmentation[tuple(upper)]) & (segmentation[tuple(lower)] > 0)
    pad = [(0, 0)] * 3
    pad[axis] = (0, 1)
    if isinstance(segmentation, da.Array):
        return da.pad(inside, pad, constant_values=False)
    return np.pad(inside, pad, constant_values=False)


def _add_noise(targets: np.ndarray, noise: float, seed: int, block_id=(0, 0, 0, 0)) -> np.ndarray:
    rng = np.random.default_rng([seed, *block_id])
    values = np.where(targets, 0.9, 0.1) + rng.normal(0.0, noise, targets.shape)
    return np.clip(values, 0.0, 1.0).astype(np.float16)


def noisy_affinities(segmentation, noise: float = 0.15, seed: int = 0):
    """``(3, X, Y, Z) float16`` noisy affinities of an ``(X, Y, Z)`` segmentation (numpy or dask, same type out)."""
    targets = [_same_neuron(segmentation, axis) for axis in range(3)]
    if isinstance(segmentation, da.Array):
        stacked = da.stack(targets).rechunk((3,) + segmentation.chunks)
        return stacked.map_blocks(
            lambda block, block_id=None: _add_noise(block, noise, seed, block_id),
            dtype=np.float16,
            name="synth-noisy-affinities",
        )
    return _add_noise(np.stack(targets), noise, seed)


def _write_noisy_block(
    segmentation: str, read_region, write_region, index, noise: float, seed: int, target: str, marker: str, run_id: str
) -> None:
    """Task: one block's noisy affinities from its read region (write region plus one voxel above on each axis, the
    +1 neighbours its edges reach), written to ``target`` with its marker. Noise is seeded by ``(seed, 0, i, j, k)``,
    as :func:`noisy_affinities` seeds the same block of a dask array."""
    values = open_checked(segmentation, f"segmentation {segmentation}")[tuple(read_region)]
    targets = np.stack([_same_neuron(values, axis) for axis in range(3)])
    inside = (slice(None),) + Region(write_region).local(read_region)
    store_block(
        _add_noise(targets[inside], noise, seed, (0,) + tuple(index)),
        target,
        (slice(None),) + tuple(write_region),
        marker,
        run_id,
    )


def write_noisy_affinities(
    segmentation_path: str | Path,
    output: str | Path,
    *,
    noise: float = 0.15,
    seed: int = 0,
    chunks=None,
    overwrite: bool = False,
    force: bool = False,
    progress: bool = True,
    log=None,
) -> str:
    """Write :func:`noisy_affinities` of a segmentation zarr array to a ``(3, X, Y, Z) float16`` zarr array, equal to
    it for the same chunking (``chunks``, default the segmentation's).

    One task per block of a :class:`~nisbflow.blocks.BlockGrid` reads its read region from the zarr store; the output
    is a :class:`~nisbflow.staging.StagedRun`: staged, locked, refused over its input, and resumed block for block
    after an interruption (a block's noise depends only on its index)."""
    if not np.isfinite(noise) or noise < 0:
        raise ConfigError(f"--noise: the noise standard deviation must be a finite number >= 0, got {noise}")
    source = open_segmentation(segmentation_path)
    grid = BlockGrid.regular(source.shape, chunks or source.chunks)
    identity = dict(noise=float(noise), seed=int(seed), chunks=[list(c) for c in grid.chunks])
    with StagedRun(
        output,
        kind="affinities",
        inputs={"segmentation": segmentation_path},
        identity=identity,
        overwrite=overwrite,
        force=force,
        log=log or default_log,
    ) as staged:
        zarr_format = source.metadata.zarr_format
        attributes = output_attrs(
            "synthetic affinities: ground truth 0.9/0.1 plus Gaussian noise, channels x,y,z offsets, source-voxel "
            "storage",
            voxel_size_of(source),
            "cxyz",
            nisbflow_output="affinities",
            nisbflow_run=staged.run_id,
            offsets=list(SHORT_RANGE_OFFSETS),
            noise=noise,
            seed=seed,
            segmentation=str(segmentation_path),
        )
        work = staged.pending(
            BlockwisePass.into_array(
                "synth",
                grid,
                staged.image,
                region=lambda index: (slice(None),) + grid.write_region(index),
                create=lambda: create_image(
                    staged.data,
                    attributes=attributes,
                    zarr_format=zarr_format,
                    name="affinities",
                    shape=(3,) + grid.shape,
                    chunks=(3,) + grid.block_shape,
                    dtype="float16",
                    compressors=fast_compressors(zarr_format),
                ),
            )
        )
        segmentation_url = array_url(storage_url(segmentation_path))
        tasks = [
            dask.delayed(_write_noisy_block, pure=True)(
                segmentation_url,
                grid.read_region(index, upper=1),
                grid.write_region(index),
                index,
                noise,
                seed,
                staged.image,
                staged.marker("synth", grid.key(index)),
                staged.run_id,
                dask_key_name=("synth-noisy-affinities-" + staged.run_id,) + tuple(index),
            )
            for index in work.pending
        ]
        compute_tasks(tasks, "synth: affinities", progress=progress)
    return str(output)
