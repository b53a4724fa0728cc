"""Agglomeration decoding (waterz): the pure kernel of ``decode_affinity_waterz``.

Two steps, as in waterz (Funke et al.; the SNEMI3D path of PyTorch Connectomics):

1. *fragments*: a watershed of the short-range affinities (waterz's ``zwatershed``: steepest ascent with plateau
   division; voxels whose strongest edge is at most ``aff_low`` are background 0, edges of at least ``aff_high``
   join their voxels outright);
2. *agglomeration*: the region adjacency graph of the fragments is merged greedily, cheapest edge first, until the
   cheapest edge scores ``>= threshold``; an edge's score is one minus a statistic of the affinities between its two
   regions (:data:`SCORING_FUNCTIONS`), recomputed as regions merge.

Conventions. nisbflow's affinities are ``(C, X, Y, Z)`` with source-voxel storage: ``aff[c][x, y, z]`` joins voxel
``v`` with ``v + e_c`` (e_0, e_1, e_2 = x, y, z; docs/design.md). waterz reads ``(3, Z, Y, X) float32`` where
``w[d][z, y, x]`` joins a voxel with its *predecessor* along d (d = 0, 1, 2 = z, y, x), and ignores index 0 along d.
:func:`to_waterz_affinities` converts one to the other; segmentations come back ``(X, Y, Z)``.

In memory, :func:`decode_affinity_waterz` runs waterz itself. The block-wise decoder needs the agglomeration on a
graph whose edge statistics were summed block by block, which waterz cannot take; :func:`agglomerate_graph`
implements waterz's ``IterativeRegionMerging`` on such a graph (same queue discipline, same statistics, same scores
in float32), and the tests hold it to waterz on whole volumes.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from nisbflow.config.schema import WATERZ_SCORING_NAMES
from nisbflow.decode.kernel import check_affinities, check_mask, check_thresholds, segmentation_dtype
from nisbflow.errors import ConfigError

HISTOGRAM_BINS = 256
"""Bins of waterz's histogram quantile statistic (``HistogramQuantileAffinity<…, 256>``)."""

DEFAULT_SCORING = "aff85_his256"
"""PyTorch Connectomics' default waterz merge function (its SNEMI3D tutorial): one minus the 85th percentile of a
256-bin histogram of the affinities between two regions, each initial edge entering with its maximum affinity."""

DEFAULT_AFF_LOW = 0.0001
DEFAULT_AFF_HIGH = 0.9999
"""waterz's own watershed thresholds: background at or below ``low``, plateaus merged at or above ``high``."""


@dataclass(frozen=True)
class Scoring:
    """One edge scoring function. ``kind``: ``"mean"`` (mean affinity) or ``"quantile"`` (histogram quantile with
    the initial edges entering at their maximum affinity); ``quantile``: Q in percent for ``"quantile"``."""

    name: str
    kind: str
    quantile: int = 0

    @property
    def waterz(self) -> str:
        """The C++ type string waterz compiles (both kinds are in its prebuilt wheels)."""
        if self.kind == "mean":
            return "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>"
        return f"OneMinus<HistogramQuantileAffinity<RegionGraphType, {self.quantile}, ScoreValue, {HISTOGRAM_BINS}>>"


SCORING_FUNCTIONS = {
    name: Scoring(name, "mean") if name == "mean_aff" else Scoring(name, "quantile", int(name[3:].split("_")[0]))
    for name in WATERZ_SCORING_NAMES
}
"""Scoring functions by the names PyTorch Connectomics gives them: ``mean_aff`` and ``affQ_his256`` for Q = 10, 15,
…, 95 (waterz ships these precompiled)."""


def scoring_function(name: str) -> Scoring:
    """The :class:`Scoring` called ``name``; a :class:`~nisbflow.errors.ConfigError` lists the known names."""
    try:
        return SCORING_FUNCTIONS[name]
    except KeyError:
        known = ", ".join(n for n in SCORING_FUNCTIONS if n in ("mean_aff", "aff50_his256", "aff85_his256"))
        raise ConfigError(
            f"decoding.waterz.scoring: unknown scoring function {name!r}; use mean_aff or affQ_his256 "
            f"with Q in 10, 15, …, 95 (e.g. {known})"
        ) from None


