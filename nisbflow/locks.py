"""One writer at a time: an exclusive lock file, for a staged output (:class:`nisbflow.staging.StagedRun`) or a tuning
study (:func:`nisbflow.tune.tune`).

The lock file holds the holder's host, pid, start time and a random token. A second run finds it and is refused
with the holder named; a lock whose process is gone (same host, pid no longer running) is taken over and the log
says so; so is an empty lock file older than :data:`EMPTY_LOCK_SECONDS` (what a run that could not write it, e.g. on
a full disk, leaves). Any other unreadable lock is refused, naming the file to delete.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
import uuid
from collections.abc import Callable

import fsspec

from nisbflow.errors import NisbflowError
from nisbflow.paths import join_protocol, protocol_of, storage_url

EMPTY_LOCK_SECONDS = 30.0
"""An empty lock file this old was left by a run that could not write its record: taken over."""


class LockedError(NisbflowError):
    """Another live run holds the lock."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock file at ``url`` (a local path or an fsspec URL).

    ``locked``: builds the error for a lock held by another run from ``(holder record, lock URL)``; ``log``: where
    taking over a stale lock is reported. :meth:`check` refuses without taking the lock (a preflight),
    :meth:`acquire` takes it, :meth:`release` gives it back if this process still holds it.
    """

    def __init__(
        self,
        url,
        *,
        locked: Callable[[dict, str], Exception],
        log: Callable[[str], None] | None = None,
        what: str = "the lock",
    ):
        self.url = storage_url(url)
        self._fs, self._path = fsspec.core.url_to_fs(self.url)
        self._locked, self.log, self.what = locked, log or (lambda message: None), what
        self.token: str | None = None

    def _read(self) -> tuple[dict | None, bool]:
        """``(holder record or None, stale?)`` of an existing lock file; ``(None, False)`` when there is none."""
        try:
            content = self._fs.cat_file(self._path)
        except FileNotFoundError:
            return None, False
        try:
            holder = json.loads(content)
            if not isinstance(holder, dict):
                raise ValueError
        except ValueError:
            if not content.strip():
                try:
                    age = time.time() - float(self._fs.info(self._path).get("mtime") or time.time())
                except Exception:
                    age = 0.0
                return {"empty": True}, age > EMPTY_LOCK_SECONDS
            return {}, False
        stale = (
            holder.get("host") == socket.gethostname()
            and isinstance(holder.get("pid"), int)
            and not alive(holder["pid"])
        )
        return holder, stale

    def check(self) -> None:
        """Raise the ``locked`` error if a live run holds the lock."""
        holder, stale = self._read()
        if holder is not None and not stale:
            raise self._locked(holder, self.url)

    def acquire(self) -> str:
        """Take the lock (taking over a stale one); returns this run's token."""
        token = uuid.uuid4().hex
        record = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "started": _now(), "token": token}
        ).encode()
        for _ in range(2):
            if self._create_exclusive(record):
                self.token = token
                return token
            holder, stale = self._read()
            if holder is None:
                continue  # released in between
            if stale:
                if holder.get("empty"):
                    self.log(f"removing an empty lock {self.url}, left by a run that could not write it (a full disk?)")
                else:
                    self.log(
                        f"removing a stale lock on {self.what}: pid {holder['pid']} on {holder['host']} "
                        f"(started {holder.get('started', '?')}) is no longer running"
                    )
                self._fs.rm(self._path)
                continue
            raise self._locked(holder, self.url)
        raise LockedError(f"{self.what}: cannot take the lock {self.url}")

    def _create_exclusive(self, content: bytes) -> bool:
        if protocol_of(self._fs) in ("file", "local"):
            try:
                descriptor = os.open(self._path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            try:
                with os.fdopen(descriptor, "wb") as handle:
                    handle.write(content)
            except OSError as error:  # a full disk: leave no empty lock behind
                os.unlink(self._path)
                raise NisbflowError(f"cannot write the lock {self.url}: {error.strerror or error}") from None
            return True
        if self._fs.exists(self._path):  # object stores: no exclusive create; write, then read back who won
            return False
        self._fs.pipe_file(self._path, content)
        return self._fs.cat_file(self._path) == content

    def holds(self) -> bool:
        """Whether this process holds the lock now (its token is in the file)."""
        if self.token is None:
            return False
        try:
            return json.loads(self._fs.cat_file(self._path)).get("token") == self.token
        except Exception:
            return False

    def release(self) -> None:
        """Remove the lock file if this process holds it."""
        if self.holds():
            try:
                self._fs.rm(self._path)
            except FileNotFoundError:
                pass
        self.token = None


def lock_url(fs, path: str) -> str:
    """A filesystem path as the URL :class:`RunLock` takes."""
    return join_protocol(fs, path)
