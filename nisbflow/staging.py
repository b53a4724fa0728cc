"""Staged, exclusive, resumable outputs: how every stage writes (the grid of blocks is :mod:`nisbflow.blocks`).

A :class:`StagedRun` gives a stage one output path with these guarantees:

* **never over an input**: an output that equals, contains or lies inside any input is refused, whatever the flags;
* **never over foreign data**: ``overwrite`` replaces only an output nisbflow wrote (its zarr attributes say so);
  anything else needs ``force``;
* **exclusive**: a lock file (host, pid, start time) in the staging folder is held for the run; a second run on the
  same output fails at once, a lock left by a dead process on this host is reported and taken over;
* **resumable**: blocks finish by writing a marker; markers count only under a run manifest that matches this run's
  inputs (path, shape, dtype, chunking and a content fingerprint), checkpoint hash and settings. Anything else
  starts fresh and says why. :meth:`StagedRun.pending` is the one place a pass asks which of its blocks are done;
* **atomic publish**: the result is written in ``.<name>.nisbflow-run/`` next to the output and moved into place
  when complete, on local paths and fsspec URLs alike. An interrupted or failed run keeps the staging folder, which
  the next run on the same output resumes from or removes;
* **publish that always resumes**: the moves of a publish are journaled (``publish.json``); a run killed in them is
  finished or undone by the next run on the output (:meth:`StagedRun._recover_publish`), which never removes the
  previous output before a result is in its place.

Single files (a skeleton, a checkpoint, ``best.yaml``) are replaced whole through :func:`staged_output`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator

import fsspec
import numpy as np

from nisbflow.errors import NisbflowError, OutputExistsError
from nisbflow.fingerprints import fingerprint, plain
from nisbflow.locks import RunLock
from nisbflow.paths import join_protocol as _join_protocol
from nisbflow.paths import location as _location
from nisbflow.paths import protocol_of, storage_url


class OutputLockedError(NisbflowError):
    """Another run holds the output's lock."""


class OutputOverlapsInputError(NisbflowError):
    """An output would equal, contain or lie inside one of the run's inputs."""


class InputChangedError(NisbflowError):
    """An input's fingerprint changed between the start and the end of a run."""


# ----------------------------------------------------------------------------------------------------------------
# paths and identities


