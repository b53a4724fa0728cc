"""Evaluation: NERL and skeleton VOI against NISB skeletons, dense Rand/VOI against dense ground truth.

``nerl`` follows BANIS's ``metrics.py`` (funlib.evaluate's ``evaluate_skeletons`` and expected run length; the
rules, per edge and in order, are in :mod:`nisbflow.evaluate.kernel`) but reads segment ids at skeleton nodes chunk
by chunk instead of one zarr read per node.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np

from nisbflow.data.skeleton import SkeletonArrays, load_skeleton_arrays, skeleton_arrays, undirected, validate_skeleton
from nisbflow.errors import SkeletonError
from nisbflow.visibility import check_arrays_on_workers
from nisbflow.evaluate.gather import dense_contingency, node_labels
from nisbflow.evaluate.kernel import (
    NERL_VARIANTS,
    DenseMetrics,
    EmErl,
    RunLength,
    dense_metrics_from_contingency,
    em_erl_run_length,
    expected_run_length,
    node_voi,
)

__all__ = [
    "NerlResult",
    "DenseMetrics",
    "EmErl",
    "RunLength",
    "dense_metrics",
    "em_erl_run_length",
    "expected_run_length",
    "nerl",
    "node_labels",
    "pytc_graph",
]

METRICS = ("nerl", "em_erl")
"""Skeleton metrics ``nerl`` computes: ``nerl`` (BANIS's metrics.py over funlib.evaluate, the NISB leaderboard's;
always) and ``em_erl`` (PyTorch Connectomics' NERL, em_erl's rules, when asked)."""

EM_ERL_MERGE_THRESHOLD = 50
"""em_erl's merge threshold in PyTorch Connectomics' NISB tutorial (``evaluation.nerl_merge_threshold: 50``)."""


@dataclass
class NerlResult:
    """Skeleton metrics of one segmentation. Lengths in nm; VOI in bits over skeleton nodes."""

    nerl: float
    erl: float
    max_erl: float
    voi_split: float
    voi_merge: float
    voi_sum: float
    n_mergers: int
    n_non0_mergers: int
    n_splits: int
    n_omitted: int
    n_merged_edges: int
    nerl_5: float
    nerl_20: float
    nerl_100: float
    nerl_inf: float
    merge_threshold: float
    n_nodes: int
    n_skeletons: int
    per_skeleton_erl: dict = field(default_factory=dict)
    skeleton_length: dict = field(default_factory=dict)
    error_type: dict = field(default_factory=dict)
    em_erl: EmErl | None = None
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: floats, ints and dicts keyed by skeleton id as strings; ``em_erl`` a dict (or None)."""
        out = asdict(self)
        for key in ("per_skeleton_erl", "skeleton_length", "error_type"):
            out[key] = {str(k): v for k, v in out[key].items()}
        if out["merge_threshold"] == float("inf"):
            out["merge_threshold"] = "inf"
        return out


