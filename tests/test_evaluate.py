"""Evaluation: ERL/NERL on hand-built graphs and a synthetic seed, node-label gathering, dense metrics, bad inputs."""

from __future__ import annotations

import math
import os
import pickle

import dask
import dask.array as da
import networkx as nx
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import adapted_rand_error, variation_of_information

from nisbflow.errors import SkeletonError
from nisbflow.evaluate import dense_metrics, nerl, node_labels
from nisbflow.evaluate.kernel import expected_run_length


def two_skeletons() -> nx.Graph:
    """Skeleton 1: nodes 0-1-2-3 along x (edges of 10 nm, L = 30); skeleton 2: nodes 4-5 (L = 10). Σ L = 40."""
    graph = nx.Graph()
    for node in range(4):
        graph.add_node(node, id=1, index_position=(node, 0, 0))
    for node in (4, 5):
        graph.add_node(node, id=2, index_position=(node - 4, 2, 0))
    for u, v in ((0, 1), (1, 2), (2, 3), (4, 5)):
        graph.add_edge(u, v, edge_length=10.0)
    return graph


def volume_from_node_labels(graph: nx.Graph, labels: dict) -> np.ndarray:
    segmentation = np.zeros((4, 3, 1), dtype=np.uint32)
    for node, label in labels.items():
        segmentation[tuple(graph.nodes[node]["index_position"])] = label
    return segmentation


@pytest.mark.parametrize("labels, erl, counts", [
    # perfect: (30² + 10²) / 40
    ({0: 1, 1: 1, 2: 1, 3: 1, 4: 2, 5: 2}, 25.0, dict(n_splits=0, n_mergers=0, n_omitted=0)),
    # skeleton 1 split between nodes 1 and 2: (10² + 10² + 10²) / 40
    ({0: 1, 1: 1, 2: 3, 3: 3, 4: 2, 5: 2}, 7.5, dict(n_splits=1, n_mergers=0, n_omitted=0)),
    # rule 1: node 3 in background: edge (2, 3) omitted, segment 0 holds one skeleton only: (20² + 10²) / 40
    ({0: 1, 1: 1, 2: 1, 3: 0, 4: 2, 5: 2}, 12.5, dict(n_splits=0, n_mergers=0, n_omitted=1)),
    # rule 3: skeletons 1 and 2 merged in one segment, every edge lies in it: both count nothing
    ({0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1}, 0.0, dict(n_splits=0, n_mergers=2, n_non0_mergers=2, n_merged_edges=4)),
    # a single node of skeleton 2 in skeleton 1's segment merges both (any node); skeleton 2's edge joins segment 2
    # to the merging segment 1: rule 2 comes first, so it is a split, not a merged edge
    ({0: 1, 1: 1, 2: 1, 3: 1, 4: 2, 5: 1}, 0.0, dict(n_mergers=2, n_non0_mergers=2, n_splits=1, n_merged_edges=3)),
    # background holds nodes of both skeletons: segment 0 is a merging segment and both are merged skeletons, but
    # only their edges touching 0 are lost (omitted); skeleton 1's edges in segment 1 stay correct: 20² / 40
    ({0: 1, 1: 1, 2: 1, 3: 0, 4: 2, 5: 0}, 10.0,
     dict(n_mergers=2, n_non0_mergers=0, n_splits=0, n_omitted=2, n_merged_edges=0)),
    # skeleton 1 is merged (segment 3 also holds skeleton 2), yet its edge in segment 1, which merges nothing,
    # still counts: 10² / 40; (1, 2) is split, (2, 3) and (4, 5) lie in the merging segment 3
    ({0: 1, 1: 1, 2: 3, 3: 3, 4: 3, 5: 3}, 2.5, dict(n_mergers=2, n_splits=1, n_merged_edges=2, n_omitted=0)),
])
def test_hand_built_graphs(labels, erl, counts):
    graph = two_skeletons()
    result = nerl(volume_from_node_labels(graph, labels), graph)
    assert result.max_erl == pytest.approx(25.0)
    assert result.erl == pytest.approx(erl)
    assert result.nerl == pytest.approx(erl / 25.0)
    for key, value in counts.items():
        assert getattr(result, key) == value, key


