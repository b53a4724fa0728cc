"""The entries of ``config show`` and ``train``."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nisbflow.config.tree import Overrides
from nisbflow.errors import ConfigError
from nisbflow.jobs.common import print_line, say_settings

if TYPE_CHECKING:  # report fields' types; the modules load where a command uses them
    pass


class ConfigRefused(ConfigError):
    """A PyTorch Connectomics file with refused keys; ``listing`` is the whole mapping ``config show`` prints
    before the one-line error."""

    def __init__(self, message: str, listing: str):
        super().__init__(message)
        self.listing = listing


def show_config(config: str | None = None, overrides=None, cluster: str | None = None, mode: str = "train") -> str:
    """``nisbflow config show``: the resolved configuration (defaults ← ``config`` ← ``overrides``) as YAML. A PyTorch
    Connectomics file is read for ``mode`` and the YAML starts with the mapping of each of its keys (set, matches,
    ignored, refused) as comments; refused keys raise :class:`ConfigRefused`. When the command would run on SLURM
    (``cluster`` or ``system.cluster`` is ``slurm``), YAML comments follow with each worker job setting, where it
    came from (``system.slurm``, dask-jobqueue's configuration, nisbflow's fallback) and the job script
    dask-jobqueue submits (:mod:`nisbflow.slurm`)."""
    from nisbflow.cluster import chosen_cluster
    from nisbflow.config import config_to_yaml, load_config
    from nisbflow.config.pytc import is_pytorch_connectomics, load_pytc

    header = ""
    if config is not None and is_pytorch_connectomics(config):
        pytc = load_pytc(config, mode, Overrides.of(overrides).texts or ())
        header = "".join(f"# {line}\n" for line in pytc.describe())
        try:
            pytc.check()
        except ConfigError as error:
            raise ConfigRefused(str(error), header) from None
    resolved = load_config(config, overrides or [], mode=mode)
    text = header + config_to_yaml(resolved)
    if chosen_cluster(cluster, resolved) != "slurm":
        return text
    from nisbflow.slurm import render_job_script, resolve_slurm_job

    system = resolved.system
    job = resolve_slurm_job(system.slurm, system.tasks_per_gpu)
    lines = ["", "# --cluster slurm: each worker job (system.slurm over dask-jobqueue's configuration)"]
    lines += [f"#   {line}" for line in job.describe()]
    lines += ["# its job script:"] + [
        f"#   {line}" if line else "#"
        for line in render_job_script(system.slurm, system.tasks_per_gpu).rstrip().splitlines()
    ]
    return text + "\n".join(lines) + "\n"


@dataclass
class TrainReport:
    """``nisbflow train``: the run folder, the steps trained to, and whether this process is rank 0 (the one that
    reports)."""

    run: Path
    steps: int
    rank0: bool = True


def train(*, config: str | None = None, run_dir: str | None = None, overrides=None, log=print_line) -> TrainReport:
    """``nisbflow train``: the affinity model trained with PyTorch DDP (:func:`nisbflow.train.loop.train`).

    With ``system.num_gpus`` above 1 (or -1 on a machine with several GPUs) and outside torchrun, this process is
    replaced by ``torchrun --standalone --nproc_per_node=<GPUs> -m nisbflow_cli.main train …`` with the same
    configuration and a fixed ``--run-dir``, one process per GPU (the function does not return then). Rank 0 says
    the settings first."""
    import os
    import sys

    import torch

    from nisbflow.settings import resolve_settings
    from nisbflow.train.loop import train as run_training

    resolved = resolve_settings(None, config=config, overrides=overrides or [], mode="train")
    configuration = resolved.config
    present, wanted = torch.cuda.device_count(), configuration.system.num_gpus
    if wanted > present:  # PyTorch Connectomics (Lightning) fails too when asked for GPUs it cannot find
        raise ConfigError(
            f"system.num_gpus={wanted}, but this machine has {present} GPU(s) that torch can use "
            "(torch.cuda.device_count()): set system.num_gpus=0 to train on the CPU, or -1 for every "
            "GPU there is"
        )
    gpus = present if wanted < 0 else wanted
    if gpus == 0 and configuration.optimization.precision in ("16-mixed", "bf16-mixed"):
        log(
            f"optimization.precision {configuration.optimization.precision}: mixed precision needs a GPU, and this "
            "run trains on the CPU: in float32 (set optimization.precision=32 to say so)"
        )
    if gpus > 1 and "WORLD_SIZE" not in os.environ:  # pragma: no cover - needs several GPUs
        folder = run_dir or f"{configuration.save_path}/{datetime.datetime.now():%Y%m%d-%H%M%S}"
        arguments = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={gpus}",
            "-m",
            "nisbflow_cli.main",
            "train",
            "--run-dir",
            folder,
        ]
        arguments += (["--config", config] if config else []) + Overrides.of(overrides).arguments()
        os.execv(sys.executable, arguments)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        say_settings(resolved, "train", log)
    run, _ = run_training(configuration, run_dir=run_dir)
    return TrainReport(Path(run), configuration.optimization.max_steps, rank0)
