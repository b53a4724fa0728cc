"""The block-wise layer every stage writes through: one grid of blocks, and staged, exclusive, resumable outputs.

Words as in daisy/funlib: a block's *write region* is the part of the volume it owns; its *read region* adds the
context it needs (a one-voxel lower halo for decoding, the touching windows for inference). Axis order is
positional ``(X, Y, Z)``; regions are tuples of slices in voxels.

A :class:`StagedRun` gives a stage one output path with these guarantees:

* **never over an input**: an output that equals, contains or lies inside any input is refused, whatever the flags;
* **never over foreign data**: ``overwrite`` replaces only an output nisbflow wrote (its zarr attributes say so);
  anything else needs ``force``;
* **exclusive**: a lock file (host, pid, start time) in the staging folder is held for the run; a second run on the
  same output fails at once, a lock left by a dead process on this host is reported and taken over;
* **resumable**: blocks finish by writing a marker; markers count only under a run manifest that matches this run's
  inputs (path, shape, dtype, chunking and a content fingerprint), checkpoint hash and settings. Anything else
  starts fresh and says why;
* **atomic publish**: the result is written in ``.<name>.nisbflow-run/`` next to the output and moved into place
  when complete, on local paths and fsspec URLs alike. An interrupted or failed run keeps the staging folder, which
  the next run on the same output resumes from or removes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

import fsspec
import numpy as np

from nisbflow.errors import NisbflowError, OutputExistsError, VolumeError
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
# the grid

MAX_BLOCKS = 100_000
"""The most blocks a run builds: each is a few tasks, a marker and a chunk file; beyond this the graph alone takes
gigabytes and minutes before any block runs (``--chunks 1,1,1`` on 256³ asked for 2.46 million)."""


def check_block_count(shape, block, what: str = "--chunks") -> None:
    """Raise :class:`VolumeError` when blocks of ``block`` voxels (X, Y, Z) over ``shape`` would number more than
    :data:`MAX_BLOCKS`, naming a block size that stays under it."""
    shape = [int(s) for s in shape]
    block = [max(1, min(int(b), s)) for b, s in zip(block, shape)]
    count = int(np.prod([-(-s // b) for s, b in zip(shape, block)]))
    if count > MAX_BLOCKS:
        side = int(np.ceil((np.prod(shape) / MAX_BLOCKS) ** (1 / 3)))
        raise VolumeError(f"{what} {','.join(map(str, block))}: {count:,} blocks over a volume of "
                          f"{'×'.join(map(str, shape))} voxels, more than {MAX_BLOCKS:,}; use larger blocks, e.g. "
                          f"{what} {side},{side},{side} or more")


@dataclass(frozen=True)
class BlockGrid:
    """The blocks of an ``(X, Y, Z)`` volume, from dask-style per-axis chunk sizes.

    Blocks are indexed ``(i, j, k)``; their *linear* index is their position in C order. ``label_bits`` is how
    many low bits of a provisional segment id hold a block-local label (decoding): enough for every voxel of the
    largest read region with a one-voxel halo.
    """

    chunks: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]

    @classmethod
    def regular(cls, shape, block) -> "BlockGrid":
        """Blocks of size ``block`` (voxels, clipped to the volume) from the origin; the last ones may be smaller."""
        shape = tuple(int(s) for s in shape)
        if any(s <= 0 for s in shape):
            raise VolumeError(f"volume shape {shape} (X, Y, Z) is empty: every axis needs at least one voxel")
        block = tuple(max(1, min(int(b), s)) for b, s in zip(block, shape))
        check_block_count(shape, block)
        return cls(tuple(tuple(min(b, s - lo) for lo in range(0, s, b)) for b, s in zip(block, shape)))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(sum(c)) for c in self.chunks)

    @property
    def blocks_per_axis(self) -> tuple[int, int, int]:
        return tuple(len(c) for c in self.chunks)

    @property
    def n_blocks(self) -> int:
        return int(np.prod(self.blocks_per_axis))

    @property
    def block_shape(self) -> tuple[int, int, int]:
        """The largest block (the nominal block size)."""
        return tuple(max(c) for c in self.chunks)

    @property
    def label_bits(self) -> int:
        largest_read_region = int(np.prod([max(c) + 1 for c in self.chunks]))
        return largest_read_region.bit_length()

    def check_fits(self) -> None:
        """Raise unless block index and local label fit together in 64 bits, and the blocks are not too many
        (:data:`MAX_BLOCKS`)."""
        if self.n_blocks > MAX_BLOCKS:
            check_block_count(self.shape, self.block_shape, "chunks")
        bits = self.label_bits + max(self.n_blocks - 1, 1).bit_length()
        if bits > 64:
            raise VolumeError(f"{self.n_blocks} blocks of up to {[max(c) for c in self.chunks]} voxels need {bits}-bit "
                              "provisional ids; use larger chunks")

    def indices(self) -> Iterator[tuple[int, int, int]]:
        """Block indices ``(i, j, k)`` in C order."""
        return np.ndindex(*self.blocks_per_axis)

    def linear(self, index) -> int:
        return int(np.ravel_multi_index(index, self.blocks_per_axis))

    @staticmethod
    def key(index) -> str:
        """A block's name in markers and task keys, ``"i.j.k"``."""
        return ".".join(str(int(i)) for i in index)

    def write_region(self, index) -> tuple[slice, slice, slice]:
        """The voxels block ``index`` owns, as slices of the volume."""
        starts = [int(sum(c[:i])) for c, i in zip(self.chunks, index)]
        return tuple(slice(s, s + c[i]) for s, c, i in zip(starts, self.chunks, index))

    def read_region(self, index, lower=0, upper=0) -> tuple[slice, slice, slice]:
        """The write region grown by ``lower``/``upper`` voxels (an int or one per axis), clipped to the volume."""
        lower = np.broadcast_to(lower, 3)
        upper = np.broadcast_to(upper, 3)
        return tuple(slice(max(0, w.start - int(lo)), min(n, w.stop + int(up)))
                     for w, lo, up, n in zip(self.write_region(index), lower, upper, self.shape))

    def lower_neighbour(self, index, axis: int):
        """The block below ``index`` along ``axis``, or None at the volume's lower face."""
        if index[axis] == 0:
            return None
        lower = list(index)
        lower[axis] -= 1
        return tuple(lower)

    def priority(self, index) -> int:
        """Dask priority of a per-block task: earlier blocks (C order) first, so a chunk is read shortly before the
        blocks that need it run and is released soon after."""
        return -self.linear(index)

    def block_of(self, positions: np.ndarray) -> np.ndarray:
        """``(N, 3)`` block indices of voxel positions ``(N, 3)`` (x, y, z) inside the volume."""
        boundaries = [np.cumsum((0,) + tuple(c)) for c in self.chunks]
        return np.stack([np.searchsorted(b, positions[:, a], side="right") - 1 for a, b in enumerate(boundaries)],
                        axis=1)

    def origin(self, index) -> np.ndarray:
        return np.array([w.start for w in self.write_region(index)], dtype=np.int64)