@pytest.mark.parametrize("labels, error_type, merge_stats", [
    ({0: 1, 1: 1, 2: 1, 3: 1, 4: 2, 5: 2}, {1: "correct", 2: "correct"}, {}),
    ({0: 1, 1: 1, 2: 3, 3: 3, 4: 2, 5: 2}, {1: "split", 2: "correct"}, {}),
    # skeleton 2 takes part in the merger of segment 1 but loses its edge to a split: no merged edge of its own
    ({0: 1, 1: 1, 2: 1, 3: 1, 4: 2, 5: 1}, {1: "merged", 2: "split"}, {1: [1, 2]}),
    ({0: 1, 1: 1, 2: 1, 3: 0, 4: 2, 5: 0}, {1: "split", 2: "split"}, {0: [1, 2]}),
    ({0: 1, 1: 1, 2: 3, 3: 3, 4: 3, 5: 3}, {1: "merged", 2: "merged"}, {3: [1, 2]}),
])
def test_error_type_and_merge_stats_follow_the_edge_rules(labels, error_type, merge_stats):
    graph = two_skeletons()
    result = nerl(volume_from_node_labels(graph, labels), graph)
    assert result.error_type == error_type
    ids = np.array([graph.nodes[n]["id"] for n in graph])
    edges = np.array(list(graph.edges))
    run = expected_run_length(ids, edges, np.full(len(edges), 10.0), np.array([labels[n] for n in graph]))
    assert run.merge_stats == merge_stats
    assert run.n_correct + run.n_splits + run.n_omitted + run.n_merged_edges == len(edges)


def test_adapted_variants_ignore_small_mergers():
    graph = two_skeletons()
    # node 5 of skeleton 2 lies in skeleton 1's segment: a merger of 1 node
    result = nerl(volume_from_node_labels(graph, {0: 1, 1: 1, 2: 1, 3: 1, 4: 2, 5: 1}), graph)
    assert result.nerl == 0.0
    # ignoring that merger: skeleton 1 is whole (30²), skeleton 2's only edge is split: 900 / 40 / 25
    assert result.nerl_5 == result.nerl_20 == result.nerl_100 == result.nerl_inf == pytest.approx(0.9)


@pytest.mark.parametrize("k, merged", [(5, True), (6, False)])
def test_adapted_filter_is_more_than_k_nodes(k, merged):
    """Skeleton 2 has exactly 6 nodes in skeleton 1's segment: present (a merger) for k = 5, not for k = 6."""
    ids = np.array([1] * 10 + [2] * 10)
    edges = np.array([(i, i + 1) for i in range(9)] + [(i, i + 1) for i in range(10, 19)])
    lengths = np.ones(len(edges))
    labels = np.array([1] * 10 + [1] * 6 + [2] * 4)
    run = expected_run_length(ids, edges, lengths, labels, k + 1)
    # skeleton 2: edges 10-15 in segment 1 (5), one split (15, 16), 16-19 in segment 2 (3 edges)
    if merged:
        assert run.merge_stats == {1: [1, 2]} and run.n_merged_edges == 9 + 5
        assert run.erl == pytest.approx(3 ** 2 / 18)
    else:
        assert run.merge_stats == {} and run.n_merged_edges == 0
        assert run.erl == pytest.approx((9 ** 2 + 5 ** 2 + 3 ** 2) / 18)
    assert run.n_splits == 1


def reference_mergers(ids, labels) -> tuple[int, int]:
    """``(n_mergers, n_non0_mergers)`` by the rules, node by node: a segment holding nodes of two or more skeletons
    merges, and each (merging segment, skeleton) pair counts; the second count leaves segment 0 out."""
    skeletons_in = {}
    for skeleton, segment in zip(ids, labels):
        skeletons_in.setdefault(int(segment), set()).add(int(skeleton))
    pairs = [(segment, len(held)) for segment, held in skeletons_in.items() if len(held) >= 2]
    return sum(n for _, n in pairs), sum(n for segment, n in pairs if segment != 0)


