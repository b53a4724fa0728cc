import os
import pickle

import networkx as nx
import numpy as np
import pytest

from nisbflow.data import check_skeleton_in_volume, convert_skeleton, load_skeleton, save_skeleton, summarize_skeleton
from nisbflow.errors import SkeletonError


def small_graph():
    g = nx.Graph()
    g.add_node(0, id=1, index_position=np.array([0, 0, 0]), nm_position=np.array([0.0, 0.0, 0.0]))
    g.add_node(1, id=1, index_position=np.array([3, 4, 0]), nm_position=np.array([27.0, 36.0, 0.0]))
    g.add_node(2, id=2, index_position=np.array([1, 1, 1]), nm_position=np.array([9.0, 9.0, 20.0]))
    g.add_edge(0, 1, edge_length=45.0)
    g.add_edge(1, 2)  # joins two neurons: not counted in path length
    return g


@pytest.mark.parametrize("suffix", [".json", ".npz", ".pkl"])
def test_round_trip(tmp_path, suffix):
    source = tmp_path / "skeleton.pkl"
    with open(source, "wb") as handle:
        pickle.dump(small_graph(), handle)
    graph = convert_skeleton(source, tmp_path / f"out{suffix}")
    again = load_skeleton(tmp_path / f"out{suffix}")
    assert sorted(again.nodes) == [0, 1, 2] and {frozenset(e) for e in again.edges} == {frozenset(e) for e in graph.edges}
    for node in graph.nodes:
        assert again.nodes[node]["id"] == graph.nodes[node]["id"]
        np.testing.assert_array_equal(again.nodes[node]["index_position"], graph.nodes[node]["index_position"])
        np.testing.assert_allclose(again.nodes[node]["nm_position"], graph.nodes[node]["nm_position"])
    assert again.edges[0, 1]["edge_length"] == 45.0
    summary = summarize_skeleton(again)
    assert (summary.n_nodes, summary.n_neurons, summary.n_edges, summary.path_length_nm) == (3, 2, 1, 45.0)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "skeleton.pkl"
    graph = small_graph()
    graph.graph["payload"] = Exploit(marker)
    path.write_bytes(pickle.dumps(graph))
    with pytest.raises(SkeletonError, match=r"refusing to unpickle .*(posix|os)\.system.*nothing was executed"):
        load_skeleton(path)
    assert not marker.exists()


def test_pickle_of_something_else_is_refused(tmp_path):
    path = tmp_path / "skeleton.pkl"
    path.write_bytes(pickle.dumps({"not": "a graph"}))
    with pytest.raises(SkeletonError, match="must hold one networkx graph, found dict"):
        load_skeleton(path)


def test_graph_without_id_unknown_format_missing_file(tmp_path):
    g = nx.Graph()
    g.add_node(4, index_position=(1, 2, 3))
    path = tmp_path / "skeleton.pkl"
    path.write_bytes(pickle.dumps(g))
    with pytest.raises(SkeletonError, match=r"node 4 has no 'id' attribute"):
        load_skeleton(path)
    with pytest.raises(SkeletonError, match="unknown skeleton format '.swc'"):
        load_skeleton(tmp_path / "skeleton.swc")
    with pytest.raises(SkeletonError, match="skeleton file not found"):
        load_skeleton(tmp_path / "missing.pkl")


def test_node_outside_volume_is_named():
    graph = small_graph()
    check_skeleton_in_volume(graph, (4, 5, 2))
    with pytest.raises(SkeletonError, match=r"node 1 at voxel \[3, 4, 0\] lies outside .* shape \[3, 5, 2\]"):
        check_skeleton_in_volume(graph, (3, 5, 2))


def test_save_refuses_unknown_suffix(tmp_path):
    with pytest.raises(SkeletonError, match="unknown skeleton format"):
        save_skeleton(small_graph(), tmp_path / "out.txt")


def test_crop_skeleton_keeps_nodes_inside_in_crop_coordinates_and_scores_a_crop(synthetic_seed):
    import numpy as np

    from nisbflow.data import crop_skeleton, load_skeleton, open_seed
    from nisbflow.evaluate import nerl

    seed = open_seed(synthetic_seed[0])
    graph = load_skeleton(seed.skeleton_path)
    start, stop = np.array([8, 8, 0]), np.array(seed.shape) - np.array([8, 0, 4])
    cropped = crop_skeleton(graph, start, stop)
    inside = [n for n, a in graph.nodes(data=True)
              if np.all(np.asarray(a["index_position"]) >= start) and np.all(np.asarray(a["index_position"]) < stop)]
    assert sorted(cropped.nodes) == sorted(inside) and 0 < len(inside) < graph.number_of_nodes()
    for node in inside:
        assert cropped.nodes[node]["index_position"] == (np.asarray(graph.nodes[node]["index_position"])
                                                         - start).tolist()
        assert cropped.nodes[node]["id"] == graph.nodes[node]["id"]
    assert all(graph.has_edge(u, v) for u, v in cropped.edges)
    crop = tuple(slice(a, b) for a, b in zip(start, stop))
    assert nerl(seed.seg[crop], cropped).nerl == 1.0  # the ground truth crop against the cropped skeleton


