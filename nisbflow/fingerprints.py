"""Identities of a run's inputs, cheap for terabyte arrays: what a run manifest records (:mod:`nisbflow.staging`)
and what every worker must see alike (:mod:`nisbflow.visibility`)."""

from __future__ import annotations

import hashlib
import json

import fsspec
import numpy as np

from nisbflow.paths import join_protocol as _join_protocol
from nisbflow.paths import storage_url


def plain(value):
    """JSON round trip, so a fresh identity compares equal to one read back from a manifest."""
    return json.loads(json.dumps(value, default=str))


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
        stamps.update(f"{key[len(root) :]}\0{info.get('size')}\0{stamp}\n".encode())
    identity["files"] = len(keys)
    identity["listing_sha256"] = stamps.hexdigest()
    chunks = [k for k in keys if not k.rsplit("/", 1)[-1].startswith((".z", "zarr.json"))]
    picks = (
        [chunks[int(i)] for i in np.unique(np.linspace(0, len(chunks) - 1, FINGERPRINT_SAMPLES).round())]
        if chunks
        else []
    )
    sampled = hashlib.sha256()
    for key in picks:
        sampled.update(fs.cat_file(key))
    identity["sampled_sha256"] = sampled.hexdigest()
    return identity
