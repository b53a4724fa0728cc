"""What both decoders write (connected components, :mod:`nisbflow.decode.cc_blockwise`, and agglomeration,
:mod:`nisbflow.decode.agglomerate_blockwise`): the inputs opened and checked, the per-block local ids kept in the
staging folder's scratch, and the relabel pass that writes final ids into OME-NGFF segmentations (one per threshold,
a group for several) with their attributes. Axis order ``(X, Y, Z)``; affinities ``(C, X, Y, Z)``."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import dask
import fsspec
import numcodecs
import numpy as np
import zarr
from dask.base import tokenize

from nisbflow.data.chunks import open_for_writing
from nisbflow.data.formats import staged_source
from nisbflow.data.ngff import create_image, output_array
from nisbflow.data.volumes import fast_compressors, open_affinities, open_volume, output_attrs, voxel_size_of
from nisbflow.decode.kernel import check_mask
from nisbflow.errors import NisbflowError
from nisbflow.decode.stitch import SPATIAL_AXES, BlockLabels, SegmentNumbering, relabel_block
from nisbflow.region import Region
from nisbflow.tasks import compute_tasks
from nisbflow.staging import BlockwisePass, write_marker

if TYPE_CHECKING:
    from nisbflow.settings import RunSettings

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=32)
def _opened(path: str, run_id: str) -> zarr.Array:
    """A zarr array opened once per worker process, path and run (opening reads its metadata, ~1 ms per task; the
    staging path is the same for every run on one output, so the run id is part of the key).

    Only used for the arrays a decoding run creates itself, which no one else resizes while it runs."""
    return open_for_writing(path)


class ScratchDamagedError(NisbflowError):
    """A scratch file's content does not match the checksum written with it."""


SCRATCH_TRAILER = b"NFS1"
"""What ends every scratch file, before its CRC-32 (4 bytes, little-endian) of everything before it."""


def seal(payload: bytes) -> bytes:
    """A scratch file's bytes: ``payload`` followed by :data:`SCRATCH_TRAILER` and its CRC-32."""
    return payload + SCRATCH_TRAILER + zlib.crc32(payload).to_bytes(4, "little")


def unseal(data: bytes, path: str, fs=None) -> bytes:
    """The payload of a scratch file read whole, after checking its checksum. A damaged file (a flipped bit, other
    bytes of the same size, a cut) is removed, so the next run computes its block again, and named in one line:
    it is never decoded into the output."""
    payload, trailer = data[:-8], data[-8:]
    if (
        len(data) >= 8
        and trailer[:4] == SCRATCH_TRAILER
        and zlib.crc32(payload) == int.from_bytes(trailer[4:], "little")
    ):
        return payload
    if fs is not None:
        with contextlib.suppress(OSError):
            fs.rm(path)
    raise ScratchDamagedError(
        f"scratch file {path} is damaged (its checksum does not match its content); it was "
        "removed: re-run the same command, which computes that block again"
    )


