""":class:`StagedRun`: one stage's output, staged, locked and resumable (see :mod:`nisbflow.staging`).

It owns the paths (the staging folder, the result inside it, scratch and markers), the lock and the run manifest,
and hands the rest to collaborators: the replacement policy (:mod:`nisbflow.staging.replace`), the publish journal
(:class:`~nisbflow.staging.publish.Publisher`), the block markers and their evidence
(:mod:`nisbflow.staging.markers`) and what the workers must see (:class:`~nisbflow.visibility.WorkerVisibility`).
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from collections.abc import Callable

import fsspec

from nisbflow.errors import NisbflowError
from nisbflow.fingerprints import fingerprint, plain
from nisbflow.locks import RunLock
from nisbflow.paths import join_protocol, storage_url
from nisbflow.staging.markers import BlockPass, BlockwisePass, Markers, pending, remove_tree
from nisbflow.staging.publish import MANIFEST, Publisher, retire_staging
from nisbflow.staging.replace import check_not_input
from nisbflow.visibility import WorkerVisibility


class OutputLockedError(NisbflowError):
    """Another run holds the output's lock."""


class InputChangedError(NisbflowError):
    """An input's fingerprint changed between the start and the end of a run."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two manifests' identities."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


class StagedRun:
    """One stage's output, staged, locked and resumable (see :mod:`nisbflow.staging`).

    ``output``: the final path or URL. ``kind``: what it holds (``affinities``, ``segmentation``, ``seed``), for the
    replacement policy. ``inputs``: ``{role: path}`` (zarr arrays, files or folders) the run reads; each is
    fingerprinted into the manifest and none may overlap the output. ``identity``: whatever else decides the result
    (checkpoint hash, settings, block size); JSON-ready. ``checkpoint``: the :class:`~nisbflow.model.Checkpoint` the
    run loads on workers, which they must see. ``log``: where to say that a run resumes or starts fresh and why (a
    ``print``-like function).

    Use as a context manager; inside, write the result to :attr:`data` (a path or URL with the output's suffix),
    per-run scratch under :meth:`scratch`, and block markers with :meth:`marker`; ask :meth:`pending` which blocks of
    a pass are left. Leaving the block normally publishes :attr:`data` to ``output`` and removes the staging folder;
    an exception keeps it for a resume.
    """

    LOCK = "lock.json"

    def __init__(
        self,
        output,
        *,
        kind: str,
        inputs: dict | None = None,
        identity: dict | None = None,
        overwrite: bool = False,
        force: bool = False,
        log: Callable[[str], None] | None = None,
        checkpoint=None,
        layout: str = "ngff",
    ):
        from nisbflow.data.ngff import check_layout

        self.output = str(output).rstrip("/")
        self.layout = check_layout(layout)
        self.kind = kind
        self.inputs = {k: v for k, v in (inputs or {}).items() if v is not None}
        self.input_fingerprints: dict = {}
        self.log = log or (lambda message: None)
        self._fs, final = fsspec.core.url_to_fs(storage_url(self.output))
        parent, name = final.rsplit("/", 1) if "/" in final else (".", final)
        self._parent, self._name = parent, name
        self._staging = f"{parent}/.{name}.nisbflow-run"
        self._identity = dict(identity or {}, **({"layout": layout} if layout != "ngff" else {}))
        self.publisher = Publisher(
            self._fs,
            self._staging,
            name,
            final,
            output=self.output,
            kind=kind,
            overwrite=overwrite,
            force=force,
            log=self.log,
        )
        self.workers = WorkerVisibility(self.inputs, checkpoint)
        self.markers: Markers | None = None
        self.resumed = False
        self._lock_token: str | None = None
        self._run_lock: RunLock | None = None
        self.published = False

    # -- paths
    def _url(self, path: str) -> str:
        return join_protocol(self._fs, path)

    @property
    def staging(self) -> str:
        """The staging folder (path or URL)."""
        return self._url(self._staging)

    @property
    def data(self) -> str:
        """Where the result is written before it is published."""
        return self._url(f"{self._staging}/{self._name}")

    @property
    def image(self) -> str:
        """Where blocks are written: the array inside :attr:`data` when the output is an OME-NGFF image group
        (:func:`nisbflow.data.ngff.create_image`), :attr:`data` itself for the ``plain`` :attr:`layout`."""
        from nisbflow.data.ngff import output_array

        return output_array(self.data, self.layout)

    def scratch(self, name: str) -> str:
        """A per-run scratch folder that survives interruption with the staging folder."""
        return self._url(f"{self._staging}/scratch/{name}")

    def marker(self, stage: str, key: str) -> str:
        """URL of one block's marker for ``stage``; write it with :func:`~nisbflow.staging.write_marker` after the
        block's data."""
        return self._opened().url(stage, key)

    # -- lifecycle
    def preflight(self) -> StagedRun:
        """Every refusal :meth:`__enter__` would give (input overlap, existing output, missing folder, a lock held by
        a live run), without taking the lock or writing anything: for commands to call before a cluster starts."""
        check_not_input(self.output, self.inputs)
        self._check_parent(create=False)
        self.publisher.check_existing()
        self._lock().check()
        return self

    def _lock(self) -> RunLock:
        if self._run_lock is None:
            self._run_lock = RunLock(
                self._url(f"{self._staging}/{self.LOCK}"), locked=self._locked, log=self.log, what=self.output
            )
        return self._run_lock

    def _locked(self, holder: dict, lock: str) -> OutputLockedError:
        if not holder.get("pid"):
            return OutputLockedError(
                f"output {self.output}: its lock {lock} is unreadable; if no other run is "
                f"writing this output, delete {lock}"
            )
        return OutputLockedError(
            f"output {self.output} is being written by another run (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')} since {holder.get('started', '?')}); wait for it to finish, or if that "
            f"run is gone delete {lock}"
        )

    def __enter__(self) -> StagedRun:
        self.preflight()
        self._check_parent(create=True)
        self._fs.makedirs(self._staging, exist_ok=True)
        self._lock_token = self._lock().acquire()
        try:
            for leftover in self._fs.glob(f"{self._staging}.removing-*"):  # a published run killed while cleaning up
                remove_tree(self._fs, leftover)
            self._open_manifest()
            self.workers.check(
                (self.staging, self._url(f"{self._staging}/{self.LOCK}"), self._lock_token), self.input_fingerprints
            )
        except BaseException:
            self._release_lock()
            raise
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        try:
            if error_type is None:
                self.publish()
            elif error is not None and not hasattr(error, "nisbflow_staging"):
                try:  # for the one line the CLI prints: where the finished blocks are kept
                    error.nisbflow_staging = self.staging
                except AttributeError:
                    pass
        finally:
            self._release_lock()

    def _check_parent(self, create: bool) -> None:
        """Raise unless the output's folder exists or can be made (on a local disk: its nearest existing ancestor is
        a writable folder); with ``create``, make it."""
        remote = "://" in storage_url(self.output)
        if self._parent in (".", "") or self._fs.exists(self._parent):
            if not remote and not os.access(self._parent, os.W_OK):
                raise NisbflowError(f"output {self.output}: its folder {self._parent} is not writable")
            return
        if not create:
            if remote:
                return  # object stores have no folders to check
            ancestor = self._parent
            while not os.path.exists(ancestor):
                ancestor = os.path.dirname(ancestor)
            if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK):
                raise NisbflowError(
                    f"output {self.output}: cannot create its folder {self._parent} "
                    f"({ancestor} is not a writable folder)"
                )
            return
        try:
            self._fs.makedirs(self._parent, exist_ok=True)
        except OSError as error:
            raise NisbflowError(
                f"output {self.output}: cannot create its folder {self._parent}: {error.strerror or error}"
            ) from None

    def _release_lock(self) -> None:
        if self._lock_token is None:
            return
        if self.published:  # the staging folder goes, lock included, while this run still holds it
            retire_staging(self._fs, self._staging)
        else:
            self._lock().release()
        self._lock_token = None

    def check_inputs_unchanged(self) -> None:
        """Raise unless every input still has the fingerprint it had when the run started: an input replaced or
        rewritten while the run read it gives a result that matches neither version."""
        for role, path in self.inputs.items():
            now = plain(fingerprint(path))
            if now != self.input_fingerprints.get(role):
                raise InputChangedError(
                    f"{role} {path} changed while this run read it (another process rewrote or replaced it: "
                    f"{', '.join(_differences(self.input_fingerprints.get(role, {}), now)) or 'its files'} differ); "
                    f"nothing was published to {self.output}: re-run once the {role} no longer change"
                )

    def _read_manifest(self, path: str, identity: dict) -> tuple[dict | None, list[str] | None, str | None]:
        """The staging folder's manifest, the identity keys it differs in, and why it cannot be used (unreadable)."""
        if not self._fs.exists(path):
            return None, None, None
        try:
            manifest = json.loads(self._fs.cat_file(path))
            if not (
                isinstance(manifest, dict)
                and isinstance(manifest.get("run_id"), str)
                and isinstance(manifest.get("identity"), dict)
            ):
                raise ValueError("not a run manifest")
        except Exception:
            return None, None, f"its manifest {self._url(path)} is unreadable or malformed"
        return manifest, _differences(manifest["identity"], identity), None

    def _open_manifest(self) -> None:
        """Resume the run the staging folder holds when its manifest has this run's identity; else discard what is
        there (saying why) and start a fresh run. An interrupted publish is recovered first."""
        path = f"{self._staging}/{MANIFEST}"
        self.input_fingerprints = plain({role: fingerprint(p) for role, p in self.inputs.items()})
        identity = plain(
            dict(kind=self.kind, output=storage_url(self.output), inputs=self.input_fingerprints, **self._identity)
        )
        manifest, changed, reason = self._read_manifest(path, identity)
        journal = self.publisher.journal()
        if journal is not None:  # before anything in the staging folder is discarded: the old output may be there
            self.publisher.recover(
                journal, same=manifest is not None and not changed and journal.get("run_id") == manifest["run_id"]
            )
        if manifest is not None and not changed:
            self._start(manifest["run_id"], resumed=True)
            return
        if manifest is not None:
            reason = "it was made with different " + ", ".join(changed or [])
        elif reason is None and any(
            p.rstrip("/").rsplit("/", 1)[-1] != self.LOCK for p in self._fs.ls(self._staging, detail=False)
        ):
            reason = "it has no manifest"
        if reason:
            self.log(f"discarding the unfinished run in {self.staging}: {reason}; starting fresh")
        for entry in self._fs.ls(self._staging, detail=False):
            if entry.rstrip("/").rsplit("/", 1)[-1] != self.LOCK:
                remove_tree(self._fs, entry)
        self._start(uuid.uuid4().hex, resumed=False)
        self._fs.pipe_file(
            path, json.dumps({"run_id": self.run_id, "created": _now(), "identity": identity}, indent=1).encode()
        )

    def _start(self, run_id: str, resumed: bool) -> None:
        self.resumed = resumed
        self.markers = Markers(self._fs, self._staging, run_id, output=self.output, log=self.log)

    def _opened(self) -> Markers:
        if self.markers is None:
            raise RuntimeError(f"output {self.output}: the staged run is not open (use it as a context manager)")
        return self.markers

    @property
    def run_id(self) -> str:
        """This run's id (in its manifest, its markers and the ``nisbflow_run`` attribute of what it creates)."""
        return self._opened().run_id

    # -- blocks
    def pending(self, work: BlockwisePass) -> BlockPass:
        """Which blocks of the pass ``work`` this run still has to compute, and the marker payloads of those it
        finished before an interruption whose evidence is there (:func:`nisbflow.staging.markers.pending`). The one
        place every pass asks."""
        return pending(self._opened(), work)

    def owns(self, url: str) -> bool:
        """Whether the zarr array or group at ``url`` was created by this run (its ``nisbflow_run`` attribute)."""
        return self._opened().owns(url)

    def publish(self) -> None:
        """Move :attr:`data` to the output (replacing it when allowed) once the inputs are checked unchanged; the
        staging folder goes when the lock is released (:class:`~nisbflow.staging.publish.Publisher`)."""
        if not self._fs.exists(self.publisher.staged):
            raise NisbflowError(f"output {self.output}: the run finished without writing {self.data}")
        self.check_inputs_unchanged()
        self.publisher.publish(self.run_id)
        self.published = True