def _same_file(a: str, b: str) -> bool:
    """Whether two existing local paths name one file or folder (same device and inode)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(output, inputs: dict, option: str | None = None) -> None:
    """Raise :class:`OutputOverlapsInputError` if ``output`` equals, contains or lies inside any of ``inputs``
    (``{role: path}``; None values are skipped): by resolved path (through symlinks), and for existing local paths by
    device and inode (a hard link, or a bind mount, of an input under another name). ``option``: how the command
    line names the output (``--json``), for the message. No flag lifts this."""
    named = f"{option} {output}" if option else f"output {output}"
    out_protocol, out_path = _location(output)
    for role, path in inputs.items():
        if path is None:
            continue
        protocol, where = _location(path)
        if protocol != out_protocol:
            continue
        if where == out_path:
            relation = "is"
        elif where.startswith(out_path + "/"):
            relation = "contains"
        elif out_path.startswith(where + "/"):
            relation = "lies inside"
        elif protocol == "file" and _same_file(out_path, where):
            raise OutputOverlapsInputError(
                f"{named} is the {role} {path} (the same file under another name): writing it would destroy an "
                "input; choose another output path (no flag overrides this)")
        else:
            continue
        raise OutputOverlapsInputError(
            f"{named} {relation} the {role} {path}{' ' if relation == 'is' else ''}"
            f"{'(the input itself)' if relation == 'is' else ''}: writing it would destroy an input; "
            "choose another output path (no flag overrides this)")


def written_by_nisbflow(path, kind: str | None) -> bool:
    """Whether an existing output is a ``kind`` output nisbflow wrote: a zarr array or group whose attributes carry
    ``nisbflow_version`` and ``nisbflow_output == kind`` (any output nisbflow wrote for ``kind=None``), or, for
    ``kind="seed"``, a folder holding only a seed that nisbflow wrote."""
    import zarr

    url = storage_url(path)
    candidates = [(url, kind)] + ([(f"{url}/data.zarr", "seed")] if kind == "seed" else [])
    for candidate, expected in candidates:
        try:
            node = zarr.open(candidate, mode="r")
        except Exception:
            continue
        attrs = node.attrs
        if "nisbflow_version" not in attrs or expected is not None and attrs.get("nisbflow_output") != expected:
            continue
        if candidate == url:
            return True
        fs, root = fsspec.core.url_to_fs(url)  # a seed folder: nothing there but what synth writes
        names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
        return names <= {"data.zarr", "skeleton.pkl", "skeleton.json", "skeleton.npz"}
    return False


def check_replaceable(output, kind: str | None, *, overwrite: bool, force: bool, where=None) -> bool:
    """Whether ``output`` exists; raise :class:`OutputExistsError` unless it may be replaced: ``overwrite`` for a
    ``kind`` output nisbflow wrote (any output of nisbflow's for ``kind=None``), ``force`` for anything else.
    ``where``: where the existing output lies now, when not at ``output`` (an interrupted publish keeps it in the
    staging folder)."""
    url = storage_url(where if where is not None else output)
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(root):
        return False
    if force:
        return True
    if not overwrite:
        raise OutputExistsError(f"output {output} already exists; pass --overwrite to replace it")
    if not written_by_nisbflow(url, kind):
        raise OutputExistsError(f"output {output} exists and is not {f'a {kind}' if kind else 'an'} output written by "
                                "nisbflow (its "
                                "attributes do not say so); --overwrite replaces only those, pass --force to "
                                "replace it anyway")
    return True


# ----------------------------------------------------------------------------------------------------------------
# staged runs


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")



def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two manifests' identities."""
    keys = sorted(set(old) | set(new))
    changed = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


class StagedRun:
    """One stage's output, staged, locked and resumable (see the module docstring).

    ``output``: the final path or URL. ``inputs``: ``{role: path}`` (zarr arrays, files or folders) the run reads;
    each is fingerprinted into the manifest and none may overlap the output. ``identity``: whatever else decides the
    result (checkpoint hash, settings, block size); JSON-ready. ``log``: where to say that a run resumes or starts
    fresh and why (a ``print``-like function).

    Use as a context manager; inside, write the result to :attr:`data` (a path or URL with the output's suffix),
    per-run scratch under :meth:`scratch`, and block markers with :meth:`marker`. Leaving the block normally
    publishes :attr:`data` to ``output`` and removes the staging folder; an exception keeps it for a resume.
    """

    MANIFEST = "manifest.json"
    LOCK = "lock.json"
    PUBLISH = "publish.json"
    """The publish journal: written before the first move of :meth:`publish`, rewritten after the last one."""
    RETIRED = "replaced"
    """Where :meth:`publish` keeps the output it replaces until the new one is in place."""

    def __init__(self, output, *, kind: str, inputs: dict | None = None, identity: dict | None = None,
                 overwrite: bool = False, force: bool = False, log: Callable[[str], None] | None = None,
                 checkpoint=None, layout: str = "ngff"):
        from nisbflow.data.ngff import check_layout

        self.output = str(output).rstrip("/")
        self.layout = check_layout(layout)
        self.checkpoint = checkpoint
        self.input_fingerprints: dict = {}
        self.kind = kind
        self.inputs = {k: v for k, v in (inputs or {}).items() if v is not None}
        self.overwrite, self.force = overwrite, force
        self.log = log or (lambda message: None)
        url = storage_url(self.output)
        self._fs, final = fsspec.core.url_to_fs(url)
        self._final = final
        parent, name = final.rsplit("/", 1) if "/" in final else (".", final)
        self._parent, self._name = parent, name
        self._staging = f"{parent}/.{name}.nisbflow-run"
        self._identity = dict(identity or {}, **({"layout": layout} if layout != "ngff" else {}))
        self.run_id: str | None = None
        self.resumed = False
        self._lock_token: str | None = None
        self._run_lock: RunLock | None = None
        self.published = False

    # -- paths
    def _url(self, path: str) -> str:
        return _join_protocol(self._fs, path)

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
        """URL of one block's marker for ``stage``; write it with :func:`write_marker` after the block's data."""
        return self._url(f"{self._staging}/done/{stage}/{key}")

    # -- lifecycle
    def preflight(self) -> StagedRun:
        """Every refusal :meth:`__enter__` would give (input overlap, existing output, missing folder, a lock held by
        a live run), without taking the lock or writing anything: for commands to call before a cluster starts."""
        check_not_input(self.output, self.inputs)
        self._check_parent(create=False)
        self._check_existing()
        self._lock().check()
        return self

    def _check_existing(self) -> bool:
        """:func:`check_replaceable` on the output as it was before any publish of a run on it began: an interrupted
        publish may have moved the old output into the staging folder, or put its own result in place."""
        journal, where = self._journal(), None
        if journal is not None:
            if not journal.get("had_output"):  # whatever is at the output now, that publish put there
                return False
            retired = f"{self._staging}/{self.RETIRED}"
            if journal.get("state") == "moving" and not self._fs.exists(self._final) and self._fs.exists(retired):
                where = self._url(retired)
        return check_replaceable(self.output, self.kind, overwrite=self.overwrite, force=self.force, where=where)

    def _journal(self) -> dict | None:
        """The publish journal of an interrupted publish (None when there is none, or it does not parse)."""
        path = f"{self._staging}/{self.PUBLISH}"
        try:
            journal = json.loads(self._fs.cat_file(path))
        except (FileNotFoundError, ValueError, OSError):
            return None
        return journal if isinstance(journal, dict) and journal.get("state") in ("moving", "published") else None

    def _lock(self) -> RunLock:
        if self._run_lock is None:
            self._run_lock = RunLock(self._url(f"{self._staging}/{self.LOCK}"), locked=self._locked, log=self.log,
                                     what=self.output)
        return self._run_lock

    def _locked(self, holder: dict, lock: str) -> OutputLockedError:
        if not holder.get("pid"):
            return OutputLockedError(f"output {self.output}: its lock {lock} is unreadable; if no other run is "
                                     f"writing this output, delete {lock}")
        return OutputLockedError(
            f"output {self.output} is being written by another run (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')} since {holder.get('started', '?')}); wait for it to finish, or if that "
            f"run is gone delete {lock}")

    def __enter__(self) -> StagedRun:
        self.preflight()
        self._check_parent(create=True)
        self._fs.makedirs(self._staging, exist_ok=True)
        self._acquire_lock()
        try:
            for leftover in self._fs.glob(f"{self._staging}.removing-*"):  # a published run killed while cleaning up
                _remove_tree(self._fs, leftover)
            self._open_manifest()
            self._check_workers()
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
        if self._parent in (".", "") or self._fs.exists(self._parent):
            if "://" not in storage_url(self.output) and not os.access(self._parent, os.W_OK):
                raise NisbflowError(f"output {self.output}: its folder {self._parent} is not writable")
            return
        if not create:
            if "://" in storage_url(self.output):
                return  # object stores have no folders to check
            ancestor = self._parent
            while not os.path.exists(ancestor):
                ancestor = os.path.dirname(ancestor)
            if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK):
                raise NisbflowError(f"output {self.output}: cannot create its folder {self._parent} "
                                    f"({ancestor} is not a writable folder)")
            return
        try:
            self._fs.makedirs(self._parent, exist_ok=True)
        except OSError as error:
            raise NisbflowError(f"output {self.output}: cannot create its folder {self._parent}: "
                                f"{error.strerror or error}") from None

    def _acquire_lock(self) -> None:
        self._lock_token = self._lock().acquire()

    def _release_lock(self) -> None:
        if self._lock_token is None:
            return
        if self.published:  # the staging folder goes, lock included, while this run still holds it
            _retire_staging(self._fs, self._staging)
        else:
            self._lock().release()
        self._lock_token = None

    def _check_workers(self) -> None:
        """On a cluster that may not share this machine's files, refuse unless every worker sees the inputs and the
        checkpoint as the client does and sees this run's staging folder
        (:func:`nisbflow.visibility.check_on_workers`)."""
        from nisbflow.visibility import check_on_workers
        from nisbflow.tasks import current_client

        check_on_workers(current_client(), self.inputs, checkpoint=self.checkpoint,
                         staging=(self.staging, self._url(f"{self._staging}/{self.LOCK}"), self._lock_token),
                         fingerprints=self.input_fingerprints)

    def check_inputs_unchanged(self) -> None:
        """Raise unless every input still has the fingerprint it had when the run started: an input replaced or
        rewritten while the run read it gives a result that matches neither version."""
        for role, path in self.inputs.items():
            now = plain(fingerprint(path))
            if now != self.input_fingerprints.get(role):
                raise InputChangedError(
                    f"{role} {path} changed while this run read it (another process rewrote or replaced it: "
                    f"{', '.join(_differences(self.input_fingerprints.get(role, {}), now)) or 'its files'} differ); "
                    f"nothing was published to {self.output}: re-run once the {role} no longer change")

    def _open_manifest(self) -> None:
        path = f"{self._staging}/{self.MANIFEST}"
        self.input_fingerprints = plain({role: fingerprint(p) for role, p in self.inputs.items()})
        identity = plain(dict(kind=self.kind, output=storage_url(self.output), inputs=self.input_fingerprints,
                               **self._identity))
        reason, manifest, changed = None, None, None
        if self._fs.exists(path):
            try:
                manifest = json.loads(self._fs.cat_file(path))
                if not (isinstance(manifest, dict) and isinstance(manifest.get("run_id"), str)
                        and isinstance(manifest.get("identity"), dict)):
                    raise ValueError("not a run manifest")
            except Exception:
                manifest, reason = None, f"its manifest {self._url(path)} is unreadable or malformed"
            if manifest is not None:
                changed = _differences(manifest["identity"], identity)
        journal = self._journal()
        if journal is not None:  # before anything in the staging folder is discarded: the old output may be there
            self._recover_publish(journal, same=manifest is not None and not changed
                                  and journal.get("run_id") == manifest["run_id"])
        if manifest is not None:
            if not changed:
                self.run_id, self.resumed = manifest["run_id"], True
                return
            reason = "it was made with different " + ", ".join(changed)
        elif reason is None and any(p.rstrip("/").rsplit("/", 1)[-1] != self.LOCK
                                    for p in self._fs.ls(self._staging, detail=False)):
            reason = "it has no manifest"
        if reason:
            self.log(f"discarding the unfinished run in {self.staging}: {reason}; starting fresh")
        for entry in self._fs.ls(self._staging, detail=False):
            if entry.rstrip("/").rsplit("/", 1)[-1] != self.LOCK:
                _remove_tree(self._fs, entry)
        self.run_id = uuid.uuid4().hex
        self._fs.pipe_file(path, json.dumps({"run_id": self.run_id, "created": _now(), "identity": identity},
                                            indent=1).encode())

    # -- blocks
    def finished(self, stage: str) -> dict[str, bytes]:
        """Markers of ``stage`` written by this run (content starting with the run id): ``{block key: payload}``."""
        folder = f"{self._staging}/done/{stage}"
        if not self._fs.exists(folder):
            return {}
        paths = self._fs.ls(folder, detail=False)
        contents = self._fs.cat(paths) if paths else {}
        prefix = self.run_id.encode() + b"\n"
        return {p.rstrip("/").rsplit("/", 1)[-1]: content[len(prefix):]
                for p, content in contents.items() if content.startswith(prefix)}

    def trusted(self, stage: str, finished: dict, array: str, regions: dict) -> dict:
        """The markers of ``finished`` whose block's chunks in the zarr array ``array`` are all there and whole
        (:func:`nisbflow.data.chunks.damaged_chunks`; ``regions``: block key → its region of the array). A block
        whose data was lost or damaged after its marker was written loses its marker and is computed again."""
        if not finished:
            return finished
        from nisbflow.data.chunks import damaged_chunks

        damaged = damaged_chunks(array, {key: regions[key] for key in finished})
        if damaged:
            key, reason = next(iter(sorted(damaged.items())))
            self.log(f"{len(damaged)} finished block(s) of {self.output} lost or damaged their data since (block "
                     f"{key}: {reason}); computing them again")
            fs = self._fs
            for key in damaged:
                marker = f"{self._staging}/done/{stage}/{key}"
                if fs.exists(marker):
                    fs.rm(marker)
        return {key: payload for key, payload in finished.items() if key not in damaged}

    def report_resume(self, n_done: int, n_total: int, what: str = "blocks already done") -> None:
        """Say that this run resumes an interrupted one (nothing when nothing was done)."""
        if n_done:
            self.log(f"resuming {self.output}: {n_done} of {n_total} {what}")

    def pending(self, stage: str, grid, *, what: str = "blocks already done", owner: str | None = None,
                create: Callable[[], None] | None = None, arrays: tuple[str, ...] = (),
                region: Callable | None = None, scratch_blocks: Callable[[], set[int]] | None = None) -> BlockPass:
        """Which blocks of ``grid`` (a :class:`~nisbflow.blocks.BlockGrid`) this pass ``stage`` still has to compute,
        and the marker payloads of those it finished before an interruption. The one place every pass asks.

        A marker counts only when its evidence is there: with ``owner`` (the zarr array or group the pass writes),
        only if this run created it, else every marker of the stage is dropped and ``create()`` makes it afresh;
        with ``arrays``, only if the block's chunks in each are all there and whole (``region(index)``: the block's
        region of those arrays, default its write region); with ``scratch_blocks`` (called only when there are
        markers), only if the block's linear id is among the blocks whose scratch files it says exist. Says through
        ``log`` how many blocks a resume keeps."""
        finished = self.finished(stage)
        if owner is not None and not self.owns(owner):  # markers vouch only for an output this run created
            if finished:
                self.log(f"{len(finished)} block markers in {self.staging} have no array of this run behind them; "
                         "recomputing every block")
            self.forget(stage)
            finished = {}
            if create is not None:
                create()
        if scratch_blocks is not None and finished:
            present = scratch_blocks()
            kept = {key: payload for key, payload in finished.items() if grid.linear(_index_of(key)) in present}
            if len(kept) < len(finished):
                self.log(f"{len(finished) - len(kept)} {stage} markers without their scratch files; computing those "
                         "blocks again")
            finished = kept
        region = region or grid.write_region
        for array in arrays:
            finished = self.trusted(stage, finished, array, {grid.key(index): region(index)
                                                             for index in grid.indices()})
        self.report_resume(len(finished), grid.n_blocks, what)
        done = {_index_of(key): payload for key, payload in finished.items()}
        return BlockPass(stage, done, [tuple(int(i) for i in index) for index in grid.indices()
                                       if tuple(int(i) for i in index) not in done])

    def owns(self, url: str) -> bool:
        """Whether the zarr array or group at ``url`` was created by this run (its ``nisbflow_run`` attribute)."""
        import zarr

        try:
            return zarr.open(url, mode="r").attrs.get("nisbflow_run") == self.run_id
        except Exception:
            return False

    def forget(self, stage: str) -> None:
        """Drop every marker of ``stage`` (its evidence is gone)."""
        folder = f"{self._staging}/done/{stage}"
        if self._fs.exists(folder):
            _remove_tree(self._fs, folder)

    def publish(self) -> None:
        """Move :attr:`data` to the output (replacing it when allowed) and remove the staging folder.

        The moves are journaled (:attr:`PUBLISH`), so that a run killed anywhere in them is recovered by the next
        run on the output (:meth:`_recover_publish`): the old output is kept in the staging folder until the new one
        is in place, and removed only after the journal says so."""
        fs, staged, final = self._fs, f"{self._staging}/{self._name}", self._final
        if not fs.exists(staged):
            raise NisbflowError(f"output {self.output}: the run finished without writing {self.data}")
        self.check_inputs_unchanged()
        had_output = check_replaceable(self.output, self.kind, overwrite=self.overwrite, force=self.force)
        retired = f"{self._staging}/{self.RETIRED}"
        if fs.exists(retired):  # a leftover of a recovered publish: never the output of this run's inputs
            _remove_tree(fs, retired)
        self._write_journal("moving", had_output)
        if had_output:
            _move(fs, final, retired)
            _publish_step("retired")
        _move(fs, staged, final)
        _publish_step("moved")
        self._write_journal("published", had_output)
        self.published = True

    def _write_journal(self, state: str, had_output: bool) -> None:
        self._fs.pipe_file(f"{self._staging}/{self.PUBLISH}", json.dumps(
            {"run_id": self.run_id, "state": state, "had_output": bool(had_output)}).encode())
        _publish_step(state)

    def _recover_publish(self, journal: dict, same: bool) -> None:
        """Finish or undo a publish that a killed run left (its journal is there), before this run goes on.

        The same run (same identity) is put back where it was before its publish: its result into the staging folder,
        the old output back in place, so that it resumes with every block done and publishes again, redoing no
        block. Another run finds the old output back in place when the killed publish had not yet put its result
        there, and the killed run's result in place when it had; the old output is removed only once a result
        replaced it. Says what it did through ``log``."""
        fs, staged, final = self._fs, f"{self._staging}/{self._name}", self._final
        retired = f"{self._staging}/{self.RETIRED}"
        moved = not fs.exists(staged) and fs.exists(final)  # the result reached the output
        if same and moved:
            _move(fs, final, staged)
            if journal.get("had_output") and fs.exists(retired) and journal.get("state") == "moving":
                _move(fs, retired, final)
            self.log(f"recovering {self.output}: a publish of this run was interrupted; publishing it again")
        elif not moved and journal.get("had_output") and fs.exists(retired) and not fs.exists(final):
            _move(fs, retired, final)
            self.log(f"recovering {self.output}: an interrupted publish had moved the previous output aside; it is "
                     "back in place")
        elif moved:
            self.log(f"recovering {self.output}: a run on it had published its result when it was interrupted; "
                     "removing what it left")
            with contextlib.suppress(FileNotFoundError):
                fs.rm(f"{self._staging}/{self.MANIFEST}")  # its markers vouch for nothing now
        if fs.exists(retired) and fs.exists(final):
            _remove_tree(fs, retired)
        fs.rm(f"{self._staging}/{self.PUBLISH}")