class LocalIdScratch:
    """Pass 1's local ids on disk: one LZ4-compressed ``uint32`` file per threshold and block under ``root``, plus
    each block's face planes. Every file ends with a CRC-32 of its content (:func:`seal`), checked whenever it is
    read (:func:`unseal`).

    ``root`` is any fsspec URL next to the output. The files are private to one run and read back whole, so they skip
    zarr's chunk-grid machinery (which cost about 15 ms per 128³ block here). Picklable: only paths travel to workers.
    """

    codec = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)

    def __init__(self, root: str, n_thresholds: int):
        self.root = root.rstrip("/")
        self.n_thresholds = n_thresholds
        fs, path = fsspec.core.url_to_fs(self.root)
        for folder in [*range(n_thresholds), "faces"]:
            fs.makedirs(f"{path}/{folder}", exist_ok=True)

    def _file(self, threshold_index: int, block_id: int):
        return fsspec.core.url_to_fs(f"{self.root}/{threshold_index}/{block_id}.lz4")

    def write(self, threshold_index: int, block_id: int, labels: np.ndarray) -> None:
        fs, path = self._file(threshold_index, block_id)
        fs.pipe_file(path, seal(self.codec.encode(np.ascontiguousarray(labels, dtype=np.uint32))))

    def read(self, threshold_index: int, block_id: int, shape: tuple[int, ...]) -> np.ndarray:
        fs, path = self._file(threshold_index, block_id)
        payload = unseal(fs.cat_file(path), path, fs)
        return np.frombuffer(self.codec.decode(payload), dtype=np.uint32).reshape(shape)

    def write_faces(self, block_id: int, labelled: list[BlockLabels]) -> None:
        """Store one block's halo and upper face planes (all thresholds), so they need not wait in worker memory
        for the face-pair tasks of the block and its upper neighbours."""
        arrays = {}
        for t, block_labels in enumerate(labelled):
            for axis in SPATIAL_AXES:
                if block_labels.halo_faces[axis] is not None:
                    arrays[f"halo-{t}-{axis}"] = block_labels.halo_faces[axis]
                arrays[f"upper-{t}-{axis}"] = block_labels.upper_faces[axis]
        self.write_arrays(block_id, arrays)

    def read_faces(self, block_id: int, summary: list[BlockLabels]) -> list[BlockLabels]:
        """``summary`` (from a label task) with its faces read back."""
        data = self.read_arrays(block_id)
        return [
            block_labels._replace(
                halo_faces=tuple(data.get(f"halo-{t}-{a}") for a in SPATIAL_AXES),
                upper_faces=tuple(data[f"upper-{t}-{a}"] for a in SPATIAL_AXES),
            )
            for t, block_labels in enumerate(summary)
        ]

    def write_arrays(self, block_id: int, arrays: dict) -> None:
        """One block's named arrays, as one LZ4-compressed ``.npz`` (the block's faces file)."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        fs, path = fsspec.core.url_to_fs(f"{self.root}/faces/{block_id}.npz.lz4")
        fs.pipe_file(path, seal(self.codec.encode(buffer.getvalue())))

    def read_arrays(self, block_id: int) -> dict:
        """The arrays :meth:`write_arrays` stored for block ``block_id``."""
        fs, path = fsspec.core.url_to_fs(f"{self.root}/faces/{block_id}.npz.lz4")
        payload = unseal(fs.cat_file(path), path, fs)
        with np.load(io.BytesIO(self.codec.decode(payload)), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def blocks_present(self) -> set[int]:
        """Linear ids of blocks whose files (every threshold's local ids and the faces) are all in the scratch and
        whole: each file's blosc header names its own size less the checksum trailer (a file cut by a crash or a
        full disk does not). Content is checked where a file is read (:func:`unseal`)."""
        fs, path = fsspec.core.url_to_fs(self.root)
        present = None
        for folder, suffix in [*((str(t), ".lz4") for t in range(self.n_thresholds)), ("faces", ".npz.lz4")]:
            listing = fs.ls(f"{path}/{folder}", detail=True)
            ids = set()
            for entry in listing:
                name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
                if not (name.endswith(suffix) and name[: -len(suffix)].isdigit()):
                    continue
                header = fs.cat_file(entry["name"], start=0, end=16)
                if len(header) == 16 and int.from_bytes(header[12:16], "little") + 8 == entry.get("size"):
                    ids.add(int(name[: -len(suffix)]))
            present = ids if present is None else present & ids
        return present or set()


def _relabel_in_zarr(
    scratch: LocalIdScratch,
    threshold_index: int,
    target: str,
    write_region,
    numbering: SegmentNumbering,
    block_id: int,
    marker: str,
    run_id: str,
) -> int:
    """Task: read one block's local ids from ``scratch``, write final ids to ``target``, then its ``marker``;
    returns the block id."""
    shape = Region(write_region).shape
    labels = scratch.read(threshold_index, block_id, shape)
    _opened(target, run_id)[write_region] = relabel_block(labels, numbering, block_id)
    write_marker(marker, run_id)
    return block_id


def threshold_array_name(threshold: float) -> str:
    """Array name of one threshold's segmentation in a multi-threshold output group, e.g. ``threshold-0.75``."""
    return f"threshold-{threshold:g}"


def open_decoding_inputs(affinities, mask, log) -> tuple[zarr.Array, zarr.Array | None]:
    """The affinities (checked by :func:`~nisbflow.data.volumes.open_affinities`, a sample of their values
    included) and the affinity mask, if any (:func:`open_affinity_mask`)."""
    source = open_affinities(affinities, log=log)
    return source, None if mask is None else open_affinity_mask(mask, source.shape[1:])


def open_affinity_mask(mask, spatial_shape) -> zarr.Array:
    """The affinity mask ``(X, Y, Z)``, checked to have the affinities' ``spatial_shape``."""
    mask_source = open_volume(mask, role="affinity mask", ndims=(3,))
    check_mask(mask_source.shape, tuple(spatial_shape), where=f"affinity mask {mask}")
    return mask_source


def decoding_run(run) -> RunSettings | None:
    """The one settings argument of the block-wise decoders, checked on entry: the run's
    :class:`~nisbflow.settings.RunSettings` (its configuration and settings are recorded in the output), or None
    (nothing recorded). Anything else is refused: a plain :class:`~nisbflow.config.Config` carries no sources and no
    checkpoint to record; resolve it with :func:`nisbflow.settings.resolve_settings`."""
    if run is None:
        return None  # nisbflow.settings (and torch, through the checkpoint module) load only for a run's settings
    from nisbflow.settings import RunSettings

    if isinstance(run, RunSettings):
        return run
    raise TypeError(
        f"decoding run settings: expected a nisbflow.settings.RunSettings (resolve_settings) or None, got "
        f"{type(run).__name__}"
    )


