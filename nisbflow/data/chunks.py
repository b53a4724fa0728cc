"""Chunks checked where they are read: a missing or damaged chunk is an error naming it, never zeros.

zarr reads a chunk file that is not there as the fill value, and blosc does not always reject a truncated
buffer, so a deleted or cut chunk of an input turns into a plausible, wrong result. nisbflow therefore

* writes every chunk of its outputs, even one that holds only the fill value (:func:`open_for_writing`), and says
  so in their attributes (``nisbflow_chunks: all``, :data:`COMPLETE_ATTRIBUTE`);
* reads volumes through :class:`CheckedStore` (:func:`open_checked`): in an array that records every chunk as
  written, a missing chunk raises :class:`~nisbflow.errors.VolumeError` naming it; a blosc chunk whose header does
  not match its size (cut, or overwritten with other bytes) raises too, in any array;
* trusts a finished block of a staged output only when its chunks are there and whole (:func:`damaged_chunks`).

Arrays that other tools wrote, without the attribute, keep zarr's meaning of a missing chunk (the fill value).
"""

from __future__ import annotations

import math

import fsspec
import numcodecs
import numpy as np
import zarr
import zarr.codecs
from zarr.storage import WrapperStore

from nisbflow.errors import VolumeError

COMPLETE_ATTRIBUTE = "nisbflow_chunks"
"""Array attribute that nisbflow's outputs carry with the value ``"all"``: every chunk is stored."""

METADATA_NAMES = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"})

BLOSC_HEADER = 16
"""Bytes of a blosc frame's header: version, versionlz, flags, typesize, nbytes, blocksize, cbytes (uint32 LE)."""


def blosc_chunk_nbytes(array) -> int | None:
    """The decompressed size of one chunk when ``array`` is compressed by blosc alone (no filters), the layout
    nisbflow writes; None for other codecs."""
    compressors, filters = tuple(array.compressors), tuple(array.filters)
    if filters or len(compressors) != 1:
        return None
    if not isinstance(compressors[0], (numcodecs.Blosc, zarr.codecs.BloscCodec)):
        return None
    return int(math.prod(array.chunks)) * np.dtype(array.dtype).itemsize


def check_blosc(data: bytes, nbytes: int, where: str, key: str, size: int | None = None) -> None:
    """Raise :class:`VolumeError` unless ``data`` (a chunk's first bytes, or all of them) starts a blosc frame of
    ``nbytes`` decompressed bytes whose compressed size is the file's (``size``, default ``len(data)``)."""
    size = len(data) if size is None else size
    if len(data) < BLOSC_HEADER:
        raise VolumeError(
            f"{where}: chunk {key} is damaged: {size} bytes, shorter than a blosc header; re-create "
            "the array or restore the chunk"
        )
    stored_nbytes = int.from_bytes(data[4:8], "little")
    stored_cbytes = int.from_bytes(data[12:16], "little")
    if stored_cbytes != size or stored_nbytes != nbytes:
        raise VolumeError(
            f"{where}: chunk {key} is damaged: {size} bytes where its blosc header says "
            f"{stored_cbytes} compressed and {stored_nbytes} decompressed (expected {nbytes}): cut, or "
            "overwritten; re-create the array or restore the chunk"
        )


def _is_chunk(key: str) -> bool:
    return key.rsplit("/", 1)[-1] not in METADATA_NAMES


def _file_of(store, key: str) -> str:
    """Where a store keeps ``key``: a path or URL to name in messages."""
    root = getattr(store, "root", None)
    if root is None and getattr(store, "fs", None) is not None:
        from nisbflow.paths import join_protocol

        root = join_protocol(store.fs, store.path)
    return f"{str(root).rstrip('/')}/{key}" if root is not None else key


