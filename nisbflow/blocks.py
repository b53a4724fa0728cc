"""The grid of blocks every stage works over, and the fan-in tree that gathers per-block results.

Words as in daisy/funlib: a block's *write region* is the part of the volume it owns; its *read region* adds the
context it needs (a one-voxel lower halo for decoding, the touching windows for inference). Axis order is
positional ``(X, Y, Z)``; regions are :class:`~nisbflow.region.Region` boxes in voxels (tuples of slices). How a
stage's output is staged, locked, resumed and published is :mod:`nisbflow.staging`.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable, Iterator, Sequence

import dask
import numpy as np

from nisbflow.errors import VolumeError
from nisbflow.region import Region, triple


# ----------------------------------------------------------------------------------------------------------------
# the grid

MAX_BLOCKS = 100_000
"""The most blocks a run builds: each is a few tasks, a marker and a chunk file; beyond this the graph alone takes
gigabytes and minutes before any block runs (``--chunks 1,1,1`` on 256³ asked for 2.46 million)."""


def check_block_count(shape, block, what: str = "--chunks") -> None:
    """Raise :class:`VolumeError` when blocks of ``block`` voxels (X, Y, Z) over ``shape`` would number more than
    :data:`MAX_BLOCKS`, naming a block size that stays under it."""
    shape = [int(s) for s in shape]
    block = [max(1, min(int(b), s)) for b, s in zip(block, shape)]
    count = int(np.prod([-(-s // b) for s, b in zip(shape, block)]))
    if count > MAX_BLOCKS:
        side = int(np.ceil((np.prod(shape) / MAX_BLOCKS) ** (1 / 3)))
        raise VolumeError(
            f"{what} {','.join(map(str, block))}: {count:,} blocks over a volume of "
            f"{'×'.join(map(str, shape))} voxels, more than {MAX_BLOCKS:,}; use larger blocks, e.g. "
            f"{what} {side},{side},{side} or more"
        )


@dataclass(frozen=True)
class BlockGrid:
    """The blocks of an ``(X, Y, Z)`` volume, from dask-style per-axis chunk sizes.

    Blocks are indexed ``(i, j, k)``; their *linear* index is their position in C order. ``label_bits`` is how
    many low bits of a provisional segment id hold a block-local label (decoding): enough for every voxel of the
    largest read region with a one-voxel halo.
    """

    chunks: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]

    @classmethod
    def regular(cls, shape, block) -> BlockGrid:
        """Blocks of size ``block`` (voxels, clipped to the volume) from the origin; the last ones may be smaller."""
        shape = tuple(int(s) for s in shape)
        if any(s <= 0 for s in shape):
            raise VolumeError(f"volume shape {shape} (X, Y, Z) is empty: every axis needs at least one voxel")
        block = tuple(max(1, min(int(b), s)) for b, s in zip(block, shape))
        check_block_count(shape, block)
        x, y, z = (tuple(min(b, s - lo) for lo in range(0, s, b)) for b, s in zip(block, shape))
        return cls((x, y, z))

    @property
    def shape(self) -> tuple[int, int, int]:
        return triple(sum(c) for c in self.chunks)

    @property
    def blocks_per_axis(self) -> tuple[int, int, int]:
        return triple(len(c) for c in self.chunks)

    @property
    def n_blocks(self) -> int:
        return int(np.prod(self.blocks_per_axis))

    @property
    def block_shape(self) -> tuple[int, int, int]:
        """The largest block (the nominal block size)."""
        return triple(max(c) for c in self.chunks)

    @property
    def label_bits(self) -> int:
        largest_read_region = int(np.prod([max(c) + 1 for c in self.chunks]))
        return largest_read_region.bit_length()

    def check_fits(self) -> None:
        """Raise unless block index and local label fit together in 64 bits, and the blocks are not too many
        (:data:`MAX_BLOCKS`)."""
        if self.n_blocks > MAX_BLOCKS:
            check_block_count(self.shape, self.block_shape, "chunks")
        bits = self.label_bits + max(self.n_blocks - 1, 1).bit_length()
        if bits > 64:
            raise VolumeError(
                f"{self.n_blocks} blocks of up to {[max(c) for c in self.chunks]} voxels need {bits}-bit "
                "provisional ids; use larger chunks"
            )

    def indices(self) -> Iterator[tuple[int, int, int]]:
        """Block indices ``(i, j, k)`` in C order."""
        return np.ndindex(*self.blocks_per_axis)

    def linear(self, index) -> int:
        return int(np.ravel_multi_index(index, self.blocks_per_axis))

    @staticmethod
    def key(index) -> str:
        """A block's name in markers and task keys, ``"i.j.k"``."""
        return ".".join(str(int(i)) for i in index)

    def write_region(self, index) -> Region:
        """The voxels block ``index`` owns."""
        starts = [int(sum(c[:i])) for c, i in zip(self.chunks, index)]
        return Region(slice(s, s + c[i]) for s, c, i in zip(starts, self.chunks, index))

    def read_region(self, index, lower=0, upper=0) -> Region:
        """The write region grown by ``lower``/``upper`` voxels (an int or one per axis), clipped to the volume."""
        lower = tuple(int(v) for v in np.broadcast_to(lower, 3))
        upper = tuple(int(v) for v in np.broadcast_to(upper, 3))
        return self.write_region(index).grow(lower, upper, self.shape)

    def lower_neighbour(self, index, axis: int):
        """The block below ``index`` along ``axis``, or None at the volume's lower face."""
        if index[axis] == 0:
            return None
        lower = list(index)
        lower[axis] -= 1
        return tuple(lower)

    def priority(self, index) -> int:
        """Dask priority of a per-block task: earlier blocks (C order) first, so a chunk is read shortly before the
        blocks that need it run and is released soon after."""
        return -self.linear(index)

    def block_of(self, positions: np.ndarray) -> np.ndarray:
        """``(N, 3)`` block indices of voxel positions ``(N, 3)`` (x, y, z) inside the volume."""
        boundaries = [np.cumsum((0,) + tuple(c)) for c in self.chunks]
        return np.stack(
            [np.searchsorted(b, positions[:, a], side="right") - 1 for a, b in enumerate(boundaries)], axis=1
        )

    def origin(self, index) -> np.ndarray:
        return np.array(self.write_region(index).begin, dtype=np.int64)


def task_priority(key) -> int:
    """Dask priority from a per-block task key ``(name, ..., i, j, k)``: earlier blocks (C order) first. Usable as
    ``dask.annotate(priority=task_priority)`` over graphs whose keys end in a block index."""
    index = [v for v in key[1:] if isinstance(v, int)][-3:] if isinstance(key, tuple) else []
    if len(index) != 3:
        return 0
    return -((index[0] * 4096 + index[1]) * 4096 + index[2])


def tree_reduce(parts: Sequence, combine: Callable, name: str, *, fan_in: int = 16, at_least_once: bool = False):
    """One Dask task gathering ``parts`` (delayed values or plain ones) by ``combine(*group)`` in a tree of at most
    ``fan_in`` inputs per task, keyed ``(name, level, group)``, so no task holds every block's result at once.
    ``at_least_once``: combine even a single part (where ``combine`` also changes the parts' form)."""
    parts, level = list(parts), 0
    while len(parts) > 1 or (at_least_once and level == 0):
        parts = [
            dask.delayed(combine, pure=True)(*parts[i : i + fan_in], dask_key_name=(name, level, i // fan_in))
            for i in range(0, len(parts), fan_in)
        ]
        level += 1
    return parts[0]
