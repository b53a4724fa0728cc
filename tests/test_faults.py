"""Faults on real LocalClusters and real processes: every stage that writes data (synth, synth-affinities, infer,
decode) survives a killed worker, an interrupted or killed client and a second writer on the same output, and gives
output identical to an undisturbed run. Resume keys on the inputs' content, never trusts markers without their data,
and outputs never overwrite inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from nisbflow.data.volumes import array_url
from nisbflow.fingerprints import fingerprint
from nisbflow.staging import OutputLockedError, OutputOverlapsInputError, StagedRun
from nisbflow.synth import synthesize_seed
from nisbflow.synth.affinities import noisy_affinities

NISBFLOW = str(Path(sys.executable).with_name("nisbflow"))
MODEL = "nisb-tiny-synthetic"
SHAPE = (96, 96, 48)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A seed (96×96×48) and its noisy affinities stored in 8³ chunks (576 decoding blocks)."""
    root = tmp_path_factory.mktemp("faults")
    synthesize_seed(root / "seed", SHAPE, seed=3, chunks=(32, 32, 16), progress=False)
    segmentation = zarr.open_array(str(root / "seed" / "data.zarr" / "seg"))[...]
    values = noisy_affinities(segmentation, 0.15, 0)
    zarr.create_array(str(root / "aff.zarr"), shape=values.shape, chunks=(3, 8, 8, 8), dtype="float16",
                      attributes={"offsets": ["1-0-0", "0-1-0", "0-0-1"]})[...] = values
    return root


def read(path) -> np.ndarray:
    return zarr.open_array(array_url(str(path)), mode="r")[...]


def staging_of(output: Path) -> Path:
    return output.parent / f".{output.name}.nisbflow-run"


def markers(output: Path, stage: str) -> int:
    folder = staging_of(output) / "done" / stage
    return len(list(folder.iterdir())) if folder.exists() else 0


# ----------------------------------------------------------------------------------------------------------------
# the client: interrupted (SIGINT, SIGTERM), killed (SIGKILL), and a second writer while it runs