def test_npz_skeleton_loads_into_arrays_without_a_graph(tmp_path):
    """``load_skeleton_arrays``: an .npz straight into arrays. Node names (not in row order) map edges to rows;
    lengths are the nm distance, as BANIS takes them (here 9 · √3 ≈ 15.59 between nodes 10 and 30, whose nm
    positions are one voxel apart along each axis); a stored length that disagrees (4.5 on 10–20, whose nodes are
    √(54² + 9² + 51²) nm apart) is kept aside and reported."""
    from nisbflow.data import load_skeleton_arrays

    graph = nx.Graph()
    graph.add_node(30, id=2, index_position=np.array([2, 2, 2]), nm_position=np.array([18.0, 18.0, 18.0]))
    graph.add_node(10, id=2, index_position=np.array([1, 1, 1]), nm_position=np.array([9.0, 9.0, 9.0]))
    graph.add_node(20, id=5, index_position=np.array([7, 0, 3]), nm_position=np.array([63.0, 0.0, 60.0]))
    graph.add_edge(10, 30)
    graph.add_edge(20, 10, edge_length=4.5)
    save_skeleton(graph, tmp_path / "s.npz")
    arrays = load_skeleton_arrays(tmp_path / "s.npz")
    row = {int(n): i for i, n in enumerate(arrays.nodes)}
    assert sorted(row) == [10, 20, 30]
    assert [int(arrays.id[row[n]]) for n in (10, 20, 30)] == [2, 5, 2]
    assert arrays.index_position[row[20]].tolist() == [7, 0, 3]
    lengths = {frozenset((int(arrays.nodes[a]), int(arrays.nodes[b]))): length
               for (a, b), length in zip(arrays.edges, arrays.edge_length)}
    assert lengths.keys() == {frozenset((10, 30)), frozenset((10, 20))}
    assert lengths[frozenset((10, 20))] == pytest.approx((54 ** 2 + 9 ** 2 + 51 ** 2) ** 0.5)
    assert lengths[frozenset((10, 30))] == pytest.approx(9 * 3 ** 0.5)
    assert sorted(arrays.stored_edge_length[np.isfinite(arrays.stored_edge_length)].tolist()) == [4.5]
    assert "1 of 1 stored edge_length values differ from their nodes' nm_position distance" in arrays.length_note

    broken = dict(np.load(tmp_path / "s.npz"))
    broken["edges"] = np.array([[10, 99]])
    np.savez(tmp_path / "broken.npz", **broken)
    with pytest.raises(SkeletonError, match=r"broken\.npz.*99"):
        load_skeleton_arrays(tmp_path / "broken.npz")


def test_skeleton_pickles_name_no_numpy_module_so_numpy_1_and_2_both_load_them(tmp_path):
    """nisbflow's pickles once held numpy 2 arrays (``numpy._core.multiarray``), which numpy 1.x cannot import:
    BANIS's and PyTorch Connectomics' environments failed with ModuleNotFoundError. Now no global but networkx's
    graph class is referenced, and the values read back are plain Python values in the graph's order."""
    import pickle
    import pickletools

    from nisbflow.synth import synthesize_seed

    summary = synthesize_seed(tmp_path / "seed", (48, 48, 24), seed=2, chunks=(24, 24, 24), progress=False)
    assert summary.n_skeleton_nodes > 0
    for path in (tmp_path / "seed" / "skeleton.pkl", tmp_path / "copy.pkl"):
        if path.name == "copy.pkl":
            save_skeleton(load_skeleton(tmp_path / "seed" / "skeleton.pkl"), path)
        raw = path.read_bytes()
        strings = [str(arg) for op, arg, _ in pickletools.genops(raw) if isinstance(arg, str)]
        assert not [s for s in strings if "numpy" in s], path
        assert raw[1] == 4, "protocol 4"  # PROTO opcode, then the protocol number
        graph = pickle.loads(raw)  # a plain, unrestricted load finds every class it names
        assert type(graph) is nx.Graph
        assert {s.split(".")[0] for s in strings if s.startswith(("networkx", "builtins", "numpy"))} == {"networkx"}
        node, data = next(iter(graph.nodes(data=True)))
        assert type(data["index_position"]) is list and all(type(c) is int for c in data["index_position"])
        assert type(data["nm_position"]) is list and all(type(c) is float for c in data["nm_position"])
        assert type(data["id"]) is int
        original = load_skeleton(tmp_path / "seed" / "skeleton.pkl")
        assert list(graph.nodes) == list(original.nodes) and list(graph.edges) == list(original.edges)