def check_watershed_thresholds(aff_low: float, aff_high: float) -> None:
    if not 0.0 <= aff_low < aff_high <= 1.0:
        raise ConfigError(
            f"decoding.waterz.aff_low ({aff_low}) and aff_high ({aff_high}) must satisfy 0 <= aff_low < aff_high <= 1"
        )


def _waterz():
    try:
        import waterz
    except ImportError as error:  # pragma: no cover - waterz is a dependency
        raise ImportError("decoding.method=waterz needs the waterz package: pip install waterz") from error
    return waterz


# ----------------------------------------------------------------------------------------------------------------
# conventions


def clean_affinities(affinities: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``(3, X, Y, Z) float32`` short-range affinities with NaN → 0 (no edge) and every edge stored at a voxel where
    ``mask == 0`` set to 0; ``affinities`` is ``(C >= 3, X, Y, Z)`` float16/float32."""
    values = np.array(affinities[:3], dtype=np.float32)
    np.nan_to_num(values, copy=False, nan=0.0)
    if mask is not None:
        values[:, np.asarray(mask) == 0] = 0.0
    return values


def to_waterz_affinities(affinities: np.ndarray) -> np.ndarray:
    """nisbflow's ``(3, X, Y, Z)`` source-voxel affinities → waterz's ``(3, Z, Y, X) float32`` predecessor edges,
    C-contiguous.

    ``out[0][z, y, x] = aff[2][x, y, z - 1]`` (the z edge into the voxel), ``out[1][z, y, x] = aff[1][x, y - 1, z]``,
    ``out[2][z, y, x] = aff[0][x - 1, y, z]``; the first plane along each edge's axis is 0 (waterz never reads it),
    and nisbflow's edges that leave the volume at its upper faces have no place in waterz's layout.
    """
    spatial = affinities.shape[1:]
    out = np.zeros((3,) + tuple(reversed(spatial)), dtype=np.float32)
    zyx = np.asarray(affinities[:3], dtype=np.float32).transpose(0, 3, 2, 1)  # channels still x, y, z
    out[0, 1:] = zyx[2, :-1]
    out[1, :, 1:] = zyx[1, :, :-1]
    out[2, :, :, 1:] = zyx[0, :, :, :-1]
    return out


_STDOUT_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_stdout():
    """Silence waterz's progress lines: its C++ ``std::cout`` (file descriptor 1, pointed at /dev/null) and its
    Python ``print`` (``sys.stdout``)."""
    with _STDOUT_LOCK:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 1)
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def run_waterz(
    waterz_affinities: np.ndarray,
    thresholds,
    scoring: Scoring,
    aff_low: float = DEFAULT_AFF_LOW,
    aff_high: float = DEFAULT_AFF_HIGH,
    fragments: np.ndarray | None = None,
) -> list[np.ndarray]:
    """waterz's ``agglomerate`` on ``(3, Z, Y, X) float32`` affinities: one ``(Z, Y, X) uint64`` segmentation (waterz's
    own ids) per threshold, thresholds ascending. ``fragments`` (``(Z, Y, X) uint64``) skips the watershed."""
    waterz = _waterz()
    with _quiet_stdout():
        return [
            np.array(segmentation, copy=True)
            for segmentation in waterz.agglomerate(
                waterz_affinities,
                sorted(float(t) for t in thresholds),
                fragments=fragments,
                aff_threshold_low=aff_low,
                aff_threshold_high=aff_high,
                scoring_function=scoring.waterz,
            )
        ]


@numba.njit(cache=True, nogil=True)
def _raster_relabel(labels, out):
    """``out``: ``labels`` renumbered 1..N in C order of each label's first voxel (0 stays 0); returns N."""
    flat_in = labels.ravel()
    flat_out = out.ravel()
    largest = np.int64(0)
    for i in range(flat_in.size):
        if np.int64(flat_in[i]) > largest:
            largest = np.int64(flat_in[i])
    table = np.zeros(largest + 1, dtype=np.int64)
    n = 0
    for i in range(flat_in.size):
        label = np.int64(flat_in[i])
        if label == 0:
            flat_out[i] = 0
            continue
        if table[label] == 0:
            n += 1
            table[label] = n
        flat_out[i] = table[label]
    return n


