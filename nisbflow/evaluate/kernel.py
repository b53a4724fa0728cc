"""Pure metric kernels: expected run length on skeletons, VOI on skeleton nodes, and dense metrics from a
contingency table. No I/O; inputs are flat numpy arrays.

Skeleton conventions (docs/design.md): every node has a ground-truth neuron ``id``; edge lengths are in nm.
The run-length rules are those of funlib.evaluate's ``evaluate_skeletons`` / ``expected_run_length``, which BANIS's
``metrics.py`` calls and the NISB leaderboard reports:

- a (skeleton, segment) pair is *present* when more than k nodes of the skeleton lie in the segment, i.e. at least
  ``merge_threshold = k + 1`` (NERL: k = 0, any node; the adapted variants k = 5, 20, 100, ∞);
- a *merging segment* is one present in two or more skeletons (predicted 0 included); a *merged skeleton* is one
  present in a merging segment;
- then each edge (u, v) of skeleton s, in this order:

  1. ``seg(u) == 0 or seg(v) == 0`` → *omitted* (run length 0), whatever else holds;
  2. ``seg(u) != seg(v)`` → *split*;
  3. s is a merged skeleton and ``seg(u)`` is a merging segment → *merged* (run length 0);
  4. otherwise *correct*: its length adds to the run of (s, seg(u)).

  So a merged skeleton is not zeroed as a whole: its edges in its other, non-merging segments still count, and
  background holding nodes of two skeletons only costs their omitted edges;
- ERL = Σ_s (L_s / Σ L) · Σ_seg c² / L_s, with c the correct length of skeleton s in segment seg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NERL_VARIANTS = {"nerl_5": 6, "nerl_20": 21, "nerl_100": 101, "nerl_inf": math.inf}
"""Adapted NERL variants: a (skeleton, segment) pair must hold more than 5, 20, 100 nodes (or never counts) to take
part in a merger; the value is the ``merge_threshold`` (k + 1) that gives each."""


@dataclass
class RunLength:
    """Expected run length of one segmentation on one skeleton set (lengths in nm).

    ``n_mergers``: (merging segment, present skeleton) pairs, segment 0 included; ``n_non0_mergers`` the same
    without segment 0. ``n_splits``, ``n_omitted``, ``n_merged_edges``, ``n_correct``: edges by rule.
    ``merge_stats``: merging segment → the skeletons present in it (funlib's ``merge_stats``). ``error_type``: per
    skeleton, ``merged`` when any of its edges is merged, else ``split`` when any is split or omitted, else
    ``correct``.
    """

    erl: float
    per_skeleton_erl: dict = field(repr=False)
    skeleton_length: dict = field(repr=False)
    n_mergers: int
    n_non0_mergers: int
    n_splits: int
    n_omitted: int
    n_merged_edges: int
    n_correct: int
    merge_stats: dict = field(repr=False)
    error_type: dict = field(repr=False, default_factory=dict)


def _merging_segments(node_skeleton: np.ndarray, labels: np.ndarray, merge_threshold: float):
    """``(pairs, present, merging)``: every (skeleton, segment) pair of the nodes, those with at least
    ``merge_threshold`` nodes, and the segments present in two or more skeletons (segment 0 included)."""
    pairs, counts = np.unique(np.stack([node_skeleton, labels], axis=1).reshape(-1, 2), axis=0, return_counts=True)
    present = pairs[counts >= merge_threshold]
    segments, n_skeletons = np.unique(present[:, 1], return_counts=True)
    return pairs, present, segments[n_skeletons > 1]


def expected_run_length(
    skeleton_id: np.ndarray, edges: np.ndarray, edge_length: np.ndarray, labels: np.ndarray, merge_threshold: float = 1
) -> RunLength:
    """ERL and error counts by the rules of the module docstring.

    ``skeleton_id (N,)`` int, the ground-truth neuron of each node; ``edges (E, 2)`` int, node rows (both ends of
    the same neuron; an edge belongs to the skeleton of its first node); ``edge_length (E,)`` float, nm;
    ``labels (N,)`` int, the predicted segment of each node (0 = background); ``merge_threshold``: the nodes a
    skeleton needs in a segment to be present there (k + 1; 1 = any node, ``math.inf`` = never, so no mergers).

    >>> ids = np.array([1, 1, 1, 2, 2]); edges = np.array([[0, 1], [1, 2], [3, 4]])
    >>> run = expected_run_length(ids, edges, np.array([1.0, 1.0, 1.0]), np.array([5, 5, 7, 7, 7]))
    >>> run.n_merged_edges, run.n_splits, run.erl   # segment 7 merges 1 and 2: edge (3, 4) is merged
    (1, 1, 0.3333333333333333)
    """
    skeleton_id = np.asarray(skeleton_id, dtype=np.int64)
    labels = np.asarray(labels).astype(np.int64)
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    edge_length = np.asarray(edge_length, dtype=np.float64)
    edge_skeleton = skeleton_id[edges[:, 0]]
    skeletons, edge_row = np.unique(edge_skeleton, return_inverse=True)
    edge_row = edge_row.ravel()
    length = np.bincount(edge_row, weights=edge_length, minlength=len(skeletons))
    total = float(length.sum())

    # present (skeleton, segment) pairs, merging segments, merged skeletons
    _, pairs, merging_segments = _merging_segments(skeleton_id, labels, merge_threshold)
    in_merging = np.isin(pairs[:, 1], merging_segments)
    merge_stats: dict = {}
    for skeleton, segment in pairs[in_merging]:
        merge_stats.setdefault(int(segment), []).append(int(skeleton))
    merged_skeletons = np.unique(pairs[in_merging, 0])

    # the four rules, in order
    label_u, label_v = labels[edges[:, 0]], labels[edges[:, 1]]
    omitted = (label_u == 0) | (label_v == 0)
    split = ~omitted & (label_u != label_v)
    merged = ~omitted & ~split & np.isin(edge_skeleton, merged_skeletons) & np.isin(label_u, merging_segments)
    correct = ~omitted & ~split & ~merged

    # correct length per (skeleton, segment), then Σ c² per skeleton
    groups, group_row = np.unique(np.stack([edge_row[correct], label_u[correct]], axis=1), axis=0, return_inverse=True)
    correct_length = np.bincount(group_row.ravel(), weights=edge_length[correct], minlength=len(groups))
    squares = (
        np.bincount(groups[:, 0], weights=correct_length**2, minlength=len(skeletons))
        if len(groups)
        else np.zeros(len(skeletons))
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        per_skeleton = np.where(length > 0, squares / length, 0.0)
    erl = float(squares.sum() / total) if total > 0 else 0.0

    has_merged = np.bincount(edge_row[merged], minlength=len(skeletons)) > 0
    has_broken = np.bincount(edge_row[omitted | split], minlength=len(skeletons)) > 0
    error_type = {
        int(s): "merged" if m else "split" if b else "correct" for s, m, b in zip(skeletons, has_merged, has_broken)
    }
    return RunLength(
        erl=erl,
        per_skeleton_erl={int(s): float(e) for s, e in zip(skeletons, per_skeleton)},
        skeleton_length={int(s): float(v) for s, v in zip(skeletons, length)},
        n_mergers=int(in_merging.sum()),
        n_non0_mergers=int((in_merging & (pairs[:, 1] != 0)).sum()),
        n_splits=int(split.sum()),
        n_omitted=int(omitted.sum()),
        n_merged_edges=int(merged.sum()),
        n_correct=int(correct.sum()),
        merge_stats=merge_stats,
        error_type=error_type,
    )


def contingency(true: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency of two label arrays: ``(true ids, test ids, counts)`` of every co-occurring pair."""
    true = np.ravel(true).astype(np.int64)
    test = np.ravel(test).astype(np.int64)
    if true.size and min(true.min(), test.min()) >= 0 and max(true.max(), test.max()) < 2**31:
        # both ids fit in 31 bits: one int64 key per pair makes this a fast 1-D unique
        keys, counts = np.unique((true << 32) | test, return_counts=True)
        return keys >> 32, keys & 0xFFFFFFFF, counts.astype(np.int64)
    pairs, counts = np.unique(np.stack([true, test], axis=1), axis=0, return_counts=True)
    return pairs[:, 0], pairs[:, 1], counts.astype(np.int64)


def sum_contingencies(*parts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add sparse contingencies (each ``(true ids, test ids, counts)``); usable as a tree reduction step."""
    true = np.concatenate([p[0] for p in parts])
    test = np.concatenate([p[1] for p in parts])
    counts = np.concatenate([p[2] for p in parts])
    pairs, row = np.unique(np.stack([true, test], axis=1), axis=0, return_inverse=True)
    return pairs[:, 0], pairs[:, 1], np.bincount(row.ravel(), weights=counts, minlength=len(pairs)).astype(np.int64)


@dataclass
class DenseMetrics:
    """Dense metrics of a segmentation against a dense ground truth (true label 0 ignored)."""

    adapted_rand_error: float
    rand_precision: float
    rand_recall: float
    voi_split: float
    voi_merge: float

    @property
    def voi_sum(self) -> float:
        return self.voi_split + self.voi_merge


def dense_metrics_from_contingency(true, test, counts, ignore_true=(0,)) -> DenseMetrics:
    """Adapted Rand error (as scikit-image's ``adapted_rand_error``) and VOI in bits (as scikit-image's
    ``variation_of_information``: split = H(test | true), merge = H(true | test)), true labels in ``ignore_true``
    dropped."""
    keep = ~np.isin(true, np.asarray(ignore_true, dtype=np.int64))
    true, test, counts = true[keep], test[keep], counts[keep].astype(np.float64)
    _, row = np.unique(true, return_inverse=True)
    _, col = np.unique(test, return_inverse=True)
    a = np.bincount(row.ravel(), weights=counts)
    b = np.bincount(col.ravel(), weights=counts)
    n = counts.sum()
    sum_p_ij2 = counts @ counts - n
    sum_a2 = a @ a - n
    sum_b2 = b @ b - n
    precision = sum_p_ij2 / sum_a2 if sum_a2 else 1.0
    recall = sum_p_ij2 / sum_b2 if sum_b2 else 1.0
    denominator = 0.5 * sum_a2 + 0.5 * sum_b2
    fscore = sum_p_ij2 / denominator if denominator else 1.0
    p = counts / n if n else counts
    pa, pb = (a / n, b / n) if n else (a, b)
    nz = p > 0
    voi_merge = 0.0 - float(np.sum(p[nz] * np.log2(p[nz] / pb[col.ravel()][nz])))  # H(true | test)
    voi_split = 0.0 - float(np.sum(p[nz] * np.log2(p[nz] / pa[row.ravel()][nz])))  # H(test | true)
    return DenseMetrics(1.0 - fscore, precision, recall, voi_split, voi_merge)


def node_voi(skeleton_id: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``(voi_split, voi_merge)`` in bits over skeleton nodes: ground-truth 0 dropped, predicted 0 kept."""
    true, test, counts = contingency(skeleton_id, labels)
    metrics = dense_metrics_from_contingency(true, test, counts, ignore_true=(0,))
    return metrics.voi_split, metrics.voi_merge


@dataclass
class EmErl:
    """PyTorch Connectomics' NERL (em_erl's ``compute_erl_score`` on the graph PyTC builds from a NISB skeleton):
    ``nerl`` = ``erl`` / ``max_erl`` (NaN when the skeletons have no length), lengths in the skeleton's own units
    (nm for NISB's stored ``edge_length``), ``merge_threshold`` its nodes-per-segment threshold (PyTC's NISB
    tutorial: 50)."""

    nerl: float
    erl: float
    max_erl: float
    merge_threshold: int
    n_skeletons: int
    n_merging_segments: int
    n_merged_skeletons: int


def em_erl_run_length(
    skeleton_id: np.ndarray, edges: np.ndarray, edge_length: np.ndarray, labels: np.ndarray, merge_threshold: int = 50
) -> EmErl:
    """ERL by em_erl's rules, which differ from funlib's (:func:`expected_run_length`) in three ways:

    - a (skeleton, segment) pair is *big* when at least ``merge_threshold`` of the skeleton's nodes lie in the
      segment; a *merging segment* is one with big pairs of two or more skeletons (segment 0 included);
    - a *merged skeleton* is any skeleton with a node in a merging segment, big pair or not (funlib: only
      skeletons present there);
    - an edge (u, v) is *correct* when ``seg(u) == seg(v) != 0`` and not (its skeleton is merged and ``seg(u)`` is
      a merging segment); its length adds to (skeleton, seg(u)). Edges must join nodes of one skeleton (PyTC drops
      the others before scoring: :func:`pytc_graph`).

    ERL = Σ c² / Σ L and max ERL = Σ L² / Σ L over the skeletons (every id among the nodes, with or without edges).
    ``skeleton_id (N,)``, ``edges (E, 2)`` node rows, ``edge_length (E,)``, ``labels (N,)`` segment per node."""
    skeleton_id = np.asarray(skeleton_id)
    labels = np.asarray(labels).astype(np.int64)
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    edge_length = np.asarray(edge_length, dtype=np.float64)
    skeletons, node_skeleton = np.unique(skeleton_id, return_inverse=True)
    node_skeleton = node_skeleton.ravel()
    edge_skeleton = node_skeleton[edges[:, 0]]
    length = np.bincount(edge_skeleton, weights=edge_length, minlength=len(skeletons))
    total = float(length.sum())

    pairs, _, merging = _merging_segments(node_skeleton, labels, merge_threshold)
    merged = np.zeros(len(skeletons), dtype=bool)
    merged[np.unique(pairs[np.isin(pairs[:, 1], merging), 0])] = True

    seg_u, seg_v = labels[edges[:, 0]], labels[edges[:, 1]]
    correct = (seg_u == seg_v) & (seg_u != 0) & ~(merged[edge_skeleton] & np.isin(seg_u, merging))
    squares = 0.0
    if correct.any():
        groups, row = np.unique(np.stack([edge_skeleton[correct], seg_u[correct]], axis=1), axis=0, return_inverse=True)
        sums = np.bincount(row.ravel(), weights=edge_length[correct], minlength=len(groups))
        squares = float((sums**2).sum())
    erl = squares / total if total > 0 else 0.0
    max_erl = float((length**2).sum() / total) if total > 0 else 0.0
    return EmErl(
        nerl=erl / max_erl if max_erl > 0 else float("nan"),
        erl=erl,
        max_erl=max_erl,
        merge_threshold=int(merge_threshold),
        n_skeletons=len(skeletons),
        n_merging_segments=len(merging),
        n_merged_skeletons=int(merged.sum()),
    )
