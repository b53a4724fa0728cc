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

from nisbflow.data.skeleton import (SkeletonArrays, load_skeleton_arrays, skeleton_arrays, undirected,
                                    validate_skeleton)
from nisbflow.errors import SkeletonError
from nisbflow.visibility import check_arrays_on_workers
from nisbflow.evaluate.gather import dense_contingency, node_labels
from nisbflow.evaluate.kernel import (NERL_VARIANTS, DenseMetrics, RunLength, dense_metrics_from_contingency,
                                      expected_run_length, node_voi)

__all__ = ["NerlResult", "DenseMetrics", "RunLength", "dense_metrics", "expected_run_length", "nerl", "node_labels"]


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

    def to_dict(self) -> dict:
        """JSON-ready: floats, ints and dicts keyed by skeleton id as strings."""
        out = asdict(self)
        for key in ("per_skeleton_erl", "skeleton_length", "error_type"):
            out[key] = {str(k): v for k, v in out[key].items()}
        if out["merge_threshold"] == float("inf"):
            out["merge_threshold"] = "inf"
        return out


def nerl(segmentation, skeleton, voxel_size=(9, 9, 20), merge_threshold: float = 1, *,
         progress: bool = False) -> NerlResult:
    """Normalised expected run length of a segmentation on NISB skeletons, with the BANIS error counts.

    ``segmentation``: ``(X, Y, Z)`` numpy, zarr or dask array of segment ids (0 = background). ``skeleton``: a
    networkx graph, :class:`~nisbflow.data.skeleton.SkeletonArrays`, or a path (``skeleton.pkl`` read with a
    restricted unpickler, ``.json``, ``.npz``; an ``.npz`` is read into arrays with no graph, for skeletons of
    millions of nodes) whose nodes carry ``id`` and ``index_position`` (voxel x, y, z). ``voxel_size`` (nm, x y z) turns voxel positions into
    edge lengths when the graph has neither ``edge_length`` nor ``nm_position``. ``merge_threshold``: nodes a
    skeleton needs in a segment to be present there and so take part in a merger (k + 1 for "more than k nodes";
    1, BANIS: any node). ``error_type`` per skeleton: ``merged`` when any of its edges is merged, else ``split``
    when any is split or omitted, else ``correct``.
    """
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
        raise SkeletonError(f"skeleton {where}: node {node!r} at voxel "
                            f"{arrays.index_position[first].tolist()} lies outside the segmentation of shape "
                            f"{shape.tolist()} (X, Y, Z); {int(outside.sum())} nodes are outside")
    ids, edges, lengths = arrays.id, arrays.edges, arrays.edge_length
    same = ids[edges[:, 0]] == ids[edges[:, 1]]  # edges between nodes of different neurons are ignored
    edges, lengths = edges[same], lengths[same]
    check_arrays_on_workers({"segmentation": segmentation})
    labels = node_labels(segmentation, arrays.index_position, progress=progress).astype(np.int64)
    run = expected_run_length(ids, edges, lengths, labels, merge_threshold)
    best = expected_run_length(ids, edges, lengths, ids, 1)
    max_erl = best.erl

    def normalised(erl: float) -> float:
        return erl / max_erl if max_erl > 0 else 0.0

    variants = {name: normalised(expected_run_length(ids, edges, lengths, labels, m).erl)
                for name, m in NERL_VARIANTS.items()}
    voi_split, voi_merge = node_voi(ids, labels)
    return NerlResult(
        nerl=normalised(run.erl), erl=run.erl, max_erl=max_erl, voi_split=voi_split, voi_merge=voi_merge,
        voi_sum=voi_split + voi_merge, n_mergers=run.n_mergers, n_non0_mergers=run.n_non0_mergers,
        n_splits=run.n_splits, n_omitted=run.n_omitted, n_merged_edges=run.n_merged_edges, **variants,
        merge_threshold=float(merge_threshold), n_nodes=len(ids), n_skeletons=len(best.skeleton_length),
        per_skeleton_erl=run.per_skeleton_erl, skeleton_length=run.skeleton_length,
        error_type=run.error_type)


def dense_metrics(ground_truth, segmentation, *, progress: bool = False) -> DenseMetrics:
    """Adapted Rand error (precision, recall) and VOI split/merge (bits) against a dense ground truth, ground-truth
    label 0 ignored; volumes may be numpy, zarr or dask and are read block by block."""
    check_arrays_on_workers({"ground truth": ground_truth, "segmentation": segmentation})
    return dense_metrics_from_contingency(*dense_contingency(ground_truth, segmentation, progress=progress))