def raster_relabel(labels: np.ndarray, dtype=None) -> tuple[np.ndarray, int]:
    """``(X, Y, Z)`` labels renumbered 1..N in raster (C) order of each one's first voxel, 0 kept; returns the new
    array (``dtype``, default the narrowest of uint32/uint64 that fits) and N."""
    labels = np.ascontiguousarray(labels)
    wide = np.empty(labels.shape, dtype=np.uint64)
    n = int(_raster_relabel(labels, wide))
    return wide.astype(dtype or segmentation_dtype(n), copy=False), n


def decode_affinity_waterz(
    affinities,
    thresholds=(0.3,),
    mask=None,
    *,
    scoring: str = DEFAULT_SCORING,
    aff_low: float = DEFAULT_AFF_LOW,
    aff_high: float = DEFAULT_AFF_HIGH,
) -> list[np.ndarray]:
    """Watershed fragments and agglomeration of in-memory affinities with waterz, one segmentation per threshold.

    ``affinities``: ``(C >= 3, X, Y, Z)`` float16/float32, source-voxel storage (channels 0..2 are read).
    ``thresholds``: agglomeration thresholds in [0, 1] (merge while the cheapest edge scores below one), all from
    one pass. ``mask``: optional ``(X, Y, Z)``; 0 removes every edge stored at that voxel. NaN affinities count as 0.
    Returns, in the order of ``thresholds``, ``(X, Y, Z)`` uint32 segmentations (uint64 from 2³² segments), 0 =
    background, ids 1..N in raster order of each segment's first voxel: waterz's own result on
    :func:`to_waterz_affinities`, transposed back and renumbered.
    """
    affinities = np.asarray(affinities)
    check_affinities(affinities.shape, affinities.dtype)
    if mask is not None:
        check_mask(np.shape(mask), affinities.shape[1:])
    values = check_thresholds(thresholds)
    check_watershed_thresholds(aff_low, aff_high)
    chosen = scoring_function(scoring)
    nan = int((~np.isfinite(affinities[:3])).sum())
    if nan:
        warnings.warn(
            f"affinities: {nan} NaN or infinite affinities (not probabilities: NaN counts as 0, no edge; "
            "±inf as the largest or smallest value)",
            RuntimeWarning,
            stacklevel=2,
        )
    ascending = sorted(set(values))
    results = run_waterz(to_waterz_affinities(clean_affinities(affinities, mask)), ascending, chosen, aff_low, aff_high)
    by_threshold = {t: raster_relabel(seg.transpose(2, 1, 0))[0] for t, seg in zip(ascending, results)}
    return [by_threshold[t] for t in values]


# ----------------------------------------------------------------------------------------------------------------
# fragments and region adjacency graph of one block


def watershed_fragments(
    affinities: np.ndarray, aff_low: float = DEFAULT_AFF_LOW, aff_high: float = DEFAULT_AFF_HIGH
) -> tuple[np.ndarray, int]:
    """waterz's watershed of ``(3, X, Y, Z) float32`` cleaned affinities (:func:`clean_affinities`): ``(X, Y, Z)
    uint32`` fragments, 0 = background, and their number N.

    The ids are waterz's own, 1..N in the order of each fragment's first voxel in waterz's (Z, Y, X) raster, i.e.
    with x varying fastest (:func:`fragment_order_relabel` keeps that order for a crop), so the region adjacency
    graph's edges come in waterz's order too."""
    [fragments] = run_waterz(
        to_waterz_affinities(affinities), [0.0], SCORING_FUNCTIONS["mean_aff"], aff_low, aff_high
    )  # threshold 0 merges nothing: the watershed alone
    n = int(fragments.max(initial=0))
    return np.ascontiguousarray(fragments.transpose(2, 1, 0)).astype(np.uint32), n


def fragment_order_relabel(fragments: np.ndarray) -> tuple[np.ndarray, int]:
    """``(X, Y, Z)`` fragment ids renumbered 1..N in order of each one's first voxel with x varying fastest (waterz's
    raster), 0 kept: a crop of :func:`watershed_fragments` numbered as the watershed would number it."""
    relabelled, n = raster_relabel(np.ascontiguousarray(fragments.transpose(2, 1, 0)), np.uint32)
    return np.ascontiguousarray(relabelled.transpose(2, 1, 0)), n


