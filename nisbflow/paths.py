"""Paths that mean the same on every Dask worker (the check that they do is :mod:`nisbflow.visibility`).

A relative path is relative to the working folder of the process that opens it. The client and the workers of a
cluster nisbflow did not start (``--cluster tcp://…``, a SLURM job, a container) rarely share one, and a worker
reading a zarr array that is not there sees only missing chunks, which zarr reads as zeros: a silent wrong result.
So:

* every local path nisbflow hands to zarr, fsspec or a worker is made absolute on the client first
  (:func:`storage_url`);
* on a cluster whose workers may not share the client's file system (anything but a ``LocalCluster`` in this
  process), one probe task per worker (:func:`nisbflow.visibility.check_on_workers`) checks that every input has the
  client's
  fingerprint there, that the checkpoint has the client's hash, and that the output's staging folder is the one the
  client locked; otherwise the run is refused in one line naming the path and the worker.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import fsspec

from nisbflow.errors import NisbflowError


class NotVisibleOnWorkerError(NisbflowError):
    """An input, checkpoint or output folder is not the same on a Dask worker as on the client, or cannot be
    reached at all (an unknown storage scheme)."""


def storage_url(path) -> str:
    """A path or URL as nisbflow hands it to zarr and fsspec: local paths and ``file://`` URLs become plain
    absolute paths (zarr's local store creates folders; its fsspec store on ``file://`` does not)."""
    path = str(path).rstrip("/")
    if "://" not in path:
        return os.path.abspath(os.path.expanduser(path)) if path else path
    protocol, rest = path.split("://", 1)
    if protocol in ("file", "local"):
        return os.path.abspath("/" + rest.lstrip("/"))
    try:
        fsspec.get_filesystem_class(protocol.split("::")[0])
    except ValueError:
        raise NotVisibleOnWorkerError(
            f"{path}: unknown storage scheme '{protocol}://'; use a local path or an fsspec "
            "URL such as s3://bucket/…, gs://bucket/… or memory://…"
        ) from None
    return path


def protocol_of(fs) -> str:
    """An fsspec filesystem's first protocol name (``file``, ``s3``, …)."""
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def join_protocol(fs, root: str) -> str:
    """A filesystem path as a URL nisbflow can hand on: plain for local files, ``protocol://root`` otherwise."""
    protocol = protocol_of(fs)
    return root if protocol in ("file", "local") else f"{protocol}://{root}"


def location(path) -> tuple[str, str]:
    """(filesystem protocol, normalised path) for comparing where things are."""
    url = storage_url(path)
    if "://" not in url:
        return "file", os.path.realpath(url)
    fs, root = fsspec.core.url_to_fs(url)
    return protocol_of(fs), root.rstrip("/")


HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class VolumeLocation:
    """Where a volume is: ``kind`` (``zarr``, ``hdf5``, ``tiff``), the ``file`` (store) and, for HDF5, the
    ``dataset`` inside it (None: ``main``, else the only one)."""

    kind: str
    file: str
    dataset: str | None = None

    def __str__(self) -> str:
        return f"{self.file}:/{self.dataset}" if self.kind == "hdf5" and self.dataset else self.file


def locate(path: str | Path) -> VolumeLocation:
    """The :class:`VolumeLocation` a volume path names (``file.h5:/dataset``, ``stack.tif``, zarr otherwise)."""
    path = str(path)
    for suffix in HDF5_SUFFIXES:
        found = re.match(rf"^(.*{re.escape(suffix)})(?::/?(.*))?$", path, re.IGNORECASE)
        if found:
            return VolumeLocation("hdf5", found.group(1), found.group(2) or None)
    if path.lower().endswith(TIFF_SUFFIXES):
        return VolumeLocation("tiff", path)
    return VolumeLocation("zarr", path)
