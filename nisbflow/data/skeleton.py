"""NISB skeletons: load ``skeleton.pkl`` safely, convert it to pickle-free forms, check it against a volume.

A skeleton is one :class:`networkx.Graph`. Each node carries ``id`` (the ground-truth neuron),
``index_position`` (voxel ``(x, y, z)``) and usually ``nm_position`` (``(x, y, z)`` in nm); edges join
consecutive nodes of one neuron and may carry ``edge_length`` in nm.

Unpickling runs code, so ``.pkl`` files go through :class:`RestrictedUnpickler`, which admits networkx
graphs and plain data only. ``.json`` (networkx node-link) and ``.npz`` forms need no pickle at all.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import fsspec
import networkx as nx
import numpy as np

from ..errors import SkeletonError

SKELETON_SUFFIXES = (".pkl", ".pickle", ".json", ".npz")

_NETWORKX_MODULES = ("networkx.classes.reportviews", "networkx.classes.coreviews")
_ALLOWED_GLOBALS = {
    ("networkx.classes.graph", "Graph"),
    ("networkx.classes.digraph", "DiGraph"),
    ("networkx.classes.multigraph", "MultiGraph"),
    ("networkx.classes.multidigraph", "MultiDiGraph"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
}
_ALLOWED_BUILTINS = {
    "object",
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "int",
    "float",
    "complex",
    "str",
    "bytes",
    "bytearray",
    "bool",
    "slice",
    "range",
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only imports networkx graph classes, NumPy arrays/scalars and builtin containers.

    Anything else (``os.system``, ``subprocess.Popen``, arbitrary classes) is refused before it is imported,
    so a malicious skeleton.pkl cannot run code.
    """

    source = "<skeleton>"

    def find_class(self, module: str, name: str):
        allowed = (
            (module, name) in _ALLOWED_GLOBALS
            or (module in ("builtins", "__builtin__") and name in _ALLOWED_BUILTINS)
            or (module.startswith("numpy.dtypes") and name.endswith("DType"))
            or (module in _NETWORKX_MODULES and name[:1].isupper())
        )
        if not allowed:
            raise SkeletonError(
                f"refusing to unpickle {self.source}: it references {module}.{name}, and a skeleton pickle may only "
                "hold networkx graphs and plain data (nothing was executed)"
            )
        if module == "__builtin__":
            module = "builtins"
        if module == "copy_reg":
            module = "copyreg"
        return super().find_class(module, name)


def _read_bytes(path: str) -> bytes:
    try:
        with fsspec.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise SkeletonError(f"skeleton file not found: {path}") from None


def _from_pickle(path: str) -> nx.Graph:
    unpickler = RestrictedUnpickler(io.BytesIO(_read_bytes(path)))
    unpickler.source = path
    try:
        graph = unpickler.load()
    except SkeletonError:
        raise
    except Exception as error:
        raise SkeletonError(f"skeleton {path} is not a readable pickle: {error}") from error
    if not isinstance(graph, nx.Graph):
        raise SkeletonError(f"skeleton {path} must hold one networkx graph, found {type(graph).__name__}")
    return graph


def _from_json(path: str) -> nx.Graph:
    try:
        data = json.loads(_read_bytes(path))
        return nx.node_link_graph(data, edges="edges", name="node")
    except SkeletonError:
        raise
    except Exception as error:
        raise SkeletonError(f"skeleton {path} is not networkx node-link JSON: {error}") from error


def _read_npz(path: str) -> dict:
    """The arrays of a nisbflow skeleton npz: ``nodes``, ``id``, ``index_position``, ``edges`` (node names) and, when
    stored, ``nm_position`` and ``edge_length`` (NaN where an edge had none); absent keys map to None."""
    try:
        stored = np.load(io.BytesIO(_read_bytes(path)), allow_pickle=False)
        arrays = {key: stored[key] for key in ("nodes", "id", "index_position", "edges")}
        arrays.update({key: stored[key] if key in stored else None for key in ("nm_position", "edge_length")})
        return arrays
    except SkeletonError:
        raise
    except Exception as error:
        raise SkeletonError(f"skeleton {path} is not a nisbflow skeleton npz: {error}") from error