def reference_splits(graph, segmentation) -> int:
    """Edges whose two nodes lie in different, non-background segments."""
    at = {node: int(segmentation[tuple(data["index_position"])]) for node, data in graph.nodes(data=True)}
    return sum(1 for u, v in graph.edges if at[u] != 0 and at[v] != 0 and at[u] != at[v])


def reference_erl(ids, edges, lengths, labels, k) -> float:
    """ERL by the rules of docs/design.md, one edge at a time: the independent reference for the kernel."""
    count: dict = {}
    for node in range(len(ids)):
        count[(ids[node], labels[node])] = count.get((ids[node], labels[node]), 0) + 1
    present = [pair for pair, c in count.items() if c > k]
    skeletons_in: dict = {}
    for skeleton, segment in present:
        skeletons_in.setdefault(segment, set()).add(skeleton)
    merging = {segment for segment, found in skeletons_in.items() if len(found) >= 2}
    merged_skeletons = {skeleton for skeleton, segment in present if segment in merging}
    skeleton_length: dict = {}
    run: dict = {}
    for (u, v), length in zip(edges, lengths):
        s = ids[u]
        skeleton_length[s] = skeleton_length.get(s, 0.0) + length
        if labels[u] == 0 or labels[v] == 0:
            continue  # 1. omitted
        if labels[u] != labels[v]:
            continue  # 2. split
        if s in merged_skeletons and labels[u] in merging:
            continue  # 3. merged
        run[(s, labels[u])] = run.get((s, labels[u]), 0.0) + length  # 4. correct
    total = sum(skeleton_length.values())
    erl = 0.0
    for s, length_s in skeleton_length.items():
        if length_s > 0:
            erl += (length_s / total) * sum(c * c for (t, _), c in run.items() if t == s) / length_s
    return erl


@st.composite
def skeletons_and_labels(draw):
    """Random forests of 1-4 skeletons (trees of 1-14 nodes, random edge lengths) and node labels from a few
    segments (0 included), so mergers, splits, omissions and background mergers all occur."""
    ids, edges, lengths = [], [], []
    for skeleton in range(1, draw(st.integers(1, 4)) + 1):
        first = len(ids)
        n = draw(st.integers(1, 14))
        for i in range(n):
            ids.append(skeleton)
            if i:
                edges.append((first + draw(st.integers(0, i - 1)), first + i))
                lengths.append(draw(st.floats(0.5, 50.0)))
    for _ in range(draw(st.integers(0, 3))):  # edges joining two neurons: funlib counts them in u's skeleton
        u, v = draw(st.integers(0, len(ids) - 1)), draw(st.integers(0, len(ids) - 1))
        if ids[u] != ids[v] and (u, v) not in edges and (v, u) not in edges:
            edges.append((u, v))
            lengths.append(draw(st.floats(0.5, 50.0)))
    labels = draw(st.lists(st.integers(0, 4), min_size=len(ids), max_size=len(ids)))
    return ids, edges, lengths, labels


@settings(max_examples=300, deadline=None)
@given(skeletons_and_labels())
def test_nerl_and_variants_equal_a_plain_per_edge_loop(case):
    ids, edges, lengths, labels = case
    graph = nx.Graph()
    for node, (skeleton, label) in enumerate(zip(ids, labels)):
        graph.add_node(node, id=skeleton, index_position=(node, 0, 0))
    for (u, v), length in zip(edges, lengths):
        graph.add_edge(u, v, edge_length=length)
    segmentation = np.array(labels, dtype=np.uint32).reshape(-1, 1, 1)
    result = nerl(segmentation, graph)
    # networkx may store an edge as (v, u): the reference takes the graph's own orientation, as funlib.evaluate does
    # (an edge joining two neurons belongs to its first node's skeleton)
    stored = [(u, v) for u, v in graph.edges]
    stored_lengths = [graph.edges[e]["edge_length"] for e in stored]
    best = reference_erl(ids, stored, stored_lengths, ids, 0)
    assert result.max_erl == pytest.approx(best, rel=1e-9, abs=1e-9)
    for name, k in (("nerl", 0), ("nerl_5", 5), ("nerl_20", 20), ("nerl_100", 100), ("nerl_inf", math.inf)):
        expected = reference_erl(ids, stored, stored_lengths, labels, k) / best if best > 0 else 0.0
        assert getattr(result, name) == pytest.approx(expected, rel=1e-9, abs=1e-9), name
    assert result.erl == pytest.approx(reference_erl(ids, stored, stored_lengths, labels, 0), rel=1e-9, abs=1e-9)


