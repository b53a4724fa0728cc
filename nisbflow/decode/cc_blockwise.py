"""Connected components block-wise: ``decode_affinity_cc`` in memory (numpy → numpy) or on Dask (dask → dask), and
:func:`cc_to_zarr` (zarr → zarr).

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
import json
import logging
import warnings

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed

from nisbflow.blocks import BlockGrid, task_priority, tree_reduce
from nisbflow.decode.backends import check_backend, decode_in_memory
from nisbflow.decode.kernel import NON_FINITE, check_affinities, check_mask, check_thresholds
from nisbflow.decode.outputs import (
    DecodeResult,
    LocalIdScratch,
    open_decoding_inputs,
    relabel_outputs,
    segmentation_attrs,
    decoding_run,
)
from nisbflow.decode.stitch import (
    SPATIAL_AXES,
    BlockLabels,
    SegmentNumbering,
    block_counts,
    face_pairs,
    label_block,
    merge_equivalences,
    number_segments,
    relabel_block,
    upper_planes,
    without_labels,
)
from nisbflow.tasks import compute_tasks
from nisbflow.staging import BlockwisePass, ScratchFiles, write_marker

log = logging.getLogger(__name__)


MERGE_FAN_IN = 16
"""Equivalence lists merged by one union-find task of the reduction tree."""


def decode_affinity_cc(
    affinities, threshold: float = 0.75, mask=None, *, thresholds=None, backend: str = "numba", progress: bool = False
):
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
    segmentations: list
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
        self._planes_of: dict = {}

    def _planes(self, source, name, block):
        """Task giving a chunk's last planes along x, y and z (one task serves all three upper neighbours)."""
        key = (name, block)
        if key not in self._planes_of:
            self._planes_of[key] = dask.delayed(upper_planes, pure=True)(
                source[block], dask_key_name=(f"decode-{name}-halo-{self.token}",) + block
            )
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


def _label_and_store(
    affinities,
    halo_affinities,
    thresholds,
    backend,
    mask=None,
    halo_mask=(None, None, None),
    scratch: LocalIdScratch | None = None,
    block_id: int | None = None,
    marker: str | None = None,
    run_id: str | None = None,
):
    """Task: label one block; with ``scratch``, write its local ids and faces there, then its ``marker`` (payload:
    each threshold's label count and the NaN count, which is all a resumed run needs of it). Returns the summaries
    without labels (and without faces when they went to ``scratch``).

    ``halo_affinities`` / ``halo_mask``: per axis, the lower neighbour's :func:`upper_planes` (or None)."""
    labelled = label_block(affinities, _along_axes(halo_affinities), thresholds, mask, _along_axes(halo_mask), backend)
    if scratch is None or block_id is None:
        return without_labels(labelled)
    for t, block_labels in enumerate(labelled):
        assert block_labels.labels is not None  # label_block keeps each block's labels
        scratch.write(t, block_id, block_labels.labels)
    scratch.write_faces(block_id, labelled)
    summary = [b._replace(labels=None, halo_faces=(), upper_faces=()) for b in labelled]
    if marker is not None and run_id is not None:
        write_marker(marker, run_id, json.dumps([[b.count, b.nan_count] for b in summary]).encode())
    return summary


def _summary_from_marker(payload: bytes) -> list[BlockLabels]:
    """A finished label task's summary, from its marker's payload."""
    return [BlockLabels(None, (), (), int(count), int(nan)) for count, nan in json.loads(payload)]


