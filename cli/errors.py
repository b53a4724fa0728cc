"""How the command line fails: every expected error as one line on stderr and exit code 2, an interrupt as one line
and exit code 130 (``--debug`` shows tracebacks instead)."""

from __future__ import annotations

import functools

import typer
from rich.console import Console

from nisbflow.errors import NisbflowError

errors = Console(stderr=True)


OPTIONAL_EXTRAS = {
    "cupy": "gpu",
    "cupy_backends": "gpu",
    "dask_cuda": "gpu",
    "dask_jobqueue": "slurm",
    "kimimaro": "skeleton",
    "s3fs": "cloud",
    "gcsfs": "cloud",
}
"""Optional packages and the nisbflow extra that installs each."""

OPTIONS = {"debug": False}
"""Process-wide flags of the ``nisbflow`` callback (``--debug``)."""


def one_line(error: BaseException) -> str:
    """An expected failure as one line: nisbflow's own errors as they are, missing optional packages with the extra
    that installs them, and file-system or network errors with the path or address they concern."""
    if isinstance(error, NisbflowError):
        return " ".join(str(error).split())
    if isinstance(error, ImportError):
        name = (error.name or str(error)).split(".")[0]
        extra = OPTIONAL_EXTRAS.get(name)
        return f"missing optional package {name}" + (f": pip install 'nisbflow[{extra}]'" if extra else f" ({error})")
    if isinstance(error, OSError):
        import errno

        reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
        staging = getattr(error, "nisbflow_staging", None)
        if error.errno in (errno.ENOSPC, errno.EDQUOT) and staging:
            return (
                f"{reason} while writing {error.filename or staging}; the finished blocks are kept in {staging}: "
                "free space (or raise the quota) and re-run the same command to resume, or delete that folder"
            )
        return f"{error.filename}: {reason}" if error.filename else reason
    return f"{type(error).__name__}: {error}"


def _error(message: str) -> None:
    from rich.text import Text

    errors.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)


def interrupted_message(error: KeyboardInterrupt) -> str:
    staging = getattr(error, "nisbflow_staging", None)
    if staging is None:
        return "interrupted"
    return f"interrupted; finished blocks are kept in {staging}: re-run the same command to resume"


def _terminate_as_interrupt():
    """Make SIGTERM (a batch system's or container's stop) behave like Ctrl-C, and both remembered
    (:data:`nisbflow.tasks.INTERRUPTED`); returns the previous handlers."""
    import signal
    import threading

    from nisbflow.tasks import INTERRUPTED, interrupt_requested

    if threading.current_thread() is not threading.main_thread():
        return None
    INTERRUPTED.clear()
    return {number: signal.signal(number, interrupt_requested) for number in (signal.SIGINT, signal.SIGTERM)}


def friendly_errors(command):
    """Expected failures (nisbflow's errors, missing or unwritable paths, unreachable schedulers, missing optional
    packages) print one line on stderr and exit with code 2; an interrupt (Ctrl-C, SIGTERM) prints one line and exits
    with 130 after in-flight block writes end, keeping what a re-run resumes from. ``--debug`` shows tracebacks."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import signal

        previous = _terminate_as_interrupt()
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as error:
            if OPTIONS["debug"]:
                import traceback

                traceback.print_exc()
            _error(interrupted_message(error))
            raise typer.Exit(code=130) from None
        except (NisbflowError, OSError, ImportError) as error:
            if OPTIONS["debug"]:
                raise
            _error(one_line(error))
            raise typer.Exit(code=2) from None
        finally:
            for number, handler in (previous or {}).items():
                signal.signal(number, handler)

    return wrapper
