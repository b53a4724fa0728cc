"""Running Dask tasks: a list of tasks on the current distributed client (or locally) with a Rich progress bar, the
first failure ending the computation, interrupts (Ctrl-C, SIGTERM) letting in-flight block writes finish, and a lost
scheduler or workers stalled over memory reported in one line."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import deque
from typing import NamedTuple
from collections.abc import Callable, Sequence

import dask
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from nisbflow.errors import NisbflowError


class _Rate(ProgressColumn):
    """``12.3 windows/s`` for a bar that names its ``unit`` (Rich's speed estimate over the last 30 s)."""

    def render(self, task) -> Text:
        unit = task.fields.get("unit")
        return Text(f"{task.speed:.1f} {unit}/s" if unit and task.speed else "")


def progress_bar(enabled: bool = True) -> Progress:
    """nisbflow's Rich progress bar (description, bar, done/total, elapsed, remaining, and the rate of bars that
    count a ``unit``); disabled when not enabled."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        _Rate(),
        disable=not enabled,
        transient=False,
    )


# ----------------------------------------------------------------------------------------------------------------
# work counted inside tasks (windows predicted): the terminal's bar, and a counter on the Dask dashboard


class Counter(NamedTuple):
    """Work counted inside tasks, shown as a second bar: tasks call :func:`count_done` with ``topic``;
    ``total`` units of ``unit`` make the whole run."""

    topic: str
    description: str
    total: int
    unit: str


_LISTENERS: dict[str, Callable[[int], None]] = {}
"""Counters of computations running in this process without a distributed client (threaded or synchronous
scheduler): tasks in this process report to them directly."""

RATE_SECONDS = 30.0


class _WorkerCount:
    """What this process's tasks counted (all topics together), with the rate over the last :data:`RATE_SECONDS`;
    a Dask worker shows both on the dashboard's Workers page (``windows_predicted``, ``windows_per_s``)."""

    def __init__(self):
        self.done, self.recent, self.lock = 0, deque(), threading.Lock()

    def add(self, n: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.done += n
            self.recent.append((now, n))
            while self.recent and now - self.recent[0][0] > RATE_SECONDS:
                self.recent.popleft()

    def rate(self) -> float:
        now = time.monotonic()
        with self.lock:
            recent = [(t, n) for t, n in self.recent if now - t <= RATE_SECONDS]
        if not recent:
            return 0.0
        return round(sum(n for _, n in recent) / max(now - recent[0][0], 1.0), 2)


WORKER_COUNT = _WorkerCount()


def count_done(topic: str | None, n: int) -> None:
    """Inside a task: ``n`` more units of the computation ``topic`` are done. Reaches the computation's bar (a local
    listener, else a distributed event the client subscribed to) and, on a Dask worker, its dashboard counter."""
    if topic is None or n <= 0:
        return
    listener = _LISTENERS.get(topic)
    if listener is not None:
        listener(n)
        return
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    WORKER_COUNT.add(n)
    worker.metrics.setdefault("windows_predicted", lambda w: WORKER_COUNT.done)
    worker.metrics.setdefault("windows_per_s", lambda w: WORKER_COUNT.rate())
    worker.log_event(topic, int(n))


def current_client():
    """The active ``distributed.Client`` if one is set up in this process, else None."""
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


class WorkerDiedError(NisbflowError):
    """Dask gave up on a task after the workers running it died (``distributed.KilledWorker``)."""


def killed_worker_message(error, description: str) -> str:
    """One line for a ``KilledWorker``: which task, how often, and the memory limit of the last worker that died
    running it (dying over the memory limit is the usual cause)."""
    from dask.utils import format_bytes

    worker = getattr(error, "last_worker", None)
    limit = getattr(worker, "memory_limit", None)
    address = getattr(worker, "address", "?")
    key = getattr(error, "task", "?")
    name = key[0] if isinstance(key, tuple) else str(key)
    limit_text = f"memory limit {format_bytes(limit)}" if limit else "no memory limit"
    failures = getattr(error, "allowed_failures", None)
    times = f"{failures + 1} times" if isinstance(failures, int) else "repeatedly"
    return (
        f"{description}: Dask workers died {times} running task "
        f"{name} (last on {address}, {limit_text}); a worker that dies inside a task was usually killed for "
        "going over its memory: give workers more memory (--memory-limit, system.memory_limit) or make blocks "
        "smaller (--chunks; for infer also inference.sw_batch_size); finished blocks are kept: re-run to resume"
    )


def worker_memory_limit(client, address: str) -> str:
    """ "memory limit 300.00 MiB" for the worker at ``address`` from the scheduler, or, once it is gone (died and
    restarted under another address), the largest limit of the workers there are."""
    from dask.utils import format_bytes

    try:
        workers = client.scheduler_info()["workers"]
        limit = (workers.get(address) or {}).get("memory_limit") or max(
            (w.get("memory_limit") or 0 for w in workers.values()), default=0
        )
    except Exception:
        limit = None
    if not limit:  # none left to ask: the limit the cluster starts its workers with (a LocalCluster's spec)
        from dask.utils import parse_bytes

        specs = getattr(getattr(client, "cluster", None), "worker_spec", None) or {}
        given = [spec.get("options", {}).get("memory_limit") for spec in specs.values()]
        try:
            limit = max((parse_bytes(g) if isinstance(g, str) else int(g or 0) for g in given), default=0)
        except (TypeError, ValueError):  # "auto"
            limit = None
    return f"memory limit {format_bytes(limit)}" if limit else "no memory limit known"


DRAIN_SECONDS = 5.0
"""How long an interrupted computation waits for tasks already running on workers (their writes) to end."""

INTERRUPTED = threading.Event()
"""Set by the command line's SIGINT/SIGTERM handler (:func:`interrupt_requested`). A ``KeyboardInterrupt`` raised
while the main thread runs a finalizer (a future's ``__del__``, a weakref callback) is printed and dropped by
Python; :func:`compute_tasks` checks this flag between finished tasks, so such an interrupt still stops the run."""


def interrupt_requested(signum=None, frame=None):
    """Signal handler for commands: remember the interrupt, silence the cluster's shutdown logs at once
    (:func:`quiet_shutdown_logs`: distributed's event loop may log a traceback for a call the interrupt cut short before
    the command reaches its own handling), then raise ``KeyboardInterrupt`` as Python's own does."""
    INTERRUPTED.set()
    quiet_shutdown_logs()
    raise KeyboardInterrupt


def _executing(dask_worker) -> int:
    """Tasks executing on one worker (run through ``Client.run``, outside the worker's task threads)."""
    state = getattr(dask_worker, "state", dask_worker)
    return int(getattr(state, "executing_count", len(getattr(state, "executing", ()))))


def quiet_shutdown_logs() -> None:
    """After an interrupt, silence what Dask and Tornado log while a cluster is torn down mid-computation (closed
    comms, cancelled handlers, with their tracebacks): expected then, and noise around the one line that matters."""
    import logging

    for name in ("distributed", "tornado", "asyncio", "bokeh"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def stop_and_drain(client, futures, timeout: float = DRAIN_SECONDS, quiet: bool = True) -> bool:
    """After an interrupt: release ``futures`` (nothing new starts), then wait up to ``timeout`` seconds for tasks
    already executing on the workers to finish, so a block is either written with its marker or not at all.
    Returns whether the workers went idle in time. Called with SIGINT/SIGTERM already received: it must not hang.
    ``quiet``: silence Dask's shutdown logs for the rest of the process (after an interrupt; not after a failed task,
    where a notebook goes on using its client)."""
    if quiet:
        quiet_shutdown_logs()
    try:  # releasing (not Client.cancel, whose recursion over dependents trips an assertion in the scheduler)
        for future in futures:
            future.release()
    except Exception:
        return False
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as Timeout

    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(1) as pool:  # a worker busy holding its GIL must not hold the client past the deadline
        while time.monotonic() < deadline:
            asked = pool.submit(client.run, _executing, on_error="ignore")
            try:
                if not any(asked.result(timeout=max(0.0, deadline - time.monotonic())).values()):
                    return True
            except Timeout:
                pool.shutdown(wait=False, cancel_futures=True)
                return False
            except Exception:
                return False
            time.sleep(0.1)
    return False


STALLED_SECONDS = float(os.environ.get("NISBFLOW_STALLED_SECONDS", 90))
"""How long every worker may stay paused over memory with no task finishing
before a computation is ended with :class:`WorkerDiedError` instead of waiting for ever; the environment variable
``NISBFLOW_STALLED_SECONDS`` changes it."""


class MemoryStall:
    """Watches a running computation for the stall Dask cannot end by itself: every worker paused because its
    process memory is above ``distributed.worker.memory.pause`` of its limit (a paused worker starts no task, and a
    worker whose memory is held by Python, numba or torch with nothing to spill never resumes).
    :meth:`check` raises :class:`WorkerDiedError` once that has lasted :data:`STALLED_SECONDS` with no task done."""

    POLL_SECONDS = 2.0

    def __init__(self, client, description: str, seconds: float | None = None):
        self.client, self.description = client, description
        self.seconds = STALLED_SECONDS if seconds is None else seconds
        self.since: float | None = None
        self.polled = 0.0

    def progressed(self) -> None:
        self.since = None

    def check(self) -> None:
        now = time.monotonic()
        if now - self.polled < self.POLL_SECONDS:
            return
        self.polled = now
        try:
            workers = list(self.client.scheduler_info().get("workers", {}).values())
        except Exception:
            return
        # no worker at all is not a stall of this kind: SLURM jobs may wait in the queue for hours
        stuck = bool(workers) and all(w.get("status") == "paused" for w in workers)
        if not stuck:
            self.since = None
            return
        if self.since is None:
            self.since = now
        elif now - self.since >= self.seconds:
            raise WorkerDiedError(stalled_message(workers, self.description, now - self.since))


def stalled_message(workers: list[dict], description: str, seconds: float) -> str:
    """One line for a stall: the workers' memory against their limit, and what to change."""
    from dask.utils import format_bytes

    used = sorted(int((w.get("metrics") or {}).get("memory") or 0) for w in workers)
    limit = max(int(w.get("memory_limit") or 0) for w in workers)
    pause = dask.config.get("distributed.worker.memory.pause", 0.8)
    share = f"{pause:.0%} of " if isinstance(pause, float) else ""
    who = "the Dask worker" if len(workers) == 1 else f"all {len(workers)} Dask workers"
    memory = format_bytes(used[0]) + ("" if used[0] == used[-1] else f"–{format_bytes(used[-1])}")
    return (
        f"{description}: {who} paused for {seconds:.0f} s, over {share}the {format_bytes(limit)} memory limit "
        f"(process memory {memory}), "
        "so no task can start; give workers more memory (--memory-limit, system.memory_limit) or fewer, larger "
        "workers, or make blocks smaller (--chunks; for infer also inference.sw_batch_size); finished blocks "
        "are kept: re-run to resume"
    )


def lost_scheduler(error: BaseException, client) -> bool:
    """Whether ``error`` means the client lost its scheduler (stopped, killed, network gone), not a task failure."""
    from concurrent.futures import CancelledError

    if type(error).__name__ in ("ClosedClientError", "FutureCancelledError", "CommClosedError"):
        return True
    return isinstance(error, (CancelledError, OSError, TimeoutError)) and client.status != "running"


def lost_scheduler_message(client, description: str) -> str:
    """One line for a lost scheduler: which one, and that a re-run resumes."""
    address = getattr(client, "_start_arg", None)
    where = f" at {address}" if isinstance(address, str) else ""
    return (
        f"{description}: lost the Dask scheduler{where} (it stopped or the network failed); finished blocks "
        "are kept: re-run the same command once the scheduler is back to resume"
    )


def compute_tasks(
    tasks: Sequence,
    description: str,
    *,
    progress: bool = True,
    num_workers: int | None = None,
    track: Sequence | None = None,
    counter: Counter | None = None,
) -> list:
    """Compute ``tasks`` (dask delayed objects) and return their results in order.

    On a distributed client the tasks run there and the bar follows finished futures; otherwise they run on the
    local threaded scheduler (numba kernels release the GIL) with ``num_workers`` threads. ``track``: other delayed
    objects of the same graph whose completion moves the bar (e.g. one per block when ``tasks`` is the single root
    of a reduction); their results are not returned. ``counter``: work counted inside the tasks
    (:func:`count_done`), shown as a second bar with its rate and time remaining.
    """
    tasks = list(tasks)
    tracked = tasks if track is None else list(track)
    client = current_client()
    with progress_bar(progress) as bar, _counting(bar, counter, client):
        task = bar.add_task(description, total=len(tracked))
        if client is not None:
            from distributed import as_completed

            futures = []
            try:
                futures = client.compute(tasks if track is None else tasks + tracked)
                results = futures[: len(tasks)]
                stall = MemoryStall(client, description)
                finished = as_completed(futures if track is None else futures[len(tasks) :])
                while not finished.is_empty():
                    if INTERRUPTED.is_set():  # an interrupt whose KeyboardInterrupt a finalizer swallowed
                        raise KeyboardInterrupt
                    done = finished.next_batch(block=False)
                    if not done:
                        stall.check()
                        time.sleep(0.05)
                        continue
                    stall.progressed()
                    bar.advance(task, len(done))
                    for future in done:
                        if future.status == "error":  # fail at once, not after every other block has run
                            failure = future.exception()
                            stop_and_drain(client, futures, quiet=False)
                            raise failure
                return client.gather(results)
            except KeyboardInterrupt:
                bar.stop()
                stop_and_drain(client, futures)
                raise
            except WorkerDiedError:
                stop_and_drain(client, futures, quiet=False)
                raise
            except Exception as error:
                if type(error).__name__ == "KilledWorker":
                    raise WorkerDiedError(killed_worker_message(error, description)) from None
                if lost_scheduler(error, client):
                    raise WorkerDiedError(lost_scheduler_message(client, description)) from None
                raise

        from dask.callbacks import Callback

        keys = {t.key for t in tracked}

        class _Advance(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if key in keys:
                    bar.advance(task)

        scheduler = dask.config.get("scheduler", None)
        if scheduler not in ("sync", "synchronous", "single-threaded"):
            scheduler = "threads"
        with _Advance():
            return list(dask.compute(*tasks, scheduler=scheduler, num_workers=num_workers))


class _counting:
    """Context: ``counter``'s bar on ``bar``, advanced by a local listener or by the client's subscription to its
    topic, and set to its total when the computation succeeds."""

    def __init__(self, bar, counter: Counter | None, client):
        self.bar, self.counter, self.client = bar, counter, client

    def __enter__(self):
        if self.counter is None:
            return self
        topic = self.counter.topic
        self.task = self.bar.add_task(self.counter.description, total=self.counter.total, unit=self.counter.unit)
        advance = functools.partial(self.bar.advance, self.task)
        if self.client is None:
            _LISTENERS[topic] = advance
        else:
            self.client.subscribe_topic(topic, lambda event: advance(event[1]))
        return self

    def __exit__(self, kind, error, traceback):
        if self.counter is None:
            return False
        if self.client is None:
            _LISTENERS.pop(self.counter.topic, None)
        else:
            try:
                self.client.unsubscribe_topic(self.counter.topic)
            except Exception:  # a client already closed (lost scheduler): nothing left to unsubscribe from
                pass
        if kind is None:
            self.bar.update(self.task, completed=self.counter.total)
        return False


def _host_memory() -> dict:
    """Run on a worker: this host's total memory and the worker's memory limit and threads."""
    import psutil

    return {"total": int(psutil.virtual_memory().total)}


def memory_per_task(client=None, threads: int | None = None) -> tuple[int, str]:
    """Bytes one task may use, and where that limit comes from: the smallest worker memory limit divided
    by its threads (on a client; a worker without a limit: its host's memory shared by the host's workers), else this
    machine's memory divided by ``threads`` (the local threaded scheduler)."""
    import psutil

    if client is None:
        share = max(int(threads or 1), 1)
        return int(psutil.virtual_memory().total) // share, f"this machine ({share} thread(s))"
    workers = client.scheduler_info().get("workers", {})
    if not workers:
        return int(psutil.virtual_memory().total), "this machine"
    unlimited = [address for address, w in workers.items() if not w.get("memory_limit")]
    totals = client.run(_host_memory, workers=unlimited) if unlimited else {}
    per_host: dict[str, int] = {}
    for w in workers.values():
        per_host[w.get("host")] = per_host.get(w.get("host"), 0) + 1
    shares = []
    for address, w in workers.items():
        limit = w.get("memory_limit") or totals[address]["total"] // per_host[w.get("host")]
        shares.append((limit // max(int(w.get("nthreads") or 1), 1), address))
    smallest, address = min(shares)
    return smallest, f"worker {address}"
