"""A new user's first hour: what once ended in a traceback, a refusal after the cluster had started, or a count that
disagreed with another command's, is now one line with exit code 2 before any cluster starts, and the counts are
named alike everywhere."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import zarr

from nisbflow.synth import synthesize_seed
from nisbflow.synth.affinities import write_noisy_affinities

NISBFLOW = str(Path(sys.executable).with_name("nisbflow"))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("refusals")
    synthesize_seed(root / "seed", (64, 64, 32), seed=8, chunks=(32, 32, 16), progress=False)
    write_noisy_affinities(root / "seed/data.zarr/seg", root / "aff.zarr", chunks=(16, 16, 16), progress=False)
    return root


def run(arguments, cwd, prefix=()) -> subprocess.CompletedProcess:
    import os

    environment = dict(os.environ, COLUMNS="200")  # tables on one line each
    return subprocess.run([*prefix, NISBFLOW, *arguments], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=environment)


def refused(result, *words) -> str:
    """The one line of a refusal that started no cluster, with each of ``words`` in it."""
    assert result.returncode == 2, (result.stdout[-1500:], result.stderr[-1500:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "Dask dashboard" not in result.stdout  # refused before any cluster started
    line = " ".join(lines[0].split())
    for word in words:
        assert word in line, line
    return line


def read_only(folder: Path) -> list[str]:
    """A command prefix under which ``folder`` is a read-only mount (even root cannot write there)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount --bind "{folder}" "{folder}" && mount -o remount,ro,bind "{folder}" && exec "$0" "$@"']


def test_a_threshold_given_in_percent_is_refused_with_the_value_meant(made, tmp_path):
    refused(run(["decode", str(made / "aff.zarr"), "seg.zarr", "-t", "75"], tmp_path), "[0, 1]",
            "did you mean 0.75?")


def test_a_mask_of_another_shape_is_refused_before_the_cluster(made, tmp_path):
    zarr.create_array(str(tmp_path / "mask.zarr"), shape=(64, 64, 16), chunks=(32, 32, 16), dtype="uint8")
    refused(run(["decode", str(made / "aff.zarr"), "seg.zarr", "--mask", str(tmp_path / "mask.zarr"), "--workers",
                 "1"], tmp_path), "affinity mask", "(64, 64, 16)", "(64, 64, 32)")


