"""Agglomeration decoding (waterz): the affinity convention, in-memory equality with waterz itself, the graph
agglomeration held to waterz, block-wise decoding on a real LocalCluster (one block equals in memory; several stay
close and are deterministic), resume, and the CLI.

References are independent of nisbflow's kernels: the conversion to waterz's layout is a plain loop over voxels written
from the two conventions' definitions (docs/design.md: ``aff[c][v]`` joins v and v + e_c; waterz: ``w[d][z, y, x]`` joins a
voxel and its predecessor along d = z, y, x), and every agglomeration is compared with waterz's own output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from nisbflow.data.volumes import array_url
from nisbflow.decode import decode_to_zarr
from nisbflow.decode.agglomerate import (EdgeStatistics, agglomerate_graph, clean_affinities,
                                         decode_affinity_waterz, region_graph, to_waterz_affinities,
                                         watershed_fragments)
from nisbflow.decode.agglomerate_blockwise import WaterzOptions
from nisbflow.synth.affinities import noisy_affinities

NISBFLOW = str(Path(sys.executable).with_name("nisbflow"))
SCORINGS = ["mean_aff", "aff85_his256", "aff50_his256"]


def waterz_layout_by_loop(affinities: np.ndarray) -> np.ndarray:
    """(3, X, Y, Z) source-voxel affinities → waterz's (3, Z, Y, X) predecessor edges, one voxel at a time."""
    _, nx, ny, nz = affinities.shape
    out = np.zeros((3, nz, ny, nx), dtype=np.float32)
    steps = {0: (0, 0, 1), 1: (0, 1, 0), 2: (1, 0, 0)}  # waterz channel d: the step along (x, y, z)
    nisbflow_channel = {0: 2, 1: 1, 2: 0}  # waterz's z, y, x edges are nisbflow's channels 2, 1, 0
    for d in range(3):
        for x in range(nx):
            for y in range(ny):
                for z in range(nz):
                    px, py, pz = x - steps[d][0], y - steps[d][1], z - steps[d][2]
                    if min(px, py, pz) < 0:
                        continue  # no predecessor: waterz never reads this entry
                    out[d, z, y, x] = affinities[nisbflow_channel[d], px, py, pz]
    return out


def waterz_itself(affinities: np.ndarray, thresholds, scoring: str) -> list[np.ndarray]:
    """waterz on the loop-converted affinities, each segmentation copied (waterz reuses one buffer) and turned
    back to (X, Y, Z)."""
    import waterz

    from nisbflow.decode.agglomerate import SCORING_FUNCTIONS

    values = np.nan_to_num(np.asarray(affinities[:3], dtype=np.float32))
    return [np.array(s).transpose(2, 1, 0).copy() for s in waterz.agglomerate(
        waterz_layout_by_loop(values), sorted(thresholds), scoring_function=SCORING_FUNCTIONS[scoring].waterz)]


def renumbered_by_first_voxel(labels: np.ndarray) -> np.ndarray:
    """Ids 1..N in raster (C) order of each label's first voxel, 0 kept."""
    flat = labels.ravel()
    values, first = np.unique(flat, return_index=True)
    order = [v for _, v in sorted(zip(first, values)) if v != 0]
    mapping = {v: i + 1 for i, v in enumerate(order)}
    mapping[0] = 0
    return np.array([mapping[v] for v in flat], dtype=np.int64).reshape(labels.shape)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a.ravel(), b.ravel()], axis=1).astype(np.int64), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


@pytest.fixture(scope="module")
def seed_affinities(tmp_path_factory):
    """A 48×40×24 synthetic seed's segmentation and its noisy float16 affinities (noise 0.3, where one threshold
    merges neurons), also as a zarr array in 48×40×24 and 16³ chunks."""
    from nisbflow.synth import synthesize_seed

    root = tmp_path_factory.mktemp("agglomerate")
    synthesize_seed(root / "seed", (48, 40, 24), seed=5, chunks=(16, 16, 8), progress=False)
    segmentation = zarr.open_array(str(root / "seed/data.zarr/seg"))[...]
    values = noisy_affinities(segmentation, 0.3, 1)
    for name, chunks in (("aff.zarr", (3, 48, 40, 24)), ("aff16.zarr", (3, 16, 16, 16))):
        zarr.create_array(str(root / name), shape=values.shape, chunks=chunks, dtype="float16")[...] = values
    return root, segmentation, values