def _from_npz(path: str) -> nx.Graph:
    arrays = _read_npz(path)
    nodes, ids, index, nm = arrays["nodes"], arrays["id"], arrays["index_position"], arrays["nm_position"]
    lengths = arrays["edge_length"]
    graph = nx.Graph()
    for i, node in enumerate(nodes.tolist()):
        attrs = {"id": int(ids[i]), "index_position": index[i].copy()}
        if nm is not None:
            attrs["nm_position"] = nm[i].copy()
        graph.add_node(node, **attrs)
    for j, (u, v) in enumerate(arrays["edges"].tolist()):
        if lengths is not None and np.isfinite(lengths[j]):
            graph.add_edge(u, v, edge_length=float(lengths[j]))
        else:
            graph.add_edge(u, v)
    return graph


def load_skeleton(path: str | Path, *, validate: bool = True) -> nx.Graph:
    """Load a skeleton graph from ``.pkl`` (restricted unpickling), ``.json`` (node-link) or ``.npz``.

    With ``validate`` every node must carry ``id`` and a 3-vector ``index_position``.
    """
    path = str(path)
    suffix = Path(path.split("?")[0]).suffix.lower()
    readers = {".pkl": _from_pickle, ".pickle": _from_pickle, ".json": _from_json, ".npz": _from_npz}
    if suffix not in readers:
        raise SkeletonError(
            f"unknown skeleton format '{suffix or path}' for {path}: expected one of {', '.join(SKELETON_SUFFIXES)}"
        )
    graph = undirected(readers[suffix](path))
    if validate:
        validate_skeleton(graph, path)
    return graph


def undirected(graph: nx.Graph) -> nx.Graph:
    """A skeleton as the undirected simple graph NISB's metrics read: a directed graph (``nx.DiGraph``, whose edges
    may be stored in both directions) or a multigraph gives each pair of joined nodes one edge, with the first
    edge's attributes. Counting both directions once doubled ERL."""
    if not graph.is_directed() and not graph.is_multigraph():
        return graph
    simple = nx.Graph()
    simple.graph.update(graph.graph)
    simple.add_nodes_from(graph.nodes(data=True))
    for u, v, data in graph.edges(data=True):
        if not simple.has_edge(u, v):
            simple.add_edge(u, v, **data)
    return simple


def validate_skeleton(graph: nx.Graph, where: str = "<skeleton>") -> None:
    """Raise :class:`SkeletonError` unless every node has an integer ``id`` and a 3-element ``index_position``."""
    if graph.number_of_nodes() == 0:
        raise SkeletonError(f"skeleton {where} has no nodes")
    for node, attrs in graph.nodes(data=True):
        for key in ("id", "index_position"):
            if key not in attrs:
                raise SkeletonError(
                    f"skeleton {where}: node {node!r} has no '{key}' attribute (NISB nodes carry "
                    "id, index_position, nm_position)"
                )
        neuron = attrs["id"]
        if isinstance(neuron, (bool, np.bool_)) or not isinstance(neuron, (int, np.integer)):
            raise SkeletonError(
                f"skeleton {where}: node {node!r} has id {neuron!r} ({type(neuron).__name__}); "
                "ids must be integers naming the ground-truth neuron (convert them, e.g. int(id))"
            )
        if np.asarray(attrs["index_position"]).shape != (3,):
            raise SkeletonError(
                f"skeleton {where}: node {node!r} index_position must be (x, y, z), found {attrs['index_position']!r}"
            )


