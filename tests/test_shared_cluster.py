"""A Dask cluster nisbflow did not start, as labs run one: a scheduler and workers started by hand as separate
processes, each worker in a working folder of its own. Relative paths given to the client mean the same on every
worker (decode and infer equal local runs), and an input, checkpoint or output folder that a worker does not see is
refused in one line naming the path and the worker, before any block runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from nisbflow.data.volumes import array_url
from nisbflow.synth import synthesize_seed
from nisbflow.synth.affinities import write_noisy_affinities

BIN = Path(sys.executable).parent
NISBFLOW = str(BIN / "nisbflow")


def start_cluster(root: Path, workers: list[list[str]]) -> tuple[str, list[subprocess.Popen]]:
    """A ``dask scheduler`` and one ``dask worker`` per entry of ``workers`` (a command prefix, e.g. to hide a
    folder from it), every process in a folder of its own under ``root``. Returns the address and the processes."""
    scheduler_file = root / "scheduler.json"
    (root / "scheduler").mkdir(parents=True)
    processes = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                                  cwd=root / "scheduler", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    address = json.loads(scheduler_file.read_text())["address"]
    for i, prefix in enumerate(workers):
        folder = root / f"worker{i}"
        folder.mkdir()
        processes.append(subprocess.Popen([*prefix, str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
                                           "--no-dashboard", "--local-directory", str(folder / "dask")],
                                          cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    from distributed import Client

    with Client(address, timeout=30) as client:
        client.wait_for_workers(len(workers), timeout=60)
    return address, processes


def stop(processes) -> None:
    for process in reversed(processes):
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The client's folder: a seed, its noisy affinities and a tiny checkpoint, all named relative to it."""
    root = tmp_path_factory.mktemp("shared")
    client = root / "client"
    synthesize_seed(client / "seed", (64, 64, 32), seed=5, chunks=(32, 32, 16), progress=False)
    write_noisy_affinities(client / "seed/data.zarr/seg", client / "aff.zarr", chunks=(16, 16, 16), progress=False)
    subprocess.run([NISBFLOW, "model", "init", "m.pt", "--arch", "tiny"], cwd=client, check=True,
                   capture_output=True)
    return root


@pytest.fixture(scope="module")
def shared(project):
    address, processes = start_cluster(project / "cluster", [[], []])
    yield address
    stop(processes)


def hidden_from(folder: Path) -> list[str]:
    """A command prefix under which a process sees ``folder`` empty, as a worker on another machine cannot see a
    client's local disk: a private mount namespace (util-linux ``unshare``, as root) with a tmpfs over it."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs tmpfs "{folder}" && exec "$0" "$@"']


@pytest.fixture(scope="module")
def hiding(project):
    """A cluster of one normal worker and one that cannot see the client's ``private`` folder."""
    private = project / "client" / "private"
    private.mkdir()
    shutil.copytree(project / "client" / "aff.zarr", private / "aff.zarr")
    shutil.copy(project / "client" / "m.pt", private / "m.pt")
    shutil.copytree(project / "client" / "seed", private / "seed")
    address, processes = start_cluster(project / "hiding", [[], hidden_from(private)])
    yield address
    stop(processes)