def test_edge_lengths_from_positions_and_voxel_size():
    graph = nx.Graph()
    graph.add_node("a", id=1, index_position=(0, 0, 0))
    graph.add_node("b", id=1, index_position=(0, 0, 2))
    graph.add_node("c", id=1, index_position=(0, 3, 2))
    graph.add_edge("a", "b")
    graph.add_edge("b", "c")
    graph.add_node("d", id=2, index_position=(1, 0, 0))
    graph.add_edge("c", "d")  # between neurons: counted in c's skeleton, as funlib.evaluate counts it
    segmentation = np.zeros((2, 4, 3), dtype=np.uint8)
    segmentation[0] = 5
    segmentation[1] = 6
    result = nerl(segmentation, graph, voxel_size=(9, 9, 20))
    between = float(np.sqrt(9 ** 2 + 27 ** 2 + 40 ** 2))
    assert result.skeleton_length == {1: pytest.approx(40 + 27 + between)}
    # the edge c-d joins two ids: split in the ground truth and here, so ERL = max ERL = 67² / L
    assert result.max_erl == pytest.approx(67 ** 2 / (67 + between))
    assert result.nerl == pytest.approx(1.0) and result.n_splits == 1


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    from nisbflow.data import load_skeleton, open_seed
    from nisbflow.synth import synthesize_seed

    path = tmp_path_factory.mktemp("evaluate") / "seed"
    synthesize_seed(str(path), (96, 96, 48), seed=4, chunks=(32, 32, 32), progress=False)
    opened = open_seed(str(path))
    return opened, load_skeleton(opened.skeleton_path)


def test_ground_truth_nerl_is_one_and_errors_cost_what_they_should(seed):
    opened, graph = seed
    truth = opened.seg[...]
    result = nerl(opened.seg, graph)  # a zarr array: node labels gathered chunk by chunk
    assert result.nerl == 1.0 and result.n_mergers == 0 and result.n_splits == 0
    lengths = result.skeleton_length
    squares = {s: v * v for s, v in lengths.items()}
    a, b = sorted(lengths, key=lengths.get)[-2:]  # the two longest skeletons
    merged = np.where(truth == a, b, truth)
    expected = (sum(squares.values()) - squares[a] - squares[b]) / sum(squares.values())
    assert nerl(merged, graph).nerl == pytest.approx(expected)
    assert nerl(merged, graph).n_non0_mergers == 2
    # split skeleton a at an edge: relabel the voxels of a on one side of a plane through that edge's midpoint
    positions = {n: np.array(graph.nodes[n]["index_position"]) for n in graph if graph.nodes[n]["id"] == a}
    axis = int(np.argmax(np.ptp(np.array(list(positions.values())), axis=0)))
    cut = int(np.median([p[axis] for p in positions.values()]))
    split = truth.copy()
    index = [slice(None)] * 3
    index[axis] = slice(cut, None)
    region = split[tuple(index)]
    region[region == a] = truth.max() + 1
    result = nerl(split, graph)
    assert result.n_splits == reference_splits(graph, split) >= 1 and result.nerl < 1.0
    # the skeleton's run length is now Σ c² / L over its pieces, the others unchanged
    pieces = {}
    arrays_ids = [n for n in graph if graph.nodes[n]["id"] == a]
    for u, v, data in graph.edges(arrays_ids, data=True):
        if graph.nodes[v]["id"] != a:
            continue
        lu, lv = split[tuple(positions[u])], split[tuple(positions[v])]
        if lu == lv:
            length = data.get("edge_length", float(np.linalg.norm(np.asarray(graph.nodes[u]["nm_position"])
                                                                 - np.asarray(graph.nodes[v]["nm_position"]))))
            pieces[lu] = pieces.get(lu, 0.0) + length
    expected = (sum(squares.values()) - squares[a] + sum(c * c for c in pieces.values())) / sum(squares.values())
    assert result.nerl == pytest.approx(expected)
    assert result.error_type[a] == "split"


