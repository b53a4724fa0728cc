"""Which task predicts each grid window and where its weighted sums go (nisbflow.infer.plan), against plain loops
over the BANIS grid: every window once, in the task of the block holding its start; every voxel of a block gets
the sums of every task whose windows reach it."""

import itertools

import numpy as np
import pytest

from nisbflow.blocks import BlockGrid
from nisbflow.infer.plan import FINAL, box_difference, largest_footprint, plan_windows

CASES = [
    ((40, 33, 20), (13, 11, 20), 16, 8, 3, 1),  # odd blocks
    ((40, 33, 20), (7, 33, 9), 16, 8, 4, 1),  # blocks thinner than a window
    ((40, 33, 20), (40, 33, 20), 16, 8, 5, 3),  # one block, split among 3 tasks
    ((30, 12, 20), (16, 16, 8), 16, 8, 2, 2),  # an axis shorter than the window (padded), split
    ((64, 64, 64), (32, 32, 32), 16, 8, 8, 1),  # blocks that are multiples of the stride
]


def grid_windows(shape, window, stride):
    """Plain: per axis the multiples of the stride that fit, plus the start snapped to the end."""
    axes = []
    for size in shape:
        size = max(size, window)
        starts = list(range(0, size - window + 1, stride))
        if starts[-1] != size - window:
            starts.append(size - window)
        axes.append(starts)
    return list(itertools.product(*axes))


def reach_masks(plan, write, window):
    """Per unit: which voxels of ``write`` its windows reach (a plain loop over windows)."""
    masks = {}
    for key, unit in plan.units.items():
        mask = np.zeros([w.stop - w.start for w in write], dtype=bool)
        for start in unit.windows:
            inside = tuple(slice(max(s, w.start) - w.start, min(s + window, w.stop) - w.start)
                           for s, w in zip(start, write))
            if all(i.start < i.stop for i in inside):
                mask[inside] = True
        if mask.any():
            masks[key] = mask
    return masks


def local(region, write):
    return tuple(slice(r.start - w.start, r.stop - w.start) for r, w in zip(region, write))


@pytest.mark.parametrize("shape, block, window, stride, batch, split", CASES)
def test_each_window_runs_once_and_each_voxel_gets_the_sums_of_every_window_reaching_it(shape, block, window,
                                                                                        stride, batch, split):
    grid = BlockGrid.regular(shape, block)
    plan = plan_windows(grid, (window,) * 3, (stride,) * 3, batch, split)
    expected = grid_windows(shape, window, stride)
    run = [start for unit in plan.units.values() for start in unit.windows]
    assert sorted(run) == sorted(expected)  # every window, once
    assert plan.windows_in_grid == plan.windows_needed == plan.windows_run == len(expected)
    assert sum(plan.counted(index) for index in grid.indices()) == len(expected)
    for key, unit in plan.units.items():
        assert all(1 <= len(b) <= batch for b in unit.batches)
        write = grid.write_region(key[:3])
        assert all(w.start <= s < w.stop for start in unit.windows for s, w in zip(start, write))  # its block's
        assert key[3] < split
    for index in grid.indices():
        sources, write = plan.blocks[index], grid.write_region(index)
        cover = np.zeros([w.stop - w.start for w in write], dtype=int)
        for box in ([sources.exclusive] if sources.exclusive else []) + list(sources.shared):
            cover[local(box, write)] += 1
        assert (cover == 1).all()  # exclusive and shared boxes partition the block
        masks = reach_masks(plan, write, window)
        assert set(sources.units) == set(masks)
        reached = sum(m.astype(int) for m in masks.values())
        if sources.exclusive is not None:
            box = local(sources.exclusive, write)
            assert (reached[box] == 1).all()
            [owner] = [k for k, m in masks.items() if m[box].all()]
            assert [p.region for p in plan.units[owner].pieces if p.target == index and p.box == FINAL] \
                == [sources.exclusive]
        for number, shared in enumerate(sources.shared):
            for key, mask in masks.items():
                delivered = np.zeros_like(mask)
                for piece in plan.units[key].pieces:
                    if piece.target == index and piece.box == number:
                        assert all(s.start <= r.start and r.stop <= s.stop for r, s in zip(piece.region, shared))
                        delivered[local(piece.region, write)] = True
                inside = np.zeros_like(mask)
                inside[local(shared, write)] = True
                assert not (mask & inside & ~delivered).any(), (index, number, key)


def test_blocks_that_are_multiples_of_the_stride_blend_most_voxels_from_one_task():
    """BANIS's geometry scaled down (window 16, stride 8, blocks 32): the units below reach 8 voxels into a block,
    the rest of it is predicted by its own task alone; the footprint is a block plus one window minus one stride."""
    grid = BlockGrid.regular((64, 64, 64), (32, 32, 32))
    plan = plan_windows(grid, (16,) * 3, (8,) * 3, 8)
    assert plan.blocks[(1, 1, 1)].exclusive == (slice(40, 64),) * 3
    assert plan.blocks[(0, 0, 0)].exclusive == (slice(0, 32),) * 3 and plan.blocks[(0, 0, 0)].shared == ()
    assert len(plan.blocks[(1, 1, 1)].shared) == 3
    assert plan.units[(0, 0, 0, 0)].footprint == (slice(0, 40),) * 3
    assert largest_footprint(grid, (16,) * 3, (8,) * 3) == (40, 40, 40)
    # the NISB test cube at the default 768³ blocks: footprints of 832 voxels per axis at most
    assert largest_footprint(BlockGrid.regular((3000, 3000, 1350), (768,) * 3), (128,) * 3, (64,) * 3) == (832, 832, 832)


def test_a_resumed_plan_runs_the_batches_of_the_uninterrupted_one_that_reach_the_blocks_left():
    shape, window, stride, batch = (40, 33, 20), 16, 8, 3
    grid = BlockGrid.regular(shape, (13, 11, 20))
    fresh = plan_windows(grid, (window,) * 3, (stride,) * 3, batch)
    pending = [(1, 1, 0), (2, 0, 0), (3, 2, 0)]
    resumed = plan_windows(grid, (window,) * 3, (stride,) * 3, batch, pending=pending)
    assert set(resumed.blocks) == set(pending)
    regions = [grid.write_region(index) for index in pending]
    needed = {start for start in grid_windows(shape, window, stride)
              if any(all(s < r.stop and s + window > r.start for s, r in zip(start, region)) for region in regions)}
    assert resumed.windows_needed == len(needed)
    run = [start for unit in resumed.units.values() for start in unit.windows]
    assert len(run) == len(set(run)) and needed <= set(run)
    for key, unit in resumed.units.items():
        assert set(unit.batches) <= set(fresh.units[key].batches)  # whole batches of the uninterrupted run
        assert any(set(b) & needed for b in unit.batches)
        assert all(set(b) & needed for b in unit.batches)
    for index in pending:  # the same sources and boxes as in the uninterrupted run
        assert resumed.blocks[index] == fresh.blocks[index]
    assert resumed.windows_run == len(run) and sum(resumed.counted(i) for i in pending) == len(run)


def test_box_difference_is_the_outer_box_without_the_inner_one():
    outer = (slice(0, 10), slice(2, 9), slice(0, 5))
    inner = (slice(3, 7), slice(2, 6), slice(1, 5))
    boxes = box_difference(outer, inner)
    cover = np.zeros((10, 9, 5), dtype=int)
    for box in boxes:
        cover[box] += 1
    cover[inner] += 1
    expected = np.zeros((10, 9, 5), dtype=int)
    expected[outer] = 1
    assert np.array_equal(cover, expected) and len(boxes) == 4
