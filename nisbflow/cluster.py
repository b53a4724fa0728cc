"""The one place nisbflow creates Dask clusters, for every command.

``cluster`` names what to run on:

- ``local``: a ``distributed.LocalCluster`` on this machine (workers, threads and memory limit settable);
- ``dask-cuda``: a ``dask_cuda.LocalCUDACluster``, one worker per visible GPU;
- ``tcp://host:8786`` (or ``tls://``, ``ucx://``): an already running scheduler;
- ``slurm``: a ``dask_jobqueue.SLURMCluster`` from ``system.slurm`` in the configuration;
- ``sync``: no cluster, Dask's single-threaded scheduler, for debugging with pdb.

dask-cuda and dask-jobqueue are imported only when asked for.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import dask

from nisbflow.errors import ConfigError

WORKER_SETUP = "nisbflow.worker_setup"
"""Preload module of local worker processes: they ignore SIGINT, which the client handles."""

SCHEDULER_TIMEOUT = "10s"
"""How long to try reaching a remote scheduler before giving up with a clear error."""

CLUSTER_KINDS = ("local", "dask-cuda", "slurm", "sync")
ADDRESS_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://")


def check_cluster(cluster: str) -> str:
    """Return ``cluster`` if it names a cluster kind or a scheduler address, else raise :class:`ConfigError`."""
    if cluster in CLUSTER_KINDS or cluster.startswith(ADDRESS_SCHEMES):
        return cluster
    raise ConfigError(
        f"system.cluster / --cluster: expected one of {', '.join(CLUSTER_KINDS)} or a scheduler "
        f"address such as tcp://host:8786, got {cluster!r}"
    )


def _import(module: str, extra: str, kind: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as error:
        raise ConfigError(
            f"--cluster {kind} needs {module.replace('_', '-')}: pip install 'nisbflow[{extra}]'"
        ) from error


def visible_gpus() -> tuple[int, str]:
    """NVIDIA GPUs this process can use and how that was found: NVML (``pynvml``, which dask-cuda itself asks)
    where it is installed, else torch. ``CUDA_VISIBLE_DEVICES`` is honoured as dask-cuda honours it."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    listed = None if hidden is None else [d for d in hidden.split(",") if d.strip()]
    if listed is not None and not listed:
        return 0, "CUDA_VISIBLE_DEVICES is empty"
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            count = int(pynvml.nvmlDeviceGetCount())
        except Exception as error:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no usable driver here
            return 0, f"NVML: {str(error) or type(error).__name__}"
        if listed is not None:
            count = min(count, len(listed))
        return count, "NVML"
    import torch

    if torch.version.cuda is None:
        return 0, f"torch {torch.__version__} is a CPU build and NVML (pynvml) is not installed"
    return int(torch.cuda.device_count()), "torch.cuda"


def check_gpus_visible() -> int:
    """The number of visible GPUs for ``--cluster dask-cuda``; raise :class:`ConfigError` in one line when there are
    none (dask-cuda itself would end in a long NVML traceback), before any cluster starts."""
    count, how = visible_gpus()
    if count < 1:
        raise ConfigError(
            f"--cluster dask-cuda: no NVIDIA GPU is visible on this machine ({how}); use --cluster "
            "local on CPUs, or run on a GPU node (nvidia-smi lists its GPUs)"
        )
    return count


TRIM_BELOW_BYTES = 2 * 2**30
"""Workers with a memory limit below this keep distributed's ``MALLOC_TRIM_THRESHOLD_`` (see
:func:`_allocator_environment`)."""