def test_nerl_from_an_npz_skeleton_reads_no_graph_and_scores_the_same(seed, tmp_path):
    """An .npz skeleton goes straight to arrays (what evaluation at millions of nodes needs); the same merger of
    the two longest skeletons costs what the rule says: Σ over the others of L² / Σ L²."""
    from nisbflow.data import save_skeleton

    opened, graph = seed
    save_skeleton(graph, tmp_path / "skeleton.npz")
    truth = opened.seg[...]
    lengths = nerl(truth, graph).skeleton_length
    squares = {s: v * v for s, v in lengths.items()}
    a, b = sorted(lengths, key=lengths.get)[-2:]
    merged = np.where(truth == a, b, truth)
    result = nerl(merged, str(tmp_path / "skeleton.npz"))
    assert result.nerl == pytest.approx((sum(squares.values()) - squares[a] - squares[b]) / sum(squares.values()))
    assert result.n_nodes == graph.number_of_nodes() and result.n_non0_mergers == 2
    assert nerl(opened.seg, str(tmp_path / "skeleton.npz")).nerl == 1.0


def test_chunked_gathering_equals_direct_indexing(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 1000, (37, 29, 23)).astype(np.uint32)
    store = zarr.create_array(str(tmp_path / "seg.zarr"), shape=volume.shape, chunks=(10, 8, 9), dtype="uint32")
    store[...] = volume
    positions = np.stack([rng.integers(0, n, 500) for n in volume.shape], axis=1)
    expected = volume[positions[:, 0], positions[:, 1], positions[:, 2]]
    with dask.config.set(scheduler="synchronous"):
        assert np.array_equal(node_labels(store, positions), expected)
        assert np.array_equal(node_labels(da.from_array(volume, chunks=(7, 7, 7)), positions), expected)
    assert np.array_equal(node_labels(volume, positions), expected)


def test_dense_metrics_equal_scikit_image():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 6, (20, 18, 10))
    test = np.where(rng.random(truth.shape) < 0.8, truth, rng.integers(0, 9, truth.shape))
    error, precision, recall = adapted_rand_error(truth, test, ignore_labels=(0,))
    split, merge = variation_of_information(truth, test, ignore_labels=(0,))  # H(test|true), H(true|test), bits
    with dask.config.set(scheduler="synchronous"):
        for a, b in ((truth, test), (da.from_array(truth, chunks=7), da.from_array(test, chunks=(5, 9, 10)))):
            metrics = dense_metrics(a, b)
            assert metrics.adapted_rand_error == pytest.approx(error)
            assert metrics.rand_precision == pytest.approx(precision)
            assert metrics.rand_recall == pytest.approx(recall)
            assert metrics.voi_merge == pytest.approx(merge)
            assert metrics.voi_split == pytest.approx(split)


def test_bad_inputs(tmp_path):
    graph = two_skeletons()
    small = np.zeros((2, 3, 1), dtype=np.uint32)
    with pytest.raises(SkeletonError, match=r"node 2 at voxel \[2, 0, 0\] lies outside .*\[2, 3, 1\]"):
        nerl(small, graph)
    del graph.nodes[4]["id"]
    with pytest.raises(SkeletonError, match="node 4 has no 'id'"):
        nerl(np.zeros((4, 3, 1), dtype=np.uint32), graph)
    (tmp_path / "skeleton.swc").write_text("1 0 0 0 0 1 -1\n")
    with pytest.raises(SkeletonError, match="swc"):
        nerl(np.zeros((4, 3, 1), dtype=np.uint32), tmp_path / "skeleton.swc")

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil = two_skeletons()
    evil.graph["payload"] = Exploit()
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(evil))
    with pytest.raises(SkeletonError, match="refusing to unpickle"):
        nerl(np.zeros((4, 3, 1), dtype=np.uint32), tmp_path / "evil.pkl")
    assert not (tmp_path / "pwned").exists()


