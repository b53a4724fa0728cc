"""Whether every Dask worker sees what the client sees: one probe task per worker compares the run's inputs
(their fingerprints), the checkpoint (its sha256) and the output's staging folder (the client's lock) with the
client's, and refuses the run in one line naming the path and the worker (docs/faults.md). Paths themselves are made
the same on every worker by :mod:`nisbflow.paths`."""

from __future__ import annotations

import os
from dataclasses import dataclass

import fsspec

from nisbflow.fingerprints import fingerprint, plain
from nisbflow.paths import NotVisibleOnWorkerError, join_protocol, storage_url


def cluster_shares_files(client) -> bool:
    """Whether every worker of ``client`` certainly sees this process's files: a ``LocalCluster`` (dask-cuda's
    included) started in this process. Anything else — a scheduler address, a SLURM or container cluster — is
    probed."""
    cluster = getattr(client, "cluster", None)
    if cluster is None:
        return False
    from distributed import LocalCluster

    return isinstance(cluster, LocalCluster)


def _probe(files: dict, checkpoint, staging: tuple | None) -> dict:
    """Run on one worker: the fingerprint of each of ``files`` ({role: path}), the hash of the file the
    :class:`~nisbflow.model.Checkpoint` ``checkpoint`` names on this worker (None when it is missing) and whether
    ``staging`` ``(folder, lock file, token)`` is the client's (the lock file holds
    the client's token) and writable. Returns what it found, compared on the client."""
    found: dict = {"cwd": os.getcwd(), "files": {}, "checkpoint": None, "staging": None}
    for role, path in files.items():
        try:
            found["files"][role] = fingerprint(path)
        except Exception as error:  # unreadable there: report, do not fail the probe itself
            found["files"][role] = {"error": f"{type(error).__name__}: {error}"}
    if checkpoint is not None:
        found["checkpoint"] = checkpoint.sha256_here()
    if staging is not None:
        folder, lock, token = staging
        try:
            fs, root = fsspec.core.url_to_fs(lock)
            seen = token.encode() in fs.cat_file(root)
        except Exception:
            seen = False
        local = "://" not in folder
        found["staging"] = {"seen": seen, "writable": (not local) or os.access(folder, os.W_OK)}
    return found


def _compared(expected: dict, found: dict) -> str | None:
    """Why a worker's fingerprint of one input differs from the client's (None when equal)."""
    if "error" in found:
        return f"it cannot be read there ({found['error']})"
    if found.get("missing") and not expected.get("missing"):
        return "it does not exist there"
    if found != expected:
        return "it differs there from the client's copy (another file at the same path)"
    return None


def check_on_workers(
    client, files: dict, *, checkpoint=None, staging: tuple | None = None, fingerprints: dict | None = None
) -> None:
    """Refuse a run, in one line, unless every worker of ``client`` sees what the client sees.

    ``files``: ``{role: path or URL}`` of the run's inputs (None values skipped); ``fingerprints``: the client's
    :func:`~nisbflow.staging.fingerprint` of each, when already computed (e.g. for a run manifest).
    ``checkpoint``: a :class:`~nisbflow.model.Checkpoint` whose file must have the client's hash on every worker.
    ``staging``: ``(staging folder, lock file, lock token)`` of the output: every worker must see the lock the
    client took there and be able to write beside it. Does nothing without a client, or on a cluster whose workers
    share this process's files (:func:`cluster_shares_files`).
    """
    if client is None or cluster_shares_files(client):
        return
    files = {role: storage_url(path) for role, path in files.items() if path is not None}
    expected = {role: (fingerprints or {}).get(role) or fingerprint(path) for role, path in files.items()}
    expected = plain(expected)
    results = client.run(_probe, files, checkpoint, staging, on_error="return")
    for worker, found in sorted(results.items()):
        if isinstance(found, BaseException):
            raise NotVisibleOnWorkerError(
                f"cannot check the run's files on worker {worker}: {type(found).__name__}: {found}"
            )
        where = f"on worker {worker} (working folder {found['cwd']})"
        for role, path in files.items():
            reason = _compared(expected[role], plain(found["files"].get(role, {})))
            if reason:
                raise NotVisibleOnWorkerError(
                    f"{role} {path}: {reason} {where}; every worker must see the client's files at the same path "
                    "(a shared file system, or an s3:// / gs:// URL)"
                )
        if checkpoint is not None and found["checkpoint"] != checkpoint.sha256:
            reason = (
                "does not exist there"
                if found["checkpoint"] is None
                else f"has sha256 {found['checkpoint']} there, not the client's {checkpoint.sha256}"
            )
            raise NotVisibleOnWorkerError(
                f"checkpoint {checkpoint.name} ({checkpoint.worker_reference}) {reason} {where}; every worker must "
                "load the same checkpoint file"
            )
        if staging is not None and not found["staging"]["seen"]:
            raise NotVisibleOnWorkerError(
                f"output folder {os.path.dirname(staging[0])}: the staging folder {staging[0]} the client created is "
                f"not visible {where}; write the output where every worker sees it"
            )
        if staging is not None and not found["staging"]["writable"]:
            raise NotVisibleOnWorkerError(f"output staging folder {staging[0]} is not writable {where}")


def array_location(array) -> str | None:
    """The path or URL of the files behind a zarr array (None for arrays in memory or not from zarr)."""
    store_path = getattr(array, "store_path", None)
    if store_path is None:
        return None
    store, inner = store_path.store, store_path.path
    store = getattr(store, "_store", store)  # a wrapping store (nisbflow's checked reads)
    root = getattr(store, "root", None)
    if root is not None:  # zarr's LocalStore
        base = str(root)
    elif getattr(store, "fs", None) is not None:  # zarr's FsspecStore
        base = join_protocol(store.fs, store.path)
    else:
        return None
    return f"{base.rstrip('/')}/{inner}" if inner else base


def check_arrays_on_workers(arrays: dict) -> None:
    """:func:`check_on_workers` for zarr arrays already open on the client (``{role: array}``; numpy and dask arrays
    are skipped), on the current Dask client."""
    from nisbflow.tasks import current_client

    client = current_client()
    if client is None or cluster_shares_files(client):
        return
    files = {role: array_location(array) for role, array in arrays.items()}
    check_on_workers(client, {role: path for role, path in files.items() if path is not None})


@dataclass(frozen=True)
class WorkerVisibility:
    """What every worker of the current cluster must see for one staged run, the
    :class:`~nisbflow.staging.run.StagedRun`'s collaborator: its ``inputs`` (``{role: path}``) and the
    :class:`~nisbflow.model.Checkpoint` ``checkpoint`` (None when the run loads none)."""

    inputs: dict
    checkpoint: object = None

    def check(self, staging: tuple, fingerprints: dict) -> None:
        """:func:`check_on_workers` on the current client (none: nothing to check) with the run's ``staging``
        ``(folder, lock file, lock token)`` and its inputs' ``fingerprints``, already computed for its manifest."""
        from nisbflow.tasks import current_client

        check_on_workers(
            current_client(), self.inputs, checkpoint=self.checkpoint, staging=staging, fingerprints=fingerprints
        )