def start(arguments, cwd) -> subprocess.Popen:
    return subprocess.Popen([NISBFLOW, *arguments], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_markers(output: Path, stage: str, at_least: int, process, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = markers(output, stage)
        if found >= at_least:
            return found
        if process.poll() is not None:
            raise AssertionError(f"run ended before {at_least} {stage} markers: {process.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"no {at_least} {stage} markers within {timeout} s")


def run(arguments, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([NISBFLOW, *arguments], cwd=cwd, capture_output=True, text=True, timeout=600)


STAGES = {
    # name: (arguments, output relative to the folder, marker stage, arrays compared, resume message)
    "synth": (["synth", "out", "--shape", "96,96,48", "--chunks", "8,8,8", "--seed", "3"], "out/data.zarr", "synth",
              ["out/data.zarr/img", "out/data.zarr/seg"], "blocks already done"),
    "synth-affinities": (["synth-affinities", "{data}/seed/data.zarr/seg", "out.zarr", "--chunks", "4,8,8"], "out.zarr",
                         "synth", ["out.zarr"], "blocks already done"),
    "infer": (["infer", "{data}/seed/data.zarr/img", "out.zarr", "--checkpoint", MODEL, "--chunks", "16,16,48",
               "--workers", "2"], "out.zarr", "predict", ["out.zarr"], "blocks already done"),
    "decode": (["decode", "{data}/aff.zarr", "out.zarr", "--workers", "2"], "out.zarr", "label", ["out.zarr"],
               "blocks already labelled"),
    "decode-waterz": (["decode", "{data}/aff.zarr", "out.zarr", "--method", "waterz", "-t", "0.3", "-t", "0.5",
                       "--workers", "2"], "out.zarr", "fragments",
                      ["out.zarr/threshold-0.3", "out.zarr/threshold-0.5"], "blocks already cut into fragments"),
}


def reference(stage: str, data: Path, folder: Path) -> dict:
    """The undisturbed result of a stage, computed in this process."""
    from nisbflow.decode import decode_to_zarr
    from nisbflow.synth.affinities import write_noisy_affinities

    if stage == "synth":
        synthesize_seed(folder / "out", SHAPE, seed=3, chunks=(8, 8, 8), progress=False)
    elif stage == "synth-affinities":
        write_noisy_affinities(data / "seed/data.zarr/seg", folder / "out.zarr", chunks=(4, 8, 8), progress=False)
    elif stage == "infer":  # on workers as the command runs it: torch's CPU results depend on its thread count
        folder.mkdir()
        arguments = [a.replace("{data}", str(data)) for a in STAGES["infer"][0]]
        assert run(arguments, folder).returncode == 0
    elif stage == "decode-waterz":
        decode_to_zarr(str(data / "aff.zarr"), str(folder / "out.zarr"), thresholds=(0.3, 0.5), method="waterz",
                       progress=False)
    else:
        decode_to_zarr(str(data / "aff.zarr"), str(folder / "out.zarr"), thresholds=(0.75,), progress=False)
    return {name: read(folder / name) for name in STAGES[stage][3]}


# The whole sequence for connected-components decoding runs in the default suite; for the other stages (the same
# StagedRun layer under each) it runs with `make test-slow`, to keep the default suite within CI's time.
IN_DEFAULT_SUITE = {"decode"}


@pytest.mark.parametrize("stage", [stage if stage in IN_DEFAULT_SUITE else pytest.param(stage, marks=pytest.mark.slow)
                                   for stage in STAGES])
def test_interrupted_and_killed_clients_rerun_to_identical_output_and_a_second_writer_is_refused(stage, data,
                                                                                                  tmp_path):
    """Per stage: a run is interrupted (SIGINT) while a second writer on the same output is refused; the re-run
    resumes and is killed (SIGKILL); the next re-run takes over the dead run's lock, resumes and finishes with
    output identical to an undisturbed run."""
    arguments, output, marker_stage, compared, resumed_message = STAGES[stage]
    arguments = [a.replace("{data}", str(data)) for a in arguments]
    folder, output = tmp_path / "run", tmp_path / "run" / output
    folder.mkdir()
    expected = reference(stage, data, tmp_path / "reference")

    first = start(arguments, folder)
    wait_for_markers(output, marker_stage, 2, first)
    second = run(arguments + ["--overwrite"], folder)  # a second writer while the first holds the output
    assert second.returncode == 2, second.stderr
    assert "is being written by another run" in second.stderr and f"pid {first.pid}" in second.stderr
    assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
    assert first.poll() is None, "the first run should still be writing"
    sent = time.monotonic()
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=60)
    assert time.monotonic() - sent < 10
    assert first.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted; finished blocks are kept in")
    assert "Traceback" not in stderr
    assert not (staging_of(output) / "lock.json").exists() and not output.exists()
    interrupted = markers(output, marker_stage)
    assert interrupted >= 2

    resumed = start(arguments, folder)
    wait_for_markers(output, marker_stage, interrupted + 2, resumed)
    resumed.kill()
    resumed.communicate()
    assert (staging_of(output) / "lock.json").exists() and not output.exists()  # a dead run's lock

    again = run(arguments, folder)
    assert again.returncode == 0, again.stderr
    said = " ".join((again.stdout + again.stderr).split())
    assert "removing a stale lock" in said and f"pid {resumed.pid}" in said
    assert resumed_message in said
    for name in compared:
        assert np.array_equal(read(folder / name), expected[name]), name
    assert not staging_of(output).exists()


@pytest.mark.slow  # SIGINT, SIGKILL and Ctrl-C to the process group run in the default suite
def test_sigterm_is_an_interrupt(data, tmp_path):
    output = tmp_path / "seg.zarr"
    process = start(["decode", str(data / "aff.zarr"), str(output), "--workers", "2"], tmp_path)
    wait_for_markers(output, "label", 2, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "error: interrupted" in stderr and "Traceback" not in stderr


# ----------------------------------------------------------------------------------------------------------------
# a worker killed mid-pass on a real LocalCluster


def _slowed(module: str, name: str, seconds: float):
    """Run on a worker: make ``module.name`` sleep first, so a kill lands in the middle of a pass."""
    import functools
    import importlib

    target = importlib.import_module(module)
    original = getattr(target, name)

    @functools.wraps(original)
    def slow(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    setattr(target, name, slow)


def kill_a_worker_when(client, output: Path, stage: str, at_least: int) -> dict:
    """Start a thread that SIGKILLs one worker process once ``stage`` has ``at_least`` markers; returns a record
    with the marker count at the kill."""
    pids = list(client.run(os.getpid).values())
    record = {}

    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            found = markers(output, stage)
            if found >= at_least:
                os.kill(pids[0], signal.SIGKILL)
                record["markers"] = found
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    record["thread"] = thread
    return record


@pytest.fixture
def cluster(tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      local_directory=str(tmp_path / "dask")) as made, Client(made) as client:
        yield client


@pytest.mark.parametrize("stage, function", [("label", "_label_and_store"),
                                             pytest.param("relabel-0", "_relabel_in_zarr", marks=pytest.mark.slow)])
def test_worker_killed_mid_decode(stage, function, data, tmp_path, cluster):
    from nisbflow.decode import decode_to_zarr

    expected = tmp_path / "expected.zarr"
    decode_to_zarr(str(data / "aff.zarr"), str(expected), chunks=(16, 16, 16), progress=False)
    cluster.run(_slowed, "nisbflow.decode.cc_blockwise" if function == "_label_and_store" else "nisbflow.decode.outputs",
                function, 0.05)
    output = tmp_path / "seg.zarr"
    kill = kill_a_worker_when(cluster, output, stage, 5)
    decode_to_zarr(str(data / "aff.zarr"), str(output), chunks=(16, 16, 16), progress=False)
    kill["thread"].join()
    assert 5 <= kill["markers"] < 108  # the kill landed mid-pass
    assert np.array_equal(read(output), read(expected))


@pytest.mark.parametrize("stage, function", [("fragments", "_fragment_task"),
                                             pytest.param("relabel-1", "_relabel_in_zarr", marks=pytest.mark.slow)])
def test_worker_killed_mid_waterz_decode(stage, function, data, tmp_path, cluster):
    """Agglomeration decoding: a worker killed in the fragment pass or in the second threshold's relabel pass."""
    from nisbflow.decode import decode_to_zarr

    def decode(output):
        decode_to_zarr(str(data / "aff.zarr"), str(output), thresholds=(0.3, 0.5), chunks=(16, 16, 16),
                       method="waterz", progress=False)

    expected = tmp_path / "expected.zarr"
    decode(expected)
    module = "nisbflow.decode.outputs" if function == "_relabel_in_zarr" else "nisbflow.decode.agglomerate_blockwise"
    cluster.run(_slowed, module, function, 0.05)
    output = tmp_path / "seg.zarr"
    kill = kill_a_worker_when(cluster, output, stage, 5)
    decode(output)
    kill["thread"].join()
    assert 5 <= kill["markers"] < 108  # the kill landed mid-pass
    for name in ("threshold-0.3", "threshold-0.5"):
        assert np.array_equal(read(output / name), read(expected / name))


def test_worker_killed_mid_infer(data, tmp_path, cluster):
    from nisbflow.infer.blockwise import infer_to_zarr

    image = str(data / "seed/data.zarr/img")
    expected = tmp_path / "expected.zarr"
    infer_to_zarr(image, str(expected), MODEL, block=(32, 32, 48), progress=False)
    output = tmp_path / "affinities.zarr"
    kill = kill_a_worker_when(cluster, output, "predict", 2)
    infer_to_zarr(image, str(output), MODEL, block=(32, 32, 48), progress=False)
    kill["thread"].join()
    assert 2 <= kill["markers"] < 9
    assert np.array_equal(read(output), read(expected))


def test_worker_killed_mid_synth(tmp_path, cluster):
    expected = synthesize_seed(tmp_path / "expected", SHAPE, seed=3, chunks=(16, 16, 16), progress=False)
    cluster.run(_slowed, "nisbflow.synth.volume", "_write_block", 0.05)
    output = tmp_path / "seed" / "data.zarr"
    kill = kill_a_worker_when(cluster, output, "synth", 5)
    summary = synthesize_seed(tmp_path / "seed", SHAPE, seed=3, chunks=(16, 16, 16), progress=False)
    kill["thread"].join()
    assert 5 <= kill["markers"] < 108
    for name in ("img", "seg"):
        assert np.array_equal(read(output / name), read(tmp_path / "expected" / "data.zarr" / name))
    assert (summary.n_neurons, summary.n_skeleton_nodes) == (expected.n_neurons, expected.n_skeleton_nodes)


def test_worker_killed_mid_synth_affinities(data, tmp_path, cluster):
    from nisbflow.synth.affinities import write_noisy_affinities

    segmentation = data / "seed/data.zarr/seg"
    write_noisy_affinities(segmentation, tmp_path / "expected.zarr", chunks=(32, 32, 16), progress=False)
    cluster.run(_slowed, "nisbflow.synth.affinities", "store_block", 0.2)
    output = tmp_path / "aff.zarr"
    kill = kill_a_worker_when(cluster, output, "synth", 3)
    write_noisy_affinities(segmentation, output, chunks=(32, 32, 16), progress=False)
    kill["thread"].join()
    assert 3 <= kill["markers"] < 27
    assert np.array_equal(read(output), read(tmp_path / "expected.zarr"))


# ----------------------------------------------------------------------------------------------------------------
# resume bookkeeping: markers only under a matching manifest and with their data


class Interrupt:
    """Raise KeyboardInterrupt from a task function after ``after`` calls (sync scheduler: in this process)."""

    def __init__(self, function, after: int):
        self.function, self.after, self.calls = function, after, 0

    def __call__(self, *args, **kwargs):
        if self.calls >= self.after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.function(*args, **kwargs)


def interrupted_infer(monkeypatch, image, output, after: int = 4):
    import dask

    import nisbflow.infer.blockwise as blockwise

    monkeypatch.setattr(blockwise, "_store_block", Interrupt(blockwise._store_block, after))
    with dask.config.set(scheduler="synchronous"), pytest.raises(KeyboardInterrupt):
        blockwise.infer_to_zarr(image, output, MODEL, block=(32, 32, 48), progress=False)
    monkeypatch.undo()
    assert markers(Path(output), "predict") == after


def test_stale_markers_without_their_array_are_not_trusted(data, tmp_path, monkeypatch):
    from nisbflow.infer.blockwise import infer_to_zarr

    image, output = str(data / "seed/data.zarr/img"), tmp_path / "affinities.zarr"
    interrupted_infer(monkeypatch, image, str(output))
    staged_array = staging_of(output) / output.name
    import shutil

    shutil.rmtree(staged_array)  # the data goes, the markers stay
    said = []
    summary = infer_to_zarr(image, str(output), MODEL, block=(32, 32, 48), progress=False, log=said.append)
    assert summary.blocks_skipped == 0 and any("recomputing every block" in s for s in said)
    expected = infer_to_zarr(image, str(tmp_path / "fresh.zarr"), MODEL, block=(32, 32, 48), progress=False)
    assert expected.blocks_skipped == 0
    assert np.array_equal(read(output), read(tmp_path / "fresh.zarr"))
    assert all(np.any(read(output)[:, x:x + 32, y:y + 32] != 0) for x in (0, 32, 64) for y in (0, 32, 64))


def test_resume_keys_on_the_inputs_content_not_their_path(data, tmp_path, monkeypatch):
    import shutil

    from nisbflow.infer.blockwise import infer_to_zarr

    seed = tmp_path / "seed"
    shutil.copytree(data / "seed", seed)
    image, output = str(seed / "data.zarr/img"), tmp_path / "affinities.zarr"
    interrupted_infer(monkeypatch, image, str(output))
    # another image at the same path (same shape, dtype and chunks)
    other = synthesize_seed(tmp_path / "other", SHAPE, seed=4, chunks=(32, 32, 16), progress=False)
    shutil.rmtree(seed / "data.zarr" / "img")
    shutil.copytree(Path(other.path) / "data.zarr" / "img", seed / "data.zarr" / "img")
    said = []
    summary = infer_to_zarr(image, str(output), MODEL, block=(32, 32, 48), progress=False, log=said.append)
    assert summary.blocks_skipped == 0
    assert any("discarding the unfinished run" in s and "inputs.image" in s for s in said), said
    infer_to_zarr(str(Path(other.path) / "data.zarr/img"), str(tmp_path / "fresh.zarr"), MODEL, block=(32, 32, 48),
                  progress=False)
    assert np.array_equal(read(output), read(tmp_path / "fresh.zarr"))


def test_fingerprint_sees_a_rewrite_in_place_with_equal_sizes(tmp_path):
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=(8, 8), chunks=(4, 4), dtype="uint8",
                              compressors=None)
    array[...] = 1
    before = fingerprint(tmp_path / "a.zarr")
    assert before["shape"] == [8, 8] and before["files"] == 5
    time.sleep(0.01)
    array[...] = 2  # every chunk file keeps its size
    after = fingerprint(tmp_path / "a.zarr")
    assert after["sampled_sha256"] != before["sampled_sha256"]
    assert fingerprint(tmp_path / "a.zarr") == after


def test_a_changed_setting_starts_fresh_and_says_which(data, tmp_path):
    output = tmp_path / "seg.zarr"

    def interrupted_run(thresholds, said):
        with pytest.raises(KeyboardInterrupt):
            with StagedRun(output, kind="segmentation", inputs={"affinities": data / "aff.zarr"},
                           identity={"thresholds": thresholds}, log=said.append) as staged:
                raise KeyboardInterrupt
        return staged

    said = []
    first = interrupted_run([0.5], said)
    second = interrupted_run([0.5], said)
    assert second.resumed and second.run_id == first.run_id and not said
    with StagedRun(output, kind="segmentation", inputs={"affinities": data / "aff.zarr"},
                   identity={"thresholds": [0.9]}, log=said.append) as staged:
        assert not staged.resumed and staged.run_id != first.run_id
        zarr.create_array(staged.data, shape=(2,), dtype="uint8")
    assert len(said) == 1 and "discarding the unfinished run" in said[0] and "thresholds" in said[0]
    assert output.exists() and not staging_of(output).exists()


# ----------------------------------------------------------------------------------------------------------------
# exclusive, never over inputs, --overwrite only over nisbflow's own outputs


def test_two_writers_in_one_process_and_a_stale_lock(tmp_path):
    output = tmp_path / "out.zarr"
    with StagedRun(output, kind="affinities") as first:
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
            with StagedRun(output, kind="affinities"):
                pass
        zarr.create_array(first.data, shape=(2,), dtype="uint8")
    output.rename(tmp_path / "first.zarr")
    # a lock left by a process that no longer exists on this host is taken over, and said so
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    staging = staging_of(output)
    staging.mkdir(exist_ok=True)
    import json
    import socket

    (staging / "lock.json").write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead), "started": "t"}))
    said = []
    with StagedRun(output, kind="affinities", log=said.append) as staged:
        zarr.create_array(staged.data, shape=(2,), dtype="uint8")
    assert any(f"pid {dead}" in s and "no longer running" in s for s in said)
    assert output.exists() and not staging.exists()