# ----------------------------------------------------------------------------------------------------------------
# conventions


def test_conversion_to_waterz_layout_equals_a_plain_loop():
    rng = np.random.default_rng(0)
    values = rng.random((3, 5, 4, 3), dtype=np.float32)
    assert np.array_equal(to_waterz_affinities(values), waterz_layout_by_loop(values))


def test_hand_built_two_neurons_decode_to_two_segments():
    """Two neurons side by side along x (x < 3 and x >= 3) of a 6×4×3 volume. Source-voxel storage puts the edge
    between them at x = 2 (channel 0); every other edge inside a neuron is 0.95, across it 0.05. The expected
    segmentation is obvious; storing the boundary one voxel off (waterz's predecessor convention read as ours)
    would cut x = 2 from x = 1 instead."""
    truth = np.ones((6, 4, 3), dtype=np.int64)
    truth[3:] = 2
    values = np.full((3, 6, 4, 3), 0.95, dtype=np.float32)
    values[0, 2] = 0.05  # nisbflow: the x edge from (2, y, z) to (3, y, z)
    values[0, 5], values[1, :, 3], values[2, :, :, 2] = 0.0, 0.0, 0.0  # edges leaving the volume
    for scoring in SCORINGS:
        [segmentation] = decode_affinity_waterz(values, [0.5], scoring=scoring)
        assert np.array_equal(segmentation, truth), scoring
        assert segmentation.dtype == np.uint32
    shifted = np.roll(values, 1, axis=1)  # the same edges, stored at the destination voxel
    [wrong] = decode_affinity_waterz(shifted, [0.5])
    assert not np.array_equal(wrong, truth)


# ----------------------------------------------------------------------------------------------------------------
# in memory: waterz itself


@pytest.mark.parametrize("scoring", SCORINGS)
def test_in_memory_equals_waterz_bit_for_bit(scoring, seed_affinities):
    _, _, values = seed_affinities
    thresholds = [0.6, 0.1, 0.3]
    ours = decode_affinity_waterz(values, thresholds, scoring=scoring)
    theirs = dict(zip(sorted(thresholds), waterz_itself(values, thresholds, scoring)))
    for threshold, segmentation in zip(thresholds, ours):
        assert np.array_equal(segmentation, renumbered_by_first_voxel(theirs[threshold])), (scoring, threshold)
    assert len(np.unique(ours[1])) > len(np.unique(ours[2])) > len(np.unique(ours[0]))  # merging grows


def test_in_memory_mask_nan_and_errors(seed_affinities):
    from nisbflow.errors import ConfigError, VolumeError

    _, _, values = seed_affinities
    mask = np.ones(values.shape[1:], dtype=np.uint8)
    mask[:, :, :12] = 0
    [masked] = decode_affinity_waterz(values, [0.3], mask=mask)
    blanked = values.copy()
    blanked[:, :, :, :12] = 0
    [expected] = decode_affinity_waterz(blanked, [0.3])
    assert np.array_equal(masked, expected)
    with_nan = values.astype(np.float32)
    with_nan[0, 0, 0, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="1 NaN"):
        decode_affinity_waterz(with_nan, [0.3])
    with pytest.raises(ConfigError, match="unknown scoring function 'aff7_his256'"):
        decode_affinity_waterz(values, [0.3], scoring="aff7_his256")
    with pytest.raises(ConfigError, match="aff_low"):
        decode_affinity_waterz(values, [0.3], aff_low=0.9, aff_high=0.5)
    with pytest.raises(VolumeError):
        decode_affinity_waterz(values[0], [0.3])


# ----------------------------------------------------------------------------------------------------------------
# the graph agglomeration (what block-wise decoding runs) against waterz


def test_region_graph_statistics_equal_a_plain_loop(seed_affinities):
    _, _, values = seed_affinities
    cleaned = clean_affinities(values)
    fragments, n = watershed_fragments(cleaned)
    graph = region_graph(fragments, cleaned)
    expected: dict = {}
    nx, ny, nz = fragments.shape
    for x in range(nx):
        for y in range(ny):
            for z in range(nz):
                for axis, (dx, dy, dz) in enumerate(((1, 0, 0), (0, 1, 0), (0, 0, 1))):
                    if x + dx >= nx or y + dy >= ny or z + dz >= nz:
                        continue
                    a, b = int(fragments[x, y, z]), int(fragments[x + dx, y + dy, z + dz])
                    if a and b and a != b:
                        entry = expected.setdefault((min(a, b), max(a, b)), [])
                        entry.append(float(cleaned[axis, x, y, z]))
    assert len(graph.u) == len(expected) > 100
    for u, v, total, count, max_bin in zip(graph.u, graph.v, graph.total, graph.count, graph.max_bin):
        affinities = expected[(int(u), int(v))]
        assert count == len(affinities) and total == pytest.approx(sum(affinities), rel=1e-9)
        assert max_bin == min(int(max(affinities) * 256), 255)
    assert n == fragments.max() and set(np.unique(fragments)) == set(range(n + 1))