def _allocator_environment(memory_limit="auto") -> dict:
    """Dask configuration for local workers: leave glibc's ``MALLOC_TRIM_THRESHOLD_`` unset, unless memory is tight.

    distributed sets it (64 KiB) so freed memory goes back to the OS at once. Setting it also turns off glibc's
    adaptive mmap threshold, so every array above 128 KiB is mapped and faulted in afresh; nisbflow's block tasks
    allocate and free tens of 10 MB arrays each, and ran about 1.3× slower per block that way (measured on a
    128³ decoding block). Unset, freed blocks are reused and a worker's resident memory stays at its block working
    set.

    Below :data:`TRIM_BELOW_BYTES` per worker the trimming stays on: a worker with torch loaded holds about 0.45 GiB
    before any block, glibc's retained arenas add a few hundred MB, and a 1 GiB worker then sits above Dask's 80 %
    pause threshold with nothing it could spill, so it pauses and never resumes (seen with inference on 2 × 1 GiB
    workers: 7 blocks, then a stall; with trimming the same run finished, docs/BENCHMARKS.md). A value the user
    exports in the environment still wins.
    """
    if "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return {}
    if memory_limit not in (None, "auto", 0):
        from dask.utils import parse_bytes

        limit = parse_bytes(memory_limit) if isinstance(memory_limit, str) else int(memory_limit)
        if 0 < limit < TRIM_BELOW_BYTES:
            return {}
    return {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def _worker_preload() -> dict:
    """Dask configuration adding :data:`WORKER_SETUP` to the worker preloads (nannies read it when created and keep
    it for restarted workers), after any the user configured."""
    existing = list(dask.config.get("distributed.worker.preload", []) or [])
    return {"distributed.worker.preload": existing + ([WORKER_SETUP] if WORKER_SETUP not in existing else [])}


@contextlib.contextmanager
def cluster_client(
    cluster: str = "local",
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str = "auto",
    slurm=None,
    processes: bool = True,
    dashboard_address: str = "127.0.0.1:0",
    tasks_per_gpu: int = 1,
) -> Iterator:
    """Start (or connect to) a Dask cluster and yield its ``distributed.Client``; ``sync`` yields None.

    ``n_workers``: local workers (default: one per core) or SLURM jobs (default ``slurm.jobs``);
    ``memory_limit``: per local worker, e.g. ``"1.5GiB"``; ``slurm``: a :class:`~nisbflow.config.schema.SlurmConfig`;
    ``tasks_per_gpu``: the ``GPU`` resource each dask-cuda worker declares (prediction tasks ask for 1 each);
    ``dashboard_address``: where the dashboard of a cluster started here listens (default: this machine only).
    Everything started here is closed when the block ends; a remote scheduler is only disconnected from.
    """
    check_cluster(cluster)
    if cluster == "sync":
        with dask.config.set(scheduler="synchronous"):
            yield None
        return
    from distributed import Client

    if cluster.startswith(ADDRESS_SCHEMES):
        client = _connect(cluster)
        with _one_line_client_logs(), client:
            yield client
        return
    made = _start_cluster(
        cluster, n_workers, threads_per_worker, memory_limit, slurm, processes, dashboard_address, tasks_per_gpu
    )
    finished = False
    try:
        with _one_line_client_logs(), made, Client(made) as client:
            try:
                yield client
                finished = True
            finally:
                _quiet_closing()
    except TimeoutError as error:
        if not finished:
            raise
        # the work is done and written; a worker slow to exit (seen with torch.compile's compile processes on a
        # dask-cuda worker) must not turn a finished command into a failed one
        print(
            f"warning: the Dask cluster did not close in time ({type(error).__name__}); the command's work had "
            "finished and its output is complete",
            file=sys.stderr,
        )


def _connect(address: str):
    """A client of the Dask scheduler at ``address``, or one :class:`ConfigError` saying why there is none."""
    from distributed import Client

    try:
        return Client(address, timeout=SCHEDULER_TIMEOUT)
    except (OSError, TimeoutError) as error:
        raise ConfigError(
            f"--cluster {address}: cannot reach a Dask scheduler there within "
            f"{SCHEDULER_TIMEOUT} ({type(error).__name__}); is `dask scheduler` running and the "
            "address right?"
        ) from None
    except (TypeError, ValueError) as error:  # tls:// without certificates: distributed finds no SSL context
        if not address.startswith("tls://"):
            raise
        raise ConfigError(
            f"--cluster {address}: cannot reach a Dask scheduler there without TLS certificates: "
            "set distributed.comm.tls.ca-file, .client.cert and .client.key in Dask's "
            "configuration (e.g. DASK_DISTRIBUTED__COMM__TLS__CA_FILE=ca.pem; docs/cluster.md)"
        ) from error


def _start_cluster(
    cluster: str,
    n_workers,
    threads_per_worker: int,
    memory_limit: str,
    slurm,
    processes: bool,
    dashboard_address: str,
    tasks_per_gpu: int,
):
    """A cluster started here: ``local`` (a LocalCluster), ``dask-cuda`` (one worker per GPU) or ``slurm`` (worker
    jobs through dask-jobqueue); see :func:`cluster_client` for the arguments."""
    if cluster == "local":
        from distributed import LocalCluster

        with dask.config.set({**_allocator_environment(memory_limit), **(_worker_preload() if processes else {})}):
            return LocalCluster(
                n_workers=n_workers or os.cpu_count(),
                threads_per_worker=threads_per_worker,
                memory_limit=memory_limit,
                processes=processes,
                dashboard_address=dashboard_address,
            )
    if cluster == "dask-cuda":
        check_gpus_visible()
        dask_cuda = _import("dask_cuda", "gpu", cluster)
        with dask.config.set({**_allocator_environment(memory_limit), **_worker_preload()}):
            # one worker per GPU, each declaring a GPU resource: prediction tasks ask for one unit of it
            # (``tasks_per_gpu`` blocks per GPU at once) and a few threads, so image reads and zarr writes overlap
            # with the GPU's prediction
            return dask_cuda.LocalCUDACluster(
                memory_limit=memory_limit,
                dashboard_address=dashboard_address,
                resources={"GPU": tasks_per_gpu},
                threads_per_worker=max(threads_per_worker, 3 + tasks_per_gpu),
            )
    from nisbflow.slurm import import_jobqueue, resolve_slurm_job

    dask_jobqueue = import_jobqueue()
    if slurm is None:
        from nisbflow.config.schema import SlurmConfig

        slurm = SlurmConfig()
    job = resolve_slurm_job(slurm, tasks_per_gpu)
    made = dask_jobqueue.SLURMCluster(**job.job_kwargs(), scheduler_options={"dashboard_address": dashboard_address})
    made.scale(jobs=n_workers or slurm.jobs)
    return made


class _OneLine:
    """A logging filter: ``distributed.client``'s records without their tracebacks, and none without a message
    (when the scheduler goes away the client logs the refused reconnections as bare tracebacks; the command then
    says in one line what was lost and how to resume)."""

    @staticmethod
    def filter(record) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return bool(str(record.getMessage()).strip())


class _ClosedTab:
    """A logging filter: drops what the dashboard's web server logs when a browser tab closes while an update is
    being pushed to it (tornado's ``WebSocketClosedError`` / ``StreamClosedError``, bokeh's "Failed sending message
    as connection was closed"): a closed tab is not a fault of the command."""

    CLOSED = ("WebSocketClosedError", "StreamClosedError")

    @classmethod
    def filter(cls, record) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and type(error).__name__ in cls.CLOSED:
            return False
        return "connection was closed" not in str(record.msg)


@contextlib.contextmanager
def _one_line_client_logs() -> Iterator[None]:
    """Keep ``distributed.client``'s log records to one line while a command holds its client, and the dashboard
    quiet about closed browser tabs."""
    import logging

    filters = [(logging.getLogger("distributed.client"), _OneLine)] + [
        (logging.getLogger(name), _ClosedTab)
        for name in ("tornado.application", "tornado.general", "bokeh.server.views.ws", "bokeh.server.protocol_handler")
    ]
    for logger, kind in filters:
        logger.addFilter(kind)
    try:
        yield
    finally:
        for logger, kind in filters:
            logger.removeFilter(kind)


def _quiet_closing() -> None:
    """While a cluster nisbflow started closes: its nannies warn "Worker process still alive after 4.0 seconds,
    killing" for workers that take a moment to exit (torch's threads, zarr's event loop); the work is done and
    written by then, so only errors are shown."""
    import logging

    for name in ("distributed.nanny", "distributed.process"):
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.level, logging.ERROR))


