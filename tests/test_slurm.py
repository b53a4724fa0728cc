"""``--cluster slurm`` and ``deploy/slurm/train.sbatch`` on a real one-node SLURM (Debian's slurmctld, slurmd and
munge), started by ``deploy/slurm/local-cluster.sh`` (which installs them where missing). The tests skip only when
that script says SLURM cannot be installed or started here, with its reason.

Worker jobs use the shipped ``deploy/slurm/jobqueue.yaml`` (``DASK_CONFIG=deploy/slurm``) as a lab would, with
``system.slurm.gpus=0`` and a job size that fits this CPU node. The GPU job script is checked as rendered: no GPU is
configured in this SLURM, so a job asking for one could not be scheduled."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dask_jobqueue  # noqa: F401  (loads its configuration defaults before any test sets jobqueue.* keys)
import numpy as np
import pytest
import yaml
import zarr

from nisbflow.data.volumes import array_url
from nisbflow.synth import synthesize_seed
from nisbflow.synth.affinities import write_noisy_affinities

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "deploy" / "slurm" / "local-cluster.sh"
NISBFLOW = str(Path(sys.executable).parent / "nisbflow")
JOB = ["system.slurm.gpus=0", "system.slurm.cores=1", "system.slurm.memory=3GiB", "system.slurm.walltime=00:15:00",
       f"system.slurm.local_directory={Path(os.environ.get('TMPDIR', '/tmp'))}"]
"""A worker job that fits this CPU node, over deploy/slurm/jobqueue.yaml's GPU job."""


def _env() -> dict:
    return {**os.environ, "DASK_CONFIG": str(ROOT / "deploy" / "slurm"), "NISBFLOW_VENV": sys.prefix}


def _jobs(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %T"], capture_output=True, text=True, check=True)
    return out.stdout.split("\n")[:-1]


def _wait_no_jobs(name: str, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while (jobs := _jobs(name)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return jobs


@pytest.fixture(scope="module")
def slurm():
    """A running one-node SLURM: started here (and stopped after the module) unless one already runs."""
    running = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True).returncode == 0
    if not running:
        started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
        if started.returncode == 3:
            reason = started.stderr.strip().splitlines()[-1]
            print(reason)
            pytest.skip(reason)
        assert started.returncode == 0, started.stderr
    yield
    if not running:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A seed, its noisy affinities and a tiny checkpoint, named relative to the folder the commands run in."""
    root = tmp_path_factory.mktemp("slurm")
    synthesize_seed(root / "seed", (64, 64, 32), seed=5, chunks=(32, 32, 16), progress=False)
    write_noisy_affinities(root / "seed/data.zarr/seg", root / "aff.zarr", chunks=(16, 16, 16), progress=False)
    subprocess.run([NISBFLOW, "model", "init", "m.pt", "--arch", "tiny"], cwd=root, check=True, capture_output=True)
    return root


def _shipped_jobqueue() -> dict:
    """deploy/slurm/jobqueue.yaml as Dask configuration keys (what DASK_CONFIG=deploy/slurm gives a new process)."""
    shipped = yaml.safe_load((ROOT / "deploy" / "slurm" / "jobqueue.yaml").read_text())["jobqueue"]["slurm"]
    return {f"jobqueue.slurm.{key}": value for key, value in shipped.items()}


def _run(arguments, cwd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([NISBFLOW, *arguments], cwd=cwd, capture_output=True, text=True, timeout=600, env=_env(),
                          **kwargs)


def _read(path) -> np.ndarray:
    return zarr.open_array(array_url(str(path)), mode="r")[...]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_decode_and_infer_on_slurm_equal_local_runs(slurm, project):
    port = _free_port()
    for command, source, extra in (("decode", "aff.zarr", ["-t", "0.5"]),
                                   ("infer", "seed/data.zarr/img", ["--checkpoint", "m.pt", "--chunks", "32,32,32"])):
        local = _run([command, source, f"{command}-local.zarr", *extra, "--cluster", "local", "--workers", "2"],
                     project)
        assert local.returncode == 0, local.stderr
        on_slurm = _run([command, source, f"{command}-slurm.zarr", *extra, "--cluster", "slurm", "--workers", "2",
                         "--dashboard-address", f"127.0.0.1:{port}", *JOB], project)
        assert on_slurm.returncode == 0, on_slurm.stderr
        assert f"Dask dashboard: http://127.0.0.1:{port}/status" in on_slurm.stdout
        assert np.array_equal(_read(project / f"{command}-slurm.zarr"), _read(project / f"{command}-local.zarr"))
        assert _wait_no_jobs("nisbflow-worker") == [], "the worker jobs outlived the command"


def test_slurm_cluster_carries_the_job_settings_and_binds_the_dashboard_where_asked(slurm, tmp_path, monkeypatch):
    """A real SLURMCluster from nisbflow: the jobqueue YAML's settings where the configuration sets none, the
    configuration's where it does (the job's comment, CPUs and memory as squeue sees them), the dashboard on the given
    address, and the device decided once the first job's worker joined (None here: no GPU)."""
    from nisbflow.cluster import cluster_client, cluster_device
    from nisbflow.config import load_config

    import dask

    monkeypatch.chdir(tmp_path)  # SLURM writes its job logs to the submitting folder
    monkeypatch.setenv("NISBFLOW_VENV", sys.prefix)  # the YAML's job-script-prologue activates it
    config = load_config(None, JOB + ["system.slurm.job_extra_directives=[--comment=nisbflow-ci]"])
    port = _free_port()
    with dask.config.set(_shipped_jobqueue()), \
            cluster_client("slurm", n_workers=1, slurm=config.system.slurm,
                           dashboard_address=f"127.0.0.1:{port}") as client:
        assert client.scheduler_info()["services"]["dashboard"] == port
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10).status == 200
        assert cluster_device(client) is None  # waits for the first worker instead of answering for none
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 1 and not next(iter(workers.values()))["resources"]
        (job,) = subprocess.run(["squeue", "-h", "-n", "nisbflow-worker", "-o", "%k|%C|%m|%l"],
                                capture_output=True, text=True, check=True).stdout.split()
        assert job.split("|") == ["nisbflow-ci", "1", "3G", "15:00"]
    assert _wait_no_jobs("nisbflow-worker") == []


