"""Pure kernels of the synthetic NISB-like generator: a global neurite forest and per-block rasterisation.

The global structure is small: a forest of branching tubes (centre-line nodes in nm with a radius each,
grown as persistent random walks that avoid other neurons) plus organelle spheres inside them. Every voxel
is then a pure function of its global position, so any block can be rasterised alone and any chunking of a
volume gives identical arrays:

- each neuron ``n`` has a signed distance ``f_n(v) = min_s |v - s| - r_s`` over its segments ``s`` (nm);
- a voxel belongs to the nearest neuron (smallest ``f``) unless the second-nearest other neuron is within
  ``membrane_width_nm`` of it (``f_2 - f_1 < w``: the membrane between touching neurites) or no neurite is
  within ``max_gap_nm`` (extracellular space); those voxels are background 0.

Coordinates are (x, y, z); positions are in nm, voxel ``i`` along an axis has its centre at ``i * voxel_size``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from nisbflow.region import triple

# --------------------------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class SynthParams:
    """What a synthetic volume looks like. Lengths are nm; ``shape`` is voxels (X, Y, Z)."""

    shape: tuple[int, int, int]
    seed: int = 0
    voxel_size: tuple[float, float, float] = (9.0, 9.0, 20.0)
    axon_radius_nm: tuple[float, float] = (45.0, 110.0)
    dendrite_radius_nm: tuple[float, float] = (120.0, 300.0)
    dendrite_fraction: float = 0.2
    branch_length_nm: float = 2500.0
    """Mean centre-line length between branch points (dendrites; axons branch 3× less often)."""
    neuron_length_nm: float = 15000.0
    """Most centre-line length one dendrite grows inside the domain (axons twice this); bounds the branching."""
    tortuosity: float = 0.18
    membrane_width_nm: float = 16.0
    max_gap_nm: float = 250.0
    target_fill: float = 0.9
    """Stop seeding neurons when this fraction of probe points lies inside a tube."""
    organelles_per_um: float = 1.2
    contrast: float = 1.0
    noise_sigma: float = 10.0
    blur_sigma_voxels: tuple[float, float, float] = (1.0, 1.0, 0.5)
    dropped_slice_probability: float = 0.0
    shifted_slice_probability: float = 0.0
    max_slice_shift_voxels: int = 10

    def __post_init__(self):
        if len(self.shape) != 3 or any(int(n) < 1 for n in self.shape):
            raise ValueError(f"shape must be three positive voxel counts (X, Y, Z), got {self.shape}")
        if any(v <= 0 for v in self.voxel_size):
            raise ValueError(f"voxel_size must be positive nm, got {self.voxel_size}")


PRESETS: dict[str, dict[str, Any]] = {
    "thin": dict(
        axon_radius_nm=(30.0, 60.0),
        dendrite_radius_nm=(80.0, 160.0),
        dendrite_fraction=0.15,
        membrane_width_nm=7.0,
        max_gap_nm=150.0,
    ),
    "slice_defects": dict(dropped_slice_probability=0.03, shifted_slice_probability=0.03),
    "low_contrast": dict(contrast=0.35, noise_sigma=14.0),
}
"""NISB's harder settings, each a set of :class:`SynthParams` overrides that can be combined."""


# --------------------------------------------------------------------------------------------------------------
# Global structure


@dataclass
class NeuriteForest:
    """Centre lines of every neurite, in nm.

    ``node_position (N, 3) float64`` nm (x, y, z); ``node_radius (N,)`` nm; ``node_neuron (N,) uint32`` (1-based);
    ``node_parent (N,) int64`` the previous node on the centre line (-1 at a root). Each node with a parent is
    one capsule segment (parent → node) of the node's radius. ``organelle_position (M, 3)``/``organelle_radius (M,)``
    are dark spheres inside neurites. ``dropped_slices``/``shifted_slices (K,)`` are z indices and ``slice_shift
    (K, 2)`` their (x, y) shift in voxels.
    """

    node_position: np.ndarray
    node_radius: np.ndarray
    node_neuron: np.ndarray
    node_parent: np.ndarray
    organelle_position: np.ndarray
    organelle_radius: np.ndarray
    dropped_slices: np.ndarray
    shifted_slices: np.ndarray
    slice_shift: np.ndarray
    n_neurons: int

    @functools.cached_property
    def segment_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Capsules parent → node: ``start (S, 3)``, ``end (S, 3)`` nm, ``radius (S,)`` nm, ``neuron (S,) uint32``.

        Computed once per forest (every block task selects from it)."""
        child = np.flatnonzero(self.node_parent >= 0)
        parent = self.node_parent[child]
        return (self.node_position[parent], self.node_position[child], self.node_radius[child], self.node_neuron[child])


@numba.njit(cache=True)
def _cell_index(coordinate, low, cell, n_cells):
    """Cell of a coordinate (nm) along one axis, clamped to ``[0, n_cells)``: a branch's last node may lie up to one
    step outside the domain, and an unclamped index would address another cell's list or memory past the end (a
    segfault). Clamping query and node alike keeps every node within the search span of the points near it."""
    return min(max(int((coordinate - low) // cell), 0), n_cells - 1)


GRID_CELL_FRACTION = 0.5
"""Neighbour-search cell edge as a fraction of the thickest tube's diameter plus the gap (the original cell)."""

BUCKET_NODES = 32
"""Node records per bucket of the neighbour-search grid: a cell's nodes lie in contiguous buckets, so a search reads
memory in runs instead of jumping node by node (which, once the nodes outgrow the CPU cache, made growth
super-linear in the volume)."""