def cluster_device(client=None) -> str | None:
    """``"cuda"`` when every worker of the (current) Dask client declares a ``GPU`` resource — dask-cuda workers
    started by nisbflow, SLURM jobs with a GPU (:mod:`nisbflow.slurm`), docker-compose or ``dask cuda worker
    --resources GPU=1`` — else None (each worker then picks CUDA if it sees a GPU, the CPU otherwise, and prediction
    tasks carry no resource restriction).

    A cluster with no worker yet (SLURM jobs still queued or starting) is waited on until its first worker joins: the
    answer is never read off an empty cluster."""
    if client is None:
        from nisbflow.tasks import current_client

        client = current_client()
    if client is None:
        return None
    workers = list(client.scheduler_info().get("workers", {}).values())
    if not workers:
        client.wait_for_workers(1)
        workers = list(client.scheduler_info().get("workers", {}).values())
    if workers and all((w.get("resources") or {}).get("GPU") for w in workers):
        return "cuda"
    return None


def dashboard_link(client, dashboard_address: str | None = None) -> str | None:
    """The dashboard's address as a browser should open it: the client's link, with the host the dashboard was bound
    to when ``dashboard_address`` names one (distributed builds the link from the scheduler's host, which is not
    where a dashboard bound to 127.0.0.1 answers)."""
    link = getattr(client, "dashboard_link", None)
    if not link or not dashboard_address or ":" not in dashboard_address:
        return link
    host = dashboard_address.rsplit(":", 1)[0]
    if host in ("", "0.0.0.0", "::", "[::]"):
        return link
    scheme, rest = link.split("://", 1)
    port_and_path = rest.split(":", 1)[1] if ":" in rest else rest
    return f"{scheme}://{host}:{port_and_path}"


def chosen_cluster(cluster: str | None, config) -> str:
    """What to run on: ``cluster`` when given (``--cluster``), else ``DASK_SCHEDULER_ADDRESS`` when it is set (the
    scheduler Dask's own ``Client()`` would connect to, e.g. inside the compose stack), else ``system.cluster``."""
    return cluster or os.environ.get("DASK_SCHEDULER_ADDRESS") or config.system.cluster


def cluster_from_config(config, cluster: str | None = None, **overrides):
    """:func:`cluster_client` with ``system.*`` settings from a configuration, overridden by keyword arguments; the
    cluster itself from :func:`chosen_cluster`."""
    system = config.system
    options = dict(
        n_workers=system.num_workers if system.num_workers > 0 else None,
        threads_per_worker=system.threads_per_worker,
        memory_limit=system.memory_limit,
        slurm=system.slurm,
        dashboard_address=system.dashboard_address,
        tasks_per_gpu=system.tasks_per_gpu,
    )
    options.update({k: v for k, v in overrides.items() if v is not None})
    return cluster_client(chosen_cluster(cluster, config), **options)