class CheckedStore(WrapperStore):
    """A zarr store that refuses missing chunks (``complete``) and blosc chunks whose header does not match their
    size (``blosc_nbytes``: the decompressed size of one chunk), naming the array (``where``) and the chunk key.
    Picklable, so it travels to Dask workers inside the arrays it serves."""

    def __init__(self, store, *, where: str = "array", complete: bool = False, blosc_nbytes: int | None = None):
        super().__init__(store)
        self.where, self.complete, self.blosc_nbytes = where, complete, blosc_nbytes

    def _with_store(self, store):
        return type(self)(store, where=self.where, complete=self.complete, blosc_nbytes=self.blosc_nbytes)

    def __eq__(self, other):
        return (
            isinstance(other, CheckedStore)
            and self._store == other._store
            and (self.where, self.complete, self.blosc_nbytes) == (other.where, other.complete, other.blosc_nbytes)
        )

    def __repr__(self) -> str:
        return f"CheckedStore({self._store!r})"

    async def get(self, key, prototype, byte_range=None):
        value = await self._store.get(key, prototype, byte_range)
        if not _is_chunk(key):
            return value
        if value is None:
            if self.complete:
                raise VolumeError(
                    f"{self.where}: chunk {_file_of(self._store, key)} is missing, but the array "
                    "records that every chunk was written (nisbflow_chunks: all): a file was deleted "
                    "or not copied; re-create the array or restore the chunk"
                )
            return value
        if self.blosc_nbytes is not None and byte_range is None:
            check_blosc(value.to_bytes(), self.blosc_nbytes, self.where, _file_of(self._store, key))
        return value


def open_checked(source, where: str | None = None, mode: str = "r"):
    """``source`` (a zarr array, or the URL of one) opened read-only through a :class:`CheckedStore` when it has
    something to check (every chunk recorded as written, or blosc chunks); returned as it is otherwise."""
    array = source if isinstance(source, zarr.Array) else zarr.open_array(str(source), mode=mode)
    if isinstance(array.store_path.store, CheckedStore):
        return array
    complete = array.attrs.get(COMPLETE_ATTRIBUTE) == "all"
    nbytes = blosc_chunk_nbytes(array)
    if not complete and nbytes is None:
        return array
    store = CheckedStore(array.store_path.store, where=where or str(source), complete=complete, blosc_nbytes=nbytes)
    return zarr.open_array(store=store, path=array.store_path.path, mode="r")


def open_for_writing(url: str):
    """A zarr array opened for block writes: every chunk is stored, even one of only the fill value (zarr skips
    those by default), so a missing chunk always means a lost one (:data:`COMPLETE_ATTRIBUTE`)."""
    return zarr.open_array(url, mode="r+").with_config({"write_empty_chunks": True})


def chunk_keys(array, region) -> list[tuple[int, ...]]:
    """The chunk coordinates of ``array`` that ``region`` (slices over all its axes, or its leading ones) touches."""
    region = tuple(region) + tuple(slice(None) for _ in array.shape[len(tuple(region)) :])
    bounds = [r.indices(n)[:2] for r, n in zip(region, array.shape)]
    ranges = [range(start // c, -(-stop // c)) for (start, stop), c in zip(bounds, array.chunks)]
    return [tuple(r[i] for r, i in zip(ranges, index)) for index in np.ndindex(*[len(r) for r in ranges])]


def damaged_chunks(url: str, regions: dict) -> dict:
    """For each ``{name: region}`` of the zarr array at ``url``, why its stored chunks cannot be trusted: a chunk
    file missing, or (blosc) a header that does not match the file's size. Returns ``{name: reason}`` for the
    damaged ones only. One listing of the array's files, and 16 bytes read per blosc chunk: no chunk is decoded.
    Chunks of non-blosc arrays are read and decoded."""
    array = zarr.open_array(url, mode="r")
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    sizes = {path[len(root) + 1 :]: info.get("size") for path, info in fs.find(root, detail=True).items()}
    nbytes = blosc_chunk_nbytes(array)
    damaged = {}
    for name, region in regions.items():
        for coords in chunk_keys(array, region):
            key = array.metadata.encode_chunk_key(coords)
            if key not in sizes:
                damaged[name] = f"chunk {key} is missing"
                break
            if nbytes is not None:
                try:
                    check_blosc(
                        fs.cat_file(f"{root}/{key}", start=0, end=BLOSC_HEADER), nbytes, url, key, size=sizes[key]
                    )
                except VolumeError:
                    damaged[name] = f"chunk {key} is damaged"
                    break
        if name not in damaged and nbytes is None:
            try:
                array[tuple(region)]
            except Exception as error:
                damaged[name] = f"its chunks do not decode ({type(error).__name__})"
    return damaged
