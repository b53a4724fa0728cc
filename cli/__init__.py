"""nisbflow's command line (``nisbflow …``, :mod:`nisbflow_cli.main`)."""

import os
import signal
import sys
import threading


def _interrupted_while_starting(signum, frame):  # pragma: no cover - exercised through the console script
    """Ctrl-C (or SIGTERM) before a command has started: nothing was written yet, so one line and exit 130, not
    the traceback of whatever module was being imported."""
    sys.stderr.write("error: interrupted\n")
    os._exit(130)


def _is_the_console_script() -> bool:
    """Whether this process is the ``nisbflow`` console script itself, not a Dask worker process spawned from it:
    multiprocessing gives such a child the parent's ``sys.argv`` and imports the script again as ``__mp_main__``,
    but its real command line (``sys.orig_argv``) is ``python -B -c "…spawn_main(…)" --multiprocessing-fork``. A
    nanny stopping its worker must not print "interrupted"."""
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    return script == "nisbflow" and "--multiprocessing-fork" not in getattr(sys, "orig_argv", ())


if _is_the_console_script() and threading.current_thread() is threading.main_thread():
    for _number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_number, _interrupted_while_starting)