@dataclass(frozen=True)
class DecodeResult:
    """What a block-wise decode wrote, whichever its method: ``counts``, the number of segments at each threshold
    (in the order decoded), and ``region_graph``, the size of agglomeration's region adjacency graph
    (``{"fragments": F, "edges": E}``; None for connected components)."""

    counts: dict[float, int]
    region_graph: dict[str, int] | None = None


def relabel_outputs(
    staged,
    scratch: LocalIdScratch,
    grid,
    source,
    thresholds,
    numberings,
    attributes,
    token: str,
    progress: bool,
    *,
    ids_per_threshold: bool,
) -> dict[float, int]:
    """Pass 2 for every threshold: one OME-NGFF image (a group of them for several thresholds, with
    ``attributes(thresholds)``), each written block by block from the scratch's local ids through its numbering.
    ``ids_per_threshold``: the scratch holds local ids per threshold (connected components), or one set for all
    (agglomeration's fragments). Returns ``{threshold: number of segments}``."""
    multiple = len(thresholds) > 1
    if multiple and not staged.owns(staged.data):
        zarr.open_group(staged.data, mode="w", zarr_format=source.metadata.zarr_format).attrs.update(
            attributes(thresholds)
        )
    counts = {}
    for t, (threshold, numbering) in enumerate(zip(thresholds, numberings)):
        target = f"{staged.data}/{threshold_array_name(threshold)}" if multiple else staged.data
        attrs = attributes((threshold,), threshold=threshold, n_segments=numbering.n_segments)
        _relabel_pass(
            staged,
            f"relabel-{t}",
            scratch,
            t if ids_per_threshold else 0,
            target,
            attrs,
            grid,
            numbering,
            source.metadata.zarr_format,
            tokenize(token, threshold),
            progress,
        )
        counts[threshold] = numbering.n_segments
    return counts


SEGMENTATION_DESCRIPTION = "neuron segmentation: connected components of affinities > threshold, 0 = background"


def segmentation_attrs(
    source,
    affinities,
    mask,
    run: RunSettings | None,
    thresholds,
    run_id,
    *,
    description: str = SEGMENTATION_DESCRIPTION,
    decoding: dict | None = None,
    **extra,
) -> dict:
    """Attributes of a segmentation (or of the group of several): provenance, inputs, and for one threshold the
    run's settings with that threshold (``nisbflow_settings``). ``decoding``: the decoding settings to record beside
    the threshold (the method's own, for agglomeration)."""
    if decoding and decoding.get("method") == "waterz":
        section = dict(decoding, waterz=dict(decoding["waterz"], thresholds=[thresholds[0]]))
    else:
        section = dict(decoding or {}, threshold=thresholds[0])
    recorded = {} if run is None else run.record()
    settings = {"nisbflow_settings": dict(recorded, decoding=section)} if recorded and len(thresholds) == 1 else {}
    return output_attrs(
        description,
        voxel_size_of(source),
        "xyz",
        None if run is None else run.config,
        nisbflow_output="segmentation",
        nisbflow_run=run_id,
        affinities=str(affinities),
        affinity_mask=None if mask is None else str(mask),
        thresholds=list(thresholds),
        **extra,
        **staged_source(source.attrs),
        **settings,
    )


def _relabel_pass(
    staged,
    stage: str,
    scratch: LocalIdScratch,
    threshold_index: int,
    target: str,
    attrs: dict,
    grid,
    numbering: SegmentNumbering,
    zarr_format: Literal[2, 3],
    token: str,
    progress: bool,
) -> None:
    """Pass 2 for one threshold: final ids of every block not yet written, into ``target`` in the staged output
    (created as an OME-NGFF image group, and its markers dropped, unless this run created it)."""
    level = output_array(target, staged.layout)
    work = staged.pending(
        BlockwisePass.into_array(
            stage,
            grid,
            level,
            what="blocks already relabelled",
            create=lambda: create_image(
                target,
                attributes=attrs,
                zarr_format=zarr_format,
                layout=staged.layout,
                name=target.rstrip("/").rsplit("/", 1)[-1],
                shape=grid.shape,
                chunks=grid.block_shape,
                dtype=numbering.dtype,
                compressors=fast_compressors(zarr_format, shuffle=False),
            ),
        )
    )
    target = level
    shared = dask.delayed(numbering, traverse=False, name=f"decode-numbering-{token}")
    tasks = [
        dask.delayed(_relabel_in_zarr, pure=True)(
            scratch,
            threshold_index,
            target,
            grid.write_region(block),
            shared,
            grid.linear(block),
            staged.marker(stage, grid.key(block)),
            staged.run_id,
            dask_key_name=(f"decode-relabel-block-{token}",) + block,
        )
        for block in work.pending
    ]
    if tasks:
        compute_tasks(tasks, f"decode: relabel (threshold {attrs['threshold']:g})", progress=progress)
