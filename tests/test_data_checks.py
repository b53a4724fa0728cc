"""Data checked where it is read: a chunk that is missing where the array records every chunk as written, or that is
cut or overwritten, is an error naming it (inputs and staged blocks alike); an input rewritten during a run fails the
run before it publishes; malformed bookkeeping is discarded with a reason. Each case once gave a wrong result with
exit code 0 (a decode with 2957 instead of 3024 segments, a NERL of 0.3567 instead of 0.3868, a published block of
zeros)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from nisbflow.staging import InputChangedError, OutputLockedError, StagedRun
from nisbflow.data.volumes import array_url
from nisbflow.synth import synthesize_seed
from nisbflow.synth.affinities import write_noisy_affinities

NISBFLOW = str(Path(sys.executable).with_name("nisbflow"))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A seed (64×64×32), its noisy affinities as nisbflow writes them (16³ chunks, blosc) and their decoding."""
    from nisbflow.decode import decode_to_zarr

    root = tmp_path_factory.mktemp("checks")
    synthesize_seed(root / "seed", (64, 64, 32), seed=6, chunks=(32, 32, 16), progress=False)
    write_noisy_affinities(root / "seed/data.zarr/seg", root / "aff.zarr", chunks=(16, 16, 16), progress=False)
    decode_to_zarr(str(root / "aff.zarr"), str(root / "seg.zarr"), progress=False)
    return root


def read(path) -> np.ndarray:
    return zarr.open_array(array_url(str(path)), mode="r")[...]