@pytest.mark.parametrize("arguments", [
    ["decode", "{aff}", "{aff}", "--overwrite", "--force"],
    ["decode", "{aff}", "{aff}/inside.zarr", "--force"],
    ["decode", "{aff}", "{data}", "--force"],
    ["infer", "{img}", "{img}", "--checkpoint", MODEL, "--overwrite", "--force"],
    ["infer", "{img}", "{seed}/data.zarr", "--checkpoint", MODEL, "--force"],
    ["synth-affinities", "{seg}", "{seg}", "--overwrite", "--force"],
])
def test_an_output_overlapping_an_input_is_refused_whatever_the_flags(arguments, data):
    values = {"aff": str(data / "aff.zarr"), "img": str(data / "seed/data.zarr/img"), "data": str(data),
              "seg": str(data / "seed/data.zarr/seg"), "seed": str(data / "seed")}
    before = fingerprint(data / "seed/data.zarr"), fingerprint(data / "aff.zarr")
    result = run([a.format(**values) for a in arguments], data)
    assert result.returncode == 2
    assert "would destroy an input" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (fingerprint(data / "seed/data.zarr"), fingerprint(data / "aff.zarr")) == before


def test_check_not_input_relations(tmp_path):
    from nisbflow.staging import check_not_input

    check_not_input(tmp_path / "a.zarr2", {"x": tmp_path / "a.zarr"})  # a shared prefix is not containment
    for output, relation in ((tmp_path / "a.zarr", "is"), (tmp_path, "contains"), (tmp_path / "a.zarr/b", "lies inside"),
                             (f"file://{tmp_path}/a.zarr", "is")):
        with pytest.raises(OutputOverlapsInputError, match=relation):
            check_not_input(output, {"x": tmp_path / "a.zarr"})