@pytest.mark.parametrize("which", ["input", "output"])
def test_an_unknown_storage_scheme_is_refused_in_one_line(which, made, tmp_path):
    affinities, output = (("foo://aff.zarr", "seg.zarr") if which == "input" else
                          (str(made / "aff.zarr"), "foo://bucket/seg.zarr"))
    result = run(["decode", affinities, output, "--workers", "1"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "unknown storage scheme 'foo://'" in result.stderr and "Dask dashboard" not in result.stdout


def test_chunks_making_too_many_blocks_are_refused_at_once(made, tmp_path):
    start = time.monotonic()
    line = refused(run(["decode", str(made / "aff.zarr"), "seg.zarr", "--chunks", "1,1,1"], tmp_path), "131,072 blocks",
                   "more than 100,000", "use larger blocks")
    assert time.monotonic() - start < 60, line
    refused(run(["infer", str(made / "seed/data.zarr/img"), "aff2.zarr", "--checkpoint", "nisb-tiny-synthetic",
                 "--chunks", "1,1,1"], tmp_path), "131,072 blocks")


def test_an_output_folder_that_cannot_be_written_is_refused_before_the_cluster(made, tmp_path):
    folder = tmp_path / "readonly"
    folder.mkdir()
    refused(run(["decode", str(made / "aff.zarr"), str(folder / "seg.zarr"), "--workers", "1"], tmp_path,
                read_only(folder)), f"its folder {folder} is not writable")
    refused(run(["model", "init", str(folder / "m.pt")], tmp_path, read_only(folder)),
            f"output {folder / 'm.pt'}: folder {folder}", "is not writable")
    assert not any(folder.iterdir())


def test_a_full_disk_names_the_staging_folder_and_the_re_run_resumes(made, tmp_path):
    """A 400 KiB file system: decode fails naming the staging folder where its finished blocks are kept; the re-run
    on the still-full disk fails the same way, never with 'being written by another run', and no lock is left."""
    folder = tmp_path / "small"
    folder.mkdir()
    script = (f'mount -t tmpfs -o size=400k tmpfs "{folder}" && "{NISBFLOW}" decode "{made / "aff.zarr"}" '
              f'"{folder}/seg.zarr" --cluster sync; "{NISBFLOW}" decode "{made / "aff.zarr"}" "{folder}/seg.zarr" '
              f'--cluster sync; ls -a "{folder}/.seg.zarr.nisbflow-run"')
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=600)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, result.stderr
    staging = f"{folder}/.seg.zarr.nisbflow-run"
    for line in errors:
        assert "No space left on device while writing" in line and f"kept in {staging}" in line, line
    assert "being written by another run" not in result.stderr
    assert "lock.json" not in result.stdout.split() and "manifest.json" in result.stdout.split()


def test_tune_without_a_validation_seed_is_refused_before_the_cluster(tmp_path):
    refused(run(["tune", "--checkpoint", "nisb-tiny-synthetic", "--workers", "1", f"save_path={tmp_path}"],
                tmp_path), "data.val.path is not set")
    refused(run(["test", "--checkpoint", "nisb-tiny-synthetic", "--workers", "1", f"save_path={tmp_path}"],
                tmp_path), "data.test.path is not set")


def test_a_checkpoint_whose_weights_do_not_fit_its_network_is_refused_on_the_client(made, tmp_path):
    import torch

    from nisbflow.model import ARCHITECTURES, build, checkpoint_payload

    config = ARCHITECTURES["tiny"]
    bigger = build(config.model_copy(update={"init_filters": 8}))
    torch.save(checkpoint_payload(bigger, config, {}), tmp_path / "bad.pt")  # weights of 8 filters, config of 4
    refused(run(["infer", str(made / "seed/data.zarr/img"), "aff.zarr", "--checkpoint", str(tmp_path / "bad.pt"),
                 "--workers", "1"], tmp_path), f"checkpoint {tmp_path / 'bad.pt'} does not fit", "other shapes")


@pytest.mark.parametrize("delay", [0.1, 0.2, 0.3, 0.6])
def test_ctrl_c_while_the_command_starts_is_one_line(delay, tmp_path):
    process = subprocess.Popen([NISBFLOW, "config", "show"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    if process.returncode == 0:  # it had already finished: nothing to interrupt
        return
    assert "Traceback" not in stderr, stderr
    if process.returncode == -signal.SIGINT:  # arrived while Python was exiting (handlers reset): a shell's 130
        return
    assert process.returncode == 130, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_view_refuses_volumes_of_different_shapes(made):
    from nisbflow.errors import VolumeError
    from nisbflow.view import view

    with pytest.raises(VolumeError, match="not of one shape .* image 64×64×32, segmentation 64×64×16"):
        view(np.zeros((64, 64, 32), np.uint8), segmentations=[np.zeros((64, 64, 16), np.uint32)])


def test_a_directed_skeleton_scores_as_its_undirected_graph_and_string_ids_are_refused(tmp_path):
    from nisbflow.data.skeleton import load_skeleton, save_skeleton
    from nisbflow.errors import SkeletonError
    from nisbflow.evaluate import nerl

    graph = nx.Graph()
    for i in range(5):
        graph.add_node(i, id=1, index_position=[i, 0, 0])
    graph.add_edges_from((i, i + 1) for i in range(4))
    segmentation = np.ones((8, 2, 2), np.uint32)
    segmentation[3:] = 2  # a split after node 2
    expected = nerl(segmentation, graph)
    directed = nx.DiGraph(graph)  # every edge stored both ways: once counted twice, ERL 1806 for 903
    assert directed.number_of_edges() == 8
    save_skeleton(directed, tmp_path / "directed.pkl")
    for skeleton in (directed, tmp_path / "directed.pkl"):
        result = nerl(segmentation, skeleton)
        assert (result.erl, result.nerl, result.n_splits) == (expected.erl, expected.nerl, expected.n_splits)
    assert expected.n_splits == 1 and 0 < expected.nerl < 1
    assert load_skeleton(tmp_path / "directed.pkl").number_of_edges() == 4
    graph.nodes[2]["id"] = "neuron-1"
    save_skeleton(graph, tmp_path / "strings.pkl")
    with pytest.raises(SkeletonError, match="node 2 has id 'neuron-1' \\(str\\); ids must be integers"):
        nerl(segmentation, tmp_path / "strings.pkl")


def test_infinite_affinities_are_counted_like_nan(tmp_path):
    import dask

    from nisbflow.decode import decode_to_zarr

    values = np.full((3, 32, 32, 16), 0.9, dtype=np.float16)
    values[0, 20, 20, 10] = np.inf  # in a chunk the pre-run sample does not read
    values[1, 5, 5, 5] = np.nan
    zarr.create_array(str(tmp_path / "aff.zarr"), data=values, chunks=(3, 16, 16, 8))
    with dask.config.set(scheduler="synchronous"), pytest.warns(RuntimeWarning, match="2 NaN or infinite"):
        decode_to_zarr(str(tmp_path / "aff.zarr"), str(tmp_path / "seg.zarr"), progress=False)


def test_skeleton_counts_agree_between_synth_convert_and_evaluate(made, tmp_path):
    """The same skeleton file was 45 skeletons in synth and convert and 40 in evaluate: evaluate scores the
    skeletons with edges. Every command now names both."""
    import json

    from nisbflow.data import load_skeleton, summarize_skeleton
    from nisbflow.evaluate import nerl

    summary = summarize_skeleton(load_skeleton(made / "seed/skeleton.pkl"))
    converted = run(["skeleton", "convert", str(made / "seed/skeleton.pkl"), str(tmp_path / "s.npz")], tmp_path)
    assert converted.returncode == 0
    assert (f"{summary.n_neurons} skeletons ({summary.n_scored} with edges, which NERL scores)"
            in " ".join(converted.stdout.split()))
    result = nerl(zarr.open_array(str(made / "seed/data.zarr/seg"))[...], made / "seed/skeleton.pkl")
    assert result.n_skeletons == summary.n_scored
    evaluated = run(["evaluate", str(made / "seed/data.zarr/seg"), "--skeleton", str(made / "seed/skeleton.pkl"),
                     "--json", str(tmp_path / "m.json")], tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    text = " ".join(evaluated.stdout.split())
    assert f"skeletons with edges (scored) / nodes │ {summary.n_scored} / {summary.n_nodes}" in text
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert "mergers between neurons / with background │ "\
        f"{metrics['n_non0_mergers']} / {metrics['n_mergers'] - metrics['n_non0_mergers']}" in text


def _die():
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer or the nanny's memory limit does


def test_workers_dying_inside_a_task_end_in_one_line_naming_the_memory_limit(tmp_path):
    """A task whose worker dies every time (as one over its memory limit does) once ended in a KilledWorker
    traceback several screens long."""
    import dask
    from distributed import Client, LocalCluster

    from nisbflow.tasks import WorkerDiedError, compute_tasks

    with LocalCluster(n_workers=1, threads_per_worker=1, memory_limit="700MiB", dashboard_address=None,
                      local_directory=str(tmp_path)) as cluster, Client(cluster):
        with pytest.raises(WorkerDiedError) as raised:
            compute_tasks([dask.delayed(_die)(dask_key_name="decode-label-block-x")], "decode: label blocks",
                          progress=False)
    message = str(raised.value)
    assert message.startswith("decode: label blocks: Dask workers died 4 times running task decode-label-block-x")
    assert "memory limit 700.00 MiB" in message and "--memory-limit" in message and "\n" not in message


def test_decode_says_its_memory_per_task_and_refuses_a_block_that_cannot_fit(tmp_path):
    """Before any block: the label task's estimate against the workers' memory per task, in one line; a 256³ block
    at 500 MiB per worker is refused (it would be killed and retried until Dask gives up), nothing written."""
    from nisbflow.decode.memory import label_task_bytes

    zarr.create_array(str(tmp_path / "big.zarr"), shape=(3, 256, 256, 256), chunks=(3, 256, 256, 256),
                      dtype="float16", fill_value=0.9)
    result = run(["decode", str(tmp_path / "big.zarr"), str(tmp_path / "seg.zarr"), "--workers", "1",
                       "--memory-limit", "500MiB"], tmp_path)
    assert result.returncode == 2, result.stderr
    line = last_line(result)
    assert line.startswith("error: decode: about 596.00 MiB per label task (256×256×256 block, 1 threshold(s)); "
                           "worker tcp://")
    assert "has 500.00 MiB per task: a task would not fit" in line and "--chunks" in line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "seg.zarr").exists() and not (tmp_path / ".seg.zarr.nisbflow-run").exists()
    # an independent count of the same estimate: 3 float16 channels read and copied as bits, uint32 labels, runtime
    assert label_task_bytes((256, 256, 256), 2, 1) == 300 * 2**20 + int(256**3 * (2 * 3 * 2 + 4.5 + 2.0))
    fits = run(["decode", str(tmp_path / "big.zarr"), str(tmp_path / "seg.zarr"), "--workers", "1",
                    "--memory-limit", "500MiB", "--chunks", "128,128,128", "-t", "0.5"], tmp_path)
    assert fits.returncode == 0, fits.stderr
    said = " ".join(fits.stdout.split())
    assert "decode: about 337.00 MiB per label task (128×128×128 block, 1 threshold(s)); worker tcp://" in said
    assert "has 500.00 MiB per task" in said
    from nisbflow.data.volumes import array_url

    assert np.unique(zarr.open_array(array_url(str(tmp_path / "seg.zarr")), mode="r")[...]).tolist() == [1]


def last_line(result) -> str:
    lines = [line for line in result.stderr.strip().splitlines() if " - distributed." not in line]
    return " ".join(lines[-1].split()) if lines else ""


def test_workers_paused_over_memory_end_the_run_in_one_line_instead_of_a_hang(made, tmp_path):
    """Every worker paused by Dask's memory monitor (here: pausing at 5 % of the limit, so a worker pauses as soon as
    it starts, as a 200 MiB worker holding numba and zarr does at 80 %) once left decode waiting for ever."""
    import os

    environment = dict(os.environ, COLUMNS="200", DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE="0.05",
                       NISBFLOW_STALLED_SECONDS="3")
    start = time.monotonic()
    result = subprocess.run([NISBFLOW, "decode", str(made / "aff.zarr"), "seg.zarr", "--workers", "1",
                             "--memory-limit", "2GiB"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=environment)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = last_line(result)
    assert line.startswith("error: decode: label blocks: the Dask worker paused for"), line
    assert "over 5% of the 2.00 GiB memory limit" in line and "--memory-limit" in line
    assert time.monotonic() - start < 120
    assert not (tmp_path / "seg.zarr").exists()


def test_infer_on_workers_too_small_for_torch_ends_in_one_line_naming_the_memory_limit(made, tmp_path):
    """200 MiB workers die importing torch; the run once ended in a CommClosedError ("Stream is closed"). (300 MiB
    until the GPU probe's module, nisbflow.infer.device, stopped importing the driver's zarr and staging modules: a
    300 MiB worker now survives the probe and the run is refused by the memory plan instead, in one line too.)"""
    subprocess.run([NISBFLOW, "model", "init", "m.pt", "--arch", "tiny"], cwd=tmp_path, check=True,
                   capture_output=True)
    result = run(["infer", str(made / "seed/data.zarr/img"), "aff.zarr", "--checkpoint", "m.pt", "--workers", "1",
                  "--memory-limit", "200MiB"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    line = last_line(result)
    assert "importing torch" in line and "memory limit 200.00 MiB" in line and "--memory-limit" in line, line
    assert "interrupted" not in result.stderr  # the nanny stopping its worker is not an interrupt of the command
