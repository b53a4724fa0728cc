"""decode_affinity_cc: the numba kernel against a plain flood fill, block-wise against in-memory, zarr I/O and CLI."""

from __future__ import annotations

from collections import deque

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from dask.utils import key_split
from distributed import get_task_stream
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import nisbflow.decode.kernel as kernel
from nisbflow.data.volumes import array_url
from nisbflow.cluster import check_cluster, cluster_client
from nisbflow.decode import decode_affinity_cc, decode_to_zarr, segmentation_dtype, threshold_array_name
from nisbflow.blocks import BlockGrid
from nisbflow.decode.stitch import merge_equivalences, number_segments
from nisbflow.errors import ConfigError, OutputExistsError, VolumeError
from nisbflow.synth.affinities import noisy_affinities
from nisbflow_cli.main import app

STEPS = ((1, 0, 0), (0, 1, 0), (0, 0, 1))


def flood_fill_reference(affinities: np.ndarray, threshold: float, mask=None) -> np.ndarray:
    """docs/design.md's decoding rule written out naively: breadth-first search over hard edges from every seed."""
    hard = np.asarray(affinities[:3]) > affinities.dtype.type(threshold)
    if mask is not None:
        hard &= mask[None] != 0
    shape = hard.shape[1:]
    foreground = hard.any(axis=0)
    for c, step in enumerate(STEPS):  # destinations of hard in-volume edges
        for v in zip(*np.nonzero(hard[c])):
            w = tuple(a + s for a, s in zip(v, step))
            if all(a < n for a, n in zip(w, shape)):
                foreground[w] = True
    segmentation = np.zeros(shape, dtype=np.int64)
    current = 0
    for start in zip(*np.nonzero(foreground)):  # raster order
        if segmentation[start]:
            continue
        current += 1
        segmentation[start] = current
        queue = deque([start])
        while queue:
            v = queue.popleft()
            for c, step in enumerate(STEPS):
                up = tuple(a + s for a, s in zip(v, step))
                if all(a < n for a, n in zip(up, shape)) and hard[(c,) + v] and not segmentation[up]:
                    segmentation[up] = current
                    queue.append(up)
                down = tuple(a - s for a, s in zip(v, step))
                if all(a >= 0 for a in down) and hard[(c,) + down] and not segmentation[down]:
                    segmentation[down] = current
                    queue.append(down)
    return segmentation


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal background, and a one-to-one map between the ids of ``a`` and ``b``."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel().astype(np.int64), b.ravel().astype(np.int64)], axis=1), axis=0)
    return len(np.unique(pairs[:, 0])) == len(pairs) == len(np.unique(pairs[:, 1]))


def consecutive(segmentation: np.ndarray) -> bool:
    ids = np.unique(segmentation)
    ids = ids[ids > 0]
    return np.array_equal(ids, np.arange(1, len(ids) + 1))