def test_an_interrupted_slurm_run_cancels_its_jobs_and_resumes(slurm, project, tmp_path):
    from nisbflow.decode import decode_to_zarr

    write_noisy_affinities(project / "seed/data.zarr/seg", tmp_path / "aff.zarr", chunks=(4, 8, 8), progress=False)
    decode_to_zarr(str(tmp_path / "aff.zarr"), str(tmp_path / "expected.zarr"), thresholds=(0.75,), progress=False)
    arguments = [NISBFLOW, "decode", "aff.zarr", "seg.zarr", "--cluster", "slurm", "--workers", "2", *JOB]
    first = subprocess.Popen(arguments, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    done = tmp_path / ".seg.zarr.nisbflow-run" / "done" / "label"
    deadline = time.monotonic() + 180
    while not (done.exists() and len(list(done.iterdir())) >= 2):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=90)
    assert first.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted; finished blocks are kept in")
    assert _wait_no_jobs("nisbflow-worker") == [], "an interrupted run left its worker jobs queued or running"
    again = subprocess.run(arguments, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "blocks already labelled" in " ".join(again.stdout.split())
    assert np.array_equal(_read(tmp_path / "seg.zarr"), _read(tmp_path / "expected.zarr"))


def test_train_sbatch_trains_on_cpu_ranks_and_a_resubmission_resumes(slurm, tmp_path):
    import torch

    for name, seed in (("train/seed0", 40), ("val/seed100", 41)):
        synthesize_seed(tmp_path / name, (48, 48, 48), seed=seed, chunks=(48, 48, 48), progress=False)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    overrides = ["data.train.path=train", "data.val.path=val/seed100", "data.val.skeleton=val/seed100/skeleton.pkl",
                 "data.patch_size=[32,32,32]", "optimization.val_check_interval=1",
                 "optimization.checkpoint.every_n_train_steps=1"]
    env = {**_env(), "CONFIG": "configs/tiny.yaml", "RUN_DIR": "run", "CPU_RANKS": "2"}
    outputs = []
    for steps in (1, 2):
        try:
            submitted = subprocess.run(["sbatch", "--wait", "--job-name", "nisbflow-train-test", "--cpus-per-task",
                                        "2", "--mem", "4G", "--time", "00:10:00", "--output", f"train-{steps}.out",
                                        str(ROOT / "deploy" / "slurm" / "train.sbatch"), *overrides,
                                        f"optimization.max_steps={steps}"],
                                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            reason = subprocess.run(["squeue", "-h", "-n", "nisbflow-train-test", "-o", "%T %r"], capture_output=True,
                                    text=True).stdout.strip()
            subprocess.run(["scancel", "-n", "nisbflow-train-test"], capture_output=True)
            raise AssertionError(f"train.sbatch did not finish within 300 s (squeue: {reason or 'gone'})") from None
        outputs.append(" ".join((tmp_path / f"train-{steps}.out").read_text().split()))
        assert submitted.returncode == 0, outputs[-1][-3000:]
    assert "no GPU: 2 CPU rank(s), gloo, 1 OpenMP thread(s) per rank" in outputs[0]
    assert "OMP_NUM_THREADS" not in outputs[0] and "libgomp" not in outputs[0]
    assert "trained 1 steps" in outputs[0] and "resuming" not in outputs[0]
    assert "resuming run/checkpoints/last.pt at step 1 with optimization.max_steps 2" in outputs[1]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert last["metadata"]["step"] == 2


def test_the_gpu_job_script_requests_the_gpu_and_declares_it(monkeypatch):
    """Rendered by dask-jobqueue itself from the shipped jobqueue.yaml: its GPU directive and resource, its memory
    (not the schema's), the configuration's settings over it, and no GPU anywhere for a CPU job."""
    import dask

    from nisbflow.config.schema import SlurmConfig
    from nisbflow.errors import ConfigError
    from nisbflow.slurm import render_job_script, resolve_slurm_job

    with dask.config.set(_shipped_jobqueue()):
        script = render_job_script(SlurmConfig())
        assert "#SBATCH --gres=gpu:1" in script and "--resources GPU=1" in script
        assert "#SBATCH --mem=64G" in script and "#SBATCH --cpus-per-task=8" in script
        assert "#SBATCH -J nisbflow-worker" in script and "#SBATCH -t 04:00:00" in script
        mine = render_job_script(SlurmConfig(cores=4, memory="16GiB", queue="gpu"), tasks_per_gpu=2)
        assert "#SBATCH --cpus-per-task=4" in mine and "#SBATCH --mem=16G" in mine and "#SBATCH -p gpu" in mine
        assert "--resources GPU=2" in mine and mine.count("gpu:1") == 1
        cpu = render_job_script(SlurmConfig(gpus=0))
        assert "gres" not in cpu and "GPU=" not in cpu
        job = resolve_slurm_job(SlurmConfig(memory="16GiB"))
        assert job.sources["memory"] == "system.slurm.memory"
        assert job.sources["cores"] == "Dask configuration jobqueue.slurm.cores" and job.gpus == 1
        with pytest.raises(ConfigError, match="one GPU per job"):
            resolve_slurm_job(SlurmConfig(gpus=2))
    # no jobqueue configuration: nisbflow's fallbacks, and a GPU only when asked for
    plain = render_job_script(SlurmConfig())
    assert "#SBATCH --cpus-per-task=8" in plain and "#SBATCH -t 04:00:00" in plain and "gres" not in plain
    asked = render_job_script(SlurmConfig(gpus=1))
    assert "#SBATCH --gres=gpu:1" in asked and "--resources GPU=1" in asked
    # what `nisbflow config show` prints for the same
    shown = subprocess.run([NISBFLOW, "config", "show", "--cluster", "slurm", "system.slurm.memory=16GiB"],
                           capture_output=True, text=True, env=_env(), check=True).stdout
    assert "#   #SBATCH --gres=gpu:1" in shown and "--resources GPU=1" in shown and "#   #SBATCH --mem=16G" in shown
    assert "memory: '16GiB'  (system.slurm.memory)" in shown
    assert yaml.safe_load(shown)["system"]["slurm"]["memory"] == "16GiB"  # still YAML