def nisbflow(arguments, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([NISBFLOW, *arguments], cwd=cwd, capture_output=True, text=True, timeout=600)


def read(path) -> np.ndarray:
    return zarr.open_array(array_url(str(path)), mode="r")[...]


def test_decode_with_relative_paths_on_workers_in_other_folders_equals_a_local_run(project, shared):
    from nisbflow.decode import decode_to_zarr

    client = project / "client"
    expected = project / "expected-seg.zarr"
    decode_to_zarr(str(client / "aff.zarr"), str(expected), progress=False)
    result = nisbflow(["decode", "aff.zarr", "seg.zarr", "--cluster", shared], client)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(read(client / "seg.zarr"), read(expected))
    assert read(expected).max() > 10  # a real partition, not the zeros of chunks a worker could not find


def test_infer_with_a_relative_image_and_checkpoint_equals_a_local_run(project, shared):
    client = project / "client"
    arguments = ["infer", "seed/data.zarr/img", "{}", "--checkpoint", "m.pt", "--chunks", "32,32,32",
                 "inference.window_size=[32,32,32]", "inference.sw_batch_size=1"]
    local = nisbflow([a.replace("{}", "local-aff.zarr") for a in arguments] + ["--cluster", "local", "--workers",
                                                                                "2"], client)
    assert local.returncode == 0, local.stderr
    remote = nisbflow([a.replace("{}", "remote-aff.zarr") for a in arguments] + ["--cluster", shared], client)
    assert remote.returncode == 0, remote.stderr
    difference = np.abs(read(client / "remote-aff.zarr").astype(np.float32)
                        - read(client / "local-aff.zarr").astype(np.float32))
    assert difference.max() <= 2e-3


@pytest.mark.parametrize("case", ["input", "checkpoint", "output"])
def test_a_path_only_the_client_sees_is_refused_in_one_line_naming_it_and_the_worker(case, project, hiding):
    client = project / "client"
    private = client / "private"
    if case == "input":
        arguments, named = ["decode", "private/aff.zarr", "seg-hidden.zarr"], f"affinities {private / 'aff.zarr'}"
    elif case == "checkpoint":
        arguments = ["infer", "seed/data.zarr/img", "aff-hidden.zarr", "--checkpoint", "private/m.pt",
                     "inference.window_size=[32,32,32]"]
        named = "checkpoint private/m.pt"
    else:
        arguments, named = ["decode", "aff.zarr", "private/seg.zarr"], f"output folder {private}"
    result = nisbflow(arguments + ["--cluster", hiding], client)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert named in lines[0] and "on worker tcp://127.0.0.1:" in lines[0], lines[0]
    assert ("does not exist there" in lines[0]) or ("not visible" in lines[0]), lines[0]
    for written in ("seg-hidden.zarr", "aff-hidden.zarr"):
        assert not (client / written).exists()
    assert not any(name.endswith(".nisbflow-run") and "lock" in os.listdir(client / name)
                   for name in os.listdir(client) if (client / name).is_dir())  # no lock left behind


def test_a_notebook_evaluating_on_a_shared_cluster_is_refused_a_segmentation_workers_cannot_see(project, hiding):
    from distributed import Client

    from nisbflow.data.volumes import open_segmentation
    from nisbflow.evaluate import nerl
    from nisbflow.paths import NotVisibleOnWorkerError

    private = project / "client" / "private" / "seed"
    segmentation = open_segmentation(private / "data.zarr" / "seg")
    assert nerl(segmentation, private / "skeleton.pkl").nerl == 1.0  # on this process's threads: all there
    with Client(hiding, timeout=30):
        with pytest.raises(NotVisibleOnWorkerError, match="segmentation .*private/seed/data.zarr/seg: it does not "
                                                          "exist there on worker"):
            nerl(segmentation, private / "skeleton.pkl")


def test_a_killed_scheduler_ends_decode_in_one_line_and_a_rerun_resumes_to_the_same_output(project, tmp_path):
    """The scheduler killed (-9) while decode runs: one line naming the scheduler, exit 2, no traceback; the staged
    blocks are kept, and the same command against a new scheduler finishes with the output of a clean local run."""
    from nisbflow.decode import decode_to_zarr

    client = tmp_path / "client"
    client.mkdir()
    synthesize_seed(client / "seed", (128, 128, 64), seed=8, chunks=(32, 32, 32), progress=False)
    write_noisy_affinities(client / "seed/data.zarr/seg", client / "aff.zarr", chunks=(16, 16, 16), progress=False)
    expected = tmp_path / "expected.zarr"
    decode_to_zarr(str(client / "aff.zarr"), str(expected), chunks=(16, 16, 16), progress=False)
    arguments = ["decode", "aff.zarr", "seg.zarr", "--chunks", "16,16,16"]

    address, processes = start_cluster(tmp_path / "first", [[]])
    run = subprocess.Popen([NISBFLOW, *arguments, "--cluster", address], cwd=client, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    done = client / ".seg.zarr.nisbflow-run" / "done"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        if done.exists() and sum(len(files) for _, _, files in os.walk(done)) >= 5:
            break
        time.sleep(0.05)
    processes[0].kill()  # the scheduler
    try:
        _, stderr = run.communicate(timeout=120)
    finally:
        stop(processes)
    assert run.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert f"lost the Dask scheduler at {address}" in stderr
    assert "re-run the same command" in stderr
    assert (client / ".seg.zarr.nisbflow-run").is_dir() and not (client / "seg.zarr").exists()

    address, processes = start_cluster(tmp_path / "second", [[]])
    try:
        result = nisbflow([*arguments, "--cluster", address], client)
    finally:
        stop(processes)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(read(client / "seg.zarr"), read(expected))