@dataclass
class SkeletonArrays:
    """A skeleton as flat arrays: ``index_position (N, 3) int64`` voxels (x, y, z), ``id (N,)`` neuron per node,
    ``nm_position (N, 3) float64`` nm, ``edges (E, 2)`` row indices into the node arrays (in the graph's edge
    order, first node first), ``edge_length (E,) float64`` nm as BANIS's metrics.py takes it (see
    :func:`edge_lengths`), ``stored_edge_length (E,) float64`` what the file stored (NaN where an edge had none),
    ``length_note``: one line when stored lengths disagree with ``nm_position`` (else None)."""

    nodes: np.ndarray
    id: np.ndarray
    index_position: np.ndarray
    nm_position: np.ndarray
    edges: np.ndarray
    edge_length: np.ndarray
    stored_edge_length: np.ndarray | None = None
    length_note: str | None = None


LENGTH_TOLERANCE = 1e-3
"""Relative difference above which a stored ``edge_length`` counts as disagreeing with ``nm_position``."""


def edge_lengths(
    nm: np.ndarray, rows: np.ndarray, stored: np.ndarray | None, from_positions: bool, where: str
) -> tuple[np.ndarray, str | None]:
    """Edge lengths (nm) by BANIS's rule and a note when the file says otherwise.

    BANIS's ``metrics.py`` calls funlib.evaluate's ``expected_run_length`` with ``skeleton_position_attributes=
    ["nm_position"]``, which recomputes every edge's length from its nodes' ``nm_position`` and overwrites a stored
    ``edge_length``. So, ``from_positions`` (the file has ``nm_position``; ``nm (N, 3)`` holds it): lengths are
    ``|nm(u) − nm(v)|`` and a stored ``edge_length`` that differs by more than :data:`LENGTH_TOLERANCE` is reported,
    not used. Otherwise (files BANIS could not score; ``nm`` is ``index_position`` × voxel size) a stored
    ``edge_length`` is used where there is one, else ``|nm(u) − nm(v)|``."""
    rows = rows.reshape(-1, 2)
    computed = np.linalg.norm(nm[rows[:, 0]] - nm[rows[:, 1]], axis=1) if len(rows) else np.zeros(0)
    if stored is None:
        return computed, None
    given = np.isfinite(stored)
    if not from_positions:
        return np.where(given, stored, computed), None
    differs = given & (np.abs(stored - computed) > LENGTH_TOLERANCE * np.maximum(computed, 1e-9))
    if not differs.any():
        return computed, None
    first = int(np.flatnonzero(differs)[0])
    note = (
        f"skeleton {where}: {int(differs.sum())} of {int(given.sum())} stored edge_length values differ from "
        f"their nodes' nm_position distance (edge {first}: {stored[first]:.6g} stored, {computed[first]:.6g} nm "
        "from nm_position); lengths are taken from nm_position, as BANIS's metrics.py (funlib.evaluate) does"
    )
    return computed, note


def check_positions(nodes, positions: np.ndarray, key: str, where: str) -> None:
    """Refuse positions ``(N, 3)`` that are not finite (NaN, ±inf), naming the first such node: a NaN length would
    make NERL, ERL and the ground truth's ERL NaN or 0 with no word."""
    bad = ~np.isfinite(positions).all(axis=1) if len(positions) else np.zeros(0, bool)
    if bad.any():
        first = int(np.argmax(bad))
        node = np.asarray(nodes)[first]
        node = node.item() if isinstance(node, np.generic) else node
        raise SkeletonError(
            f"skeleton {where}: node {node!r} has {key} "
            f"{positions[first].tolist()} ({int(bad.sum())} node(s) with a NaN or infinite {key}); "
            "every node needs a finite position: fix or drop those nodes"
        )


