"""Memory of one connected-components labelling task, estimated before a decode starts, against the workers' limit.

A label task holds its block of affinities (the three short-range channels it reads, at their own item size), a copy
of them as bit patterns with the halo planes (:func:`~nisbflow.decode.stitch.read_region_bits`), and per threshold
the block's labels (uint32 during labelling) with their faces: 2 × 3 × item size + 4.5 bytes per threshold + 2 bytes
per voxel. Measured on 128³ and 256³ blocks of float16 and float32 at one and three thresholds
(``benchmarks/decode_memory.py``, docs/BENCHMARKS.md): within −1 % to +4 % of the peak. A worker also holds numba's
compiled kernels and zarr (:data:`RUNTIME_BYTES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nisbflow.errors import NisbflowError

RUNTIME_BYTES = 300 * 2**20
"""A decoding worker before any block: Python, numpy, numba's kernels and zarr (about 0.25 GiB; a margin added)."""

BYTES_PER_THRESHOLD = 4.5
"""Per voxel and threshold: the uint32 labels and the numbering's scratch (measured 4.3)."""

BYTES_FIXED = 2.0
"""Per voxel: the NaN count and the labeller's stack (measured 1.9)."""

WARN_FRACTION = 0.75
"""A task planned above this share of a worker's memory limit is warned about: Dask pauses a worker at 80 %."""


class DecodeMemoryError(NisbflowError):
    """A labelling task cannot fit the workers' memory."""


@dataclass(frozen=True)
class LabelTaskMemory:
    """Estimated peak bytes of one label task, and the workers' memory per task with where it comes from."""

    total: int
    limit: int
    where: str


def label_task_bytes(block_shape, itemsize: int, n_thresholds: int) -> int:
    """Peak bytes of labelling one ``block_shape`` (X, Y, Z voxels) block of ``itemsize``-byte affinities at
    ``n_thresholds`` thresholds, the worker's runtime included."""
    voxels = math.prod(int(b) for b in block_shape)
    per_voxel = 2 * 3 * int(itemsize) + BYTES_PER_THRESHOLD * int(n_thresholds) + BYTES_FIXED
    return RUNTIME_BYTES + int(voxels * per_voxel)


def check_label_memory(block_shape, itemsize: int, n_thresholds: int, log, client=None) -> LabelTaskMemory:
    """Say the estimate through ``log``; warn above :data:`WARN_FRACTION` of the workers' memory per task, and raise
    :class:`DecodeMemoryError` with the numbers and what to change when the task exceeds it (its worker would be
    restarted by Dask at 95 % and the task retried until Dask gives up)."""
    from dask.utils import format_bytes

    from nisbflow.tasks import current_client, memory_per_task

    total = label_task_bytes(block_shape, itemsize, n_thresholds)
    limit, where = memory_per_task(client if client is not None else current_client())
    block = "×".join(str(int(b)) for b in block_shape)
    said = (
        f"decode: about {format_bytes(total)} per label task ({block} block, {n_thresholds} threshold(s)); "
        f"{where} has {format_bytes(limit)} per task"
    )
    if total > limit:
        raise DecodeMemoryError(
            f"{said}: a task would not fit; give workers more memory (--memory-limit), use "
            "smaller blocks (--chunks), or fewer thresholds per run"
        )
    log(
        said
        + (
            " — close to the limit, Dask pauses a worker at 80 %: consider smaller --chunks"
            if total > WARN_FRACTION * limit
            else ""
        )
    )
    return LabelTaskMemory(total, limit, where)