def test_overwrite_replaces_only_nisbflow_outputs_of_the_same_kind(data, tmp_path):
    import shutil

    seed = tmp_path / "seed"
    shutil.copytree(data / "seed", seed)
    aff = str(data / "aff.zarr")
    # a seed folder is not a segmentation: --overwrite refuses, the seed is untouched
    refused = run(["decode", aff, str(seed), "--overwrite", "--cluster", "sync", "--chunks", "48,48,48"], tmp_path)
    assert refused.returncode == 2 and "pass --force" in refused.stderr
    assert (seed / "skeleton.pkl").exists() and (seed / "data.zarr" / "img").exists()
    # nisbflow's own segmentation: --overwrite replaces it
    first = run(["decode", aff, str(tmp_path / "seg.zarr"), "-t", "0.5", "--cluster", "sync", "--chunks", "48,48,48"], tmp_path)
    assert first.returncode == 0, first.stderr
    again = run(["decode", aff, str(tmp_path / "seg.zarr"), "-t", "0.9", "--overwrite", "--cluster", "sync", "--chunks", "48,48,48"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert zarr.open_array(array_url(str(tmp_path / "seg.zarr"))).attrs["threshold"] == 0.9
    # anything else needs --force, which replaces it
    forced = run(["decode", aff, str(seed), "--force", "--cluster", "sync", "--chunks", "48,48,48"], tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert not (seed / "skeleton.pkl").exists() and zarr.open_array(array_url(str(seed))).ndim == 3


def test_file_url_outputs_publish(data, tmp_path):
    result = run(["decode", str(data / "aff.zarr"), f"file://{tmp_path}/seg.zarr", "--cluster", "sync",
                  "--chunks", "48,48,48"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert read(tmp_path / "seg.zarr").max() > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.zarr"]


# ----------------------------------------------------------------------------------------------------------------
# layouts checked up front; every expected failure one line with exit code 2


def test_channels_last_affinities_and_two_channel_images_are_refused(data, tmp_path):
    values = read(data / "aff.zarr")
    zarr.create_array(str(tmp_path / "last.zarr"), shape=values.shape[1:] + (3,), chunks=(32, 32, 16, 3),
                      dtype="float16")[...] = np.moveaxis(values, 0, -1)
    result = run(["decode", str(tmp_path / "last.zarr"), str(tmp_path / "seg.zarr")], tmp_path)
    assert result.returncode == 2 and "looks channels-last" in result.stderr
    assert "Dask dashboard" not in result.stdout  # refused before any cluster started
    zarr.create_array(str(tmp_path / "two.zarr"), shape=SHAPE + (2,), chunks=(32, 32, 16, 2), dtype="uint8")
    result = run(["infer", str(tmp_path / "two.zarr"), str(tmp_path / "a.zarr"), "--checkpoint", MODEL], tmp_path)
    assert result.returncode == 2 and "expected one grey channel" in result.stderr
    assert not (tmp_path / "seg.zarr").exists() and not (tmp_path / "a.zarr").exists()


def test_logit_affinities_are_named_with_the_fraction_out_of_range(tmp_path):
    logits = np.full((3, 16, 16, 16), 0.5, dtype=np.float32)
    logits[:, :4] = 3.0  # a quarter of the voxels
    zarr.create_array(str(tmp_path / "logits.zarr"), shape=logits.shape, chunks=(3, 16, 16, 16),
                      dtype="float32")[...] = logits
    result = run(["decode", str(tmp_path / "logits.zarr"), str(tmp_path / "seg.zarr"), "--cluster", "sync"],
                 tmp_path)
    assert result.returncode == 0
    assert "25.00 % of sampled values lie outside [0, 1]" in " ".join(result.stdout.split()), result.stdout


@pytest.mark.parametrize("arguments, message", [
    (["decode", "{aff}", "{out}", "-t", "1.5"], "must be a number in [0, 1], got 1.5"),
    (["decode", "{aff}", "{out}", "-t", "nan"], "got nan"),
    (["decode", "{aff}", "{out}", "--backend", "cupy"], "pip install 'nisbflow[gpu]'"),
    (["decode", "{aff}", "{out}", "--cluster", "tcp://127.0.0.1:9"], "cannot reach a Dask scheduler"),
    (["decode", "{aff}", "{out}", "-c", "{yaml_true}"], "not a boolean"),
    (["infer", "{img}", "{out}", "--checkpoint", MODEL, "--channels", "0,1,9"], "select_channel"),
    (["infer", "{empty}", "{out}", "--checkpoint", MODEL], "is empty"),
    (["synth-affinities", "{seg}", "{out}", "--noise", "nan"], "finite number"),
    (["evaluate", "{seed}/data.zarr/seg", "--skeleton", "{seed}/skeleton.pkl", "--json", "/missing/m.json"],
     "folder /missing does not exist"),
    (["train", "--run-dir", "{corrupt_run}", "data.train.path={seeds}", "optimization.max_steps=1"],
     "cannot resume from"),
    (["train", "--run-dir", "{new_run}", "data.train.path={seeds}", "data.patch_size=[128,128,128]"],
     "smaller than a crop"),
])
def test_expected_failures_are_one_line_with_exit_code_2(arguments, message, data, tmp_path):
    (tmp_path / "true.yaml").write_text("decoding:\n  threshold: true\n")
    zarr.create_array(str(tmp_path / "empty.zarr"), shape=(0, 8, 8, 1), chunks=(8, 8, 8, 1), dtype="uint8")
    (tmp_path / "corrupt" / "checkpoints").mkdir(parents=True)
    (tmp_path / "corrupt" / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "seeds").mkdir()
    os.symlink(data / "seed", tmp_path / "seeds" / "seed0")
    values = {"aff": data / "aff.zarr", "out": tmp_path / "out.zarr", "img": data / "seed/data.zarr/img",
              "seg": data / "seed/data.zarr/seg", "seed": data / "seed", "yaml_true": tmp_path / "true.yaml",
              "empty": tmp_path / "empty.zarr", "corrupt_run": tmp_path / "corrupt", "new_run": tmp_path / "new",
              "seeds": tmp_path / "seeds"}
    arguments = [a.format(**values) for a in arguments]
    result = run(arguments, tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "out.zarr").exists()


def test_debug_shows_the_traceback(data, tmp_path):
    result = run(["--debug", "decode", str(data / "aff.zarr"), str(tmp_path / "seg.zarr"), "-t", "1.5"], tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_memory_url_outputs_publish_equal_to_local_ones(data, tmp_path):
    import fsspec

    from nisbflow.decode import decode_to_zarr

    decode_to_zarr(str(data / "aff.zarr"), str(tmp_path / "seg.zarr"), chunks=(48, 48, 48), progress=False)
    decode_to_zarr(str(data / "aff.zarr"), "memory://faults/seg.zarr", chunks=(48, 48, 48), progress=False)
    assert np.array_equal(zarr.open_array(array_url("memory://faults/seg.zarr"))[...], read(tmp_path / "seg.zarr"))
    assert [p.rsplit("/", 1)[-1] for p in fsspec.filesystem("memory").ls("/faults", detail=False)] == ["seg.zarr"]


def test_ctrl_c_to_the_whole_process_group_prints_one_line(data, tmp_path):
    """A terminal's Ctrl-C reaches the client and its local workers: the workers ignore it (their preload), the client
    drains and exits 130 with one line and no worker tracebacks."""
    output = tmp_path / "seg.zarr"
    process = subprocess.Popen([NISBFLOW, "decode", str(data / "aff.zarr"), str(output), "--workers", "2"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    wait_for_markers(output, "label", 2, process)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted")