def _publish_step(step: str) -> None:
    """Called after each step of :meth:`StagedRun.publish` (``moving``, ``retired``, ``moved``, ``published``): a
    seam where the fault tests stop a process as a SIGKILL would."""


def _index_of(key: str) -> tuple[int, ...]:
    """A block index from its marker key ``"i.j.k"``."""
    return tuple(int(i) for i in key.split("."))


@dataclass(frozen=True)
class BlockPass:
    """What :meth:`StagedRun.pending` found for one pass: ``done`` maps each finished block index ``(i, j, k)`` to
    its marker's payload; ``pending`` lists the block indices still to compute, in C order."""

    stage: str
    done: dict = field(default_factory=dict)
    pending: list = field(default_factory=list)


def _move(fs, source: str, destination: str) -> None:
    """Rename on a local disk (atomic), copy then delete elsewhere (fsspec's ``mv``)."""
    protocol = protocol_of(fs)
    if protocol in ("file", "local"):
        os.replace(source, destination)
        return
    # object stores: copy every stored key, then delete them (fsspec's recursive mv also copies the folder
    # placeholders it lists, which S3 does not store, and fails on them)
    files = fs.find(source)
    fs.copy(files, [destination + path[len(source):] for path in files])
    _remove_tree(fs, source, files)