@pytest.mark.parametrize("levels", [None, 8])
@pytest.mark.parametrize("scoring", SCORINGS)
def test_graph_agglomeration_equals_waterz_on_a_whole_volume(scoring, levels, seed_affinities):
    """Fragments, their graph and :func:`agglomerate_graph` reproduce waterz's partition at every threshold,
    including the order in which equal scores merge: the histogram scores take 256 values, and affinities rounded
    to 8 levels (as a network's float16 outputs bunch up) make ties everywhere. With them, which region survives a
    merge decides later ties: waterz keeps every edge's ends sorted, and so must nisbflow (it failed at 0.5 and 0.7
    before it did)."""
    _, _, values = seed_affinities
    if levels:
        values = (np.round(values.astype(np.float32) * levels) / levels).astype(np.float16)
    thresholds = [0.1, 0.3, 0.5, 0.7]
    cleaned = clean_affinities(values)
    fragments, n = watershed_fragments(cleaned)
    graph = region_graph(fragments, cleaned)
    representatives = agglomerate_graph(n, graph, thresholds, scoring)
    for threshold, representative, expected in zip(thresholds, representatives, waterz_itself(values, thresholds,
                                                                                                scoring)):
        assert same_partition(representative[fragments], expected), (scoring, threshold)


def test_agglomeration_of_a_hand_built_graph():
    """Three regions in a chain 1 – 2 – 3 and an edge 1 – 3. mean_aff: 1–2 has mean 0.9 (score 0.1), 2–3 mean 0.5,
    1–3 mean 0.3. At 0.2 only 1–2 merges; the merged region's edge to 3 has (0.5·4 + 0.3·1) / 5 = 0.46, score 0.54,
    so 3 joins at 0.6 but not at 0.5."""
    edges = EdgeStatistics(np.array([1, 2, 1], np.uint64), np.array([2, 3, 3], np.uint64),
                           np.array([0.9 * 2, 0.5 * 4, 0.3 * 1]), np.array([2, 4, 1]), np.array([230, 128, 77],
                                                                                                np.int16))
    at_02, at_05, at_06 = agglomerate_graph(3, edges, [0.2, 0.5, 0.6], "mean_aff")
    assert at_02[1] == at_02[2] != at_02[3]
    assert at_05[1] == at_05[2] != at_05[3]
    assert at_06[1] == at_06[2] == at_06[3]
    assert at_02[0] == 0


# ----------------------------------------------------------------------------------------------------------------
# block-wise on a LocalCluster


@pytest.fixture
def client(tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      local_directory=str(tmp_path / "dask")) as cluster, Client(cluster) as made:
        yield made


def read(path) -> np.ndarray:
    return zarr.open_array(array_url(str(path)), mode="r")[...]


@pytest.mark.parametrize("scoring", ["mean_aff", "aff85_his256"])
def test_blockwise_one_block_equals_in_memory_bit_for_bit(scoring, seed_affinities, client, tmp_path):
    root, _, values = seed_affinities
    thresholds = [0.2, 0.5]
    decoded = decode_to_zarr(str(root / "aff.zarr"), tmp_path / "seg.zarr", thresholds=thresholds, method="waterz",
                             waterz=WaterzOptions(scoring=scoring), progress=False)
    counts = decoded.counts
    for threshold, expected in zip(thresholds, decode_affinity_waterz(values, thresholds, scoring=scoring)):
        written = read(tmp_path / "seg.zarr" / f"threshold-{threshold:g}")
        assert np.array_equal(written, expected) and counts[threshold] == expected.max()
    assert decoded.region_graph["fragments"] > counts[0.2] > counts[0.5]


