"""Skeletons in the NISB format from a dense ground-truth segmentation, with kimimaro (TEASAR).

kimimaro works on an in-memory volume: this suits ground-truth crops and seeds (a 1024³ uint32 volume is 4 GiB),
not whole datasets; skeletonize large volumes in overlapping crops and join the graphs.
"""

from __future__ import annotations

import networkx as nx
import numpy as np


def _kimimaro():
    try:
        import kimimaro
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("nisbflow skeletonize needs kimimaro: pip install 'nisbflow[skeleton]'") from error
    return kimimaro


def skeletonize(
    segmentation,
    voxel_size=(9, 9, 20),
    *,
    dust_threshold: int = 1000,
    scale: float = 1.5,
    const_nm: float = 300.0,
    parallel: int = 1,
) -> nx.Graph:
    """TEASAR skeletons of every segment of an ``(X, Y, Z)`` segmentation as one NISB-style networkx graph.

    Nodes get consecutive integer names and carry ``id`` (the segment), ``index_position`` (voxel x, y, z, int64)
    and ``nm_position`` (nm, float64); edges carry ``edge_length`` (nm). ``dust_threshold``: segments with fewer
    voxels are skipped; ``scale``/``const_nm``: TEASAR's invalidation sphere (radius × scale + const, nm).
    """
    kimimaro = _kimimaro()
    labels = np.ascontiguousarray(np.asarray(segmentation[...]))
    anisotropy = tuple(float(v) for v in voxel_size)
    skeletons = kimimaro.skeletonize(
        labels,
        teasar_params=dict(scale=scale, const=const_nm),
        anisotropy=anisotropy,
        dust_threshold=dust_threshold,
        progress=False,
        parallel=parallel,
    )
    graph = nx.Graph()
    first = 0
    upper = np.array(labels.shape) - 1
    for label in sorted(skeletons):
        skeleton = skeletons[label]
        vertices = np.asarray(skeleton.vertices, dtype=np.float64)
        index = np.clip(np.rint(vertices / np.asarray(anisotropy)).astype(np.int64), 0, upper)
        for i, (position, nm) in enumerate(zip(index, vertices)):
            graph.add_node(first + i, id=int(label), index_position=position, nm_position=nm)
        for a, b in np.asarray(skeleton.edges, dtype=np.int64):
            graph.add_edge(first + int(a), first + int(b), edge_length=float(np.linalg.norm(vertices[a] - vertices[b])))
        first += len(vertices)
    return graph