@numba.njit(cache=True)
def _clearance(p, own, limit, stop_below, r_max, low, cell, dims, cell_head, bucket_next, bucket_fill, records):
    """Free distance (nm) from point ``p`` to the surface of the nearest node sphere of a neuron other than ``own``,
    capped at ``limit``, searching the grid of ``cell`` nm (see :func:`_add_to_grid`) outwards ring by ring over every
    cell within ``limit + r_max`` of ``p``'s cell, so the result does not depend on ``cell``.

    Callers only compare the result with a threshold: the search stops as soon as a distance below ``stop_below`` is
    found (and returns it), since the comparison's outcome is then known; ``-inf`` searches to the end."""
    best = limit
    span = int(math.ceil((limit + r_max) / cell))
    k0 = _cell_index(p[0], low[0], cell, dims[0])
    k1 = _cell_index(p[1], low[1], cell, dims[1])
    k2 = _cell_index(p[2], low[2], cell, dims[2])
    for ring in range(span + 1):
        for i in range(max(0, k0 - ring), min(dims[0], k0 + ring + 1)):
            for j in range(max(0, k1 - ring), min(dims[1], k1 + ring + 1)):
                on_shell = abs(i - k0) == ring or abs(j - k1) == ring
                for m in range(max(0, k2 - ring), min(dims[2], k2 + ring + 1)):
                    if not on_shell and abs(m - k2) != ring:
                        continue
                    bucket = cell_head[(i * dims[1] + j) * dims[2] + m]
                    while bucket >= 0:
                        for n in range(bucket_fill[bucket]):
                            if records[bucket, n, 4] != own:
                                dx = p[0] - records[bucket, n, 0]
                                dy = p[1] - records[bucket, n, 1]
                                dz = p[2] - records[bucket, n, 2]
                                d = math.sqrt(dx * dx + dy * dy + dz * dz) - records[bucket, n, 3]
                                if d < best:
                                    best = d
                        bucket = bucket_next[bucket]
        if best < stop_below:
            return best
    return best


@numba.njit(cache=True)
def _add_to_grid(q, r, neuron, low, cell, dims, cell_head, bucket_next, bucket_fill, records, n_buckets):
    """Record a node (centre ``q`` nm, radius ``r``, ``neuron``) in its cell's newest bucket, opening a bucket when
    that one is full (the pool doubles when exhausted). Returns the possibly grown pool and its bucket count."""
    key = 0
    for a in range(3):
        key = key * dims[a] + _cell_index(q[a], low[a], cell, dims[a])
    bucket = cell_head[key]
    if bucket < 0 or bucket_fill[bucket] == records.shape[1]:
        if n_buckets == records.shape[0]:
            grown = np.empty((2 * n_buckets, records.shape[1], 5))
            grown[:n_buckets] = records
            records = grown
            next2 = np.empty(2 * n_buckets, dtype=np.int64)
            next2[:n_buckets] = bucket_next
            bucket_next = next2
            fill2 = np.empty(2 * n_buckets, dtype=np.int64)
            fill2[:n_buckets] = bucket_fill
            bucket_fill = fill2
        bucket_next[n_buckets] = bucket
        bucket_fill[n_buckets] = 0
        cell_head[key] = n_buckets
        bucket = n_buckets
        n_buckets += 1
    n = bucket_fill[bucket]
    records[bucket, n, 0] = q[0]
    records[bucket, n, 1] = q[1]
    records[bucket, n, 2] = q[2]
    records[bucket, n, 3] = r
    records[bucket, n, 4] = neuron
    bucket_fill[bucket] = n + 1
    return records, bucket_next, bucket_fill, n_buckets


@numba.njit(cache=True)
def _unit(v):
    return v / max(np.sqrt((v * v).sum()), 1e-12)