def task_priority(key) -> int:
    """Dask priority from a per-block task key ``(name, ..., i, j, k)``: earlier blocks (C order) first. Usable as
    ``dask.annotate(priority=task_priority)`` over graphs whose keys end in a block index."""
    index = [v for v in key[1:] if isinstance(v, int)][-3:] if isinstance(key, tuple) else []
    if len(index) != 3:
        return 0
    return -((index[0] * 4096 + index[1]) * 4096 + index[2])


# ----------------------------------------------------------------------------------------------------------------
# paths and identities


def check_not_input(output, inputs: dict) -> None:
    """Raise :class:`OutputOverlapsInputError` if ``output`` equals, contains or lies inside any of ``inputs``
    (``{role: path}``; None values are skipped). No flag lifts this."""
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
        else:
            continue
        raise OutputOverlapsInputError(
            f"output {output} {relation} the {role} {path}{' ' if relation == 'is' else ''}"
            f"{'(the input itself)' if relation == 'is' else ''}: writing it would destroy an input; "
            "choose another output path (no flag overrides this)")


def _array_metadata(fs, root: str) -> dict | None:
    """Shape, dtype and chunks of a zarr array at ``root`` (format 2 or 3), or None if it is not one."""
    try:
        import zarr

        from nisbflow.data.volumes import array_url

        array = zarr.open_array(array_url(storage_url(_join_protocol(fs, root))), mode="r")
    except Exception:
        return None
    return {"shape": list(array.shape), "dtype": str(array.dtype), "chunks": list(array.chunks)}


