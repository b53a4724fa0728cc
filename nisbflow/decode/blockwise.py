"""``decode_affinity_cc``: in memory (numpy → numpy) or block-wise on Dask (dask → dask, zarr → zarr).

Block-wise decoding runs in two passes over the chunks of the affinities:

1. *label*: every block labels its read region (write region plus a one-voxel lower halo) with the numba kernel and
   keeps only its faces and label count; face pairs give equivalences between provisional ids, which a tree of
   small union-find tasks merges (no dense global matrix, no single task over all blocks' data);
2. *relabel*: every block maps its local ids to the final consecutive ids 1..N (uint32 when N < 2³²).

The number of segments, and so the output dtype, is only known after pass 1, which therefore runs when the graph
is built. :func:`decode_to_zarr` stores pass 1's local ids on disk so affinities are read once;
:func:`decode_affinity_cc` on a dask array keeps nothing and recomputes the block labels in pass 2.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import warnings
from pathlib import Path

import dask
import dask.array as da
import fsspec
import numcodecs
import numpy as np
import zarr
from dask.base import tokenize
from dask.delayed import Delayed

from nisbflow.blocks import BlockGrid, task_priority, tree_reduce
from nisbflow.staging import write_marker
from nisbflow.data.chunks import open_for_writing
from nisbflow.data.ngff import create_image, level_url
from nisbflow.data.volumes import (fast_compressors, open_affinities, open_volume, output_attrs,
                                   voxel_size_of)
from nisbflow.decode.kernel import (NON_FINITE, check_affinities, check_backend, check_mask, check_thresholds,
                                   decode_in_memory)
from nisbflow.decode.stitch import (SPATIAL_AXES, BlockLabels, SegmentNumbering, block_counts, face_pairs,
                                    label_block, merge_equivalences, number_segments, relabel_block, upper_planes,
                                    without_labels)
from nisbflow.errors import ConfigError
from nisbflow.progress import compute_tasks

log = logging.getLogger(__name__)

MERGE_FAN_IN = 16
"""Equivalence lists merged by one union-find task of the reduction tree."""


def decode_affinity_cc(affinities, threshold: float = 0.75, mask=None, *, thresholds=None, backend: str = "numba",
                       progress: bool = False):
    """Connected components of thresholded affinities (BANIS ``decode_affinity_cc``).

    Parameters
    ----------
    affinities
        ``(C >= 3, X, Y, Z)`` float16 or float32, source-voxel storage; channels 0..2 (offsets x, y, z) are used.
        A numpy array is decoded in memory; a dask array block by block along its spatial chunks.
    threshold
        An edge is hard when its affinity is strictly above this, compared in the affinities' dtype.
    mask
        Optional ``(X, Y, Z)`` array (numpy or dask, like ``affinities``); 0 turns off every edge stored at a voxel.
    thresholds
        Several thresholds at once (overrides ``threshold``); a list with one segmentation each is returned.
    backend
        ``"numba"`` (CPU, default) or ``"cupy"`` (GPU, needs cupy).

    Returns
    -------
    ``(X, Y, Z)`` uint32 segmentation (uint64 from 2³² segments), 0 = background, ids 1..N; a list of them when
    ``thresholds`` is given. Numpy in, numpy out; dask in, dask out (the label pass has then already run).
    """
    values = check_thresholds(threshold if thresholds is None else thresholds)
    check_backend(backend)
    if isinstance(affinities, da.Array):
        segmentations = _decode_dask(affinities, values, mask, backend, progress)
    else:
        affinities = np.asarray(affinities)
        segmentations = decode_in_memory(affinities, values, None if mask is None else np.asarray(mask), backend)
    return segmentations if thresholds is not None else segmentations[0]


# ----------------------------------------------------------------------------------------------------------------
# graph building


def _prepare(affinities: da.Array, mask, chunks=None) -> tuple[da.Array, da.Array | None, BlockGrid]:
    check_affinities(affinities.shape, affinities.dtype)
    spatial_chunks = affinities.chunks[1:] if chunks is None else tuple(chunks)
    affinities = affinities[:3].rechunk((3,) + tuple(spatial_chunks))
    if mask is not None:
        mask = mask if isinstance(mask, da.Array) else da.from_array(mask)
        check_mask(mask.shape, affinities.shape[1:])
        mask = mask.rechunk(affinities.chunks[1:])
    grid = BlockGrid(affinities.chunks[1:])
    grid.check_fits()
    return affinities, mask, grid


class _BlockInputs:
    """Per block: the affinity chunk, the lower neighbours' last planes (halo) and the same for the mask."""

    def __init__(self, affinities: da.Array, mask, grid: BlockGrid, token: str):
        self.grid = grid
        self.chunk = affinities.to_delayed()[0]
        self.mask_chunk = mask.to_delayed() if mask is not None else None
        self.token = token
        self._planes_of = {}

    def _planes(self, source, name, block):
        """Task giving a chunk's last planes along x, y and z (one task serves all three upper neighbours)."""
        key = (name, block)
        if key not in self._planes_of:
            self._planes_of[key] = dask.delayed(upper_planes, pure=True)(
                source[block], dask_key_name=(f"decode-{name}-halo-{self.token}",) + block)
        return self._planes_of[key]

    def of(self, block) -> dict:
        lower = [self.grid.lower_neighbour(block, axis) for axis in SPATIAL_AXES]
        inputs = dict(
            affinities=self.chunk[block],
            halo_affinities=[None if n is None else self._planes(self.chunk, "affinities", n) for n in lower],
        )
        if self.mask_chunk is not None:
            inputs["mask"] = self.mask_chunk[block]
            inputs["halo_mask"] = [None if n is None else self._planes(self.mask_chunk, "mask", n) for n in lower]
        return inputs


