"""What a ``--cluster slurm`` worker job asks SLURM for, resolved once, shown by ``nisbflow config show`` and used to
start the jobs.

Each setting comes from the first of: ``system.slurm`` in the nisbflow configuration; dask-jobqueue's own
configuration (``jobqueue.slurm.*``: ``~/.config/dask/``, ``$DASK_CONFIG``, e.g. ``deploy/slurm/jobqueue.yaml``);
nisbflow's fallback (:data:`FALLBACKS`). A value left at dask-jobqueue's packaged default counts as not set (its
30-minute walltime would end an inference job early).

GPUs: ``system.slurm.gpus`` (GPUs per job, 0 or 1; None: what the directives request). A job with a GPU carries
``--gres=gpu:1`` (unless a directive already asks for GPUs) and its Dask worker declares the ``GPU`` resource
(``--resources GPU=<system.tasks_per_gpu>``), so prediction tasks, which ask for one unit each, run one block per GPU
at a time; a job without a GPU carries neither, so no worker claims a GPU it does not have. One Dask worker runs per
job, on one GPU: more GPUs means more jobs (``--workers``), not more GPUs per job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from nisbflow.errors import ConfigError

FALLBACKS = {"cores": 8, "memory": "32GiB", "walltime": "04:00:00"}
"""nisbflow's values where neither the configuration nor dask-jobqueue's configuration sets one."""

SETTINGS = ("queue", "account", "cores", "memory", "walltime", "local_directory", "job_extra_directives")

_GPU_DIRECTIVE = re.compile(r"^(--gres=gpu(?::[\w.-]+)*|--gpus(?:-per-node|-per-task)?[= ]\S+|-G\s*\S+)$")
_GPU_RESOURCE = re.compile(r"^GPU=\d+$")


def _jobqueue_key(name: str) -> str:
    return name.replace("_", "-")


def _packaged_defaults() -> dict:
    """dask-jobqueue's own defaults for ``jobqueue.slurm`` (its packaged jobqueue.yaml)."""
    import os

    import yaml

    try:
        import dask_jobqueue
    except ImportError:
        return {}
    path = os.path.join(os.path.dirname(dask_jobqueue.__file__), "jobqueue.yaml")
    with open(path) as file:
        return (yaml.safe_load(file) or {}).get("jobqueue", {}).get("slurm", {})


def gpu_directives(directives) -> list[str]:
    """The directives among ``directives`` that request GPUs (``--gres=gpu…``, ``--gpus…``, ``-G``)."""
    return [d for d in directives if _GPU_DIRECTIVE.match(str(d).strip())]


@dataclass
class SlurmJobSettings:
    """One worker job's resources: the ``SLURMJob`` keyword arguments and, per setting, where its value came from."""

    values: dict
    sources: dict = field(default_factory=dict)
    gpus: int = 0

    def job_kwargs(self) -> dict:
        """Keyword arguments of ``dask_jobqueue.SLURMCluster`` / ``SLURMJob`` (one worker process per job)."""
        return {**self.values, "processes": 1}

    def describe(self) -> list[str]:
        """One line per setting, ``name: value  (source)``."""
        lines = [f"{name}: {self.values[name]!r}  ({self.sources[name]})" for name in SETTINGS]
        lines.append(f"gpus: {self.gpus}  ({self.sources['gpus']})")
        lines.append(f"worker_extra_args: {self.values['worker_extra_args']!r}  ({self.sources['worker_extra_args']})")
        return lines