def _retire_staging(fs, staging: str) -> None:
    """Remove a published run's staging folder: the output it replaced first, then the rest (on a local disk the
    folder is first renamed aside, so a kill half-way leaves no staging folder that a later run would read)."""
    retired = f"{staging}/{StagedRun.RETIRED}"
    if fs.exists(retired):
        _remove_tree(fs, retired)
        _publish_step("removed")
    if protocol_of(fs) in ("file", "local"):
        trash = f"{staging}.removing-{uuid.uuid4().hex[:8]}"
        os.replace(staging, trash)
        _publish_step("renamed")
        staging = trash
    _remove_tree(fs, staging)


def _remove_tree(fs, root: str, files=None) -> None:
    """Delete every key under ``root`` (and the folder itself where the store keeps folders)."""
    files = fs.find(root) if files is None else files
    if files:
        fs.rm(files)
    try:
        if fs.exists(root):
            fs.rm(root, recursive=True)
    except FileNotFoundError:
        pass


def write_marker(url: str, run_id: str, payload: bytes = b"") -> None:
    """Record a finished block (call after its data is written): the run id, a newline, then ``payload``."""
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, run_id.encode() + b"\n" + payload)


def store_block(values: np.ndarray, target: str, region, marker: str, run_id: str, payload: bytes = b"") -> None:
    """Task body: write one block's values into the zarr array ``target`` at ``region`` (slices), then its marker."""
    from nisbflow.data.chunks import open_for_writing

    open_for_writing(target)[tuple(region)] = values
    write_marker(marker, run_id, payload)