@numba.njit(cache=True, nogil=True)
def _contacts(fragments, affinities, first, second, value):
    """Every in-block voxel pair ``(v, v + e_d)`` in different non-zero fragments: the pair (smaller id first) and
    ``affinities[d][v]``. Returns how many were written."""
    n = 0
    nx, ny, nz = fragments.shape
    for x in range(nx):
        for y in range(ny):
            for z in range(nz):
                a = fragments[x, y, z]
                if a == 0:
                    continue
                for d in range(3):
                    if d == 0:
                        if x + 1 >= nx:
                            continue
                        b = fragments[x + 1, y, z]
                    elif d == 1:
                        if y + 1 >= ny:
                            continue
                        b = fragments[x, y + 1, z]
                    else:
                        if z + 1 >= nz:
                            continue
                        b = fragments[x, y, z + 1]
                    if b == 0 or b == a:
                        continue
                    first[n] = min(a, b)
                    second[n] = max(a, b)
                    value[n] = affinities[d, x, y, z]
                    n += 1
    return n


def affinity_bin(values: np.ndarray) -> np.ndarray:
    """waterz's ``discretize`` into :data:`HISTOGRAM_BINS` bins: 0 for values ≤ 0 (and NaN), the last bin from 1."""
    values = np.asarray(values, dtype=np.float32)
    bins = np.zeros(values.shape, dtype=np.int16)
    inside = values > 0
    bins[inside] = np.minimum((values[inside] * np.float32(HISTOGRAM_BINS)).astype(np.int64), HISTOGRAM_BINS - 1)
    return bins