def skeleton_arrays(graph: nx.Graph, voxel_size=(9.0, 9.0, 20.0), where: str = "<graph>") -> SkeletonArrays:
    """Flatten a skeleton graph; edge lengths by :func:`edge_lengths` (from ``nm_position`` when every node has
    one). Non-finite positions are refused (:func:`check_positions`)."""
    nodes = list(graph.nodes)
    row = {node: i for i, node in enumerate(nodes)}
    ids = np.array([graph.nodes[n]["id"] for n in nodes], dtype=np.int64)
    index = np.array(
        [np.asarray(graph.nodes[n]["index_position"], dtype=np.float64) for n in nodes], dtype=np.float64
    ).reshape(-1, 3)
    check_positions(nodes, index, "index_position", where)
    index = index.astype(np.int64)
    with_nm = all("nm_position" in graph.nodes[n] for n in nodes)
    nm = (
        np.array([np.asarray(graph.nodes[n]["nm_position"]) for n in nodes], dtype=np.float64).reshape(-1, 3)
        if with_nm
        else index * np.asarray(voxel_size, dtype=np.float64)
    )
    if with_nm:
        check_positions(nodes, nm, "nm_position", where)
    edges = np.array([(row[u], row[v]) for u, v in graph.edges], dtype=np.int64).reshape(-1, 2)
    stored = np.array([data.get("edge_length", np.nan) for _, _, data in graph.edges(data=True)], dtype=np.float64)
    has_stored = bool(np.isfinite(stored).any())
    lengths, note = edge_lengths(nm, edges, stored if has_stored else None, with_nm, where)
    return SkeletonArrays(np.array(nodes), ids, index, nm, edges, lengths, stored if has_stored else None, note)


def load_skeleton_arrays(path: str | Path, voxel_size=(9.0, 9.0, 20.0)) -> SkeletonArrays:
    """A skeleton file as :class:`SkeletonArrays`. ``.npz`` is read straight into arrays, with no networkx graph:
    about 100 bytes per node where a graph holds about 1.6 KB (a 1536³ synthetic seed's 2.5 million nodes: 0.25
    against 4 GB). Other formats go through :func:`load_skeleton` and :func:`skeleton_arrays`. Edge lengths by
    :func:`edge_lengths`."""
    path = str(path)
    if Path(path.split("?")[0]).suffix.lower() != ".npz":
        return skeleton_arrays(load_skeleton(path), voxel_size, where=path)
    stored = _read_npz(path)
    if stored["id"].dtype.kind not in "iu":
        raise SkeletonError(
            f"skeleton {path}: its ids are {stored['id'].dtype} values; ids must be integers naming "
            "the ground-truth neuron"
        )
    nodes, ids, index, edge_names = (
        stored["nodes"],
        stored["id"].astype(np.int64),
        stored["index_position"],
        stored["edges"],
    )
    nm = None if stored["nm_position"] is None else stored["nm_position"].astype(np.float64)
    lengths = None if stored["edge_length"] is None else stored["edge_length"].astype(np.float64)
    if len(nodes) == 0:
        raise SkeletonError(f"skeleton {path} has no nodes")
    if index.ndim != 2 or index.shape[1] != 3 or len(index) != len(nodes) or ids.shape != (len(nodes),):
        raise SkeletonError(
            f"skeleton {path}: expected index_position of shape ({len(nodes)}, 3) and id of shape "
            f"({len(nodes)},), found {index.shape} and {ids.shape}"
        )
    order = np.argsort(nodes, kind="stable")
    edge_names = edge_names.reshape(-1, 2)
    rows = order[np.clip(np.searchsorted(nodes[order], edge_names), 0, len(nodes) - 1)]
    if len(rows) and not np.array_equal(nodes[rows], edge_names):
        bad = np.argwhere(nodes[rows] != edge_names)[0]
        raise SkeletonError(
            f"skeleton {path}: edge {edge_names[bad[0]].tolist()} names node "
            f"{edge_names[tuple(bad)]!r}, which is not among its nodes"
        )
    check_positions(nodes, index.astype(np.float64), "index_position", path)
    index = index.astype(np.int64)
    rows = rows.astype(np.int64).reshape(-1, 2)
    with_nm = nm is not None
    if nm is not None:
        check_positions(nodes, nm, "nm_position", path)
    else:
        nm = index * np.asarray(voxel_size, dtype=np.float64)
    computed, note = edge_lengths(nm, rows, lengths, with_nm, path)
    return SkeletonArrays(nodes, ids, index, nm, rows, computed, lengths, note)


