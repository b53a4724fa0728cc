"""BANIS window geometry: starts, snapping, blending weights and block read regions."""

import itertools

import numpy as np
import pytest

from nisbflow.infer.geometry import (blending_weight, padded_shape, read_region, window_grid,
                                     window_starts, windows_for_region)


@pytest.mark.parametrize("size, window, stride, expected", [
    (256, 128, 64, [0, 64, 128]),
    (300, 128, 64, [0, 64, 128, 172]),  # 172 = 300 - 128, snapped to the edge
    (128, 128, 64, [0]),
    (100, 128, 64, [0]),  # shorter than the window: padded to it
    (20, 8, 4, [0, 4, 8, 12]),
    (21, 8, 4, [0, 4, 8, 12, 13]),
    (9, 8, 4, [0, 1]),
])
def test_window_starts(size, window, stride, expected):
    starts = window_starts(size, window, stride)
    assert starts.tolist() == expected
    assert (starts + window <= max(size, window)).all()  # no window leaves the (padded) volume


@pytest.mark.parametrize("window", [8, 128])
def test_blending_weight_is_chessboard_distance_to_the_faces_plus_one(window):
    weight = blending_weight(window)
    assert weight.shape == (window,) * 3 and weight.dtype == np.float32
    assert weight.min() == 1 and weight.max() == window // 2
    assert weight[0, window // 2, window // 2] == 1 and weight[-1, 3, 3] == 1
    centre = window // 2 - 1
    assert weight[centre, centre, centre] == window // 2
    rng = np.random.default_rng(0)
    for x, y, z in rng.integers(0, window, (50, 3)):
        assert weight[x, y, z] == min(x, y, z, window - 1 - x, window - 1 - y, window - 1 - z) + 1


def test_every_voxel_is_covered_and_block_windows_are_exactly_those_touching_it():
    shape, window, stride = (21, 13, 8), 8, 4
    grid = window_grid(shape, window, stride)
    coverage = np.zeros(padded_shape(shape, window))
    for start in itertools.product(*grid):
        coverage[tuple(slice(s, s + window) for s in start)] += 1
    assert (coverage > 0).all()
    region = (slice(5, 11), slice(0, 6), slice(4, 8))
    chosen = set(windows_for_region(grid, window, region))
    brute = {start for start in itertools.product(*[g.tolist() for g in grid])
             if all(s < r.stop and s + window > r.start for s, r in zip(start, region))}
    assert chosen == brute
    read = read_region(grid, window, region)
    for start in chosen:
        assert all(r.start <= s and s + window <= r.stop for s, r in zip(start, read))


def test_bad_geometry():
    with pytest.raises(ValueError, match="positive"):
        window_starts(10, 0, 4)