def test_cli_evaluate_writes_table_json_and_plot(seed, tmp_path):
    import json

    from typer.testing import CliRunner

    from nisbflow_cli.main import app

    opened, _ = seed
    seg_path = f"{opened.path}/data.zarr/seg"
    truth = opened.seg[...]
    merged = zarr.create_array(str(tmp_path / "merged.zarr"), shape=truth.shape, chunks=(32, 32, 32),
                               dtype="uint32")
    merged[...] = np.where(truth == 2, 1, truth)
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "merged.zarr"), "--skeleton", opened.skeleton_path,
                                      "--gt", seg_path, "--json", str(tmp_path / "m.json"),
                                      "--plot", str(tmp_path / "runs.png")])
    assert result.exit_code == 0, result.output
    assert "NERL" in result.output and "adapted Rand" in result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    for key in ("nerl", "erl", "max_erl", "voi_split", "voi_merge", "n_mergers", "n_splits", "n_non0_mergers",
                "nerl_5", "nerl_inf", "adapted_rand_error"):
        assert key in metrics
    assert metrics["n_non0_mergers"] == 2 and metrics["nerl"] < 1.0 and metrics["adapted_rand_error"] > 0
    assert (tmp_path / "runs.png").stat().st_size > 10_000
    missing = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nothing.zarr"), "--skeleton", opened.skeleton_path])
    assert missing.exit_code != 0 and "nothing.zarr" in missing.output


def test_skeletonize_gives_nisb_skeletons_inside_their_segments(tmp_path):
    from typer.testing import CliRunner

    from nisbflow.data import load_skeleton
    from nisbflow.evaluate.ground_truth import skeletonize
    from nisbflow_cli.main import app

    segmentation = np.zeros((40, 30, 12), dtype=np.uint32)
    segmentation[2:38, 5:11, 3:9] = 7  # a rod along x
    segmentation[10:16, 15:28, 2:10] = 9  # a rod along y
    graph = skeletonize(segmentation, dust_threshold=50)
    ids = {graph.nodes[n]["id"] for n in graph}
    assert ids == {7, 9}
    for node, attrs in graph.nodes(data=True):
        assert segmentation[tuple(attrs["index_position"])] == attrs["id"]
        assert np.allclose(attrs["nm_position"], np.asarray(attrs["index_position"]) * (9, 9, 20), atol=20)
    lengths = {i: sum(d["edge_length"] for u, v, d in graph.edges(data=True) if graph.nodes[u]["id"] == i)
               for i in ids}
    assert 25 * 9 < lengths[7] < 38 * 9 * 1.2  # about the rod's 36 voxels of 9 nm
    result = nerl(segmentation, graph)
    assert result.nerl == 1.0
    zarr.create_array(str(tmp_path / "gt.zarr"), shape=segmentation.shape, dtype="uint32")[...] = segmentation
    run = CliRunner().invoke(app, ["skeletonize", str(tmp_path / "gt.zarr"), str(tmp_path / "skel.pkl"),
                                   "--dust-threshold", "50"])
    assert run.exit_code == 0, run.output
    assert load_skeleton(tmp_path / "skel.pkl").number_of_nodes() == graph.number_of_nodes()
    again = CliRunner().invoke(app, ["skeletonize", str(tmp_path / "gt.zarr"), str(tmp_path / "skel.pkl")])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_contingency_with_ids_beyond_32_bits_matches_small_ids():
    from nisbflow.evaluate.kernel import contingency

    rng = np.random.default_rng(2)
    true = rng.integers(0, 5, 1000)
    test = rng.integers(0, 7, 1000)
    small = contingency(true, test)
    large = contingency(true + 2**40, test + 2**35)
    assert np.array_equal(small[0] + 2**40, large[0]) and np.array_equal(small[1] + 2**35, large[1])
    assert np.array_equal(small[2], large[2]) and small[2].sum() == 1000


