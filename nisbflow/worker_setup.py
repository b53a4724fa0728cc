"""Preloaded into the worker processes of the local clusters nisbflow starts (``LocalCluster(preload=...)``).

A Ctrl-C in a terminal reaches every process of the foreground group. The client handles it (stops submitting,
lets running block writes end, exits 130 with one line); worker processes ignore it, so they neither print their
own ``KeyboardInterrupt`` tracebacks nor die half-way through a block write. They stop when the client closes the
cluster, as always.
"""

from __future__ import annotations

import signal
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