FINGERPRINT_SAMPLES = 4
"""Chunk files whose bytes a fingerprint hashes, spread evenly over the sorted keys."""


def fingerprint(path) -> dict:
    """Identity of an input, cheap for terabyte arrays: location, shape, dtype and chunks of a zarr array, a hash of
    every stored file's key, size and modification stamp (one listing, no data read), and a hash of the bytes of
    :data:`FINGERPRINT_SAMPLES` chunk files. A file (a skeleton) is hashed whole up to 64 MiB, else by size and
    stamp. Rewriting an input in place, even with equal sizes, changes it."""
    url = storage_url(path)
    fs, root = fsspec.core.url_to_fs(url)
    identity: dict = {"path": url}
    if not fs.exists(root):
        identity["missing"] = True
        return identity
    if fs.isfile(root):
        info = fs.info(root)
        identity.update(size=info.get("size"), modified=str(info.get("mtime", info.get("LastModified", ""))))
        if (info.get("size") or 0) <= 64 * 2**20:
            identity["sha256"] = hashlib.sha256(fs.cat_file(root)).hexdigest()
        return identity
    metadata = _array_metadata(fs, root)
    if metadata:
        identity.update(metadata)
    listing = fs.find(root, detail=True)
    stamps = hashlib.sha256()
    keys = sorted(listing)
    for key in keys:
        info = listing[key]
        stamp = info.get("mtime", info.get("LastModified", info.get("created", "")))
        stamps.update(f"{key[len(root):]}\0{info.get('size')}\0{stamp}\n".encode())
    identity["files"] = len(keys)
    identity["listing_sha256"] = stamps.hexdigest()
    chunks = [k for k in keys if not k.rsplit("/", 1)[-1].startswith((".z", "zarr.json"))]
    picks = [chunks[int(i)] for i in np.unique(np.linspace(0, len(chunks) - 1, FINGERPRINT_SAMPLES).round())] \
        if chunks else []
    sampled = hashlib.sha256()
    for key in picks:
        sampled.update(fs.cat_file(key))
    identity["sampled_sha256"] = sampled.hexdigest()
    return identity


def written_by_nisbflow(path, kind: str) -> bool:
    """Whether an existing output is a ``kind`` output nisbflow wrote: a zarr array or group whose attributes carry
    ``nisbflow_version`` and ``nisbflow_output == kind`` (outputs from before ``nisbflow_output`` was recorded count
    by ``nisbflow_version`` alone), or, for ``kind="seed"``, a folder holding only a seed that nisbflow wrote."""
    import zarr

    url = storage_url(path)
    candidates = [(url, kind)] + ([(f"{url}/data.zarr", "seed")] if kind == "seed" else [])
    for candidate, expected in candidates:
        try:
            node = zarr.open(candidate, mode="r")
        except Exception:
            continue
        attrs = node.attrs
        if "nisbflow_version" not in attrs or attrs.get("nisbflow_output", expected) != expected:
            continue
        if candidate == url:
            return True
        fs, root = fsspec.core.url_to_fs(url)  # a seed folder: nothing there but what synth writes
        names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
        return names <= {"data.zarr", "skeleton.pkl", "skeleton.json", "skeleton.npz"}
    return False


def check_replaceable(output, kind: str, *, overwrite: bool, force: bool) -> bool:
    """Whether ``output`` exists; raise :class:`OutputExistsError` unless it may be replaced: ``overwrite`` for a
    ``kind`` output nisbflow wrote, ``force`` for anything else."""
    url = storage_url(output)
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(root):
        return False
    if force:
        return True
    if not overwrite:
        raise OutputExistsError(f"output {output} already exists; pass --overwrite to replace it")
    if not written_by_nisbflow(url, kind):
        raise OutputExistsError(f"output {output} exists and is not a {kind} output written by nisbflow (its "
                                "attributes do not say so); --overwrite replaces only those, pass --force to "
                                "replace it anyway")
    return True


# ----------------------------------------------------------------------------------------------------------------
# staged runs


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")



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