def default_log(message: str) -> None:
    """Where library calls report resumes, stale locks and discarded runs when no ``log`` is given: stderr."""
    import sys

    print(message, file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------
# single files

def _remove_path(fs, path: str) -> None:
    if fs.exists(path):
        fs.rm(path, recursive=True)


@contextlib.contextmanager
def staged_output(path: str | Path, *, overwrite: bool = False) -> Iterator[str]:
    """Write an output under a temporary sibling name and move it to ``path`` only when complete (a single file on a
    local disk by an atomic rename).

    Yields the temporary path. An exception inside the block removes the temporary output and leaves any
    existing ``path`` untouched; an existing ``path`` is refused unless ``overwrite`` is true.
    """
    path = str(path).rstrip("/")
    fs, final = fsspec.core.url_to_fs(path)
    if fs.exists(final) and not overwrite:
        raise OutputExistsError(f"output {path} already exists; pass --overwrite to replace it")
    parent, name = final.rsplit("/", 1) if "/" in final else (".", final)
    token = uuid.uuid4().hex[:8]
    stem, dot, suffix = name.rpartition(".")
    stem, suffix = (stem, dot + suffix) if stem else (name, "")
    temporary = f"{parent}/.{stem}.partial-{token}{suffix}"  # keeps the suffix, which names the format
    fs.makedirs(parent, exist_ok=True)
    protocol = path[: -len(final)] if path.endswith(final) and path != final else ""
    try:
        yield protocol + temporary
    except BaseException as error:
        with contextlib.suppress(OSError):
            _remove_path(fs, temporary)  # no 0-byte or half-written leftover
        if isinstance(error, OSError) and not error.filename:  # a full disk's error names the output
            raise OSError(error.errno, error.strerror or str(error), path) from None
        raise
    if protocol_of(fs) in ("file", "local") and os.path.isfile(temporary) and not os.path.isdir(final):
        os.replace(temporary, final)  # one file on a local disk: atomic, the old one is there until the new one is
        return
    retired = f"{parent}/.{name}.replaced-{token}"
    if fs.exists(final):
        fs.mv(final, retired, recursive=True)
    fs.mv(temporary, final, recursive=True)
    _remove_path(fs, retired)


def write_file(path: str | Path, content: bytes | str) -> None:
    """Replace the file ``path`` with ``content`` whole (through :func:`staged_output`): a reader never sees half of
    it, and a failed write leaves the old file."""
    with staged_output(path, overwrite=True) as temporary:
        fs, where = fsspec.core.url_to_fs(temporary)
        fs.pipe_file(where, content.encode() if isinstance(content, str) else content)