def random_chunks(draw, n: int, max_blocks: int = 5) -> tuple[int, ...]:
    """A chunking of ``n`` voxels into at most ``max_blocks`` blocks: regular (maybe not dividing n, 1 where n is
    small) or irregular (cuts anywhere, so blocks of 1 voxel appear too). The bound keeps the synchronous Dask graph
    small (at most max_blocks³ blocks) so the property test stays fast."""
    if draw(st.booleans()):
        size = draw(st.integers(-(-n // max_blocks), n))
        return tuple([size] * (n // size) + ([n % size] if n % size else []))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=max_blocks - 1))) if n > 1 else []
    edges = [0, *cuts, n]
    return tuple(b - a for a, b in zip(edges, edges[1:]))


@st.composite
def decoding_cases(draw):
    shape = tuple(draw(st.integers(1, 40)) for _ in range(3))
    density = draw(st.sampled_from([0.05, 0.3, 0.6, 0.9]))
    threshold = draw(st.sampled_from([0.5, 0.75, 0.9]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from([np.float16, np.float32]))
    # values on both sides of the threshold, and exactly at it (strict >)
    above = rng.random((3,) + shape) < density
    affinities = np.where(above, rng.uniform(threshold, 1.0, (3,) + shape), rng.uniform(0.0, threshold, (3,) + shape))
    affinities[rng.random((3,) + shape) < 0.05] = threshold
    chunks = tuple(random_chunks(draw, n) for n in shape)
    return affinities.astype(dtype), threshold, chunks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
@given(decoding_cases())
def test_blockwise_equals_in_memory_equals_flood_fill(case):
    affinities, threshold, chunks = case
    in_memory = decode_affinity_cc(affinities, threshold)
    reference = flood_fill_reference(affinities, threshold)
    assert np.array_equal(in_memory, reference)  # same partition and, by raster numbering, the same ids
    assert in_memory.dtype == np.uint32
    with dask.config.set(scheduler="synchronous"):
        blockwise = decode_affinity_cc(da.from_array(affinities, chunks=((3,),) + chunks), threshold)
        assert isinstance(blockwise, da.Array) and blockwise.dtype == np.uint32
        result = blockwise.compute()
    assert same_partition(result, in_memory)
    assert consecutive(result)


def test_hand_made_cases_follow_design_rules():
    affinities = np.zeros((3, 4, 3, 2), dtype=np.float16)
    affinities[0, 0, 0, 0] = 0.9  # (0,0,0)-(1,0,0)
    affinities[1, 1, 0, 0] = 0.9  # (1,0,0)-(1,1,0): same segment through a chain
    affinities[0, 3, 2, 1] = 0.9  # points out of the volume: a singleton
    affinities[2, 2, 2, 0] = 0.75  # exactly at the threshold: no edge
    segmentation = decode_affinity_cc(affinities, 0.75)
    assert segmentation[0, 0, 0] == segmentation[1, 0, 0] == segmentation[1, 1, 0] == 1
    assert segmentation[3, 2, 1] == 2
    assert segmentation[2, 2, 0] == segmentation[2, 2, 1] == 0
    assert (segmentation > 0).sum() == 4


def test_float16_threshold_is_compared_in_float16():
    # 0.7501 rounds to the float16 0.75, so an affinity of float16(0.7505) (= 0.75049) is above it only in float16
    affinities = np.full((3, 2, 1, 1), 0.0, dtype=np.float16)
    affinities[0, 0, 0, 0] = np.float16(0.7505)
    assert np.float16(0.7505) > np.float16(0.7501) and not float(np.float16(0.7505)) > 0.7505
    assert decode_affinity_cc(affinities, 0.7501).max() == 1


def test_mask_turns_off_edges_in_memory_and_blockwise():
    rng = np.random.default_rng(3)
    affinities = rng.random((3, 17, 13, 9)).astype(np.float32)
    mask = (rng.random((17, 13, 9)) > 0.3).astype(np.uint8)
    expected = flood_fill_reference(affinities, 0.5, mask)
    assert np.array_equal(decode_affinity_cc(affinities, 0.5, mask), expected)
    with dask.config.set(scheduler="synchronous"):
        blockwise = decode_affinity_cc(da.from_array(affinities, chunks=(3, 5, 4, 9)), 0.5,
                                       da.from_array(mask, chunks=(6, 13, 3))).compute()
    assert same_partition(blockwise, expected)
    assert not same_partition(expected, flood_fill_reference(affinities, 0.5))  # the mask mattered


def test_several_thresholds_in_one_pass():
    rng = np.random.default_rng(4)
    affinities = rng.random((6, 20, 20, 10)).astype(np.float16)
    thresholds = [0.4, 0.6, 0.8]
    in_memory = decode_affinity_cc(affinities, thresholds=thresholds)
    with dask.config.set(scheduler="synchronous"):
        blockwise = dask.compute(*decode_affinity_cc(da.from_array(affinities, chunks=(6, 7, 7, 7)),
                                                     thresholds=thresholds))
    assert len(in_memory) == len(blockwise) == 3
    for t, one, block in zip(thresholds, in_memory, blockwise):
        assert np.array_equal(one, decode_affinity_cc(affinities, t))
        assert same_partition(block, one)
    assert in_memory[0].max() != in_memory[2].max()


def test_uint64_promotion(monkeypatch):
    assert segmentation_dtype(2**32 - 1) == np.uint32
    assert segmentation_dtype(2**32) == np.uint64
    rng = np.random.default_rng(5)
    affinities = rng.random((3, 12, 12, 12)).astype(np.float32)
    expected = decode_affinity_cc(affinities, 0.7)
    monkeypatch.setattr(kernel, "UINT32_LIMIT", 5)  # pretend uint32 holds only ids below 5
    promoted = decode_affinity_cc(affinities, 0.7)
    assert promoted.dtype == np.uint64 and np.array_equal(promoted, expected)
    with dask.config.set(scheduler="synchronous"):
        blockwise = decode_affinity_cc(da.from_array(affinities, chunks=(3, 5, 6, 7)), 0.7)
        assert blockwise.dtype == np.uint64
        assert same_partition(blockwise.compute(), expected)
    small = np.zeros((3, 4, 4, 4), dtype=np.float32)
    small[0, 0, 0, 0] = 1
    assert decode_affinity_cc(small, 0.5).dtype == np.uint32  # 1 segment still fits


def test_numbering_is_consecutive_in_block_order():
    grid = BlockGrid(((2, 2), (3,), (3,)))
    bits = grid.label_bits
    # block 0 has local ids 1..3, block 1 has 1..2; block 1's id 2 merges into block 0's id 3
    equivalences = merge_equivalences([np.array([[(0 << bits) | 3, (1 << bits) | 2]], dtype=np.uint64)])
    numbering = number_segments(np.array([3, 2]), equivalences[0], bits)
    assert numbering.n_segments == 4
    assert numbering.lookup_table(0).tolist() == [0, 1, 2, 3]
    assert numbering.lookup_table(1).tolist() == [0, 4, 3]


def test_bad_inputs_give_clear_errors():
    good = np.zeros((3, 4, 4, 4), dtype=np.float32)
    with pytest.raises(VolumeError, match="expected 3 or 6 affinity channels.*found shape \\(2, 4, 4, 4\\)"):
        decode_affinity_cc(np.zeros((2, 4, 4, 4), dtype=np.float32))
    with pytest.raises(VolumeError, match="looks channels-last"):
        decode_affinity_cc(np.zeros((8, 8, 8, 3), dtype=np.float32))
    with pytest.raises(VolumeError, match="float16 or float32.*found dtype uint8"):
        decode_affinity_cc(np.zeros((3, 4, 4, 4), dtype=np.uint8))
    with pytest.raises(VolumeError, match=r"expected shape \(4, 4, 4\).*found \(4, 4, 5\)"):
        decode_affinity_cc(good, mask=np.ones((4, 4, 5)))
    with pytest.raises(VolumeError, match=r"\(C, X, Y, Z\)"):
        decode_affinity_cc(np.zeros((4, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="backend"):
        decode_affinity_cc(good, backend="opencl")
    with pytest.raises(ConfigError, match="threshold.*in \\[0, 1\\], got 1.5"):
        decode_affinity_cc(good, 1.5)
    with pytest.raises(ConfigError, match="got nan"):
        decode_affinity_cc(good, float("nan"))
    with pytest.raises(ConfigError, match="boolean"):
        decode_affinity_cc(good, True)


def test_nan_is_no_edge_with_a_warning():
    affinities = np.full((3, 5, 5, 5), 0.9, dtype=np.float32)
    affinities[:, 2] = np.nan
    cleaned = np.nan_to_num(affinities, nan=0.0)
    with pytest.warns(RuntimeWarning, match="NaN"):
        result = decode_affinity_cc(affinities, 0.5)
    assert np.array_equal(result, decode_affinity_cc(cleaned, 0.5))
    with dask.config.set(scheduler="synchronous"), pytest.warns(RuntimeWarning, match="75 NaN"):
        blockwise = decode_affinity_cc(da.from_array(affinities, chunks=(3, 2, 5, 5)), 0.5)
    assert same_partition(blockwise.compute(), result)


def test_cupy_backend_needs_cupy():
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"needs cupy.*pip install 'nisbflow\[gpu\]'"):
            decode_affinity_cc(np.zeros((3, 2, 2, 2), dtype=np.float32), backend="cupy")
    else:  # on a GPU machine: the same result as numba
        rng = np.random.default_rng(6)
        affinities = rng.random((3, 30, 20, 10)).astype(np.float16)
        assert np.array_equal(decode_affinity_cc(affinities, 0.6, backend="cupy"), decode_affinity_cc(affinities, 0.6))


def test_noisy_affinities_match_targets_without_noise():
    from nisbflow.data.affinities import affinities as affinity_targets

    rng = np.random.default_rng(7)
    segmentation = rng.integers(0, 3, (9, 8, 7)).astype(np.uint32)
    clean = noisy_affinities(segmentation, noise=0.0)
    targets, _ = affinity_targets(segmentation, [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
    assert np.array_equal(clean > 0.5, targets > 0.5)
    lazy = noisy_affinities(da.from_array(segmentation, chunks=(4, 3, 7)), noise=0.0).compute(scheduler="sync")
    assert np.array_equal(lazy, clean)


# --------------------------------------------------------------------------------------------------------------
# zarr to zarr, clusters, CLI


@pytest.fixture(scope="module")
def affinity_store(tmp_path_factory):
    rng = np.random.default_rng(8)
    path = tmp_path_factory.mktemp("decode") / "aff.zarr"
    affinities = (rng.random((3, 30, 26, 20)) ** 0.5).astype(np.float16)
    zarr.create_array(str(path), shape=affinities.shape, chunks=(3, 16, 16, 16), dtype="float16")[...] = affinities
    return str(path), affinities


def test_decode_to_zarr_on_a_local_cluster(affinity_store, tmp_path):
    path, affinities = affinity_store
    expected = decode_affinity_cc(affinities, 0.75)
    with cluster_client("local", n_workers=2, memory_limit="1GiB") as client:
        with get_task_stream(client) as stream:
            counts = decode_to_zarr(path, tmp_path / "seg.zarr", chunks=(11, 9, 20), progress=False).counts
    output = zarr.open_array(array_url(str(tmp_path / "seg.zarr")), mode="r")
    assert output.chunks == (11, 9, 20) and output.dtype == np.uint32
    assert counts == {0.75: int(expected.max())} == {0.75: output.attrs["n_segments"]}
    assert same_partition(output[...], expected)
    names = {key_split(task["key"]) for task in stream.data}
    assert {"decode-label-block", "decode-face-pairs", "decode-merge-equivalences",
            "decode-relabel-block"} <= names
    assert not any(name.startswith(("apply", "lambda")) for name in names)
    assert [p.name for p in tmp_path.iterdir()] == ["seg.zarr"]  # nothing temporary left


def test_decode_to_zarr_several_thresholds_and_mask(affinity_store, tmp_path):
    path, affinities = affinity_store
    mask = np.ones(affinities.shape[1:], dtype=np.uint8)
    mask[10:20] = 0
    zarr.create_array(str(tmp_path / "mask.zarr"), shape=mask.shape, chunks=(8, 8, 8), dtype="uint8")[...] = mask
    with dask.config.set(scheduler="synchronous"):
        counts = decode_to_zarr(path, tmp_path / "seg.zarr", thresholds=[0.6, 0.8], mask=tmp_path / "mask.zarr",
                                progress=False).counts
    for threshold in (0.6, 0.8):
        output = zarr.open_array(array_url(f"{tmp_path}/seg.zarr/{threshold_array_name(threshold)}"), mode="r")
        expected = decode_affinity_cc(affinities, threshold, mask)
        assert same_partition(output[...], expected) and counts[threshold] == expected.max()


def test_existing_output_is_refused_and_kept(affinity_store, tmp_path):
    path, _ = affinity_store
    existing = zarr.create_array(str(tmp_path / "seg.zarr"), shape=(2,), dtype="uint8")
    existing[...] = 7
    with pytest.raises(OutputExistsError, match="--overwrite"):
        decode_to_zarr(path, tmp_path / "seg.zarr", progress=False)
    assert zarr.open_array(array_url(str(tmp_path / "seg.zarr")))[...].tolist() == [7, 7]


def test_bad_zarr_inputs_name_the_path(tmp_path):
    zarr.create_array(str(tmp_path / "int.zarr"), shape=(3, 4, 4, 4), dtype="uint8")
    with pytest.raises(VolumeError, match="int.zarr.*float16 or float32"):
        decode_to_zarr(tmp_path / "int.zarr", tmp_path / "seg.zarr", progress=False)
    zarr.create_array(str(tmp_path / "aff.zarr"), shape=(3, 4, 4, 4), dtype="float32")
    zarr.create_array(str(tmp_path / "mask.zarr"), shape=(4, 4, 5), dtype="uint8")
    with pytest.raises(VolumeError, match=r"mask.zarr.*\(4, 4, 4\)"):
        decode_to_zarr(tmp_path / "aff.zarr", tmp_path / "seg.zarr", mask=tmp_path / "mask.zarr", progress=False)
    assert not (tmp_path / "seg.zarr").exists()


def test_cluster_names_are_checked():
    assert check_cluster("tcp://10.0.0.1:8786") == "tcp://10.0.0.1:8786"
    with pytest.raises(ConfigError, match="local, dask-cuda, slurm, sync"):
        check_cluster("kubernetes")
    with cluster_client("sync") as client:
        assert client is None and dask.config.get("scheduler") == "synchronous"


def test_cli_decode(affinity_store, tmp_path, monkeypatch):
    path, affinities = affinity_store
    runner = CliRunner()
    output = str(tmp_path / "seg.zarr")
    result = runner.invoke(app, ["decode", path, output, "--cluster", "sync", "--chunks", "16,16,8"])
    assert result.exit_code == 0, result.output
    assert "segments" in result.output
    assert same_partition(zarr.open_array(array_url(output))[...], decode_affinity_cc(affinities, 0.75))
    refused = runner.invoke(app, ["decode", path, output, "--cluster", "sync"])
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    # an interrupted run leaves the finished output as it was and no partial files
    before = zarr.open_array(array_url(output))[...]
    import nisbflow.decode.outputs as outputs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "_relabel_in_zarr", interrupted)
    crashed = runner.invoke(app, ["decode", path, output, "--cluster", "sync", "-t", "0.5", "--overwrite"])
    assert crashed.exit_code == 130 and "re-run the same command to resume" in crashed.output
    assert np.array_equal(zarr.open_array(array_url(output))[...], before)
    # what a resume needs is kept beside the output, unlocked; the re-run resumes the label pass and cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == [".seg.zarr.nisbflow-run", "seg.zarr"]
    assert not (tmp_path / ".seg.zarr.nisbflow-run" / "lock.json").exists()
    monkeypatch.undo()
    resumed = runner.invoke(app, ["decode", path, output, "--cluster", "sync", "-t", "0.5", "--overwrite"])
    assert resumed.exit_code == 0, resumed.output
    assert "already labelled" in resumed.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.zarr"]
    assert same_partition(zarr.open_array(array_url(output))[...], decode_affinity_cc(affinities, 0.5))


def test_cli_synth_affinities_then_decode_recovers_ground_truth(tmp_path):
    segmentation = np.zeros((12, 10, 8), dtype=np.uint32)
    segmentation[:6] = 1
    segmentation[7:] = 2  # plane x = 6 is background between two neurons
    zarr.create_array(str(tmp_path / "seg.zarr"), shape=segmentation.shape, chunks=(5, 5, 5),
                      dtype="uint32")[...] = segmentation
    runner = CliRunner()
    result = runner.invoke(app, ["synth-affinities", str(tmp_path / "seg.zarr"), str(tmp_path / "aff.zarr"),
                                 "--noise", "0"])
    assert result.exit_code == 0, result.output
    affinities = zarr.open_array(array_url(str(tmp_path / "aff.zarr")))
    assert affinities.shape == (3, 12, 10, 8) and affinities.dtype == np.float16
    result = runner.invoke(app, ["decode", str(tmp_path / "aff.zarr"), str(tmp_path / "out.zarr"), "--cluster", "sync"])
    assert result.exit_code == 0, result.output
    decoded = zarr.open_array(array_url(str(tmp_path / "out.zarr")))[...]
    assert same_partition(decoded, segmentation)  # noise-free affinities of a ground truth decode back to it


def test_compute_tasks_tracks_other_tasks_but_returns_only_its_own():
    from nisbflow.tasks import compute_tasks

    leaves = [dask.delayed(lambda i: i * i, pure=True)(i, dask_key_name=f"leaf-{i}") for i in range(5)]
    root = dask.delayed(sum, pure=True)(leaves, dask_key_name="root")
    with dask.config.set(scheduler="synchronous"):
        assert compute_tasks([root], "sum", progress=False, track=leaves) == [30]
    with cluster_client("local", n_workers=1, processes=False):
        assert compute_tasks([root], "sum", progress=False, track=leaves) == [30]


def test_decoding_in_a_fresh_process_never_loads_torch(tmp_path):
    """The block-wise decoder's client loads no torch (about 150 MB and seconds of import): a decode without run
    settings imports nothing from the model side, with or without a threshold recorded to read back."""
    import subprocess
    import sys

    zarr.create_array(str(tmp_path / "aff.zarr"), shape=(3, 32, 32, 32), chunks=(3, 16, 16, 16),
                      dtype="float16")[...] = 0.9
    code = ("import sys, dask\ndask.config.set(scheduler='synchronous')\n"
            "from nisbflow.decode import decode_to_zarr\n"
            f"decode_to_zarr({str(tmp_path / 'aff.zarr')!r}, {str(tmp_path / 'seg.zarr')!r}, thresholds=(0.5,), "
            "progress=False)\n"
            "print('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False"]
    assert zarr.open_array(array_url(str(tmp_path / "seg.zarr")), mode="r")[...].max() == 1  # every edge is 0.9