def check_skeleton_in_volume(graph: nx.Graph, shape, where: str = "<skeleton>", volume: str = "the volume") -> None:
    """Raise :class:`SkeletonError` naming the first node whose ``index_position`` lies outside ``shape`` (X, Y, Z)."""
    shape = np.asarray(shape[:3])
    for node, attrs in graph.nodes(data=True):
        position = np.asarray(attrs["index_position"])
        if np.any(position < 0) or np.any(position >= shape):
            raise SkeletonError(
                f"skeleton {where}: node {node!r} at voxel {position.tolist()} lies outside {volume} "
                f"of shape {shape.tolist()} (X, Y, Z)"
            )


def crop_skeleton(graph: nx.Graph, start, stop) -> nx.Graph:
    """The part of a skeleton inside the voxel box ``[start, stop)`` (X, Y, Z), in the crop's coordinates.

    Keeps the nodes whose ``index_position`` lies in the box, shifted by ``-start``, and the edges between kept
    nodes (an edge leaving the box is dropped, so run lengths are those inside the crop). Other node and edge
    attributes (``id``, ``nm_position``, ``edge_length``) are copied unchanged. Use it to evaluate a crop:

    >>> import networkx as nx
    >>> g = nx.Graph(); g.add_node(0, id=1, index_position=[5, 5, 5]); g.add_node(1, id=1, index_position=[50, 5, 5])
    >>> g.add_edge(0, 1)
    >>> [d["index_position"] for _, d in crop_skeleton(g, (4, 0, 0), (10, 10, 10)).nodes(data=True)]
    [[1, 5, 5]]
    """
    start, stop = np.asarray(start[:3]), np.asarray(stop[:3])
    kept = [
        n
        for n, a in graph.nodes(data=True)
        if np.all(np.asarray(a["index_position"]) >= start) and np.all(np.asarray(a["index_position"]) < stop)
    ]
    cropped = graph.subgraph(kept).copy()
    for node in kept:
        position = np.asarray(graph.nodes[node]["index_position"]) - start
        cropped.nodes[node]["index_position"] = position.tolist()
    return cropped


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


PICKLE_PROTOCOL = 4
"""Skeleton pickles use protocol 4 (Python 3.4 and later) with plain Python values only (:func:`portable`), so
numpy 1.x and 2.x, with any networkx 2.x or 3.x, load them: a pickle holding numpy arrays names numpy 2's
``numpy._core`` module, which numpy 1.x (allowed by PyTorch Connectomics and BANIS) cannot import."""


