"""Preloaded into the worker processes of the local clusters nisbflow starts (``LocalCluster(preload=...)``).

A Ctrl-C in a terminal reaches every process of the foreground group. The client handles it (stops submitting,
lets running block writes end, exits 130 with one line); worker processes ignore it, so they neither print their
own ``KeyboardInterrupt`` tracebacks nor die half-way through a block write. They stop when the client closes the
cluster, as always.
"""

from __future__ import annotations

import signal
import sys
import threading


def dask_setup(worker) -> None:  # distributed's preload hook
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def dask_teardown(worker) -> None:  # distributed's preload hook, run as the worker closes
    """A worker closed while a block's zarr I/O is in flight (the client was interrupted) leaves zarr's pending
    asyncio tasks to be garbage-collected at exit, and asyncio logs each as "Task was destroyed but it is pending!"
    to the shared terminal, after the client's one line. Expected then: silence it."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    release_compile_workers()  # torch.compile's kernel-compiling processes would keep the worker from exiting


def release_compile_workers() -> None:
    """End the process pool torch.compile's inductor starts to compile GPU kernels, once compiling is done: left
    running, its processes kept a dask-cuda worker from exiting when the cluster closed (seen on an H200: the nanny
    killed the worker after 4 s and closing the cluster timed out after the blocks were written). A later
    recompilation starts a new pool."""
    if "torch._inductor.async_compile" not in sys.modules:
        return
    try:
        from torch._inductor.async_compile import shutdown_compile_workers

        shutdown_compile_workers()
    except Exception:  # an inductor without this function: nothing to release
        pass