def test_a_background_slab_costs_only_the_edges_it_touches(seed):
    """A 4-voxel slab of background through a synthetic seed holds nodes of many skeletons (segment 0 merges them
    all); only the edges touching it are lost, so NERL stays high and equals the per-edge reference."""
    from nisbflow.data.skeleton import skeleton_arrays

    opened, graph = seed
    segmentation = opened.seg[...]
    segmentation[:, :, 20:24] = 0
    result = nerl(segmentation, graph)
    arrays = skeleton_arrays(graph)
    labels = segmentation[tuple(arrays.index_position.T)].astype(np.int64)
    same = arrays.id[arrays.edges[:, 0]] == arrays.id[arrays.edges[:, 1]]
    edges, lengths = arrays.edges[same].tolist(), arrays.edge_length[same].tolist()
    ids = arrays.id.tolist()
    expected = reference_erl(ids, edges, lengths, labels.tolist(), 0) / reference_erl(ids, edges, lengths, ids, 0)
    assert (result.n_mergers, result.n_non0_mergers) == reference_mergers(ids, labels.tolist())
    assert result.n_mergers >= 2 and result.n_non0_mergers == 0 and result.n_merged_edges == 0
    assert result.n_omitted > 0
    assert result.nerl == pytest.approx(expected, rel=1e-9)
    assert 0.3 < result.nerl < 1.0


# --- PyTorch Connectomics' NERL (em_erl's rules) and BANIS's length rule --------------------------------------------


def em_erl_reference(graph: nx.Graph, labels: dict, threshold: int) -> float:
    """PyTC's NERL written as plain loops from em_erl's compute_erl_score and PyTC's NISB graph conversion: edges
    between two ids dropped, an edge's length its stored edge_length else the voxel distance of index_position;
    big pairs have >= threshold nodes; a merging segment has big pairs of two skeletons; a merged skeleton has any
    node in one; correct edges lie in one non-zero segment, not a merging one of a merged skeleton."""
    ids = {n: graph.nodes[n]["id"] for n in graph}
    length = {s: 0.0 for s in ids.values()}
    edges = []
    for u, v, data in graph.edges(data=True):
        if ids[u] != ids[v]:
            continue
        a, b = (np.asarray(graph.nodes[n]["index_position"], dtype=float) for n in (u, v))
        edge = data["edge_length"] if "edge_length" in data else math.dist(a, b)
        edges.append((u, v, edge))
        length[ids[u]] += edge
    count = {}
    for node in graph:
        count[(ids[node], labels[node])] = count.get((ids[node], labels[node]), 0) + 1
    present = {}
    for (skeleton, segment), n in count.items():
        if n >= threshold:
            present.setdefault(segment, set()).add(skeleton)
    merging = {segment for segment, skeletons in present.items() if len(skeletons) > 1}
    merged = {skeleton for (skeleton, segment) in count if segment in merging}
    correct = {}
    for u, v, edge in edges:
        if labels[u] != labels[v] or labels[u] == 0:
            continue
        if ids[u] in merged and labels[u] in merging:
            continue
        correct[(ids[u], labels[u])] = correct.get((ids[u], labels[u]), 0.0) + edge
    total = sum(length.values())
    return (sum(c * c for c in correct.values()) / total) / (sum(x * x for x in length.values()) / total)