def test_blockwise_several_blocks_close_to_whole_volume_and_deterministic(seed_affinities, client, tmp_path):
    """16³ blocks (18 of them): with the default 8 voxels of watershed context the result stays within an adapted
    Rand error of 0.01 of whole-volume waterz; without context a strong affinity across a block face merges two
    neurons (the reason for the context). A re-run gives the same segmentation."""
    from nisbflow.evaluate.kernel import contingency, dense_metrics_from_contingency

    root, truth, values = seed_affinities
    [whole] = decode_affinity_waterz(values, [0.3])
    gaps, results = {}, {}
    for context in (0, 8):
        output = tmp_path / f"seg-{context}.zarr"
        decode_to_zarr(str(root / "aff16.zarr"), output, thresholds=[0.3], method="waterz",
                       waterz=WaterzOptions(context=context), progress=False)
        results[context] = read(output)
        gaps[context] = dense_metrics_from_contingency(*contingency(whole, results[context])).adapted_rand_error
    assert gaps[8] < 0.01 < 0.1 < gaps[0], gaps
    again = tmp_path / "again.zarr"
    decode_to_zarr(str(root / "aff16.zarr"), again, thresholds=[0.3], method="waterz", progress=False)
    assert np.array_equal(read(again), results[8])
    attrs = dict(zarr.open_group(str(again)).attrs)
    assert attrs["n_segments"] == results[8].max() and "aff85_his256" in attrs["description"]


def test_blockwise_resumes_to_the_uninterrupted_result(seed_affinities, tmp_path, monkeypatch):
    """An interrupt after 5 of 18 fragment blocks keeps them; the re-run skips them and equals a fresh run."""
    import dask

    import nisbflow.decode.agglomerate_blockwise as blockwise

    root, _, _ = seed_affinities
    calls = {"n": 0}
    original = blockwise._fragment_task

    def interrupting(*args, **kwargs):
        if calls["n"] >= 5:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(*args, **kwargs)

    output = tmp_path / "seg.zarr"
    monkeypatch.setattr(blockwise, "_fragment_task", interrupting)
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        decode_to_zarr(str(root / "aff16.zarr"), output, thresholds=[0.3, 0.5], method="waterz", progress=False)
    monkeypatch.undo()
    said = []
    with dask.config.set(scheduler="synchronous"):
        decode_to_zarr(str(root / "aff16.zarr"), output, thresholds=[0.3, 0.5], method="waterz", progress=False,
                       log=said.append)
        decode_to_zarr(str(root / "aff16.zarr"), tmp_path / "fresh.zarr", thresholds=[0.3, 0.5], method="waterz",
                       progress=False)
    assert any("5 of 18 blocks already cut into fragments" in s for s in said), said
    for name in ("threshold-0.3", "threshold-0.5"):
        assert np.array_equal(read(output / name), read(tmp_path / "fresh.zarr" / name))


# ----------------------------------------------------------------------------------------------------------------
# command line


def test_cli_decode_waterz_with_dense_metrics(seed_affinities, tmp_path):
    root, _, values = seed_affinities
    gt = root / "seed/data.zarr/seg"
    result = subprocess.run([NISBFLOW, "decode", str(root / "aff.zarr"), str(tmp_path / "seg.zarr"), "--method",
                             "waterz", "-t", "0.2,0.5", "--scoring", "aff50_his256", "--gt", str(gt),
                             "--cluster", "sync"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    expected = decode_affinity_waterz(values, [0.2, 0.5], scoring="aff50_his256")
    for threshold, segmentation in zip((0.2, 0.5), expected):
        assert f"threshold {threshold:g}: {segmentation.max()} segments" in out
        assert np.array_equal(read(tmp_path / "seg.zarr" / f"threshold-{threshold:g}"), segmentation)
    assert "dense metrics against" in out and "adapted Rand error" in out
    from nisbflow.evaluate import dense_metrics

    dense = dense_metrics(zarr.open_array(str(gt)), read(tmp_path / "seg.zarr" / "threshold-0.5"))
    assert f"{dense.adapted_rand_error:.4f}" in out
    bad = subprocess.run([NISBFLOW, "decode", str(root / "aff.zarr"), str(tmp_path / "bad.zarr"), "--method",
                          "waterz", "--scoring", "median"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown scoring function 'median'" in bad.stderr
    assert not (tmp_path / "bad.zarr").exists()
    assert json.loads(json.dumps(dict(zarr.open_group(str(tmp_path / "seg.zarr")).attrs)))["thresholds"] == [0.2, 0.5]