def resolve_slurm_job(slurm, tasks_per_gpu: int = 1) -> SlurmJobSettings:
    """Resolve ``slurm`` (a :class:`~nisbflow.config.schema.SlurmConfig`) against dask-jobqueue's configuration;
    raise :class:`ConfigError` for more than one GPU per job."""
    import dask

    packaged = _packaged_defaults()
    values, sources = {}, {}
    for name in SETTINGS:
        given = getattr(slurm, name)
        key = f"jobqueue.slurm.{_jobqueue_key(name)}"
        configured = dask.config.get(key, None)
        if given is not None:
            values[name], sources[name] = given, f"system.slurm.{name}"
        elif configured is not None and configured != packaged.get(_jobqueue_key(name)):
            values[name], sources[name] = configured, f"Dask configuration {key}"
        elif name in FALLBACKS:
            values[name], sources[name] = FALLBACKS[name], "nisbflow default"
        else:
            values[name], sources[name] = ([] if name == "job_extra_directives" else None), "not set"
    values["job_extra_directives"] = [str(d) for d in values["job_extra_directives"]]
    extra_args = [str(a) for a in (dask.config.get("jobqueue.slurm.worker-extra-args", None) or [])]
    sources["worker_extra_args"] = "Dask configuration jobqueue.slurm.worker-extra-args" if extra_args else "not set"

    requested = gpu_directives(values["job_extra_directives"])
    if slurm.gpus is None:
        gpus, sources["gpus"] = _count_gpus(requested), f"the GPU directives ({sources['job_extra_directives']})"
    else:
        gpus, sources["gpus"] = int(slurm.gpus), "system.slurm.gpus"
    if gpus > 1:
        raise ConfigError(
            f"system.slurm: {gpus} GPUs per job, but nisbflow runs one Dask worker per SLURM job and it "
            "uses one GPU; ask for one GPU per job (system.slurm.gpus=1) and more jobs (--workers N)"
        )
    if gpus == 0:
        values["job_extra_directives"] = [d for d in values["job_extra_directives"] if d not in requested]
    elif not requested:
        values["job_extra_directives"].append(f"--gres=gpu:{gpus}")
    values["worker_extra_args"] = _with_gpu_resource(extra_args, tasks_per_gpu if gpus else 0)
    if values["worker_extra_args"] != extra_args:
        sources["worker_extra_args"] = (
            f"{sources['worker_extra_args']}, GPU resource from system.slurm.gpus={gpus}"
            f" and system.tasks_per_gpu={tasks_per_gpu}"
        )
    return SlurmJobSettings(values, sources, gpus)


def _count_gpus(directives: list[str]) -> int:
    if not directives:
        return 0
    last = re.split(r"[:= ]", directives[-1].replace("-G", "-G "))[-1]
    return int(last) if last.isdigit() else 1


def _with_gpu_resource(args: list[str], units: int) -> list[str]:
    """``args`` of ``dask worker`` with its ``GPU`` resource set to ``units`` (removed for 0); other resources kept."""
    kept, i = [], 0
    resources: list[str] = []
    while i < len(args):
        if args[i] == "--resources" and i + 1 < len(args):
            resources += args[i + 1].replace(",", " ").split()
            i += 2
            continue
        kept.append(args[i])
        i += 1
    resources = [r for r in resources if not _GPU_RESOURCE.match(r)] + ([f"GPU={units}"] if units else [])
    return kept + (["--resources", " ".join(resources)] if resources else [])


SCHEDULER_PLACEHOLDER = "tcp://SCHEDULER:8786"


def import_jobqueue():
    """``dask_jobqueue``, or :class:`ConfigError` naming the extra; this process's SIGINT handler is kept: dask-jobqueue
    replaces it on import (its runner module installs ``sys.exit()``), which turned Ctrl-C of a ``--cluster slurm``
    run into exit code 0 with no output and no message."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        import dask_jobqueue
    except ImportError as error:
        raise ConfigError("--cluster slurm needs dask-jobqueue: pip install 'nisbflow[slurm]'") from error
    finally:
        if main and handler is not None and signal.getsignal(signal.SIGINT) is not handler:
            signal.signal(signal.SIGINT, handler)
    return dask_jobqueue


def render_job_script(slurm, tasks_per_gpu: int = 1, scheduler: str = SCHEDULER_PLACEHOLDER) -> str:
    """The batch script one worker job would be submitted with (dask-jobqueue's own rendering), for ``scheduler``."""
    dask_jobqueue = import_jobqueue()
    settings = resolve_slurm_job(slurm, tasks_per_gpu)
    return dask_jobqueue.slurm.SLURMJob(
        scheduler=scheduler, name="nisbflow-worker", **settings.job_kwargs()
    ).job_script()