def test_em_erl_equals_a_plain_loop_of_its_rules():
    rng = np.random.default_rng(3)
    for case in range(150):
        n = int(rng.integers(6, 30))
        graph = nx.Graph()
        positions = rng.permutation(4 * 4 * 4)[:n]
        for node, flat in enumerate(positions):
            graph.add_node(node, id=int(rng.integers(1, 4)), index_position=np.unravel_index(flat, (4, 4, 4)))
        for _ in range(int(rng.integers(n // 2, 2 * n))):
            u, v = (int(x) for x in rng.integers(0, n, 2))
            if u == v:
                continue
            if rng.random() < 0.5:
                graph.add_edge(u, v, edge_length=float(rng.uniform(1, 50)))
            else:
                graph.add_edge(u, v)
        if not any(graph.nodes[u]["id"] == graph.nodes[v]["id"] for u, v in graph.edges):
            continue
        labels = {node: int(rng.integers(0, 4)) for node in graph}
        segmentation = np.zeros((4, 4, 4), dtype=np.uint32)
        for node, label in labels.items():
            segmentation[tuple(graph.nodes[node]["index_position"])] = label
        for threshold in (1, 2, 3):
            result = nerl(segmentation, graph, metrics=("nerl", "em_erl"), em_erl_merge_threshold=threshold)
            expected = em_erl_reference(graph, labels, threshold)
            assert result.em_erl.nerl == pytest.approx(expected, rel=1e-9, abs=1e-12), (case, threshold)
            assert result.em_erl.merge_threshold == threshold


def test_em_erl_tolerates_small_mergers_that_banis_counts(seed):
    """A few voxels of one neuron relabelled as another at a skeleton node: a merger for BANIS's NERL (any node),
    none for PyTC's at its threshold of 50 nodes, which then still reads the ground truth's 1.0."""
    opened, graph = seed
    segmentation = np.asarray(opened.seg[...]).copy()
    by_id = {}
    for node, data in graph.nodes(data=True):
        by_id.setdefault(int(data["id"]), []).append(tuple(int(c) for c in data["index_position"]))
    first, second = sorted(by_id, key=lambda i: -len(by_id[i]))[:2]
    for position in by_id[first][:3]:  # three nodes of the largest skeleton moved into the second's segment
        segmentation[position] = segmentation[by_id[second][0]]
    result = nerl(segmentation, graph, metrics=("nerl", "em_erl"))
    moved = [int(segmentation[tuple(data["index_position"])]) for _, data in graph.nodes(data=True)]
    assert (result.n_mergers, result.n_non0_mergers) == reference_mergers(
        [int(data["id"]) for _, data in graph.nodes(data=True)], moved)
    assert result.n_non0_mergers >= 2 and result.nerl < 0.9
    assert result.em_erl.merge_threshold == 50 and result.em_erl.n_merging_segments == 0
    labels = {node: int(segmentation[tuple(data["index_position"])]) for node, data in graph.nodes(data=True)}
    assert result.em_erl.nerl == pytest.approx(em_erl_reference(graph, labels, 50), rel=1e-9)
    assert result.em_erl.nerl > result.nerl + 0.05  # only the moved nodes' split edges cost it
    strict = nerl(segmentation, graph, metrics=("em_erl",), em_erl_merge_threshold=1).em_erl
    assert strict.n_merging_segments >= 1 and strict.nerl < result.em_erl.nerl


def test_lengths_come_from_nm_position_and_a_disagreeing_stored_length_is_reported(tmp_path):
    """BANIS recomputes every edge length from nm_position (funlib.evaluate with skeleton_position_attributes); a
    file whose edge_length is in voxels once gave an ERL ten times too small without a word."""
    from typer.testing import CliRunner

    from nisbflow.data import save_skeleton
    from nisbflow_cli.main import app

    graph = nx.Graph()
    for node in range(4):
        graph.add_node(node, id=1, index_position=(node, 0, 0), nm_position=(9.0 * node, 0.0, 0.0))
    for u in range(3):
        graph.add_edge(u, u + 1, edge_length=1.0)  # voxels, not nm
    segmentation = np.ones((4, 1, 1), dtype=np.uint32)
    segmentation[3] = 2
    result = nerl(segmentation, graph)
    assert result.skeleton_length == {1: pytest.approx(27.0)}
    assert result.erl == pytest.approx(18.0 ** 2 / 27.0) and result.nerl == pytest.approx(18.0 ** 2 / 27.0 ** 2)
    (note,) = result.notes
    assert "3 of 3 stored edge_length values differ from their nodes' nm_position distance" in note
    # the command prints the note and writes both NERLs when asked
    zarr.create_array(str(tmp_path / "seg.zarr"), shape=(4, 1, 1), chunks=(4, 1, 1), dtype="uint32")[...] = segmentation
    save_skeleton(graph, tmp_path / "skeleton.pkl")
    shown = CliRunner().invoke(app, ["evaluate", str(tmp_path / "seg.zarr"), "-s", str(tmp_path / "skeleton.pkl"),
                                     "--metric", "nerl", "--metric", "em_erl", "--json", str(tmp_path / "m.json")],
                               terminal_width=200)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "differ from their nodes' nm_position distance" in text
    assert "NERL, PyTorch Connectomics (em_erl," in text
    import json

    written = json.loads((tmp_path / "m.json").read_text())
    assert written["nerl"] == pytest.approx(result.nerl)
    # PyTC takes the stored lengths (1 each): ERL 2² / 3, max 3² / 3
    assert written["em_erl"]["nerl"] == pytest.approx(4 / 9) and written["em_erl"]["merge_threshold"] == 50
