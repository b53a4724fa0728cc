"""BANIS sliding-window geometry (docs/design.md), as pure functions of sizes in voxels.

Per axis of size ``S`` the window starts are the multiples of ``stride`` with ``start + window <= S``, plus the
snapped last start ``S - window`` ("snap to edge": no window leaves the volume). An axis shorter than the window
is padded to the window first (reflect), so its only start is 0. Inside a window a voxel's blending weight is its
chessboard distance to the window's faces plus one: 1 on the faces, ``window // 2`` at the centre.
"""

from __future__ import annotations

import itertools

import numpy as np

from nisbflow.region import triple


def window_starts(size: int, window: int = 128, stride: int = 64) -> np.ndarray:
    """``(n,) int64`` window starts along one axis of ``size`` voxels (sorted, unique)."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got window={window}, stride={stride}")
    if size <= window:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, size - window + 1, stride, dtype=np.int64)
    if starts[-1] != size - window:
        starts = np.append(starts, size - window)
    return starts


def padded_shape(shape, window) -> tuple[int, ...]:
    """The volume shape after padding every axis shorter than the window up to the window."""
    window = _per_axis(window, len(shape))
    return tuple(max(int(s), w) for s, w in zip(shape, window))


def _per_axis(value, n: int) -> tuple[int, ...]:
    values = tuple(int(v) for v in np.broadcast_to(np.asarray(value), (n,)))
    return values


def window_grid(shape, window=128, stride=64) -> list[np.ndarray]:
    """Per axis (X, Y, Z) the window starts of the global grid of a (padded) volume ``shape``."""
    window, stride = _per_axis(window, 3), _per_axis(stride, 3)
    return [window_starts(s, w, t) for s, w, t in zip(padded_shape(shape, window), window, stride)]


def blending_weight(window=128) -> np.ndarray:
    """``(Wx, Wy, Wz) float32``: chessboard distance to the nearest window face + 1."""
    window = _per_axis(window, 3)
    distances = [np.minimum(np.arange(w), np.arange(w)[::-1]) for w in window]
    grids = np.meshgrid(*distances, indexing="ij")
    return (np.minimum(np.minimum(grids[0], grids[1]), grids[2]) + 1).astype(np.float32)


def starts_touching(starts: np.ndarray, window: int, lower: int, upper: int) -> np.ndarray:
    """The starts whose window ``[s, s + window)`` intersects ``[lower, upper)``."""
    return starts[(starts < upper) & (starts + window > lower)]


def windows_for_region(grid: list[np.ndarray], window, region) -> list[tuple[int, int, int]]:
    """Window starts (x, y, z) of the global grid that intersect a write region (three slices)."""
    window = _per_axis(window, 3)
    per_axis = [starts_touching(g, w, r.start, r.stop) for g, w, r in zip(grid, window, region)]
    return [triple(combo) for combo in itertools.product(*per_axis)]


def read_region(grid: list[np.ndarray], window, region) -> tuple[slice, ...]:
    """The input a write region needs: the union of the windows that intersect it (three slices, padded frame)."""
    window = _per_axis(window, 3)
    slices = []
    for g, w, r in zip(grid, window, region):
        touching = starts_touching(g, w, r.start, r.stop)
        slices.append(slice(int(touching.min()), int(touching.max()) + w))
    return tuple(slices)