def pytc_graph(arrays: SkeletonArrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(skeleton_id, edges, edge_length)`` as PyTorch Connectomics builds em_erl's graph from a NISB skeleton:
    edges between nodes of different ``id`` dropped; an edge's length its stored ``edge_length``, else the distance
    of its nodes' ``index_position`` (voxels; PyTC reads positions from ``index_position``)."""
    ids, edges = arrays.id, arrays.edges
    same = ids[edges[:, 0]] == ids[edges[:, 1]]
    index = arrays.index_position.astype(np.float64)
    voxels = np.linalg.norm(index[edges[:, 0]] - index[edges[:, 1]], axis=1) if len(edges) else np.zeros(0)
    stored = arrays.stored_edge_length
    lengths = voxels if stored is None else np.where(np.isfinite(stored), stored, voxels)
    return ids, edges[same], lengths[same]


def nerl(
    segmentation,
    skeleton,
    voxel_size=(9, 9, 20),
    merge_threshold: float = 1,
    *,
    progress: bool = False,
    metrics=("nerl",),
    em_erl_merge_threshold: int = EM_ERL_MERGE_THRESHOLD,
) -> NerlResult:
    """Normalised expected run length of a segmentation on NISB skeletons, with the BANIS error counts.

    ``segmentation``: ``(X, Y, Z)`` numpy, zarr or dask array of segment ids (0 = background). ``skeleton``: a
    networkx graph, :class:`~nisbflow.data.skeleton.SkeletonArrays`, or a path (``skeleton.pkl`` read with a
    restricted unpickler, ``.json``, ``.npz``; an ``.npz`` is read into arrays with no graph, for skeletons of
    millions of nodes) whose nodes carry ``id`` and ``index_position`` (voxel x, y, z). Edge lengths come from
    ``nm_position`` as BANIS's metrics.py takes them (a stored ``edge_length`` that disagrees is reported in
    ``notes``); ``voxel_size`` (nm, x y z) stands in only for a skeleton without ``nm_position`` and
    ``edge_length``. Every edge counts, in the skeleton of its first node, also one joining nodes of two ids (as
    funlib.evaluate counts it: it adds to that skeleton's length and, having two ids, is never correct in the
    ground truth). ``merge_threshold``: nodes a skeleton needs in a segment to be present there and so take part
    in a merger (k + 1 for "more than k nodes"; 1, BANIS: any node). ``error_type`` per skeleton: ``merged`` when
    any of its edges is merged, else ``split`` when any is split or omitted, else ``correct``. ``metrics``
    including ``"em_erl"`` also gives PyTorch Connectomics' NERL (``em_erl``: em_erl's rules on PyTC's graph,
    :func:`pytc_graph`, at ``em_erl_merge_threshold``).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        from nisbflow.errors import ConfigError

        raise ConfigError(
            f"--metric / evaluation.metrics: unknown metric {unknown[0]!r}; expected one of {', '.join(METRICS)}"
        )
    where = str(skeleton) if isinstance(skeleton, (str, Path)) else "<graph>"
    if isinstance(skeleton, (str, Path)):
        arrays = load_skeleton_arrays(skeleton, voxel_size)  # .npz: straight to arrays, no graph in memory
    elif isinstance(skeleton, SkeletonArrays):
        arrays = skeleton
    elif isinstance(skeleton, nx.Graph):
        skeleton = undirected(skeleton)
        validate_skeleton(skeleton, where)
        arrays = skeleton_arrays(skeleton, voxel_size)
    else:
        raise SkeletonError(f"skeleton {where}: expected a networkx graph, found {type(skeleton).__name__}")
    shape = np.asarray(segmentation.shape[:3])
    outside = np.any((arrays.index_position < 0) | (arrays.index_position >= shape), axis=1)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        node = arrays.nodes[first].item() if hasattr(arrays.nodes[first], "item") else arrays.nodes[first]
        raise SkeletonError(
            f"skeleton {where}: node {node!r} at voxel "
            f"{arrays.index_position[first].tolist()} lies outside the segmentation of shape "
            f"{shape.tolist()} (X, Y, Z); {int(outside.sum())} nodes are outside"
        )
    ids, edges, lengths = arrays.id, arrays.edges, arrays.edge_length
    check_arrays_on_workers({"segmentation": segmentation})
    labels = node_labels(segmentation, arrays.index_position, progress=progress).astype(np.int64)
    run = expected_run_length(ids, edges, lengths, labels, merge_threshold)
    best = expected_run_length(ids, edges, lengths, ids, 1)
    max_erl = best.erl

    def normalised(erl: float) -> float:
        return erl / max_erl if max_erl > 0 else 0.0

    variants = {
        name: normalised(expected_run_length(ids, edges, lengths, labels, m).erl) for name, m in NERL_VARIANTS.items()
    }
    voi_split, voi_merge = node_voi(ids, labels)
    em_erl = em_erl_run_length(*pytc_graph(arrays), labels, em_erl_merge_threshold) if "em_erl" in metrics else None
    return NerlResult(
        nerl=normalised(run.erl),
        erl=run.erl,
        max_erl=max_erl,
        voi_split=voi_split,
        voi_merge=voi_merge,
        voi_sum=voi_split + voi_merge,
        n_mergers=run.n_mergers,
        n_non0_mergers=run.n_non0_mergers,
        n_splits=run.n_splits,
        n_omitted=run.n_omitted,
        n_merged_edges=run.n_merged_edges,
        **variants,
        merge_threshold=float(merge_threshold),
        n_nodes=len(ids),
        n_skeletons=len(best.skeleton_length),
        per_skeleton_erl=run.per_skeleton_erl,
        skeleton_length=run.skeleton_length,
        error_type=run.error_type,
        em_erl=em_erl,
        notes=[arrays.length_note] if arrays.length_note else [],
    )


def dense_metrics(ground_truth, segmentation, *, progress: bool = False) -> DenseMetrics:
    """Adapted Rand error (precision, recall) and VOI split/merge (bits) against a dense ground truth, ground-truth
    label 0 ignored; volumes may be numpy, zarr or dask and are read block by block."""
    check_arrays_on_workers({"ground truth": ground_truth, "segmentation": segmentation})
    return dense_metrics_from_contingency(*dense_contingency(ground_truth, segmentation, progress=progress))
