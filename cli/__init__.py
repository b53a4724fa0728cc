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


if os.path.basename(sys.argv[0] if sys.argv else "") == "nisbflow" and \
        threading.current_thread() is threading.main_thread():
    for _number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_number, _interrupted_while_starting)
