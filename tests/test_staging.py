"""nisbflow.staging.markers: a block-wise pass states the evidence its markers need (a BlockwisePass), and a resumed
run keeps a finished block only with that evidence. Each kind of evidence is checked on a real zarr array on disk,
through a real StagedRun that is interrupted and opened again."""

import os

import numpy as np
import pytest
import zarr

from nisbflow.blocks import BlockGrid
from nisbflow.staging import BlockwisePass, CreatedByRun, ScratchFiles, StagedRun, WholeChunks, store_block

GRID = BlockGrid.regular((8, 8, 8), (4, 4, 4))  # 8 blocks, one chunk each


class Interrupted(Exception):
    pass


def create(staged):
    zarr.create_array(staged.data, shape=GRID.shape, chunks=GRID.block_shape, dtype="uint8",
                      attributes={"nisbflow_run": staged.run_id, "nisbflow_output": "segmentation",
                                  "nisbflow_version": "test"})


def first_run(output, finish: int):
    """Open a run, write the first ``finish`` blocks (data, then marker), and be interrupted."""
    with pytest.raises(Interrupted):
        with StagedRun(output, kind="segmentation", layout="plain") as staged:
            work = staged.pending(BlockwisePass.into_array("write", GRID, staged.data, create=lambda: create(staged)))
            assert len(work.pending) == 8 and not work.done
            for index in work.pending[:finish]:
                store_block(np.full((4, 4, 4), GRID.linear(index) + 1, np.uint8), staged.data,
                            GRID.write_region(index), staged.marker("write", GRID.key(index)), staged.run_id,
                            payload=str(GRID.linear(index)).encode())
            raise Interrupted


def resumed(output, *evidence, messages=None):
    with pytest.raises(Interrupted):
        with StagedRun(output, kind="segmentation", layout="plain", log=None if messages is None else messages.append) as staged:
            assert staged.resumed
            found = staged.pending(BlockwisePass("write", GRID, tuple(evidence(staged) for evidence in evidence)))
            raise Interrupted
    return found


def test_a_resume_keeps_the_finished_blocks_whose_chunks_are_whole(tmp_path):
    output = str(tmp_path / "seg.zarr")
    first_run(output, finish=3)
    messages = []
    work = resumed(output, lambda s: CreatedByRun(s.data), lambda s: WholeChunks((s.data,)), messages=messages)
    assert work.done == {(0, 0, 0): b"0", (0, 0, 1): b"1", (0, 1, 0): b"2"}
    assert work.pending == [index for index in GRID.indices() if index not in work.done]
    assert messages == [f"resuming {output}: 3 of 8 blocks already done"]


def test_a_lost_chunk_takes_its_blocks_marker_with_it(tmp_path):
    output = str(tmp_path / "seg.zarr")
    first_run(output, finish=3)
    os.remove(tmp_path / ".seg.zarr.nisbflow-run" / "seg.zarr" / "c" / "0" / "0" / "1")  # block (0, 0, 1)'s chunk
    messages = []
    work = resumed(output, lambda s: WholeChunks((s.data,)), messages=messages)
    assert sorted(work.done) == [(0, 0, 0), (0, 1, 0)]
    assert messages[0].startswith(f"1 finished block(s) of {output} lost or damaged their data since (block 0.0.1:")
    # the marker is gone for good: a second resume without any evidence keeps two blocks too
    assert sorted(resumed(output).done) == [(0, 0, 0), (0, 1, 0)]


def test_markers_count_only_for_an_output_this_run_created(tmp_path):
    output = str(tmp_path / "seg.zarr")
    first_run(output, finish=3)
    array = zarr.open_array(str(tmp_path / ".seg.zarr.nisbflow-run" / "seg.zarr"), mode="r+")
    array.attrs["nisbflow_run"] = "another run"  # another run's array under this run's markers
    created, messages = [], []
    work = resumed(output, lambda s: CreatedByRun(s.data, create=lambda: created.append(True)), messages=messages)
    assert work.done == {} and len(work.pending) == 8 and created == [True]
    assert messages == [f"3 block markers in {tmp_path}/.seg.zarr.nisbflow-run have no array of this run behind "
                        "them; recomputing every block"]
    assert resumed(output).done == {}  # the markers were dropped, not only ignored


def test_markers_without_their_scratch_files_are_computed_again(tmp_path):
    output = str(tmp_path / "seg.zarr")
    first_run(output, finish=3)
    messages = []
    work = resumed(output, lambda s: ScratchFiles(lambda: {0, 2}), messages=messages)
    assert sorted(work.done) == [(0, 0, 0), (0, 1, 0)]
    assert messages == ["1 write markers without their scratch files; computing those blocks again",
                        f"resuming {output}: 2 of 8 blocks already done"]


def test_a_marker_of_another_run_id_never_counts(tmp_path):
    output = str(tmp_path / "seg.zarr")
    first_run(output, finish=2)
    marker = tmp_path / ".seg.zarr.nisbflow-run" / "done" / "write" / "0.0.0"
    marker.write_bytes(b"0123456789abcdef\n0")
    assert sorted(resumed(output).done) == [(0, 0, 1)]
