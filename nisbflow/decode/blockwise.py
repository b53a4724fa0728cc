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
import logging
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from nisbflow.data.volumes import fast_compressors, open_volume, output_attrs, staged_output, voxel_size_of
from nisbflow.decode.kernel import check_affinities, check_backend, check_mask, check_thresholds, decode_in_memory
from nisbflow.decode.stitch import (BlockGrid, SegmentNumbering, SPATIAL_AXES, block_counts, face_pairs, label_block,
                                    merge_equivalences, number_segments, relabel_block, upper_plane, without_labels)
from nisbflow.errors import VolumeError
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
        self._planes = {}

    def _plane(self, source, name, block, axis):
        key = (name, axis, block)
        if key not in self._planes:
            self._planes[key] = dask.delayed(upper_plane, pure=True)(
                source[block], axis, dask_key_name=(f"decode-{name}-halo-{self.token}", axis) + block)
        return self._planes[key]

    def of(self, block) -> dict:
        lower = [self.grid.lower_neighbour(block, axis) for axis in SPATIAL_AXES]
        inputs = dict(
            affinities=self.chunk[block],
            halo_affinities=[None if n is None else self._plane(self.chunk, "affinities", n, a)
                             for a, n in enumerate(lower)],
        )
        if self.mask_chunk is not None:
            inputs["mask"] = self.mask_chunk[block]
            inputs["halo_mask"] = [None if n is None else self._plane(self.mask_chunk, "mask", n, a)
                                   for a, n in enumerate(lower)]
        return inputs


@functools.lru_cache(maxsize=32)
def _opened(path: str) -> zarr.Array:
    """A zarr array opened once per worker process and path (opening reads its metadata, ~1 ms per task).

    Only used for the arrays a decoding run creates itself, which no one else resizes while it runs."""
    return zarr.open_array(path, mode="r+")


def _label_and_store(affinities, halo_affinities, thresholds, backend, mask=None, halo_mask=(None, None, None),
                     stores=None, write_region=None):
    """Task: label one block; write its local ids to ``stores`` (one zarr path per threshold) when given."""
    labelled = label_block(affinities, halo_affinities, thresholds, mask, halo_mask, backend)
    if stores is not None:
        for path, block_labels in zip(stores, labelled):
            _opened(path)[write_region] = block_labels.labels
    return without_labels(labelled)


