"""Which task predicts each window of the global grid, and where its weighted sums go: pure geometry in voxels,
X, Y, Z, in the padded frame of :mod:`nisbflow.infer.geometry` (equal to the volume's coordinates inside it).

Every window of the BANIS grid is predicted exactly once, whatever the block size:

- A window belongs to the block whose write region holds its start. A block's windows form one *unit* (one task),
  or ``split`` units, divided in raster order. A unit's weighted sums cover the union of its windows, its
  *footprint*, which reaches at most one window minus one stride past its block on the upper side (64 voxels for
  BANIS's 128³ windows at stride 64 and blocks that are multiples of 64).
- A unit hands every block its windows reach a *piece*: its sums over that block's part of its footprint.
- A block's write region splits into an *exclusive box*, the voxels only one unit reaches, whose values that unit
  divides itself (Σ p·w / Σ w) and sends in the output dtype, and up to six *shared boxes*, for which every unit
  reaching them sends float32 Σ p·w and Σ w, which the block's blend task adds and divides.

After an interruption only the *pending* blocks are planned: a unit of a finished block runs those of its window
batches that reach a pending block, with the batches of the uninterrupted run, so a resumed output equals an
uninterrupted one to the bit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from nisbflow.infer.geometry import padded_shape, window_grid
from nisbflow.region import Region, triple

Box = Region
Start = tuple[int, int, int]


@dataclass(frozen=True)
class Piece:
    """What a unit hands one block: its sums over ``region`` (volume coordinates, inside the block's write region)
    for shared box ``box`` of that block (an index into :attr:`BlockSources.shared`), or its final values when
    ``box`` is :data:`FINAL` (``region`` is then the block's exclusive box)."""

    target: tuple[int, int, int]
    box: int
    region: Box


FINAL = -1


@dataclass(frozen=True)
class Unit:
    """One prediction task: ``batches`` of window starts (each at most ``sw_batch_size`` long, in the order they
    run), their union ``footprint``, the ``pieces`` it hands to blocks, and the block whose store task counts its
    windows (``counted_by``)."""

    key: tuple[int, int, int, int]
    batches: tuple[tuple[Start, ...], ...]
    footprint: Box
    pieces: tuple[Piece, ...]
    counted_by: tuple[int, int, int]

    @property
    def windows(self) -> list[Start]:
        return [start for batch in self.batches for start in batch]


@dataclass(frozen=True)
class BlockSources:
    """How one pending block's values come together: its ``write`` region, the ``exclusive`` box one unit sends
    final values for (None when no voxel is reached by one unit only), the ``shared`` boxes whose sums are added,
    and the ``units`` (keys) that send it pieces."""

    write: Box
    exclusive: Box | None
    shared: tuple[Box, ...]
    units: tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True)
class WindowPlan:
    """The units and block sources of one run, with its window counts: ``windows_in_grid`` (the global grid),
    ``windows_needed`` (grid windows reaching a pending block) and ``windows_run`` (in the units' batches: equal to
    needed on a fresh run; on a resume, batches of finished blocks' units are run whole)."""

    units: dict[tuple[int, int, int, int], Unit]
    blocks: dict[tuple[int, int, int], BlockSources]
    windows_in_grid: int
    windows_needed: int
    windows_run: int

    def counted(self, index) -> int:
        """Windows counted by block ``index``'s store task (those of the units it counts)."""
        return sum(len(u.windows) for u in self.units.values() if u.counted_by == tuple(index))


def plan_windows(grid, window, stride, sw_batch_size: int, split: int = 1, pending=None) -> WindowPlan:
    """The :class:`WindowPlan` of a :class:`~nisbflow.blocks.BlockGrid` for windows ``window`` at ``stride``
    (voxels per axis), batches of ``sw_batch_size`` and ``split`` units per block; ``pending``: the block indices
    still to write (default: all)."""
    window = tuple(int(w) for w in window)
    shape = grid.shape
    padded = padded_shape(shape, window)
    axes = window_grid(shape, window, stride)
    bounds = [np.cumsum((0,) + tuple(c)) for c in grid.chunks]
    pending = set(grid.indices()) if pending is None else {tuple(int(i) for i in p) for p in pending}
    every_block = len(pending) == grid.n_blocks
    # per axis: the block holding each start, and the blocks each window reaches (inside the volume)
    owner = [np.searchsorted(b, starts, side="right") - 1 for b, starts in zip(bounds, axes)]
    reach = [
        [
            (int(np.searchsorted(b, s, side="right") - 1), int(np.searchsorted(b, min(s + w, n), side="left") - 1))
            for s in starts
        ]
        for b, starts, w, n in zip(bounds, axes, window, shape)
    ]

    units: dict = {}
    contributions: dict = {index: {} for index in pending}  # block → unit key → its region there
    needed = 0
    for index in grid.indices():
        per_axis = [np.flatnonzero(o == i) for o, i in zip(owner, index)]
        if any(len(p) == 0 for p in per_axis):
            continue
        owned = list(itertools.product(*per_axis))  # raster order, as positions in ``axes``
        parts = min(max(int(split), 1), len(owned))
        cuts = np.linspace(0, len(owned), parts + 1).round().astype(int)
        for part, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
            key = tuple(index) + (part,)
            batches, boxes, reached_windows = _unit_windows(
                owned[a:b], axes, reach, pending, every_block, window, sw_batch_size
            )
            if not batches:
                continue
            needed += reached_windows
            windows = [s for batch in batches for s in batch]
            footprint = Region(
                slice(min(s[a_] for s in windows), min(max(s[a_] for s in windows) + w, p))
                for a_, (w, p) in enumerate(zip(window, padded))
            )
            units[key] = (batches, footprint)
            for block, box in boxes.items():
                region = grid.write_region(block).intersect(Region(slice(lo, hi) for lo, hi in box))
                if region is not None:
                    contributions[block][key] = region
    blocks, pieces = _block_sources(grid, pending, contributions, units)
    plan_units = {}
    for key, (batches, footprint) in units.items():
        targets = list(dict.fromkeys(piece.target for piece in pieces[key]))
        counted_by = key[:3] if key[:3] in blocks else targets[0]
        plan_units[key] = Unit(key, tuple(batches), footprint, tuple(pieces[key]), counted_by)
    run = sum(len(u.windows) for u in plan_units.values())
    return WindowPlan(plan_units, blocks, int(np.prod([len(a) for a in axes])), needed, run)


def _unit_windows(owned, axes, reach, pending, every_block, window, sw_batch_size) -> tuple[list, dict, int]:
    """One unit's windows (grid positions ``owned``, raster order) in batches of ``sw_batch_size``, leaving out
    batches that reach no pending block: ``(batches of window starts, pending block → [lo, hi] per axis of the
    windows reaching it, windows that reach a pending block)``."""
    batches: list = []
    boxes: dict = {}
    reached_windows = 0
    for i in range(0, len(owned), sw_batch_size):
        batch = owned[i : i + sw_batch_size]
        reached = [_reached_pending(reach, position, pending, every_block) for position in batch]
        if not any(reached):
            continue
        reached_windows += sum(1 for r in reached if r)
        batches.append(tuple(tuple(int(axes[a][p]) for a, p in enumerate(position)) for position in batch))
        for position, reached_blocks in zip(batch, reached):
            start = [int(axes[a][p]) for a, p in enumerate(position)]
            for block in reached_blocks:
                box = boxes.setdefault(block, [[s, s + w] for s, w in zip(start, window)])
                for axis, (s, w) in enumerate(zip(start, window)):
                    box[axis][0] = min(box[axis][0], s)
                    box[axis][1] = max(box[axis][1], s + w)
    return batches, boxes, reached_windows


def _block_sources(grid, pending, contributions: dict, units: dict) -> tuple[dict, dict]:
    """Per pending block its :class:`BlockSources` (the exclusive box when one unit can finish it, the shared boxes
    the rest is summed in) and per unit the :class:`Piece` list it hands each block."""
    blocks: dict[tuple[int, int, int], BlockSources] = {}
    pieces: dict[tuple, list[Piece]] = {key: [] for key in units}
    for index in sorted(pending):
        write = grid.write_region(index)
        sources = contributions[index]
        own = [key for key in sources if key[:3] == tuple(index)]
        exclusive = None
        if len(own) == 1:
            others = sorted(
                (region for key, region in sources.items() if key != own[0]), key=lambda r: r.size, reverse=True
            )
            exclusive = _exclusive_box(write, others)
        shared = tuple(box_difference(write, exclusive)) if exclusive is not None else (write,)
        for key, region in sources.items():
            if exclusive is not None and key == own[0]:
                pieces[key].append(Piece(tuple(index), FINAL, exclusive))
            for number, box in enumerate(shared):
                part = box.intersect(region)
                if part is not None:
                    pieces[key].append(Piece(tuple(index), number, part))
        blocks[tuple(index)] = BlockSources(write, exclusive, shared, tuple(sources))
    return blocks, pieces


def largest_footprint(grid, window, stride) -> tuple[int, int, int]:
    """Per axis, the longest footprint of a block's windows on ``grid`` (voxels): what one prediction task's
    weighted sums cover at most (a block plus one window minus one stride, for blocks that are multiples of the
    stride)."""
    window = tuple(int(w) for w in window)
    bounds = [np.cumsum((0,) + tuple(c)) for c in grid.chunks]
    longest = []
    for b, starts, w, p in zip(
        bounds, window_grid(grid.shape, window, stride), window, padded_shape(grid.shape, window)
    ):
        owner = np.searchsorted(b, starts, side="right") - 1
        longest.append(
            max(min(int(starts[owner == i].max()) + w, p) - int(starts[owner == i].min()) for i in np.unique(owner))
        )
    return triple(longest)


def _reached_pending(reach, position, pending, every_block) -> list[tuple[int, ...]]:
    """The pending blocks the window at grid ``position`` (an index per axis) reaches."""
    ranges = [range(reach[axis][p][0], reach[axis][p][1] + 1) for axis, p in enumerate(position)]
    blocks = list(itertools.product(*ranges))
    return blocks if every_block else [b for b in blocks if b in pending]


def _exclusive_box(write: Box, others: list[Box]) -> Box | None:
    """The largest box of ``write`` found by cutting away, one axis at a time, each of ``others`` from the face it
    covers; None when one cannot be cut away (the box would be empty or not a box)."""
    box = [[s.start, s.stop] for s in write]
    for other in others:
        if Region(slice(lo, hi) for lo, hi in box).intersect(other) is None:
            continue
        options = []
        for axis, o in enumerate(other):
            lo, hi = box[axis]
            if o.start <= lo and o.stop < hi:  # it covers the lower face: keep [o.stop, hi)
                options.append((axis, [o.stop, hi]))
            if o.stop >= hi and o.start > lo:  # the upper face: keep [lo, o.start)
                options.append((axis, [lo, o.start]))
        if not options:
            return None
        axis, kept = max(
            options, key=lambda option: (option[1][1] - option[1][0]) / (box[option[0]][1] - box[option[0]][0])
        )
        box[axis] = kept
    return Region(slice(lo, hi) for lo, hi in box)


def box_difference(outer: Box, inner: Box) -> list[Box]:
    """``outer`` minus ``inner`` (a box inside it) as at most six disjoint boxes: the slabs below and above
    ``inner`` along X, then along Y within its X range, then along Z within its X and Y ranges."""
    boxes, core = [], list(outer)
    for axis in range(3):
        below = list(core)
        below[axis] = slice(core[axis].start, inner[axis].start)
        above = list(core)
        above[axis] = slice(inner[axis].stop, core[axis].stop)
        boxes += [Region(b) for b in (below, above) if all(s.start < s.stop for s in b)]
        core[axis] = inner[axis]
    return boxes