def _along_axes(planes) -> list:
    """From each lower neighbour's :func:`upper_planes` (or None), the plane along the axis it neighbours on."""
    return [None if p is None else p[axis] for axis, p in enumerate(planes)]


@functools.lru_cache(maxsize=32)
def _opened(path: str, run_id: str) -> zarr.Array:
    """A zarr array opened once per worker process, path and run (opening reads its metadata, ~1 ms per task; the
    staging path is the same for every run on one output, so the run id is part of the key).

    Only used for the arrays a decoding run creates itself, which no one else resizes while it runs."""
    return open_for_writing(path)


class LocalIdScratch:
    """Pass 1's local ids on disk: one LZ4-compressed ``uint32`` file per threshold and block under ``root``, plus
    each block's face planes.

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
        fs.pipe_file(path, self.codec.encode(np.ascontiguousarray(labels, dtype=np.uint32)))

    def read(self, threshold_index: int, block_id: int, shape: tuple[int, ...]) -> np.ndarray:
        fs, path = self._file(threshold_index, block_id)
        return np.frombuffer(self.codec.decode(fs.cat_file(path)), dtype=np.uint32).reshape(shape)

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
        return [block_labels._replace(
            halo_faces=tuple(data.get(f"halo-{t}-{a}") for a in SPATIAL_AXES),
            upper_faces=tuple(data[f"upper-{t}-{a}"] for a in SPATIAL_AXES))
            for t, block_labels in enumerate(summary)]

    def write_arrays(self, block_id: int, arrays: dict) -> None:
        """One block's named arrays, as one LZ4-compressed ``.npz`` (the block's faces file)."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        fs, path = fsspec.core.url_to_fs(f"{self.root}/faces/{block_id}.npz.lz4")
        fs.pipe_file(path, self.codec.encode(buffer.getvalue()))

    def read_arrays(self, block_id: int) -> dict:
        """The arrays :meth:`write_arrays` stored for block ``block_id``."""
        fs, path = fsspec.core.url_to_fs(f"{self.root}/faces/{block_id}.npz.lz4")
        with np.load(io.BytesIO(self.codec.decode(fs.cat_file(path))), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def blocks_present(self) -> set[int]:
        """Linear ids of blocks whose files (every threshold's local ids and the faces) are all in the scratch and
        whole: each file's blosc header names its own size (a file cut by a crash or a full disk does not)."""
        fs, path = fsspec.core.url_to_fs(self.root)
        present = None
        for folder, suffix in [*((str(t), ".lz4") for t in range(self.n_thresholds)), ("faces", ".npz.lz4")]:
            listing = fs.ls(f"{path}/{folder}", detail=True)
            ids = set()
            for entry in listing:
                name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
                if not (name.endswith(suffix) and name[:-len(suffix)].isdigit()):
                    continue
                header = fs.cat_file(entry["name"], start=0, end=16)
                if len(header) == 16 and int.from_bytes(header[12:16], "little") == entry.get("size"):
                    ids.add(int(name[:-len(suffix)]))
            present = ids if present is None else present & ids
        return present or set()


def _label_and_store(affinities, halo_affinities, thresholds, backend, mask=None, halo_mask=(None, None, None),
                     scratch: LocalIdScratch | None = None, block_id: int | None = None, marker: str | None = None,
                     run_id: str | None = None):
    """Task: label one block; with ``scratch``, write its local ids and faces there, then its ``marker`` (payload:
    each threshold's label count and the NaN count, which is all a resumed run needs of it). Returns the summaries
    without labels (and without faces when they went to ``scratch``).

    ``halo_affinities`` / ``halo_mask``: per axis, the lower neighbour's :func:`upper_planes` (or None)."""
    labelled = label_block(affinities, _along_axes(halo_affinities), thresholds, mask, _along_axes(halo_mask), backend)
    if scratch is None:
        return without_labels(labelled)
    for t, block_labels in enumerate(labelled):
        scratch.write(t, block_id, block_labels.labels)
    scratch.write_faces(block_id, labelled)
    summary = [b._replace(labels=None, halo_faces=None, upper_faces=None) for b in labelled]
    if marker is not None:
        write_marker(marker, run_id, json.dumps([[b.count, b.nan_count] for b in summary]).encode())
    return summary


def _summary_from_marker(payload: bytes) -> list[BlockLabels]:
    """A finished label task's summary, from its marker's payload."""
    return [BlockLabels(None, None, None, int(count), int(nan)) for count, nan in json.loads(payload)]


def _block_summary(block, block_id: int, lower: list, lower_ids: list, label_bits: int,
                   scratch: LocalIdScratch | None = None) -> tuple:
    """Task: one block's face pairs with its lower neighbours and its label counts, for the merge tree.

    With ``scratch`` the faces are read from there (the label tasks stored them)."""
    if scratch is not None:
        block = scratch.read_faces(block_id, block)
        lower = [None if n is None else scratch.read_faces(i, n) for n, i in zip(lower, lower_ids)]
    return face_pairs(block, block_id, lower, lower_ids, label_bits), {block_id: block_counts(block)}


def _merge_summaries(*parts) -> tuple:
    """Task of the merge tree: union-find over the parts' equivalences, and their label counts gathered."""
    counts = {}
    for _, part_counts in parts:
        counts.update(part_counts)
    return merge_equivalences(*(pairs for pairs, _ in parts)), counts


def _label_pass(inputs: _BlockInputs, thresholds, backend, scratch, progress, staged=None) -> list[SegmentNumbering]:
    """Pass 1: label every block, merge equivalences in a tree, and number the segments (per threshold).

    With ``staged`` (a :class:`~nisbflow.staging.StagedRun`), blocks whose ``label`` marker and scratch files exist
    are not labelled again: their summaries come from the markers and their faces from the scratch."""
    grid, token = inputs.grid, inputs.token
    done = {} if staged is None else staged.pending("label", grid, what="blocks already labelled",
                                                     scratch_blocks=scratch.blocks_present).done
    labelled = {index: _summary_from_marker(payload) for index, payload in done.items()}
    summaries = []
    with dask.annotate(priority=task_priority):
        for block in grid.indices():
            if block in labelled:
                continue
            labelled[block] = dask.delayed(_label_and_store, pure=True)(
                **inputs.of(block), thresholds=thresholds, backend=backend, scratch=scratch,
                block_id=grid.linear(block), marker=None if staged is None else staged.marker("label", grid.key(block)),
                run_id=None if staged is None else staged.run_id,
                dask_key_name=(f"decode-label-block-{token}",) + block)
        for block in grid.indices():
            lower = [grid.lower_neighbour(block, axis) for axis in SPATIAL_AXES]
            summaries.append(dask.delayed(_block_summary, pure=True)(
                labelled[block], grid.linear(block), [None if n is None else labelled[n] for n in lower],
                [None if n is None else grid.linear(n) for n in lower], grid.label_bits, scratch,
                dask_key_name=(f"decode-face-pairs-{token}",) + block))
    merged = tree_reduce(summaries, _merge_summaries, f"decode-merge-equivalences-{token}", fan_in=MERGE_FAN_IN,
                         at_least_once=True)
    track = [task for task in labelled.values() if isinstance(task, Delayed)] or [merged]
    [(equivalences, counts_of)] = compute_tasks([merged], "decode: label blocks", progress=progress, track=track)
    counts = np.stack([counts_of[b] for b in range(grid.n_blocks)])
    n_nan = int(counts[:, -1].sum())
    if n_nan:
        warnings.warn(f"affinities: {n_nan} {NON_FINITE}", RuntimeWarning, stacklevel=4)
    return [number_segments(counts[:, t], equivalences[t], grid.label_bits) for t in range(len(thresholds))]


def _relabel_recomputed(affinities, halo_affinities, threshold, backend, numbering, block_id, mask=None,
                        halo_mask=(None, None, None)):
    """Task: label one block again and map its local ids to final ids."""
    [labelled] = label_block(affinities, _along_axes(halo_affinities), (threshold,), mask, _along_axes(halo_mask),
                             backend)
    return relabel_block(labelled.labels, numbering, block_id)


def _decode_dask(affinities: da.Array, thresholds, mask, backend, progress) -> list[da.Array]:
    affinities, mask, grid = _prepare(affinities, mask)
    token = tokenize(affinities, mask, thresholds, backend)
    inputs = _BlockInputs(affinities, mask, grid, token)
    numberings = _label_pass(inputs, thresholds, backend, None, progress)
    segmentations = []
    for threshold, numbering in zip(thresholds, numberings):
        shared = dask.delayed(numbering, traverse=False, name=f"decode-numbering-{tokenize(token, threshold)}")
        blocks = np.empty(grid.blocks_per_axis, dtype=object)
        for block in grid.indices():
            shape = tuple(s.stop - s.start for s in grid.write_region(block))
            task = dask.delayed(_relabel_recomputed, pure=True)(
                **inputs.of(block), threshold=threshold, backend=backend, numbering=shared,
                block_id=grid.linear(block), dask_key_name=(f"decode-relabel-block-{tokenize(token, threshold)}",) + block)
            blocks[block] = da.from_delayed(task, shape=shape, dtype=numbering.dtype)
        segmentations.append(da.block(blocks.tolist()))
    return segmentations


# ----------------------------------------------------------------------------------------------------------------
# zarr to zarr


def _relabel_in_zarr(scratch: LocalIdScratch, threshold_index: int, target: str, write_region,
                     numbering: SegmentNumbering, block_id: int, marker: str, run_id: str) -> int:
    """Task: read one block's local ids from ``scratch``, write final ids to ``target``, then its ``marker``;
    returns the block id."""
    shape = tuple(s.stop - s.start for s in write_region)
    labels = scratch.read(threshold_index, block_id, shape)
    _opened(target, run_id)[write_region] = relabel_block(labels, numbering, block_id)
    write_marker(marker, run_id)
    return block_id


def threshold_array_name(threshold: float) -> str:
    """Array name of one threshold's segmentation in a multi-threshold output group, e.g. ``threshold-0.75``."""
    return f"threshold-{threshold:g}"


def recorded_thresholds(affinities, config, method: str, log) -> tuple[float, ...]:
    """The thresholds a decode without given ones uses (see :func:`decode_to_zarr`), said through ``log``."""
    from nisbflow.data.volumes import open_affinities
    from nisbflow.decode.thresholds import choose_thresholds
    from nisbflow.settings import RunSettings, recorded_settings, resolve_settings

    if isinstance(config, RunSettings):
        run = config
    elif config is not None:  # a resolved Config: its own values
        run = RunSettings(config, None, {"decoding.threshold": "the configuration"}, [])
    else:
        attrs = dict(open_affinities(affinities).attrs)
        run = resolve_settings(None, overrides={"decoding.method": method}, recorded=recorded_settings(attrs),
                               recorded_from=f"the attributes of {affinities}")
    choice = choose_thresholds(run)
    log(choice.describe())
    return choice.values


def decode_to_zarr(
    affinities: str | Path,
    output: str | Path,
    *,
    thresholds=None,
    mask: str | Path | None = None,
    chunks: tuple[int, int, int] | None = None,
    backend: str = "numba",
    overwrite: bool = False,
    force: bool = False,
    progress: bool = True,
    config=None,
    log=None,
    check_values: bool = True,
    method: str = "cc",
    waterz=None,
) -> dict:
    """Decode a zarr array of affinities into a zarr segmentation, block by block, reading affinities once.

    ``method``: ``"cc"`` (connected components, BANIS; the rest of this docstring) or ``"waterz"`` (watershed and
    agglomeration: :func:`~nisbflow.decode.agglomerate_blockwise.agglomerate_to_zarr` with ``waterz``, a
    :class:`~nisbflow.decode.agglomerate_blockwise.WaterzOptions`; ``backend`` does not apply).

    ``affinities``: path or URL of a ``(C, X, Y, Z)`` float16/float32 zarr array (C = 3 or 6, channels 0..2 the
    short-range x, y, z edges; checked by :func:`~nisbflow.decode.kernel.open_affinities`). ``output``: one
    threshold writes an ``(X, Y, Z)`` array there; several write a group with one array per threshold
    (:func:`threshold_array_name`). ``chunks`` (voxels, X, Y, Z) sets both the block size and the output chunks
    (default: the affinities' spatial chunks). Runs on the current Dask client if one is set up. ``config``: a
    :class:`~nisbflow.config.Config` or the run's :class:`~nisbflow.settings.RunSettings`, recorded in the
    output's attributes. Returns ``{threshold: number of segments}``. ``check_values``: sample the values for
    logits and NaN first (the CLI has done so already).

    ``thresholds`` None chooses them as ``nisbflow decode`` without ``-t`` does
    (:func:`~nisbflow.decode.thresholds.choose_thresholds`): ``config``'s when it is the run's settings, else the
    threshold the affinities record (the model's tuned value), else 0.75; for waterz ``decoding.waterz.thresholds``.

    The output is a :class:`~nisbflow.staging.StagedRun` (staged, locked, published when complete; ``overwrite``
    replaces a segmentation nisbflow wrote, ``force`` anything else; an output overlapping an input is refused).
    Both passes resume: a re-run after an interruption keeps the label pass's finished blocks (their local ids and
    faces are in the staging folder's scratch) and the relabel pass's written blocks when the affinities, mask,
    thresholds and chunks are unchanged; the result is identical to an uninterrupted run.
    """
    from nisbflow.staging import StagedRun, default_log

    if thresholds is None:
        thresholds = recorded_thresholds(affinities, config, method, log or default_log)
    if method == "waterz":
        from nisbflow.decode.agglomerate_blockwise import WaterzOptions, agglomerate_to_zarr

        return agglomerate_to_zarr(affinities, output, thresholds=thresholds, mask=mask, chunks=chunks,
                                   options=waterz or WaterzOptions(), overwrite=overwrite, force=force,
                                   progress=progress, config=config, log=log, check_values=check_values)
    if method != "cc":
        raise ConfigError(f"decoding.method / --method must be cc or waterz, got {method!r}")
    log = log or default_log
    thresholds = check_thresholds(thresholds)
    check_backend(backend)
    source, mask_source = open_decoding_inputs(affinities, mask, log, check_values)
    with dask.annotate(priority=task_priority):
        array = da.from_zarr(source)
        mask_array = None if mask_source is None else da.from_zarr(mask_source)
        array, mask_array, grid = _prepare(array, mask_array, chunks)
    config, recorded = split_run_settings(config)
    identity = dict(thresholds=list(thresholds), chunks=[list(c) for c in grid.chunks])
    with StagedRun(output, kind="segmentation", inputs={"affinities": affinities, "affinity mask": mask},
                   identity=identity, overwrite=overwrite, force=force, log=log) as staged:
        scratch = LocalIdScratch(staged.scratch("local-ids"), len(thresholds))
        token = tokenize(staged.run_id, thresholds, grid)
        numberings = _label_pass(_BlockInputs(array, mask_array, grid, token), thresholds, backend, scratch,
                                 progress, staged)
        attributes = functools.partial(_segmentation_attrs, source, affinities, mask, config, recorded,
                                       run_id=staged.run_id)
        return relabel_outputs(staged, scratch, grid, source, thresholds, numberings, attributes, token, progress,
                               ids_per_threshold=True)


def open_decoding_inputs(affinities, mask, log, check_values: bool) -> tuple[zarr.Array, zarr.Array | None]:
    """The affinities (checked by :func:`~nisbflow.data.volumes.open_affinities`) and the affinity mask, if any,
    checked to be ``(X, Y, Z)`` of the affinities' spatial shape."""
    source = open_affinities(affinities, log=log, sample=check_values)
    if mask is None:
        return source, None
    mask_source = open_volume(mask, role="affinity mask", ndims=(3,))
    check_mask(mask_source.shape, source.shape[1:], where=f"affinity mask {mask}")
    return source, mask_source


def split_run_settings(config) -> tuple:
    """``(configuration, recorded settings)``: a :class:`~nisbflow.settings.RunSettings` records its settings and
    checkpoint in the output; a plain configuration (or None) records nothing."""
    if config is not None and hasattr(config, "record"):
        return config.config, config.record()
    return config, {}


def relabel_outputs(staged, scratch: LocalIdScratch, grid, source, thresholds, numberings, attributes, token: str,
                    progress: bool, *, ids_per_threshold: bool) -> dict:
    """Pass 2 for every threshold: one OME-NGFF image (a group of them for several thresholds, with
    ``attributes(thresholds)``), each written block by block from the scratch's local ids through its numbering.
    ``ids_per_threshold``: the scratch holds local ids per threshold (connected components), or one set for all
    (agglomeration's fragments). Returns ``{threshold: number of segments}``."""
    multiple = len(thresholds) > 1
    if multiple and not staged.owns(staged.data):
        zarr.open_group(staged.data, mode="w", zarr_format=source.metadata.zarr_format).attrs.update(
            attributes(thresholds))
    counts = {}
    for t, (threshold, numbering) in enumerate(zip(thresholds, numberings)):
        target = f"{staged.data}/{threshold_array_name(threshold)}" if multiple else staged.data
        attrs = attributes((threshold,), threshold=threshold, n_segments=numbering.n_segments)
        _relabel_pass(staged, f"relabel-{t}", scratch, t if ids_per_threshold else 0, target, attrs, grid, numbering,
                      source.metadata.zarr_format, tokenize(token, threshold), progress)
        counts[threshold] = numbering.n_segments
    return counts


SEGMENTATION_DESCRIPTION = "neuron segmentation: connected components of affinities > threshold, 0 = background"


def _segmentation_attrs(source, affinities, mask, config, recorded, thresholds, run_id, *,
                        description: str = SEGMENTATION_DESCRIPTION, decoding: dict | None = None, **extra) -> dict:
    """Attributes of a segmentation (or of the group of several): provenance, inputs, and for one threshold the
    run's settings with that threshold (``nisbflow_settings``). ``decoding``: the decoding settings to record beside
    the threshold (the method's own, for agglomeration)."""
    if decoding and decoding.get("method") == "waterz":
        section = dict(decoding, waterz=dict(decoding["waterz"], thresholds=[thresholds[0]]))
    else:
        section = dict(decoding or {}, threshold=thresholds[0])
    settings = {"nisbflow_settings": dict(recorded, decoding=section)} if recorded and len(thresholds) == 1 else {}
    return output_attrs(description, voxel_size_of(source), "xyz", config,
                        nisbflow_output="segmentation", nisbflow_run=run_id, affinities=str(affinities),
                        affinity_mask=None if mask is None else str(mask), thresholds=list(thresholds), **extra,
                        **settings)


def _relabel_pass(staged, stage: str, scratch: LocalIdScratch, threshold_index: int, target: str, attrs: dict, grid,
                  numbering: SegmentNumbering, zarr_format: int, token: str, progress: bool) -> None:
    """Pass 2 for one threshold: final ids of every block not yet written, into ``target`` in the staged output
    (created as an OME-NGFF image group, and its markers dropped, unless this run created it)."""
    level = level_url(target)
    work = staged.pending(stage, grid, what="blocks already relabelled", owner=level, arrays=(level,),
                          create=lambda: create_image(
                              target, attributes=attrs, zarr_format=zarr_format,
                              name=target.rstrip("/").rsplit("/", 1)[-1], shape=grid.shape, chunks=grid.block_shape,
                              dtype=numbering.dtype, compressors=fast_compressors(zarr_format, shuffle=False)))
    target = level
    shared = dask.delayed(numbering, traverse=False, name=f"decode-numbering-{token}")
    tasks = [dask.delayed(_relabel_in_zarr, pure=True)(
        scratch, threshold_index, target, grid.write_region(block), shared, grid.linear(block),
        staged.marker(stage, grid.key(block)), staged.run_id, dask_key_name=(f"decode-relabel-block-{token}",) + block)
        for block in work.pending]
    if tasks:
        compute_tasks(tasks, f"decode: relabel (threshold {attrs['threshold']:g})",
                      progress=progress)