def _plain(value):
    """JSON round trip, so a fresh identity compares equal to one read back from a manifest."""
    return json.loads(json.dumps(value, default=str))


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

    def __init__(self, output, *, kind: str, inputs: dict | None = None, identity: dict | None = None,
                 overwrite: bool = False, force: bool = False, log: Callable[[str], None] | None = None,
                 checkpoint=None):
        self.output = str(output).rstrip("/")
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
        self._identity = identity or {}
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
        """The array inside :attr:`data` when the output is an OME-NGFF image group
        (:func:`nisbflow.data.ngff.create_image`): where blocks are written."""
        from nisbflow.data.ngff import level_url

        return level_url(self.data)

    def scratch(self, name: str) -> str:
        """A per-run scratch folder that survives interruption with the staging folder."""
        return self._url(f"{self._staging}/scratch/{name}")

    def marker(self, stage: str, key: str) -> str:
        """URL of one block's marker for ``stage``; write it with :func:`write_marker` after the block's data."""
        return self._url(f"{self._staging}/done/{stage}/{key}")

    # -- lifecycle
    def preflight(self) -> "StagedRun":
        """Every refusal :meth:`__enter__` would give (input overlap, existing output, missing folder, a lock held by
        a live run), without taking the lock or writing anything: for commands to call before a cluster starts."""
        check_not_input(self.output, self.inputs)
        self._check_parent(create=False)
        check_replaceable(self.output, self.kind, overwrite=self.overwrite, force=self.force)
        self._lock().check()
        return self

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

    def __enter__(self) -> "StagedRun":
        self.preflight()
        self._check_parent(create=True)
        self._fs.makedirs(self._staging, exist_ok=True)
        self._acquire_lock()
        try:
            self._open_manifest()
            self._check_workers()
        except BaseException:
            self._release_lock()
            raise
        return self

    def __exit__(self, error_type, error, traceback) -> bool:
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
        return False

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
            _remove_tree(self._fs, self._staging)
        else:
            self._lock().release()
        self._lock_token = None

    def _check_workers(self) -> None:
        """On a cluster that may not share this machine's files, refuse unless every worker sees the inputs and the
        checkpoint as the client does and sees this run's staging folder (:func:`nisbflow.paths.check_on_workers`)."""
        from nisbflow.paths import check_on_workers
        from nisbflow.progress import current_client

        check_on_workers(current_client(), self.inputs, checkpoint=self.checkpoint,
                         staging=(self.staging, self._url(f"{self._staging}/{self.LOCK}"), self._lock_token),
                         fingerprints=self.input_fingerprints)

    def check_inputs_unchanged(self) -> None:
        """Raise unless every input still has the fingerprint it had when the run started: an input replaced or
        rewritten while the run read it gives a result that matches neither version."""
        for role, path in self.inputs.items():
            now = _plain(fingerprint(path))
            if now != self.input_fingerprints.get(role):
                raise InputChangedError(
                    f"{role} {path} changed while this run read it (another process rewrote or replaced it: "
                    f"{', '.join(_differences(self.input_fingerprints.get(role, {}), now)) or 'its files'} differ); "
                    f"nothing was published to {self.output}: re-run once the {role} no longer change")

    def _open_manifest(self) -> None:
        path = f"{self._staging}/{self.MANIFEST}"
        self.input_fingerprints = _plain({role: fingerprint(p) for role, p in self.inputs.items()})
        identity = _plain(dict(kind=self.kind, output=storage_url(self.output), inputs=self.input_fingerprints,
                               **self._identity))
        reason = None
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
                if not changed:
                    self.run_id, self.resumed = manifest["run_id"], True
                    return
                reason = "it was made with different " + ", ".join(changed)
        elif any(p.rstrip("/").rsplit("/", 1)[-1] != self.LOCK for p in self._fs.ls(self._staging, detail=False)):
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
        """Move :attr:`data` to the output (replacing it when allowed) and remove the staging folder."""
        fs, staged, final = self._fs, f"{self._staging}/{self._name}", self._final
        if not fs.exists(staged):
            raise NisbflowError(f"output {self.output}: the run finished without writing {self.data}")
        self.check_inputs_unchanged()
        check_replaceable(self.output, self.kind, overwrite=self.overwrite, force=self.force)
        retired = f"{self._staging}/replaced"
        if fs.exists(final):
            _move(fs, final, retired)
        _move(fs, staged, final)
        self.published = True


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