def run(arguments, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([NISBFLOW, *arguments], cwd=cwd, capture_output=True, text=True, timeout=600)


def chunk_files(array: Path) -> list[Path]:
    return sorted(p for p in array.iterdir() if not p.name.startswith("."))


def damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "cut":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


@pytest.mark.parametrize("how", ["deleted", "cut", "random"])
def test_decode_refuses_a_damaged_affinity_chunk_naming_it(how, made, tmp_path):
    copy = tmp_path / "aff.zarr"
    shutil.copytree(made / "aff.zarr", copy)
    victim = chunk_files(copy / "0")[5]
    damage(victim, how)
    result = run(["decode", str(copy), str(tmp_path / "seg.zarr"), "--cluster", "sync"], tmp_path)
    assert result.returncode == 2, result.stdout[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert str(victim) in line and ("is missing" if how == "deleted" else "is damaged") in line, line
    assert not (tmp_path / "seg.zarr").exists()


def test_a_foreign_array_keeps_zarrs_fill_value_for_missing_chunks_but_a_cut_blosc_chunk_is_refused(made, tmp_path):
    """An array nisbflow did not write (no nisbflow_chunks attribute) may leave chunks of the fill value unstored;
    a cut blosc chunk is never data."""
    from nisbflow.data.volumes import open_affinities
    from nisbflow.errors import VolumeError

    values = read(made / "aff.zarr")
    import numcodecs

    foreign = zarr.create_array(str(tmp_path / "foreign.zarr"), shape=values.shape, chunks=(3, 16, 16, 16),
                                dtype="float16", compressors=numcodecs.Blosc(cname="lz4"), zarr_format=2)
    foreign[...] = values
    victim = chunk_files(tmp_path / "foreign.zarr")[3]
    victim.unlink()
    opened = open_affinities(tmp_path / "foreign.zarr", sample=False)
    c, x, y, z = (int(i) for i in victim.name.split("."))
    expected = values.copy()
    expected[:, x * 16:(x + 1) * 16, y * 16:(y + 1) * 16, z * 16:(z + 1) * 16] = 0
    assert np.array_equal(opened[...], expected)  # zarr's fill value, as other tools expect
    damage(chunk_files(tmp_path / "foreign.zarr")[4], "cut")
    with pytest.raises(VolumeError, match="is damaged"):
        open_affinities(tmp_path / "foreign.zarr", sample=False)[...]


def test_evaluate_refuses_a_segmentation_with_a_deleted_chunk(made, tmp_path):
    from nisbflow.data.skeleton import load_skeleton_arrays

    copy = tmp_path / "seg.zarr"
    shutil.copytree(made / "seg.zarr", copy)
    first = load_skeleton_arrays(made / "seed/skeleton.pkl").index_position[0] // 16
    victim = copy / "0" / ".".join(str(int(i)) for i in first)
    victim.unlink()
    result = run(["evaluate", str(copy), "--skeleton", str(made / "seed/skeleton.pkl")], tmp_path)
    assert result.returncode == 2, result.stdout[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert str(victim) in line and "is missing" in line


class Interrupt:
    """A task function that raises KeyboardInterrupt after ``after`` calls (sync scheduler: in this process)."""

    def __init__(self, function, after: int, before_each=None):
        self.function, self.after, self.calls, self.before_each = function, after, 0, before_each

    def __call__(self, *args, **kwargs):
        if self.before_each is not None:
            self.before_each(self.calls)
        if self.after is not None and self.calls >= self.after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.function(*args, **kwargs)


def test_staged_blocks_whose_data_was_lost_or_cut_are_computed_again(made, tmp_path, monkeypatch):
    """An interrupted decode, then one relabelled chunk of the staged output deleted and one cut (markers kept),
    and one block's scratch local ids cut: the re-run recomputes those blocks, says so, and publishes the result of
    an uninterrupted run (once: 'N of M blocks already relabelled', zeros published, exit 0)."""
    import dask

    import nisbflow.decode.outputs as outputs
    from nisbflow.decode import decode_to_zarr

    output = tmp_path / "seg.zarr"
    monkeypatch.setattr(outputs, "_relabel_in_zarr", Interrupt(outputs._relabel_in_zarr, 12))
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        decode_to_zarr(str(made / "aff.zarr"), str(output), progress=False)
    monkeypatch.undo()
    staging = tmp_path / ".seg.zarr.nisbflow-run"
    done = sorted((staging / "done" / "relabel-0").iterdir())
    assert len(done) == 12
    staged_chunks = staging / "seg.zarr" / "0"
    (staged_chunks / done[0].name).unlink()
    damage(staged_chunks / done[1].name, "cut")
    scratch = sorted((staging / "scratch" / "local-ids" / "0").iterdir())
    damage(scratch[-1], "cut")  # a block the relabel pass had not reached
    said = []
    with dask.config.set(scheduler="synchronous"):
        counts = decode_to_zarr(str(made / "aff.zarr"), str(output), progress=False, log=said.append).counts
    assert any("2 finished block(s)" in s and "lost or damaged" in s for s in said), said
    assert any("label markers without their scratch files" in s for s in said), said
    assert any("10 of 32 blocks already relabelled" in s for s in said), said
    assert np.array_equal(read(output), read(made / "seg.zarr"))
    assert counts[0.75] == read(made / "seg.zarr").max()


@pytest.mark.parametrize("method, folder, how", [("cc", "local-ids/0", "bit"), ("cc", "local-ids/faces", "random"),
                                                 ("waterz", "fragments/0", "bit"),
                                                 ("waterz", "fragments/faces", "bit")])
def test_a_damaged_scratch_file_is_named_and_its_block_computed_again(method, folder, how, made, tmp_path,
                                                                      monkeypatch):
    """One flipped bit (or other bytes of the same size) in a scratch file of an interrupted decode passed the size
    check and the resumed output differed from a clean run (2,432 voxels for cc, 59 for waterz, exit 0). Every
    scratch file now carries a CRC-32: the resumed run stops naming the file (exit 2 from the command line), and the
    next run computes that block again and publishes the clean run's output."""
    import dask

    import nisbflow.decode.outputs as outputs
    from nisbflow.decode import decode_to_zarr
    from nisbflow.decode.outputs import ScratchDamagedError

    options = dict(thresholds=(0.5,), method="waterz") if method == "waterz" else {}
    with dask.config.set(scheduler="synchronous"):
        decode_to_zarr(str(made / "aff.zarr"), str(tmp_path / "clean.zarr"), progress=False, **options)
    output = tmp_path / "seg.zarr"
    monkeypatch.setattr(outputs, "_relabel_in_zarr", Interrupt(outputs._relabel_in_zarr, 0))  # every block labelled
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        decode_to_zarr(str(made / "aff.zarr"), str(output), progress=False, **options)
    monkeypatch.undo()
    staging = tmp_path / ".seg.zarr.nisbflow-run"
    victim = sorted((staging / "scratch" / folder).iterdir(), key=lambda p: int(p.name.split(".")[0]))[-1]
    data = bytearray(victim.read_bytes())
    if how == "bit":
        data[len(data) // 2] ^= 0x10
    else:
        data[16:-8] = np.random.default_rng(1).integers(0, 256, len(data) - 24, dtype=np.uint8).tobytes()
    victim.write_bytes(bytes(data))
    with dask.config.set(scheduler="synchronous"), pytest.raises(ScratchDamagedError, match=f"{victim} is damaged"):
        decode_to_zarr(str(made / "aff.zarr"), str(output), progress=False, **options)
    assert not output.exists() and not victim.exists()
    said = []
    with dask.config.set(scheduler="synchronous"):
        decode_to_zarr(str(made / "aff.zarr"), str(output), progress=False, log=said.append, **options)
    assert any("markers without their scratch files" in s for s in said), said
    assert np.array_equal(read(output), read(tmp_path / "clean.zarr"))


def test_an_input_rewritten_during_a_run_fails_it_before_publishing(made, tmp_path, monkeypatch):
    """decode of A while another process rewrites A: once exit 0 with a partition matching neither version. Now
    the inputs' fingerprints are compared again before publishing."""
    import dask

    import nisbflow.decode.cc_blockwise as blockwise
    from nisbflow.decode import decode_to_zarr

    copy = tmp_path / "aff.zarr"
    shutil.copytree(made / "aff.zarr", copy)

    def rewrite(calls):
        if calls == 3:  # another writer replaces part of the input under the running decode
            array = zarr.open_array(str(copy / "0"), mode="r+")
            array[:, 48:, 48:, 16:] = np.float16(0.95)

    monkeypatch.setattr(blockwise, "_label_and_store", Interrupt(blockwise._label_and_store, None, rewrite))
    with dask.config.set(scheduler="synchronous"), pytest.raises(InputChangedError,
                                                                 match=f"affinities {copy} changed while"):
        decode_to_zarr(str(copy), str(tmp_path / "seg.zarr"), progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "seg.zarr").exists()
    said = []
    with dask.config.set(scheduler="synchronous"):
        decode_to_zarr(str(copy), str(tmp_path / "seg.zarr"), progress=False, log=said.append)
    assert any("discarding the unfinished run" in s and "inputs.affinities" in s for s in said), said
    expected = tmp_path / "expected.zarr"
    with dask.config.set(scheduler="synchronous"):
        decode_to_zarr(str(copy), str(expected), progress=False)
    assert np.array_equal(read(tmp_path / "seg.zarr"), read(expected))


@pytest.mark.parametrize("manifest", ["{}", "[]", '{"run_id": "x", "identity": null}', "{\"run_id\": 3, "])
def test_a_malformed_manifest_is_discarded_with_a_reason(manifest, made, tmp_path):
    import dask

    from nisbflow.decode import decode_to_zarr

    staging = tmp_path / ".seg.zarr.nisbflow-run"
    staging.mkdir()
    (staging / "manifest.json").write_text(manifest)
    said = []
    with dask.config.set(scheduler="synchronous"):
        decode_to_zarr(str(made / "aff.zarr"), str(tmp_path / "seg.zarr"), progress=False, log=said.append)
    assert any("manifest" in s and "unreadable or malformed" in s and "starting fresh" in s for s in said), said
    assert np.array_equal(read(tmp_path / "seg.zarr"), read(made / "seg.zarr"))


def test_an_empty_lock_left_by_a_failed_write_is_taken_over_once_old(tmp_path):
    output = tmp_path / "out.zarr"
    staging = tmp_path / ".out.zarr.nisbflow-run"
    staging.mkdir()
    lock = staging / "lock.json"
    lock.write_bytes(b"")
    with pytest.raises(OutputLockedError, match="lock .* is unreadable"):  # a writer may be between create and write
        with StagedRun(output, kind="affinities"):
            pass
    old = time.time() - 120
    os.utime(lock, (old, old))
    said = []
    with StagedRun(output, kind="affinities", log=said.append) as staged:
        zarr.create_array(staged.data, shape=(2,), dtype="uint8")
    assert any("removing an empty lock" in s for s in said) and output.exists()
    lock.parent.mkdir()
    lock.write_text("not json at all")  # garbage: refused, naming the file
    with pytest.raises(OutputLockedError, match=f"delete {lock}"):
        StagedRun(output, kind="affinities", force=True).preflight()


_BUSY_ZARR_AT_EXIT = """
import asyncio, atexit, sys, time
import zarr
import nisbflow.data.volumes as volumes
from zarr.core.sync import _get_loop
if sys.argv[2] == "without":
    atexit.unregister(volumes.close_zarr_io)
zarr.open_array(sys.argv[1], mode="w", shape=(4,), dtype="u1")[:] = 1
async def busy():  # zarr's I/O thread still working when the process exits (a loaded machine)
    time.sleep(0.6)
asyncio.run_coroutine_threadsafe(busy(), _get_loop())
time.sleep(0.05)
"""


def test_a_command_exits_without_an_event_loop_traceback_while_zarr_is_busy(tmp_path):
    """zarr's own exit handler waits 0.2 s for its I/O thread, then fails closing a running loop: a finished command
    once printed ``RuntimeError: Cannot close a running event loop``. nisbflow's handler waits for the thread."""
    script = tmp_path / "busy.py"
    script.write_text(_BUSY_ZARR_AT_EXIT)
    runs = {mode: subprocess.run([sys.executable, str(script), str(tmp_path / f"{mode}.zarr"), mode],
                                 capture_output=True, text=True, timeout=60) for mode in ("with", "without")}
    assert "Cannot close a running event loop" in runs["without"].stderr  # the fault is real without the handler
    assert runs["with"].returncode == 0 and runs["with"].stderr == ""
