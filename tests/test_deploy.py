"""Deployment files: the compose file's structure, the image's install steps (the ones CI runs), SLURM scripts.

No container engine runs here, so the compose file is checked for what a working stack needs rather than started.
"""

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # merge keys (<<: *anchor) resolved


def command_of(service) -> str:
    command = service["command"]
    return " ".join(command) if isinstance(command, list) else command


def test_compose_has_scheduler_with_dashboard_gpu_workers_and_jupyterlab(compose):
    services = compose["services"]
    scheduler = services["scheduler"]
    assert command_of(scheduler).startswith("dask scheduler") and ":8787" in command_of(scheduler)
    assert {"127.0.0.1:8786:8786", "127.0.0.1:8787:8787"} <= set(scheduler["ports"])
    workers = {name: s for name, s in services.items() if name.startswith("worker")}
    assert workers, "no dask-cuda worker service"
    devices_seen = []
    for name, worker in workers.items():
        command = command_of(worker)
        assert command.startswith("dask cuda worker tcp://scheduler:8786"), name
        assert re.search(r"--resources GPU=1\b", command), f"{name} must declare the GPU resource"
        assert "--name" not in command  # replicated names would be refused by the scheduler
        assert "scheduler" in worker["depends_on"]
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert len(device["device_ids"]) == 1, f"{name}: one GPU each"
        devices_seen += device["device_ids"]
    assert len(devices_seen) == len(set(devices_seen)), "two workers share a GPU"
    jupyter = services["jupyter"]
    assert command_of(jupyter).startswith("jupyter lab") and "127.0.0.1:8888:8888" in jupyter["ports"]
    for name, service in services.items():
        assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert service["environment"]["DASK_SCHEDULER_ADDRESS"] == "tcp://scheduler:8786", name
        assert any(volume.endswith(":/data") for volume in service["volumes"]), name
        unknown = set(service) - {"image", "build", "volumes", "environment", "restart", "command", "ports",
                                  "depends_on", "deploy", "shm_size", "working_dir", "profiles", "entrypoint"}
        assert not unknown, f"{name}: unexpected keys {unknown}"


def test_the_image_installs_with_the_script_ci_runs():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "deploy/install.sh" in makefile and "deploy/install.sh" in dockerfile
    extras = re.search(r"EXTRAS=([\w,]+)", dockerfile).group(1).split(",")
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) <= set(optional), f"the image asks for extras {extras} not in pyproject.toml"
    assert any(r.startswith("dask-cuda") for r in optional["gpu"])
    assert any(r.startswith("dask-labextension") for r in optional["notebook"])
    assert any(r.startswith("jupyterlab") for r in optional["notebook"])
    for line in dockerfile.splitlines():  # everything the image copies exists
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert subprocess.run(["bash", "-n", str(ROOT / "deploy" / "install.sh")]).returncode == 0