@dataclass
class EdgeStatistics:
    """Region adjacency graph edges with their affinity statistics, one row per region pair.

    ``u, v (E,) uint64`` the two regions (``u < v``); ``total (E,) float64`` sum of the affinities between them;
    ``count (E,) int64`` how many voxel pairs; ``max_bin (E,) int16`` the largest :func:`affinity_bin`. These
    three are all any of :data:`SCORING_FUNCTIONS` needs, and sum (or take the maximum) across blocks exactly.
    """

    u: np.ndarray
    v: np.ndarray
    total: np.ndarray
    count: np.ndarray
    max_bin: np.ndarray

    @classmethod
    def empty(cls) -> EdgeStatistics:
        return cls(
            np.empty(0, np.uint64),
            np.empty(0, np.uint64),
            np.empty(0, np.float64),
            np.empty(0, np.int64),
            np.empty(0, np.int16),
        )

    @classmethod
    def from_contacts(cls, u: np.ndarray, v: np.ndarray, affinity: np.ndarray) -> EdgeStatistics:
        """Statistics of voxel-pair contacts ``(u, v, affinity)`` (``u < v``), grouped by region pair."""
        return cls.combine(
            [
                cls(
                    u.astype(np.uint64),
                    v.astype(np.uint64),
                    affinity.astype(np.float64),
                    np.ones(len(u), np.int64),
                    affinity_bin(affinity),
                )
            ]
        )

    @classmethod
    def combine(cls, parts: list[EdgeStatistics]) -> EdgeStatistics:
        """One row per region pair over ``parts``: totals and counts summed, the maximum bin kept."""
        parts = [p for p in parts if len(p.u)]
        if not parts:
            return cls.empty()
        u, v = np.concatenate([p.u for p in parts]), np.concatenate([p.v for p in parts])
        order = np.lexsort((v, u))
        u, v = u[order], v[order]
        starts = np.flatnonzero(np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])])
        return cls(
            u[starts],
            v[starts],
            np.add.reduceat(np.concatenate([p.total for p in parts])[order], starts),
            np.add.reduceat(np.concatenate([p.count for p in parts])[order], starts),
            np.maximum.reduceat(np.concatenate([p.max_bin for p in parts])[order], starts),
        )

    def offset(self, u_offset, v_offset) -> EdgeStatistics:
        """The same edges with region ids shifted (to global ids); order ``u < v`` must still hold."""
        return EdgeStatistics(
            self.u + np.uint64(u_offset), self.v + np.uint64(v_offset), self.total, self.count, self.max_bin
        )

    def arrays(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": getattr(self, k) for k in ("u", "v", "total", "count", "max_bin")}

    @classmethod
    def from_arrays(cls, data, prefix: str = "") -> EdgeStatistics:
        return cls(*(np.asarray(data[f"{prefix}{k}"]) for k in ("u", "v", "total", "count", "max_bin")))


def region_graph(fragments: np.ndarray, affinities: np.ndarray) -> EdgeStatistics:
    """The region adjacency graph of one block: ``fragments (X, Y, Z)`` uint32 ids and ``affinities (3, X, Y, Z)
    float32`` (source-voxel, cleaned); edges between background 0 and a fragment are left out, as waterz does."""
    size = 3 * fragments.size
    first, second = np.empty(size, np.uint32), np.empty(size, np.uint32)
    value = np.empty(size, np.float32)
    n = _contacts(
        np.ascontiguousarray(fragments, dtype=np.uint32),
        np.ascontiguousarray(affinities, np.float32),
        first,
        second,
        value,
    )
    return EdgeStatistics.from_contacts(first[:n], second[:n], value[:n])


def face_contacts(
    lower_face: np.ndarray,
    lower_face_affinity: np.ndarray,
    upper_face: np.ndarray,
    lower_offset: int,
    upper_offset: int,
) -> EdgeStatistics:
    """Edges across one block face: ``lower_face`` are the lower block's fragment ids on its last plane,
    ``lower_face_affinity`` the affinities it stores there along the face's axis (they join each voxel with the
    one above it), ``upper_face`` the upper block's ids on its first plane (all three the same 2-D shape). Ids get
    each block's global offset; pairs with a 0 are dropped."""
    a, b = lower_face.ravel().astype(np.uint64), upper_face.ravel().astype(np.uint64)
    keep = (a > 0) & (b > 0)
    a, b = a[keep] + np.uint64(lower_offset), b[keep] + np.uint64(upper_offset)
    affinity = lower_face_affinity.ravel()[keep]
    return EdgeStatistics.from_contacts(np.minimum(a, b), np.maximum(a, b), affinity)


# ----------------------------------------------------------------------------------------------------------------
# agglomeration of a region adjacency graph


@numba.njit(cache=True, nogil=True)
def _sift_up(scores, edges, hole, score, edge):
    """libstdc++'s ``__push_heap``: move the hole up past parents that score higher, then fill it."""
    while hole > 0:
        parent = (hole - 1) // 2
        if not scores[parent] > score:
            break
        scores[hole] = scores[parent]
        edges[hole] = edges[parent]
        hole = parent
    scores[hole] = score
    edges[hole] = edge


@numba.njit(cache=True, nogil=True)
def _queue_push(scores, edges, size, score, edge):
    """Push onto a binary min-heap of ``scores`` exactly as libstdc++'s ``std::push_heap`` does for waterz's
    ``std::priority_queue<…, std::greater>`` (only scores are compared, so equal scores keep its order); returns
    the new size."""
    _sift_up(scores, edges, size, score, edge)
    return size + 1


@numba.njit(cache=True, nogil=True)
def _queue_pop(scores, edges, size):
    """Remove the top as libstdc++'s ``std::pop_heap`` (``__adjust_heap``: hole to a leaf, then sift up) and
    ``pop_back`` do; returns the new size."""
    length = size - 1
    if length <= 0:
        return 0
    value, value_edge = scores[length], edges[length]
    hole, child = 0, 0
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if scores[child] > scores[child - 1]:
            child -= 1
        scores[hole] = scores[child]
        edges[hole] = edges[child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        scores[hole] = scores[child - 1]
        edges[hole] = edges[child - 1]
        hole = child - 1
    _sift_up(scores, edges, hole, value, value_edge)
    return length


def _score_mean(total: float, count: int) -> float:
    mean = np.float32(total / count)
    return float(np.float32(1.0 - float(mean)))


def _bin_scores(bins: np.ndarray) -> np.ndarray:
    """waterz's score of a histogram whose quantile falls in ``bins``: ``1 - (bin + 0.5) / 256``, in float32."""
    centres = ((np.asarray(bins, dtype=np.float64) + 0.5) / HISTOGRAM_BINS).astype(np.float32)
    return (1.0 - centres.astype(np.float64)).astype(np.float32)


_BIN_SCORE = _bin_scores(np.arange(HISTOGRAM_BINS)).tolist()


def _score_quantile(histogram, quantile: int) -> float:
    if type(histogram) is int:  # an edge not merged yet: one value, its maximum bin
        return _BIN_SCORE[histogram]
    pivot = quantile * sum(histogram.values()) // 100 + 1
    cumulative = 0
    for bin_ in sorted(histogram):
        cumulative += histogram[bin_]
        if cumulative >= pivot:
            break
    return _BIN_SCORE[bin_]


@numba.njit(cache=True, nogil=True)
def _queue_push_all(scores, edges, initial):
    """Push edges 0..E-1 with scores ``initial`` one after another (as waterz does); returns the size."""
    size = 0
    for e in range(initial.size):
        size = _queue_push(scores, edges, size, initial[e], e)
    return size


def agglomerate_graph(
    n_regions: int, edges: EdgeStatistics, thresholds, scoring: str | Scoring = DEFAULT_SCORING
) -> list[np.ndarray]:
    """Greedy agglomeration of a region adjacency graph, as waterz's ``IterativeRegionMerging`` does it.

    ``n_regions``: regions are 1..n_regions (0 is background and never merges); ``edges``: one row per adjacent
    pair. The cheapest edge merges first, its larger region into its smaller one (an edge's regions stay sorted, as
    in waterz's ``RegionGraph::moveEdge``, which decides the survivor of later merges and so the order of ties);
    the merged region's edges to a shared neighbour are joined; an edge whose statistics changed keeps its old
    (lower) place in the queue and is re-scored when it comes up, as in waterz. Merging stops at each threshold
    (ascending) when the cheapest edge scores ``>= threshold`` (float32). The queue is libstdc++'s binary heap,
    reproduced, so equal scores come up in waterz's order: given waterz's fragments and edge order (sorted by region
    pair), the result is waterz's. The merging loop is Python over dicts (a numba version with typed dicts ran 3×
    faster but took twice the memory on a 2.9 M-edge graph). Returns, per threshold in the order given,
    ``(n_regions + 1,) int64``: each region's representative (the region it was merged into, 0 → 0).
    """
    scoring = scoring if isinstance(scoring, Scoring) else scoring_function(scoring)
    values = check_thresholds(thresholds)
    n_edges = len(edges.u)
    u, v = edges.u.astype(np.int64).tolist(), edges.v.astype(np.int64).tolist()
    mean = scoring.kind == "mean"
    if mean:
        stats: list[Any] = list(zip(edges.total.tolist(), edges.count.tolist()))
        score_of = lambda s: _score_mean(*s)  # noqa: E731
        means = (edges.total / np.maximum(edges.count, 1)).astype(np.float32)
        initial = (1.0 - means.astype(np.float64)).astype(np.float32)
    else:
        stats = edges.max_bin.astype(np.int64).tolist()  # a histogram of one value, until merged
        score_of = lambda s: _score_quantile(s, scoring.quantile)  # noqa: E731
        initial = _bin_scores(edges.max_bin)
    neighbours: list[dict] = [dict() for _ in range(n_regions + 1)]
    for e in range(n_edges):
        neighbours[u[e]][v[e]] = e
        neighbours[v[e]][u[e]] = e
    parent = np.arange(n_regions + 1, dtype=np.int64)
    score = initial.tolist()
    stale = bytearray(n_edges)
    deleted = bytearray(n_edges)
    # the queue never holds more than one entry per edge: a stale edge is popped before it is pushed again
    queue_scores = np.empty(n_edges + 1, dtype=np.float32)
    queue_edges = np.empty(n_edges + 1, dtype=np.int64)
    size = _queue_push_all(queue_scores, queue_edges, initial)

    def merge_statistics(source: int, target: int) -> None:
        if mean:
            stats[target] = (stats[target][0] + stats[source][0], stats[target][1] + stats[source][1])
        else:
            small, large = sorted(
                (
                    {stats[source]: 1} if type(stats[source]) is int else stats[source],
                    {stats[target]: 1} if type(stats[target]) is int else stats[target],
                ),
                key=len,
            )
            for bin_, count in small.items():
                large[bin_] = large.get(bin_, 0) + count
            stats[target] = large
        stats[source] = None

    def merge(e: int) -> None:
        a, b = u[e], v[e]
        parent[b] = a
        del neighbours[a][b]
        for neighbour, edge in neighbours[b].items():
            if edge == e:
                continue
            del neighbours[neighbour][b]
            shared = neighbours[a].get(neighbour)
            if shared is None:  # exclusive to b: moves to a, its ends sorted as waterz's moveEdge keeps them
                u[edge], v[edge] = min(a, neighbour), max(a, neighbour)
                neighbours[a][neighbour] = edge
                neighbours[neighbour][a] = edge
            elif score[edge] > score[shared]:
                merge_statistics(edge, shared)
                deleted[edge] = 1
                stale[shared] = 1
            else:
                merge_statistics(shared, edge)
                deleted[shared] = 1
                u[edge], v[edge] = min(a, neighbour), max(a, neighbour)
                neighbours[a][neighbour] = edge
                neighbours[neighbour][a] = edge
                stale[edge] = 1
        neighbours[b] = {}

    results = {}
    for threshold in sorted(set(values)):
        limit = np.float32(threshold)
        while size and queue_scores[0] < limit:
            e = int(queue_edges[0])
            size = _queue_pop(queue_scores, queue_edges, size)
            if deleted[e]:
                continue
            if stale[e]:
                score[e] = score_of(stats[e])
                stale[e] = 0
                size = _queue_push(queue_scores, queue_edges, size, score[e], e)
                continue
            merge(e)
        results[threshold] = _roots(parent)
    return [results[t] for t in values]


def _roots(parent: np.ndarray) -> np.ndarray:
    """Each node's root in a forest given by ``parent`` (roots are their own parent)."""
    roots = parent.copy()
    while True:
        step = roots[roots]
        if np.array_equal(step, roots):
            return roots
        roots = step


def number_regions(representative: np.ndarray, first_voxel: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Consecutive segment ids from :func:`agglomerate_graph`'s representatives: ``(n_regions + 1,)`` segment id of
    each region (0 → 0) and the number of segments. Segments are numbered in order of ``first_voxel`` (``(n_regions
    + 1,) int64``, e.g. each region's first voxel in the volume's raster order; the smallest over a segment's regions
    counts), or of their smallest region when it is None."""
    roots = np.asarray(representative, dtype=np.int64)
    key = np.arange(len(roots), dtype=np.int64) if first_voxel is None else np.asarray(first_voxel, np.int64)
    segment_first = np.full(len(roots), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(segment_first, roots[1:], key[1:])
    segments = np.unique(roots[1:])
    ordered = segments[np.argsort(segment_first[segments], kind="stable")]
    ids = np.zeros(len(roots), dtype=np.int64)
    ids[ordered] = np.arange(1, len(ordered) + 1)
    out = ids[roots]
    out[0] = 0
    return out, len(ordered)


@numba.njit(cache=True, nogil=True)
def _first_voxels(fragments, origin, volume_shape, first):
    """``first[f]``: the smallest C-order index in the volume (``volume_shape``) of fragment f's voxels, for a block
    of ``fragments`` whose voxel (0, 0, 0) sits at ``origin``."""
    nx, ny, nz = fragments.shape
    for x in range(nx):
        for y in range(ny):
            for z in range(nz):
                f = fragments[x, y, z]
                if f == 0:
                    continue
                index = ((origin[0] + x) * volume_shape[1] + origin[1] + y) * volume_shape[2] + origin[2] + z
                if index < first[f]:
                    first[f] = index


def first_voxels(fragments: np.ndarray, n: int, origin=(0, 0, 0), volume_shape=None) -> np.ndarray:
    """``(n + 1,) int64``: each fragment's first voxel as a C-order index of the volume (entry 0 unused)."""
    first = np.full(n + 1, np.iinfo(np.int64).max, dtype=np.int64)
    shape = np.asarray(volume_shape if volume_shape is not None else fragments.shape, dtype=np.int64)
    _first_voxels(np.ascontiguousarray(fragments), np.asarray(origin, dtype=np.int64), shape, first)
    return first