def _plain(value):
    """``value`` with numpy scalars and arrays (also inside lists, tuples and dicts) as Python ints, floats, bools and
    lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def portable(graph: nx.Graph) -> nx.Graph:
    """A copy of ``graph`` (same class, node and edge order) whose node names and attributes are plain Python values:
    ``index_position`` and ``nm_position`` become lists, ids ints, lengths floats. BANIS's ``metrics.py`` unpacks
    ``x, y, z = index_position`` and funlib.evaluate builds arrays from ``nm_position``, which lists serve as well."""
    copy = graph.__class__()
    copy.graph.update(_plain(dict(graph.graph)))
    copy.add_nodes_from((_plain(n), _plain(dict(a))) for n, a in graph.nodes(data=True))
    copy.add_edges_from((_plain(u), _plain(v), _plain(dict(a))) for u, v, a in graph.edges(data=True))
    return copy


def check_skeleton_suffix(path: str | Path) -> None:
    """Refuse, before any work, a skeleton output whose suffix names no format nisbflow writes."""
    suffix = Path(str(path)).suffix.lower()
    if suffix not in SKELETON_SUFFIXES:
        raise SkeletonError(
            f"unknown skeleton format '{suffix or path}' for {path}: expected one of {', '.join(SKELETON_SUFFIXES)}"
        )


def save_skeleton(graph: nx.Graph, path: str | Path) -> None:
    """Write a skeleton as ``.pkl`` (NISB's format, numpy-free: :func:`portable`, :data:`PICKLE_PROTOCOL`), ``.json``
    (node-link) or ``.npz``, by the suffix of ``path``; each records that nisbflow wrote it
    (:data:`nisbflow.provenance.MARK`: a graph attribute, an ``.npz`` member)."""
    from nisbflow.provenance import MARK, SKELETON

    path = str(path)
    suffix = Path(path).suffix.lower()
    if suffix in (".pkl", ".pickle"):
        copy = portable(graph)
        copy.graph[MARK] = SKELETON
        payload = pickle.dumps(copy, protocol=PICKLE_PROTOCOL)
    elif suffix == ".json":
        linked = nx.node_link_data(graph, edges="edges", name="node")
        linked["graph"] = dict(linked.get("graph") or {}, **{MARK: SKELETON})
        payload = json.dumps(_jsonable(linked)).encode()
    elif suffix == ".npz":
        arrays = skeleton_arrays(graph)
        buffer = io.BytesIO()
        lengths = np.array([data.get("edge_length", np.nan) for _, _, data in graph.edges(data=True)], dtype=np.float64)
        has_nm = all("nm_position" in attrs for _, attrs in graph.nodes(data=True))
        fields = dict(
            nodes=arrays.nodes,
            id=arrays.id,
            index_position=arrays.index_position,
            edges=arrays.nodes[arrays.edges] if len(arrays.edges) else arrays.edges,
            edge_length=lengths,
        )
        if has_nm:
            fields["nm_position"] = arrays.nm_position
        fields[MARK] = np.array(SKELETON)
        if arrays.nodes.dtype == object:
            raise SkeletonError(f"cannot write {path}: npz skeletons need integer or string node names")
        np.savez_compressed(buffer, **fields)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        payload = buffer.getvalue()
    else:
        raise SkeletonError(
            f"unknown skeleton format '{suffix}' for {path}: expected one of {', '.join(SKELETON_SUFFIXES)}"
        )
    with fsspec.open(path, "wb") as handle:
        handle.write(payload)


def convert_skeleton(source: str | Path, destination: str | Path) -> nx.Graph:
    """Read ``source`` (any supported format, pickles restricted) and write ``destination`` (format by suffix) whole,
    under a temporary name renamed when complete (:func:`nisbflow.staging.staged_output`; an existing
    ``destination`` is replaced: callers check it first, as ``nisbflow skeleton convert`` does)."""
    from ..staging import staged_output

    graph = load_skeleton(source)
    with staged_output(destination, overwrite=True) as temporary:
        save_skeleton(graph, temporary)
    return graph


@dataclass
class SkeletonSummary:
    """Node, neuron and edge counts and the total path length in nm of a skeleton. ``n_neurons``: skeletons (ids)
    with at least one node; ``n_scored``: those with at least one edge, the skeletons NERL scores
    (``NerlResult.n_skeletons``)."""

    n_nodes: int
    n_neurons: int
    n_edges: int
    path_length_nm: float
    n_scored: int = 0


def summarize_skeleton(graph: nx.Graph, voxel_size=(9.0, 9.0, 20.0)) -> SkeletonSummary:
    """Counts and total path length (nm) of a skeleton; edges between nodes of different ids are not counted."""
    arrays = skeleton_arrays(graph, voxel_size)
    same = arrays.id[arrays.edges[:, 0]] == arrays.id[arrays.edges[:, 1]] if len(arrays.edges) else np.zeros(0, bool)
    return SkeletonSummary(
        n_nodes=len(arrays.nodes),
        n_neurons=int(len(np.unique(arrays.id))),
        n_edges=int(same.sum()),
        path_length_nm=float(arrays.edge_length[same].sum()),
        n_scored=int(len(np.unique(arrays.id[arrays.edges[same, 0]]))) if len(arrays.edges) else 0,
    )