def test_slurm_scripts():
    sbatch = (ROOT / "deploy" / "slurm" / "train.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "deploy" / "slurm" / "train.sbatch")]).returncode == 0
    assert re.search(r"^#SBATCH --nodes=\d+", sbatch, re.M)
    # GPUs come from the sbatch command line, so the script also runs where no GPU gres exists (tests/test_slurm.py
    # submits it to a CPU node); ranks follow the GPUs given, else CPU ranks with at least one OpenMP thread each
    assert not re.search(r"^#SBATCH --(gpus|gres)", sbatch, re.M)
    assert "SLURM_GPUS_ON_NODE" in sbatch and "CPU_RANKS" in sbatch and '[ "$THREADS" -ge 1 ] || THREADS=1' in sbatch
    assert "torchrun" in sbatch and "-m nisbflow_cli.main train" in sbatch and "--rdzv-endpoint" in sbatch
    jobqueue = yaml.safe_load((ROOT / "deploy" / "slurm" / "jobqueue.yaml").read_text())["jobqueue"]["slurm"]
    assert jobqueue["worker-extra-args"] == ["--resources", "GPU=1"]
    assert jobqueue["processes"] == 1
    docs = (ROOT / "docs" / "cluster.md").read_text()
    assert "docker compose up" in docs and "sbatch deploy/slurm/train.sbatch" in docs


def test_compose_publishes_on_localhost_keeps_outputs_and_has_a_cli_service(compose):
    services = compose["services"]
    for name, service in services.items():
        for port in service.get("ports", []):  # whoever reaches 8786 can run code on the workers
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
        # default outputs (relative to the working folder, e.g. outputs/demo) land on the mounted ./outputs
        assert service["working_dir"] == "/work" and "./outputs:/work/outputs" in service["volumes"], name
    cli = services["nisbflow"]
    assert cli["entrypoint"][-1] == "nisbflow" and cli["profiles"] == ["cli"] and "scheduler" in cli["depends_on"]
    assert cli["environment"]["DASK_SCHEDULER_ADDRESS"] == "tcp://scheduler:8786"


def test_the_image_installs_dependencies_before_copying_the_source_and_has_kimimaro():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
    deps = next(i for i, line in enumerate(dockerfile) if "DEPS_ONLY=1" in line and line.startswith("RUN"))
    copies = [i for i, line in enumerate(dockerfile) if line.startswith("COPY ")]
    source = [i for i in copies if any(part in dockerfile[i] for part in ("nisbflow ", "cli ", "configs "))]
    assert source and deps < min(source), "dependencies must be installed before the source is copied"
    before = [dockerfile[i] for i in copies if i < deps]
    assert all(("pyproject.toml" in line or "install.sh" in line) for line in before), before
    extras = re.search(r"EXTRAS=([\w,]+)", "\n".join(dockerfile)).group(1).split(",")
    assert "skeleton" in extras  # kimimaro, for nisbflow skeletonize


def test_install_script_deps_only_lists_what_pyproject_asks_for(tmp_path):
    import os
    import sys

    venv = Path(sys.executable).parent.parent  # the suite's own environment: everything is already installed
    environment = {**os.environ, "VENV": str(venv), "EXTRAS": "dev", "DEPS_ONLY": "1"}
    result = subprocess.run(["bash", str(ROOT / "deploy" / "install.sh")], env=environment, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    listed = (venv / "requirements-deps.txt").read_text().splitlines()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert listed == project["dependencies"] + project["optional-dependencies"]["dev"]


@pytest.fixture(scope="module")
def docker_compose():
    """Debian's docker-compose (1.29, the Compose Specification without a version key), installed where missing."""
    import os
    import shutil

    if shutil.which("docker-compose") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("docker-compose is not installed and cannot be (needs root and apt-get)")
        installed = subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                                   "--no-install-recommends docker-compose", shell=True, capture_output=True,
                                   text=True, timeout=900)
        if installed.returncode != 0 or shutil.which("docker-compose") is None:
            pytest.skip(f"apt-get install docker-compose failed: {installed.stderr.strip()[-200:]}")
    return shutil.which("docker-compose")


def test_compose_file_validates_with_docker_compose_and_limits_worker_memory(docker_compose):
    import os

    def rendered(**environment):
        result = subprocess.run([docker_compose, "-f", str(ROOT / "docker-compose.yml"), "config"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, **environment})
        assert result.returncode == 0, result.stderr
        return yaml.safe_load(result.stdout)["services"]

    for memory, environment in (("32GiB", {}), ("8GiB", {"NISBFLOW_WORKER_MEMORY": "8GiB"})):
        services = rendered(**environment)
        workers = [s for name, s in services.items() if name.startswith("worker")]
        assert workers
        for worker in workers:  # not 'auto': every worker of the host would size itself to the whole host
            command = worker["command"]
            assert command[command.index("--memory-limit") + 1] == memory
    assert {"scheduler", "jupyter", "nisbflow"} <= set(services)


def _ignored(path: str, patterns: list[str]) -> bool:
    import fnmatch

    parts = path.split("/")
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(parts[0], p) or
               (p.startswith("**/") and any(fnmatch.fnmatch(part, p[3:]) for part in parts)) for p in patterns)


def test_the_build_context_leaves_out_the_venv_and_keeps_what_the_image_installs():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for heavy in (".venv", ".git", "outputs", "data"):
        assert _ignored(heavy, patterns), heavy
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = [source for line in dockerfile.splitlines() if line.startswith("COPY ")
              for source in line.split()[1:-1]]
    for source in copied:
        assert not _ignored(source, patterns), f"{source} is copied but .dockerignore leaves it out"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # every package folder, the readme and the shipped model (package data) reach the image
    for folder in project["tool"]["setuptools"]["package-dir"].values():
        assert folder in copied, folder
    assert project["project"]["readme"] in copied
    for data in project["tool"]["setuptools"]["package-data"]["nisbflow.model"]:
        assert not _ignored(f"nisbflow/model/{data}", patterns)
        assert list((ROOT / "nisbflow" / "model").glob(data)), data
    # Ubuntu 24.04's python3 is 3.12
    assert "ubuntu24.04" in dockerfile
    minimum = tuple(int(p) for p in project["project"]["requires-python"].lstrip(">=").split("."))
    assert minimum <= (3, 12)
    # the working folder resolves the shipped configurations as a checkout does
    work = dockerfile.index("WORKDIR /work")
    assert dockerfile.index("ln -s /opt/nisbflow/configs /work/configs") > work