def _label_pass(inputs: _BlockInputs, thresholds, backend, stores, progress) -> list[SegmentNumbering]:
    """Pass 1: label every block, merge equivalences in a tree, and number the segments (per threshold)."""
    grid, token = inputs.grid, inputs.token
    labelled, counts, pairs = {}, [], []
    for block in grid.indices():
        labelled[block] = dask.delayed(_label_and_store, pure=True)(
            **inputs.of(block), thresholds=thresholds, backend=backend, stores=stores,
            write_region=grid.write_region(block), dask_key_name=(f"decode-label-block-{token}",) + block)
        counts.append(dask.delayed(block_counts, pure=True)(
            labelled[block], dask_key_name=(f"decode-count-labels-{token}",) + block))
    for block in grid.indices():
        lower = [grid.lower_neighbour(block, axis) for axis in SPATIAL_AXES]
        if any(n is not None for n in lower):
            pairs.append(dask.delayed(face_pairs, pure=True)(
                labelled[block], grid.linear(block), [None if n is None else labelled[n] for n in lower],
                [None if n is None else grid.linear(n) for n in lower], grid.label_bits,
                dask_key_name=(f"decode-face-pairs-{token}",) + block))
    level = 0
    if not pairs:
        pairs = [dask.delayed([np.empty((0, 2), dtype=np.uint64)] * len(thresholds), traverse=False)]
    while len(pairs) > 1 or level == 0:
        pairs = [dask.delayed(merge_equivalences, pure=True)(
            *pairs[i:i + MERGE_FAN_IN], dask_key_name=(f"decode-merge-equivalences-{token}", level, i // MERGE_FAN_IN))
            for i in range(0, len(pairs), MERGE_FAN_IN)]
        level += 1
    results = compute_tasks(counts + pairs, "decode: label blocks", progress=progress)
    counts, equivalences = np.stack(results[:-1]), results[-1]
    n_nan = int(counts[:, -1].sum())
    if n_nan:
        warnings.warn(f"affinities: {n_nan} NaN affinities; treated as no edge", RuntimeWarning, stacklevel=4)
    return [number_segments(counts[:, t], equivalences[t], grid.label_bits) for t in range(len(thresholds))]


def _relabel_recomputed(affinities, halo_affinities, threshold, backend, numbering, block_id, mask=None,
                        halo_mask=(None, None, None)):
    """Task: label one block again and map its local ids to final ids."""
    [labelled] = label_block(affinities, halo_affinities, (threshold,), mask, halo_mask, backend)
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


def _relabel_in_zarr(source: str, target: str, write_region, numbering: SegmentNumbering, block_id: int) -> int:
    """Task: read one block's local ids from ``source``, write final ids to ``target``; returns the block id."""
    _opened(target)[write_region] = relabel_block(_opened(source)[write_region], numbering, block_id)
    return block_id


def threshold_array_name(threshold: float) -> str:
    """Array name of one threshold's segmentation in a multi-threshold output group, e.g. ``threshold-0.75``."""
    return f"threshold-{threshold:g}"


def decode_to_zarr(
    affinities: str | Path,
    output: str | Path,
    *,
    thresholds=(0.75,),
    mask: str | Path | None = None,
    chunks: tuple[int, int, int] | None = None,
    backend: str = "numba",
    overwrite: bool = False,
    progress: bool = True,
    config=None,
) -> dict:
    """Decode a zarr array of affinities into a zarr segmentation, block by block, reading affinities once.

    ``affinities``: path or URL of a ``(C >= 3, X, Y, Z)`` float16/float32 zarr array. ``output``: one threshold
    writes an ``(X, Y, Z)`` array there; several write a group with one array per threshold
    (:func:`threshold_array_name`). ``chunks`` (voxels, X, Y, Z) sets both the block size and the output chunks
    (default: the affinities' spatial chunks). The output is written under a temporary name and renamed when
    complete; an existing output is refused unless ``overwrite``. Runs on the current Dask client if one is set up.
    Returns ``{threshold: number of segments}``.
    """
    thresholds = check_thresholds(thresholds)
    check_backend(backend)
    source = open_volume(affinities, role="affinities", ndims=(4,))
    check_affinities(source.shape, source.dtype, where=f"affinities {affinities}")
    array = da.from_zarr(source)
    mask_array = None
    if mask is not None:
        mask_source = open_volume(mask, role="affinity mask", ndims=(3,))
        check_mask(mask_source.shape, source.shape[1:], where=f"affinity mask {mask}")
        mask_array = da.from_zarr(mask_source)
    array, mask_array, grid = _prepare(array, mask_array, chunks)
    spatial = array.shape[1:]
    block_shape = tuple(c[0] for c in grid.chunks)
    zarr_format = source.metadata.zarr_format
    voxel_size = voxel_size_of(source)
    counts = {}
    with staged_output(output, overwrite=overwrite) as staged:
        scratch = f"{staged}.local-ids"
        try:
            multiple = len(thresholds) > 1
            if multiple:
                zarr.open_group(staged, mode="w", zarr_format=zarr_format)
            scratch_group = zarr.open_group(scratch, mode="w", zarr_format=zarr_format)
            stores = []
            for threshold in thresholds:
                name = threshold_array_name(threshold)
                scratch_group.create_array(name, shape=spatial, chunks=block_shape, dtype="uint32", fill_value=0,
                                           compressors=fast_compressors(zarr_format, shuffle=False))
                stores.append(f"{scratch}/{name}")
            token = tokenize(str(affinities), str(mask), thresholds, block_shape, backend)
            inputs = _BlockInputs(array, mask_array, grid, token)
            numberings = _label_pass(inputs, thresholds, backend, stores, progress)
            for threshold, numbering, local_ids in zip(thresholds, numberings, stores):
                target = f"{staged}/{threshold_array_name(threshold)}" if multiple else staged
                zarr.create_array(
                    target, shape=spatial, chunks=block_shape, dtype=numbering.dtype, fill_value=0,
                    zarr_format=zarr_format, compressors=fast_compressors(zarr_format, shuffle=False), attributes=output_attrs(
                        "neuron segmentation: connected components of affinities > threshold, 0 = background",
                        voxel_size, "xyz", config, threshold=threshold, affinities=str(affinities),
                        affinity_mask=None if mask is None else str(mask), n_segments=numbering.n_segments))
                shared = dask.delayed(numbering, traverse=False, name=f"decode-numbering-{tokenize(token, threshold)}")
                tasks = [dask.delayed(_relabel_in_zarr, pure=True)(
                    local_ids, target, grid.write_region(block), shared, grid.linear(block),
                    dask_key_name=(f"decode-relabel-block-{tokenize(token, threshold)}",) + block)
                    for block in grid.indices()]
                compute_tasks(tasks, f"decode: relabel (threshold {threshold:g})", progress=progress)
                counts[threshold] = numbering.n_segments
        finally:
            _remove_tree(scratch)
    return counts


def _remove_tree(path: str) -> None:
    import fsspec

    fs, local = fsspec.core.url_to_fs(path)
    if fs.exists(local):
        fs.rm(local, recursive=True)