@numba.njit(cache=True)
def _grow(
    seed,
    low,
    high,
    axon_radius,
    dendrite_radius,
    dendrite_fraction,
    branch_length,
    neuron_length,
    tortuosity,
    gap,
    target_fill,
):
    """Numba core of :func:`grow_forest`; returns node positions, radii, neurons, parents and the neuron count."""
    np.random.seed(seed)
    r_min, r_max = axon_radius[0], dendrite_radius[1]
    cell = GRID_CELL_FRACTION * (2.0 * r_max + gap)
    dims = np.empty(3, dtype=np.int64)
    for a in range(3):
        dims[a] = int((high[a] - low[a]) // cell) + 1
    cell_head = np.full(dims[0] * dims[1] * dims[2], -1, dtype=np.int64)
    n_buckets = 0
    records = np.empty((1024, BUCKET_NODES, 5))
    bucket_next = np.empty(1024, dtype=np.int64)
    bucket_fill = np.empty(1024, dtype=np.int64)
    capacity = 4096
    position = np.empty((capacity, 3))
    radius = np.empty(capacity)
    neuron = np.empty(capacity, dtype=np.int64)
    parent = np.empty(capacity, dtype=np.int64)
    count = 0
    stack_start = np.empty(8192, dtype=np.int64)
    stack_direction = np.empty((8192, 3))
    stack_radius = np.empty(8192)
    n_probes = 256
    probes = np.empty((n_probes, 3))
    for i in range(n_probes):
        for a in range(3):
            probes[i, a] = np.random.uniform(low[a], high[a])
    unfilled = np.ones(n_probes, dtype=np.bool_)
    candidate = np.empty(3)
    best_point = np.empty(3)
    n_neurons = 0
    failures = 0
    while failures < 12:
        best_free = -np.inf
        for _ in range(64):
            for a in range(3):
                candidate[a] = np.random.uniform(low[a], high[a])
            # only a candidate freer than the best so far matters: stop at any distance <= best_free
            free = _clearance(
                candidate,
                -1,
                2.0 * r_max,
                np.nextafter(best_free, np.inf),
                r_max,
                low,
                cell,
                dims,
                cell_head,
                bucket_next,
                bucket_fill,
                records,
            )
            if free > best_free:
                best_free = free
                best_point[:] = candidate
        room = best_free - gap
        if room < r_min:
            failures += 1
            continue
        dendrite = np.random.random() < dendrite_fraction
        lo, hi = (dendrite_radius[0], dendrite_radius[1]) if dendrite else (axon_radius[0], axon_radius[1])
        r0 = min(room, math.exp(np.random.uniform(math.log(lo), math.log(hi))))
        n_neurons += 1
        depth = 0
        budget = neuron_length * (1.0 if dendrite else 2.0)
        for step_index in range(-1, 100000000):
            # step_index == -1 adds the seed node; afterwards the loop grows branches from the stack until empty
            if step_index == -1:
                start, r, d = -1, r0, _unit(np.random.normal(0.0, 1.0, 3))
                p = best_point.copy()
            else:
                if depth == 0:
                    break
                depth -= 1
                start, d, r = stack_start[depth], stack_direction[depth].copy(), stack_radius[depth]
                p = position[start].copy()
            current = start
            limit_length = branch_length * (1.0 if dendrite else 3.0)
            growing = True
            first = True
            while growing:
                if first and step_index == -1:
                    q = p
                    first = False
                else:
                    step = min(200.0, max(40.0, 0.8 * r))
                    accepted = False
                    for attempt in range(6):
                        sigma = tortuosity * (1 + 2 * attempt)
                        trial = _unit(d + sigma * np.random.normal(0.0, 1.0, 3))
                        q = p + step * trial
                        needed = r + gap + 0.25 * step
                        if (
                            _clearance(
                                q,
                                n_neurons,
                                r + gap + step,
                                needed,
                                r_max,
                                low,
                                cell,
                                dims,
                                cell_head,
                                bucket_next,
                                bucket_fill,
                                records,
                            )
                            >= needed
                        ):
                            d = trial
                            accepted = True
                            break
                    if not accepted or budget <= 0.0:
                        break
                    budget -= step
                if count == capacity:
                    capacity *= 2
                    position2 = np.empty((capacity, 3))
                    position2[:count] = position[:count]
                    position = position2
                    radius2 = np.empty(capacity)
                    radius2[:count] = radius[:count]
                    radius = radius2
                    neuron2 = np.empty(capacity, dtype=np.int64)
                    neuron2[:count] = neuron[:count]
                    neuron = neuron2
                    parent2 = np.empty(capacity, dtype=np.int64)
                    parent2[:count] = parent[:count]
                    parent = parent2
                position[count] = q
                radius[count] = r
                neuron[count] = n_neurons
                parent[count] = current
                records, bucket_next, bucket_fill, n_buckets = _add_to_grid(
                    q, r, n_neurons, low, cell, dims, cell_head, bucket_next, bucket_fill, records, n_buckets
                )
                current = count
                count += 1
                p = q
                if parent[current] == -1:
                    # the seed node starts two branches, in opposite directions
                    for sign in (1.0, -1.0):
                        if depth < 8192:
                            stack_start[depth] = current
                            stack_direction[depth] = sign * d
                            stack_radius[depth] = r
                            depth += 1
                    break
                inside = True
                for a in range(3):
                    if q[a] < low[a] or q[a] > high[a]:
                        inside = False
                if not inside:
                    break
                step = min(200.0, max(40.0, 0.8 * r))
                if np.random.random() < step / limit_length and depth < 8192:
                    side = _unit(np.cross(d, _unit(np.random.normal(0.0, 1.0, 3))))
                    angle = np.random.uniform(0.6, 1.3)
                    stack_start[depth] = current
                    stack_direction[depth] = _unit(math.cos(angle) * d + math.sin(angle) * side)
                    stack_radius[depth] = max(r_min, r * np.random.uniform(0.5, 0.85))
                    depth += 1
                r = max(r_min, r * (1.0 - 0.002 * np.random.random()))
        if n_neurons % 4 == 0:
            filled = 0
            for i in range(n_probes):
                if unfilled[i]:
                    unfilled[i] = (
                        _clearance(
                            probes[i],
                            -1,
                            r_max,
                            0.0,
                            r_max,
                            low,
                            cell,
                            dims,
                            cell_head,
                            bucket_next,
                            bucket_fill,
                            records,
                        )
                        >= 0.0
                    )
                filled += not unfilled[i]
            if filled >= target_fill * n_probes:
                break
    return position[:count].copy(), radius[:count].copy(), neuron[:count].copy(), parent[:count].copy(), n_neurons


def grow_forest(params: SynthParams) -> NeuriteForest:
    """Grow densely packed, branching, non-overlapping tubes filling the volume (plus a margin), deterministically.

    Neurons are seeded one after another at the candidate point farthest from existing tubes; each grows in both
    directions from its seed as a persistent random walk, deflecting around other neurons' tubes and branching
    into thinner children, until it leaves the domain or is blocked. Seeding stops once ``target_fill`` of
    probe points lie inside tubes or no gap wide enough for the thinnest axon is left.
    """
    voxel = np.asarray(params.voxel_size, dtype=np.float64)
    extent = np.asarray(params.shape, dtype=np.float64) * voxel
    margin = params.dendrite_radius_nm[1]
    low, high = -margin - voxel / 2, extent + margin
    position, radius, neuron, parent, n_neurons = _grow(
        int(params.seed) % (2**32),
        low,
        high,
        np.asarray(params.axon_radius_nm, dtype=np.float64),
        np.asarray(params.dendrite_radius_nm, dtype=np.float64),
        params.dendrite_fraction,
        params.branch_length_nm,
        params.neuron_length_nm,
        params.tortuosity,
        2.0 * params.membrane_width_nm,
        params.target_fill,
    )
    rng = np.random.default_rng([params.seed, 0x5EED])
    organelle_position, organelle_radius = _place_organelles(params, position, radius, parent, rng)
    dropped, shifted, shift = _slice_defects(params, rng)
    return NeuriteForest(
        position,
        radius,
        neuron.astype(np.uint32),
        parent,
        organelle_position,
        organelle_radius,
        dropped,
        shifted,
        shift,
        int(n_neurons),
    )


def _place_organelles(params, position, radius, parent, rng):
    """Dark spheres (mitochondria, vesicle clouds) on centre-line segments, kept well inside their tube."""
    child = np.flatnonzero(parent >= 0)
    if len(child) == 0:
        return np.zeros((0, 3)), np.zeros(0)
    start, end, r = position[parent[child]], position[child], radius[child]
    lengths = np.linalg.norm(end - start, axis=1)
    counts = rng.poisson(lengths * params.organelles_per_um / 1000.0 * (r > 60))
    which = np.repeat(np.arange(len(child)), counts)
    t = rng.uniform(size=len(which))
    centre = start[which] + t[:, None] * (end[which] - start[which])
    organelle_radius = r[which] * rng.uniform(0.2, 0.45, size=len(which))
    offset = rng.normal(size=centre.shape)
    offset /= np.linalg.norm(offset, axis=1, keepdims=True) + 1e-12
    centre += offset * (r[which] - organelle_radius - 10.0).clip(0)[:, None] * rng.uniform(0, 0.8, size=(len(which), 1))
    return centre, organelle_radius


def _slice_defects(params, rng):
    z = params.shape[2]
    dropped = np.flatnonzero(rng.random(z) < params.dropped_slice_probability)
    shifted = np.flatnonzero(rng.random(z) < params.shifted_slice_probability)
    shifted = np.setdiff1d(shifted, dropped)
    m = params.max_slice_shift_voxels
    shift = rng.integers(-m, m + 1, size=(len(shifted), 2))
    return dropped.astype(np.int64), shifted.astype(np.int64), shift.astype(np.int64)


# --------------------------------------------------------------------------------------------------------------
# Rasterisation: every output voxel is a pure function of its global index, so blocks agree exactly.

CELL_VOXELS = (4, 4, 2)
"""Voxels per pruning cell (x, y, z): candidates are pruned per cell, then evaluated per voxel."""

GROUP_CELLS = (4, 4, 4)
"""Cells per pruning group (x, y, z): a group prunes all of a block's segments, its cells prune the group's list."""


@numba.njit(cache=True, nogil=True)
def _capsule_distance(px, py, pz, sx, sy, sz, ex, ey, ez, radius):
    """Distance (nm) from point p to the surface of the capsule s–e of ``radius``; negative inside."""
    dx, dy, dz = ex - sx, ey - sy, ez - sz
    length2 = dx * dx + dy * dy + dz * dz
    t = 0.0
    if length2 > 0.0:
        t = ((px - sx) * dx + (py - sy) * dy + (pz - sz) * dz) / length2
        t = min(1.0, max(0.0, t))
    qx, qy, qz = px - (sx + t * dx), py - (sy + t * dy), pz - (sz + t * dz)
    return math.sqrt(qx * qx + qy * qy + qz * qz) - radius


@numba.njit(cache=True, nogil=True)
def _hash_uniform(ix, iy, iz, salt):
    """A uniform number in [0, 1) from integer coordinates (splitmix64-style mixing); the same everywhere."""
    h = np.uint64(ix) * np.uint64(0x9E3779B97F4A7C15)
    h ^= np.uint64(iy) * np.uint64(0xC2B2AE3D27D4EB4F) + np.uint64(0x165667B19E3779F9)
    h ^= np.uint64(iz) * np.uint64(0x27D4EB2F165667C5) + np.uint64(salt)
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return float(h >> np.uint64(11)) / 9007199254740992.0


@numba.njit(cache=True, nogil=True)
def _value_noise(x, y, z, spacing, salt):
    """Smooth noise in [0, 1): trilinear interpolation of hashed values on a lattice of ``spacing`` nm."""
    fx, fy, fz = x / spacing, y / spacing, z / spacing
    ix, iy, iz = math.floor(fx), math.floor(fy), math.floor(fz)
    tx, ty, tz = fx - ix, fy - iy, fz - iz
    total = 0.0
    for a in range(2):
        wa = tx if a else 1.0 - tx
        for b in range(2):
            wb = ty if b else 1.0 - ty
            for c in range(2):
                wc = tz if c else 1.0 - tz
                total += wa * wb * wc * _hash_uniform(ix + a, iy + b, iz + c, salt)
    return total


@numba.njit(cache=True, nogil=True)
def _prune(px, py, pz, candidates, n_candidates, start, end, radius, slack, centre_distance, kept):
    """Of ``candidates[:n_candidates]`` (segment indices, in forest order), keep in ``kept`` those whose capsule lies
    within ``slack`` nm of the nearest one's distance from (px, py, pz); returns how many (order is preserved)."""
    best = np.inf
    for k in range(n_candidates):
        s = candidates[k]
        d = _capsule_distance(
            px, py, pz, start[s, 0], start[s, 1], start[s, 2], end[s, 0], end[s, 1], end[s, 2], radius[s]
        )
        centre_distance[k] = d
        best = min(best, d)
    n_kept = 0
    for k in range(n_candidates):
        if centre_distance[k] < best + slack:
            kept[n_kept] = candidates[k]
            n_kept += 1
    return n_kept


@numba.njit(cache=True, nogil=True)
def _rasterise(
    origin,
    shape,
    voxel,
    cell,
    shift_x,
    shift_y,
    start,
    end,
    radius,
    neuron,
    membrane_width,
    max_gap,
    margin_cap,
    labels,
    nearest,
    margin,
):
    """Label each voxel of the region ``origin + [0, shape)`` (voxel indices, x, y, z) by its nearest neuron.

    Writes ``labels (X, Y, Z) uint32`` (0 = membrane or extracellular space), ``nearest`` = f₁ (nm) and
    ``margin`` = min(f₂ − f₁, margin_cap) (nm), where f₁, f₂ are the signed distances to the nearest neuron
    and to the nearest other neuron. ``shift_x``/``shift_y`` (nm) move the sampling position (shifted slices).

    Candidates are pruned with the 1-Lipschitz bound of the distance, twice: per group of
    ``GROUP_CELLS`` cells from all segments, then per cell of ``CELL_VOXELS`` from its group's list. A cell keeps
    every segment within ``2 h + margin_cap`` of its nearest (h: the cell's half-diagonal), which holds every segment
    that can change f₁, the label or the capped margin of a voxel in it; a group keeps every segment within
    ``2 H + 2 h + margin_cap`` of its nearest (H: the group's half-diagonal), which holds every segment any of its
    cells keeps. So the result does not depend on the cells or groups.
    """
    n_segments = start.shape[0]
    cx, cy, cz = cell[0], cell[1], cell[2]
    gx, gy, gz = cx * GROUP_CELLS[0], cy * GROUP_CELLS[1], cz * GROUP_CELLS[2]
    cell_half = 0.5 * math.sqrt((cx * voxel[0]) ** 2 + (cy * voxel[1]) ** 2 + (cz * voxel[2]) ** 2)
    group_half = 0.5 * math.sqrt((gx * voxel[0]) ** 2 + (gy * voxel[1]) ** 2 + (gz * voxel[2]) ** 2)
    every = np.arange(n_segments)
    centre_distance = np.empty(n_segments)
    group_kept = np.empty(n_segments, dtype=np.int64)
    kept = np.empty(n_segments, dtype=np.int64)
    for gx0 in range(0, shape[0], gx):
        for gy0 in range(0, shape[1], gy):
            for gz0 in range(0, shape[2], gz):
                gx1, gy1, gz1 = min(gx0 + gx, shape[0]), min(gy0 + gy, shape[1]), min(gz0 + gz, shape[2])
                n_group = _prune(
                    (origin[0] + 0.5 * (gx0 + gx1 - 1)) * voxel[0] + shift_x,
                    (origin[1] + 0.5 * (gy0 + gy1 - 1)) * voxel[1] + shift_y,
                    (origin[2] + 0.5 * (gz0 + gz1 - 1)) * voxel[2],
                    every,
                    n_segments,
                    start,
                    end,
                    radius,
                    2.0 * group_half + 2.0 * cell_half + margin_cap,
                    centre_distance,
                    group_kept,
                )
                for x0 in range(gx0, gx1, cx):
                    for y0 in range(gy0, gy1, cy):
                        for z0 in range(gz0, gz1, cz):
                            x1, y1, z1 = min(x0 + cx, gx1), min(y0 + cy, gy1), min(z0 + cz, gz1)
                            n_kept = _prune(
                                (origin[0] + 0.5 * (x0 + x1 - 1)) * voxel[0] + shift_x,
                                (origin[1] + 0.5 * (y0 + y1 - 1)) * voxel[1] + shift_y,
                                (origin[2] + 0.5 * (z0 + z1 - 1)) * voxel[2],
                                group_kept,
                                n_group,
                                start,
                                end,
                                radius,
                                2.0 * cell_half + margin_cap,
                                centre_distance,
                                kept,
                            )
                            _label_cell(
                                origin,
                                voxel,
                                shift_x,
                                shift_y,
                                x0,
                                x1,
                                y0,
                                y1,
                                z0,
                                z1,
                                kept,
                                n_kept,
                                start,
                                end,
                                radius,
                                neuron,
                                membrane_width,
                                max_gap,
                                margin_cap,
                                labels,
                                nearest,
                                margin,
                            )


@numba.njit(cache=True, nogil=True)
def _label_cell(
    origin,
    voxel,
    shift_x,
    shift_y,
    x0,
    x1,
    y0,
    y1,
    z0,
    z1,
    kept,
    n_kept,
    start,
    end,
    radius,
    neuron,
    membrane_width,
    max_gap,
    margin_cap,
    labels,
    nearest,
    margin,
):
    """The voxels ``[x0, x1) × [y0, y1) × [z0, z1)`` of :func:`_rasterise`, from the cell's kept segments.

    The kept capsules are first copied into one contiguous table (start, direction, length², radius), so the
    per-voxel loop reads memory in order; each distance is computed with the same operations, in the same order,
    as :func:`_capsule_distance`, so the values are bit for bit the same."""
    table = np.empty((n_kept, 8))
    for k in range(n_kept):
        s = kept[k]
        dx, dy, dz = end[s, 0] - start[s, 0], end[s, 1] - start[s, 1], end[s, 2] - start[s, 2]
        length2 = dx * dx + dy * dy + dz * dz
        table[k, 0], table[k, 1], table[k, 2] = start[s, 0], start[s, 1], start[s, 2]
        table[k, 3], table[k, 4], table[k, 5] = dx, dy, dz
        table[k, 6] = length2
        table[k, 7] = radius[s]
    for x in range(x0, x1):
        vx = (origin[0] + x) * voxel[0] + shift_x
        for y in range(y0, y1):
            vy = (origin[1] + y) * voxel[1] + shift_y
            for z in range(z0, z1):
                vz = (origin[2] + z) * voxel[2]
                first, second, owner = np.inf, np.inf, np.uint32(0)
                for k in range(n_kept):
                    sx, sy, sz = table[k, 0], table[k, 1], table[k, 2]
                    dx, dy, dz, length2 = table[k, 3], table[k, 4], table[k, 5], table[k, 6]
                    t = 0.0
                    if length2 > 0.0:
                        t = ((vx - sx) * dx + (vy - sy) * dy + (vz - sz) * dz) / length2
                        t = min(1.0, max(0.0, t))
                    qx, qy, qz = vx - (sx + t * dx), vy - (sy + t * dy), vz - (sz + t * dz)
                    d = math.sqrt(qx * qx + qy * qy + qz * qz) - table[k, 7]
                    owner_k = neuron[kept[k]]
                    if owner_k == owner:
                        first = min(first, d)
                    elif d < first:
                        second = first
                        first = d
                        owner = owner_k
                    elif d < second:
                        second = d
                gap = min(second - first, margin_cap)
                nearest[x, y, z] = first
                margin[x, y, z] = gap
                if first > max_gap or gap < membrane_width:
                    labels[x, y, z] = 0
                else:
                    labels[x, y, z] = owner


@numba.njit(cache=True, nogil=True)
def _shade(
    origin,
    voxel,
    shift_x,
    shift_y,
    labels,
    nearest,
    margin,
    organelle,
    seed,
    membrane_width,
    max_gap,
    contrast,
    intensity,
):
    """Noise-free image intensity (0..255 float) of each voxel: textured cytoplasm, dark membranes and organelles,
    grey extracellular space."""
    for x in range(labels.shape[0]):
        vx = (origin[0] + x) * voxel[0] + shift_x
        for y in range(labels.shape[1]):
            vy = (origin[1] + y) * voxel[1] + shift_y
            for z in range(labels.shape[2]):
                vz = (origin[2] + z) * voxel[2]
                texture = _value_noise(vx, vy, vz, 60.0, seed) - 0.5
                grain = _value_noise(vx, vy, vz, 25.0, seed + 1) - 0.5
                value = 172.0 + 26.0 * texture + 14.0 * grain
                if labels[x, y, z] > 0:
                    value += 24.0 * (_hash_uniform(labels[x, y, z], 7, 11, seed) - 0.5)
                if nearest[x, y, z] > max_gap:
                    value = 140.0 + 10.0 * texture
                width = 0.8 * membrane_width + 6.0
                value -= contrast * 118.0 * math.exp(-((margin[x, y, z] / width) ** 2))
                value -= contrast * 75.0 * organelle[x, y, z]
                intensity[x, y, z] = value


@numba.njit(cache=True, nogil=True)
def _organelles(origin, shape, voxel, shift_x, shift_y, centre, radius, out):
    """Per voxel the soft coverage (0..1) of the dark organelle spheres, edge width about 15 nm."""
    for o in range(centre.shape[0]):
        reach = radius[o] + 15.0
        lo = np.empty(3, dtype=np.int64)
        hi = np.empty(3, dtype=np.int64)
        shifts = (shift_x, shift_y, 0.0)
        for a in range(3):
            lo[a] = max(0, int(math.floor((centre[o, a] - shifts[a] - reach) / voxel[a])) - origin[a])
            hi[a] = min(shape[a], int(math.ceil((centre[o, a] - shifts[a] + reach) / voxel[a])) - origin[a] + 1)
        for x in range(lo[0], hi[0]):
            dx = (origin[0] + x) * voxel[0] + shift_x - centre[o, 0]
            for y in range(lo[1], hi[1]):
                dy = (origin[1] + y) * voxel[1] + shift_y - centre[o, 1]
                for z in range(lo[2], hi[2]):
                    dz = (origin[2] + z) * voxel[2] - centre[o, 2]
                    cover = min(1.0, max(0.0, (radius[o] - math.sqrt(dx * dx + dy * dy + dz * dz)) / 15.0 + 0.5))
                    out[x, y, z] = max(out[x, y, z], cover)


@numba.njit(cache=True, nogil=True)
def _add_noise(origin, image, sigma, seed):
    """Add Gaussian noise of ``sigma`` grey levels, hashed from each voxel's global index (Box–Muller)."""
    for x in range(image.shape[0]):
        for y in range(image.shape[1]):
            for z in range(image.shape[2]):
                u1 = max(_hash_uniform(origin[0] + x, origin[1] + y, origin[2] + z, seed + 101), 1e-12)
                u2 = _hash_uniform(origin[0] + x, origin[1] + y, origin[2] + z, seed + 202)
                image[x, y, z] += sigma * math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def _select_segments(forest: NeuriteForest | ForestRegion, low_nm: np.ndarray, high_nm: np.ndarray, reach: float):
    """Segments (in forest order) whose capsule comes within ``reach`` nm of the box [low, high] (nm)."""
    start, end, radius, neuron = forest.segment_arrays
    box_low = np.minimum(start, end) - radius[:, None]
    box_high = np.maximum(start, end) + radius[:, None]
    hit = np.all(box_high >= low_nm - reach, axis=1) & np.all(box_low <= high_nm + reach, axis=1)
    return (
        np.ascontiguousarray(start[hit]),
        np.ascontiguousarray(end[hit]),
        np.ascontiguousarray(radius[hit]),
        np.ascontiguousarray(neuron[hit]),
    )


def _segment_reach(params: SynthParams) -> float:
    """How far (nm) from a region's voxel box a capsule's bounding box may lie and still shape the region."""
    voxel = np.asarray(params.voxel_size, dtype=np.float64)
    margin_cap = max(3.0 * params.membrane_width_nm, 40.0)
    half_diagonal = 0.5 * float(np.linalg.norm(np.asarray(CELL_VOXELS) * voxel))
    return params.max_gap_nm + margin_cap + 2.0 * half_diagonal + 1.0


ORGANELLE_REACH_NM = 20.0
"""How far (nm) from a region's voxel box an organelle's sphere may lie and still be drawn there."""


@dataclass
class ForestRegion:
    """The part of a :class:`NeuriteForest` that one write region's rendering reads: the capsules and organelles
    near its read region (blur halo and slice shifts included), in forest order, and the forest's slice defects.
    :func:`render_block` gives the same arrays from it as from the whole forest, and a block task then carries
    kilobytes to megabytes instead of the whole forest (168 MB at 1536³), so worker memory does not grow with the
    volume."""

    segment_arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    organelle_position: np.ndarray
    organelle_radius: np.ndarray
    dropped_slices: np.ndarray
    shifted_slices: np.ndarray
    slice_shift: np.ndarray


def forest_regions(forest: NeuriteForest, params: SynthParams, bounds) -> dict[tuple[int, int, int], ForestRegion]:
    """One :class:`ForestRegion` per block of a grid whose block boundaries along each axis are ``bounds`` (three
    increasing arrays of voxel positions from 0 to the axis size): block ``(i, j, k)`` is the write region
    ``[bounds[0][i], bounds[0][i + 1]) × …``. Found by binning every capsule's and organelle's bounding box into
    the blocks it can reach (binary searches per axis and one sort, not a scan per block).

    A capsule is kept for a block when its box, grown by the rasteriser's reach, meets the block's read box (write
    region ± blur halo) grown by the largest slice shift: a superset of what :func:`rasterise_region` selects for
    the block and for each of its shifted slices. Selection keeps forest order, so rendering from the region is
    exact."""
    voxel = np.asarray(params.voxel_size, dtype=np.float64)
    halo = np.asarray(blur_halo(params), dtype=np.int64)
    shift = float(np.abs(forest.slice_shift).max(initial=0)) * float(voxel[:2].max())
    bounds = [np.asarray(b, dtype=np.int64) for b in bounds]
    box_low = [(b[:-1] - h) * v - shift - 1.0 for b, h, v in zip(bounds, halo, voxel)]
    box_high = [(b[1:] + h - 1) * v + shift + 1.0 for b, h, v in zip(bounds, halo, voxel)]
    blocks = tuple(len(b) - 1 for b in bounds)
    start, end, radius, neuron = forest.segment_arrays
    reach = _segment_reach(params)
    segments = _bin_boxes(
        np.minimum(start, end) - radius[:, None] - reach,
        np.maximum(start, end) + radius[:, None] + reach,
        box_low,
        box_high,
        blocks,
    )
    centre, organelle_radius = forest.organelle_position, forest.organelle_radius
    organelles = _bin_boxes(
        centre - organelle_radius[:, None] - ORGANELLE_REACH_NM,
        centre + organelle_radius[:, None] + ORGANELLE_REACH_NM,
        box_low,
        box_high,
        blocks,
    )
    regions = {}
    for linear, index in enumerate(np.ndindex(*blocks)):
        s, o = segments[linear], organelles[linear]
        regions[index] = ForestRegion(
            (
                np.ascontiguousarray(start[s]),
                np.ascontiguousarray(end[s]),
                np.ascontiguousarray(radius[s]),
                np.ascontiguousarray(neuron[s]),
            ),
            np.ascontiguousarray(centre[o]),
            np.ascontiguousarray(organelle_radius[o]),
            forest.dropped_slices,
            forest.shifted_slices,
            forest.slice_shift,
        )
    return regions


def _bin_boxes(item_low, item_high, box_low, box_high, blocks) -> list[np.ndarray]:
    """Per block (raster order), the increasing indices of the items whose box ``[item_low, item_high]`` (nm,
    ``(N, 3)``) meets the block's box, the product of the per-axis intervals ``[box_low[a][i], box_high[a][i]]``
    (each increasing in ``i``)."""
    first = [np.searchsorted(box_high[a], item_low[:, a], side="left") for a in range(3)]
    last = [np.searchsorted(box_low[a], item_high[:, a], side="right") for a in range(3)]  # exclusive
    span = [np.maximum(end - begin, 0) for begin, end in zip(first, last)]
    items = np.arange(len(item_low), dtype=np.int64)
    pair_block, pair_item = [], []
    for dx in range(int(span[0].max(initial=0))):
        for dy in range(int(span[1].max(initial=0))):
            for dz in range(int(span[2].max(initial=0))):
                keep = (dx < span[0]) & (dy < span[1]) & (dz < span[2])
                pair_block.append(
                    np.ravel_multi_index((first[0][keep] + dx, first[1][keep] + dy, first[2][keep] + dz), blocks)
                )
                pair_item.append(items[keep])
    n_blocks = int(np.prod(blocks))
    if not pair_block:
        return [np.zeros(0, dtype=np.int64) for _ in range(n_blocks)]
    block_of, item = np.concatenate(pair_block), np.concatenate(pair_item)
    order = np.lexsort((item, block_of))
    block_of, item = block_of[order], item[order]
    cuts = np.searchsorted(block_of, np.arange(n_blocks + 1))
    return [item[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


def rasterise_region(forest: NeuriteForest | ForestRegion, params: SynthParams, origin, shape, shift_nm=(0.0, 0.0)):
    """Labels and noise-free intensity of the voxel region ``origin + [0, shape)`` (x, y, z; may leave the volume).

    Returns ``labels (X, Y, Z) uint32`` and ``intensity (X, Y, Z) float32`` (grey levels before blur and noise).
    """
    origin = np.asarray(origin, dtype=np.int64)
    shape = np.asarray(shape, dtype=np.int64)
    voxel = np.asarray(params.voxel_size, dtype=np.float64)
    shift = np.array([shift_nm[0], shift_nm[1], 0.0])
    margin_cap = max(3.0 * params.membrane_width_nm, 40.0)
    reach = _segment_reach(params)
    low = origin * voxel + shift
    high = (origin + shape - 1) * voxel + shift
    start, end, radius, neuron = _select_segments(forest, low, high, reach)
    labels = np.zeros(tuple(shape), dtype=np.uint32)
    nearest = np.empty(tuple(shape), dtype=np.float64)
    margin = np.empty(tuple(shape), dtype=np.float64)
    _rasterise(
        origin,
        shape,
        voxel,
        np.asarray(CELL_VOXELS, dtype=np.int64),
        shift[0],
        shift[1],
        start,
        end,
        radius,
        neuron,
        params.membrane_width_nm,
        params.max_gap_nm,
        margin_cap,
        labels,
        nearest,
        margin,
    )
    organelle = np.zeros(tuple(shape), dtype=np.float64)
    centre, organelle_radius = forest.organelle_position, forest.organelle_radius
    near = np.all(
        (centre + organelle_radius[:, None] + ORGANELLE_REACH_NM >= low)
        & (centre - organelle_radius[:, None] - ORGANELLE_REACH_NM <= high),
        axis=1,
    )
    _organelles(
        origin,
        shape,
        voxel,
        shift[0],
        shift[1],
        np.ascontiguousarray(centre[near]),
        np.ascontiguousarray(organelle_radius[near]),
        organelle,
    )
    intensity = np.empty(tuple(shape), dtype=np.float32)
    _shade(
        origin,
        voxel,
        shift[0],
        shift[1],
        labels,
        nearest,
        margin,
        organelle,
        np.uint64(params.seed),
        params.membrane_width_nm,
        params.max_gap_nm,
        params.contrast,
        intensity,
    )
    return labels, intensity


def blur_halo(params: SynthParams) -> tuple[int, int, int]:
    """Voxels of context each side that the Gaussian blur needs (scipy's radius, truncate 4)."""
    return triple(4.0 * s + 0.5 for s in params.blur_sigma_voxels)


def render_block(forest: NeuriteForest | ForestRegion, params: SynthParams, origin, shape):
    """The finished image and segmentation of one write region, ``origin + [0, shape)`` in voxels (x, y, z).

    Returns ``image (X, Y, Z) uint8`` and ``segmentation (X, Y, Z) uint32``; the read region adds the blur halo,
    so any tiling of a volume gives the same arrays.
    """
    from scipy import ndimage

    origin = np.asarray(origin, dtype=np.int64)
    shape = np.asarray(shape, dtype=np.int64)
    halo = np.asarray(blur_halo(params), dtype=np.int64)
    read_origin, read_shape = origin - halo, shape + 2 * halo
    labels, intensity = rasterise_region(forest, params, read_origin, read_shape)
    voxel = params.voxel_size
    for z, (sx, sy) in zip(forest.shifted_slices, forest.slice_shift):
        local = z - read_origin[2]
        if 0 <= local < read_shape[2]:
            slab_origin = (read_origin[0], read_origin[1], z)
            _, slab = rasterise_region(
                forest, params, slab_origin, (read_shape[0], read_shape[1], 1), shift_nm=(sx * voxel[0], sy * voxel[1])
            )
            intensity[:, :, local] = slab[:, :, 0]
    if any(params.blur_sigma_voxels):
        intensity = ndimage.gaussian_filter(intensity, params.blur_sigma_voxels, truncate=4.0)
    write = tuple(slice(h, h + n) for h, n in zip(halo, shape))
    image = np.ascontiguousarray(intensity[write], dtype=np.float64)
    _add_noise(origin, image, params.noise_sigma, np.uint64(params.seed))
    for z in forest.dropped_slices:
        if origin[2] <= z < origin[2] + shape[2]:
            image[:, :, z - origin[2]] = 0.0
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, np.ascontiguousarray(labels[write])