def _block_summary(
    block, block_id: int, lower: list, lower_ids: list, label_bits: int, scratch: LocalIdScratch | None = None
) -> tuple:
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
    done = (
        {}
        if staged is None
        else staged.pending(
            BlockwisePass("label", grid, (ScratchFiles(scratch.blocks_present),), what="blocks already labelled")
        ).done
    )
    labelled = {index: _summary_from_marker(payload) for index, payload in done.items()}
    summaries = []
    with dask.annotate(priority=task_priority):
        for block in grid.indices():
            if block in labelled:
                continue
            labelled[block] = dask.delayed(_label_and_store, pure=True)(
                **inputs.of(block),
                thresholds=thresholds,
                backend=backend,
                scratch=scratch,
                block_id=grid.linear(block),
                marker=None if staged is None else staged.marker("label", grid.key(block)),
                run_id=None if staged is None else staged.run_id,
                dask_key_name=(f"decode-label-block-{token}",) + block,
            )
        for block in grid.indices():
            lower = [grid.lower_neighbour(block, axis) for axis in SPATIAL_AXES]
            summaries.append(
                dask.delayed(_block_summary, pure=True)(
                    labelled[block],
                    grid.linear(block),
                    [None if n is None else labelled[n] for n in lower],
                    [None if n is None else grid.linear(n) for n in lower],
                    grid.label_bits,
                    scratch,
                    dask_key_name=(f"decode-face-pairs-{token}",) + block,
                )
            )
    merged = tree_reduce(
        summaries, _merge_summaries, f"decode-merge-equivalences-{token}", fan_in=MERGE_FAN_IN, at_least_once=True
    )
    track = [task for task in labelled.values() if isinstance(task, Delayed)] or [merged]
    [(equivalences, counts_of)] = compute_tasks([merged], "decode: label blocks", progress=progress, track=track)
    counts = np.stack([counts_of[b] for b in range(grid.n_blocks)])
    n_nan = int(counts[:, -1].sum())
    if n_nan:
        warnings.warn(f"affinities: {n_nan} {NON_FINITE}", RuntimeWarning, stacklevel=4)
    return [number_segments(counts[:, t], equivalences[t], grid.label_bits) for t in range(len(thresholds))]


def _relabel_recomputed(
    affinities, halo_affinities, threshold, backend, numbering, block_id, mask=None, halo_mask=(None, None, None)
):
    """Task: label one block again and map its local ids to final ids."""
    [labelled] = label_block(
        affinities, _along_axes(halo_affinities), (threshold,), mask, _along_axes(halo_mask), backend
    )
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
            shape = grid.write_region(block).shape
            task = dask.delayed(_relabel_recomputed, pure=True)(
                **inputs.of(block),
                threshold=threshold,
                backend=backend,
                numbering=shared,
                block_id=grid.linear(block),
                dask_key_name=(f"decode-relabel-block-{tokenize(token, threshold)}",) + block,
            )
            blocks[block] = da.from_delayed(task, shape=shape, dtype=numbering.dtype)
        segmentations.append(da.block(blocks.tolist()))
    return segmentations


# ----------------------------------------------------------------------------------------------------------------
# zarr to zarr


def cc_to_zarr(
    affinities,
    output,
    *,
    thresholds,
    mask=None,
    chunks=None,
    backend: str = "numba",
    overwrite: bool = False,
    force: bool = False,
    progress: bool = True,
    run=None,
    log=None,
    layout: str = "ngff",
) -> DecodeResult:
    """Connected components of a zarr array of affinities at each of ``thresholds``, block by block, into a staged
    zarr segmentation: the ``cc`` method of :func:`~nisbflow.decode.to_zarr.decode_to_zarr` (see there for the
    arguments, the output and how it resumes). Returns a :class:`~nisbflow.decode.outputs.DecodeResult`."""
    from nisbflow.staging import StagedRun, default_log

    log = log or default_log
    thresholds = check_thresholds(thresholds)
    check_backend(backend)
    source, mask_source = open_decoding_inputs(affinities, mask, log)
    with dask.annotate(priority=task_priority):
        array = da.from_zarr(source)
        mask_array = None if mask_source is None else da.from_zarr(mask_source)
        array, mask_array, grid = _prepare(array, mask_array, chunks)
    run = decoding_run(run)
    identity = dict(thresholds=list(thresholds), chunks=[list(c) for c in grid.chunks])
    with StagedRun(
        output,
        kind="segmentation",
        inputs={"affinities": affinities, "affinity mask": mask},
        identity=identity,
        overwrite=overwrite,
        force=force,
        log=log,
        layout=layout,
    ) as staged:
        scratch = LocalIdScratch(staged.scratch("local-ids"), len(thresholds))
        token = tokenize(staged.run_id, thresholds, grid)
        numberings = _label_pass(
            _BlockInputs(array, mask_array, grid, token), thresholds, backend, scratch, progress, staged
        )
        attributes = functools.partial(segmentation_attrs, source, affinities, mask, run, run_id=staged.run_id)
        return DecodeResult(
            relabel_outputs(
                staged,
                scratch,
                grid,
                source,
                thresholds,
                numberings,
                attributes,
                token,
                progress,
                ids_per_threshold=True,
            )
        )
