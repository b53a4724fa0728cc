"""Agglomeration decoding (waterz) block-wise on Dask: zarr affinities → zarr segmentation, for volumes larger than
memory. The kernel is :mod:`nisbflow.decode.agglomerate`.

Four named steps:

1. *fragments* (one task per block): read the block's read region (its write region grown by ``context`` voxels on
   every side), run waterz's watershed there, keep the write region's fragments as local ids 1..n (raster order), and
   store in the run's scratch the ids, the block's region adjacency graph (edges between its own fragments with their
   affinity statistics) and its faces (ids on its first and last planes, and the affinities it stores on its last
   planes, which join them to the next block). A marker records n, so a resumed run skips the block;
2. *face edges* (one task per block): the block's graph plus the edges across its lower faces, with global fragment
   ids (each block's local ids offset by the fragments of the blocks before it in C order);
3. *agglomeration* (one task): every edge table joined into one graph, merged greedily at every threshold in one
   pass (:func:`~nisbflow.decode.agglomerate.agglomerate_graph`), and each fragment's segment id 1..N;
4. *relabel* (one task per block and threshold): local ids → segment ids, written to the output.

Whole-volume waterz and this decoder differ where a fragment would have crossed a block face (each block's
watershed sees only its read region) and in the order ties are merged; docs/BENCHMARKS.md measures the gap.
"""

from __future__ import annotations

import functools
import json
from typing import Any
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
from dask.base import tokenize

from nisbflow.blocks import BlockGrid, task_priority
from nisbflow.staging import BlockwisePass, ScratchFiles, write_marker
from nisbflow.data.chunks import open_checked
from nisbflow.data.volumes import array_url
from nisbflow.decode.agglomerate import (
    DEFAULT_AFF_HIGH,
    DEFAULT_AFF_LOW,
    DEFAULT_SCORING,
    EdgeStatistics,
    agglomerate_graph,
    check_watershed_thresholds,
    clean_affinities,
    face_contacts,
    first_voxels,
    fragment_order_relabel,
    number_regions,
    region_graph,
    scoring_function,
    watershed_fragments,
)
from nisbflow.decode.outputs import (
    DecodeResult,
    LocalIdScratch,
    open_decoding_inputs,
    relabel_outputs,
    segmentation_attrs,
    decoding_run,
)
from nisbflow.decode.kernel import check_thresholds, segmentation_dtype
from nisbflow.decode.stitch import SPATIAL_AXES
from nisbflow.tasks import compute_tasks

DEFAULT_CONTEXT = 8
"""Voxels of context around each block's watershed. Without it a fragment ends at the block face, and a single
strong affinity across the face joins two whole fragments that the volume's watershed would have kept apart by a
small fragment between them (with max-initialised histogram scores that edge scores 0); docs/BENCHMARKS.md measures
0, 2, 4 and 8."""

AGGLOMERATION_DESCRIPTION = (
    "neuron segmentation: waterz watershed fragments agglomerated by {scoring} until threshold, 0 = background"
)


@dataclass(frozen=True)
class WaterzOptions:
    """How fragments are made and scored. ``scoring``: a name from
    :data:`~nisbflow.decode.agglomerate.SCORING_FUNCTIONS`; ``aff_low`` / ``aff_high``: the watershed's background
    and plateau thresholds; ``context``: voxels of affinities each block's watershed reads beyond its write region
    on every side (block-wise only)."""

    scoring: str = DEFAULT_SCORING
    aff_low: float = DEFAULT_AFF_LOW
    aff_high: float = DEFAULT_AFF_HIGH
    context: int = DEFAULT_CONTEXT

    @classmethod
    def from_config(cls, decoding) -> WaterzOptions | None:
        """The options of a :class:`~nisbflow.config.schema.DecodingConfig`'s ``waterz`` section, or None when its
        ``method`` is not ``waterz`` (what :func:`~nisbflow.decode.to_zarr.decode_to_zarr`'s ``waterz`` takes)."""
        if decoding.method != "waterz":
            return None
        section = decoding.waterz
        return cls(section.scoring, section.aff_low, section.aff_high, section.context)

    def check(self) -> WaterzOptions:
        scoring_function(self.scoring)
        check_watershed_thresholds(self.aff_low, self.aff_high)
        if int(self.context) != self.context or self.context < 0:
            from nisbflow.errors import ConfigError

            raise ConfigError(f"decoding.waterz.context must be a whole number of voxels >= 0, got {self.context}")
        return self


class FragmentScratch(LocalIdScratch):
    """Pass 1's output on disk: each block's fragment ids (as :class:`LocalIdScratch` stores local ids, one
    "threshold") and, in the faces file, its region adjacency graph and face planes."""

    def __init__(self, root: str):
        super().__init__(root, 1)

    def write_block(self, block_id: int, fragments: np.ndarray, arrays: dict) -> None:
        self.write(0, block_id, fragments)
        self.write_arrays(block_id, arrays)

    def read_block(self, block_id: int) -> dict:
        return self.read_arrays(block_id)


def fragment_block(
    affinities: np.ndarray,
    mask: np.ndarray | None,
    write_in_read,
    options: WaterzOptions,
    origin=(0, 0, 0),
    volume_shape=None,
):
    """Pure body of pass 1 for one block.

    ``affinities (C >= 3, x, y, z)`` float16/float32 of the read region, ``mask`` the same region or None,
    ``write_in_read`` the write region as slices of the read region. Returns ``(fragments (X, Y, Z) uint32 1..n,
    n, arrays)`` where ``arrays`` holds the block's graph (``edge-*``, local ids), its upper faces' ids and
    affinities (``upper-ids-a``, ``upper-affinity-a`` for axis a), its lower faces' ids (``lower-ids-a``) and each
    fragment's first voxel in the volume's raster order (``first-voxel``, ``(n + 1,)``; the write region starts at
    ``origin`` of a volume of ``volume_shape``), by which segments are numbered.
    """
    values = clean_affinities(affinities, mask)
    fragments, n = watershed_fragments(values, options.aff_low, options.aff_high)
    if any(s != slice(0, d) for s, d in zip(write_in_read, fragments.shape)):
        fragments, n = fragment_order_relabel(fragments[tuple(write_in_read)])
        values = values[(slice(None),) + tuple(write_in_read)]
    arrays = region_graph(fragments, values).arrays("edge-")
    arrays["first-voxel"] = first_voxels(fragments, n, origin, volume_shape)
    for axis in SPATIAL_AXES:
        last: list[Any] = [slice(None)] * 3
        last[axis] = -1
        first: list[Any] = [slice(None)] * 3
        first[axis] = 0
        arrays[f"upper-ids-{axis}"] = fragments[tuple(last)]
        arrays[f"upper-affinity-{axis}"] = values[axis][tuple(last)]
        arrays[f"lower-ids-{axis}"] = fragments[tuple(first)]
    return fragments, n, arrays


def _fragment_task(
    source: str,
    mask: str | None,
    read_region,
    write_in_read,
    volume_shape,
    options: WaterzOptions,
    scratch: FragmentScratch,
    block_id: int,
    marker: str,
    run_id: str,
) -> int:
    """Task: pass 1 for one block (reads zarr, writes the scratch, then the marker); returns its fragment count."""
    affinities = open_checked(source, f"affinities {source}")[(slice(0, 3),) + tuple(read_region)]
    mask_values = None if mask is None else open_checked(mask, f"affinity mask {mask}")[tuple(read_region)]
    origin = [r.start + w.start for r, w in zip(read_region, write_in_read)]
    fragments, n, arrays = fragment_block(affinities, mask_values, write_in_read, options, origin, volume_shape)
    scratch.write_block(block_id, fragments, arrays)
    write_marker(marker, run_id, json.dumps(n).encode())
    return n


def _block_edges(scratch: FragmentScratch, block_id: int, offset: int, lower_ids: list, lower_offsets: list):
    """Task: one block's graph and the edges across its lower faces, in global fragment ids."""
    mine = scratch.read_block(block_id)
    parts = [EdgeStatistics.from_arrays(mine, "edge-").offset(offset, offset)]
    for axis, (lower, lower_offset) in enumerate(zip(lower_ids, lower_offsets)):
        if lower is None:
            continue
        theirs = scratch.read_block(lower)
        parts.append(
            face_contacts(
                theirs[f"upper-ids-{axis}"],
                theirs[f"upper-affinity-{axis}"],
                mine[f"lower-ids-{axis}"],
                lower_offset,
                offset,
            )
        )
    return EdgeStatistics.combine(parts), mine["first-voxel"][1:]


def _agglomerate_task(n_regions: int, thresholds, scoring: str, *tables) -> tuple[list, dict]:
    """Task: one greedy agglomeration of the whole graph; returns per threshold ``(segment id of each fragment,
    number of segments)`` and the graph's size. ``tables``: each block's :func:`_block_edges`, in C order."""
    graph = EdgeStatistics.combine([edges for edges, _ in tables])
    first_voxel = np.concatenate([[0]] + [first for _, first in tables]).astype(np.int64)
    representatives = agglomerate_graph(n_regions, graph, thresholds, scoring)
    numbered = []
    for representative in representatives:
        ids, n = number_regions(representative, first_voxel)
        numbered.append((ids.astype(segmentation_dtype(n)), n))
    return numbered, {"fragments": n_regions, "edges": len(graph.u)}


@dataclass(frozen=True)
class FragmentNumbering:
    """Segment ids of every block's fragments at one threshold (what the relabel pass of
    :mod:`nisbflow.decode.outputs` needs of a numbering). ``segment_of (F + 1,)``: the segment of global fragment
    f (0 → 0); ``offsets (B,)``: global id of each block's fragment 0; ``counts (B,)``: fragments per block."""

    segment_of: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray
    n_segments: int

    @property
    def dtype(self) -> np.dtype:
        return segmentation_dtype(self.n_segments)

    def lookup_table(self, block_id: int) -> np.ndarray:
        """``(count + 1,)`` segment id of each local fragment id of block ``block_id`` (index 0 → 0)."""
        start = int(self.offsets[block_id])
        table = self.segment_of[start : start + int(self.counts[block_id]) + 1].astype(self.dtype)
        table[0] = 0
        return table


def agglomerate_to_zarr(
    affinities: str | Path,
    output: str | Path,
    *,
    thresholds=(0.3,),
    mask: str | Path | None = None,
    chunks: tuple[int, int, int] | None = None,
    options: WaterzOptions = WaterzOptions(),
    overwrite: bool = False,
    force: bool = False,
    progress: bool = True,
    run=None,
    log=None,
    layout: str = "ngff",
) -> DecodeResult:
    """Decode a zarr array of affinities by watershed and agglomeration (waterz), block by block.

    ``affinities``: path or URL of a ``(C, X, Y, Z)`` float16/float32 zarr array or NGFF image (C = 3 or 6; channels
    0..2 are read). ``output``: one threshold writes an OME-NGFF image; several a group with one image per
    threshold (:func:`~nisbflow.decode.outputs.threshold_array_name`), all from one agglomeration. ``chunks``
    (voxels, X, Y, Z): block size and output chunks (default: the affinities' spatial chunks). ``options``: the
    scoring function, watershed thresholds and context (:class:`WaterzOptions`). Staged, locked and resumable like
    :func:`~nisbflow.decode.to_zarr.decode_to_zarr`: the fragment pass and the relabel pass keep finished blocks.
    Returns a :class:`~nisbflow.decode.outputs.DecodeResult` (segments per threshold, the region graph's size).
    """
    from nisbflow.staging import StagedRun, default_log

    log = log or default_log
    thresholds = check_thresholds(thresholds)
    options = options.check()
    source, _ = open_decoding_inputs(affinities, mask, log)
    mask_url = None if mask is None else array_url(mask)
    spatial_chunks = tuple(chunks) if chunks is not None else source.chunks[1:]
    grid = BlockGrid.regular(source.shape[1:], spatial_chunks)
    run = decoding_run(run)
    identity = dict(
        method="waterz",
        thresholds=list(thresholds),
        chunks=[list(c) for c in grid.chunks],
        scoring=options.scoring,
        aff_low=options.aff_low,
        aff_high=options.aff_high,
        context=int(options.context),
    )
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
        scratch = FragmentScratch(staged.scratch("fragments"))
        token = tokenize(staged.run_id, identity)
        counts = _fragment_pass(staged, scratch, array_url(affinities), mask_url, grid, options, token, progress)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        numbered, size = _agglomerate(scratch, grid, counts, offsets, thresholds, options.scoring, token, progress)
        numberings = [FragmentNumbering(segment_of, offsets, counts, n_segments) for segment_of, n_segments in numbered]
        settings = dict(
            method="waterz",
            waterz=dict(
                scoring=options.scoring,
                aff_low=options.aff_low,
                aff_high=options.aff_high,
                context=int(options.context),
            ),
        )
        attributes = functools.partial(
            segmentation_attrs,
            source,
            affinities,
            mask,
            run,
            run_id=staged.run_id,
            region_graph=size,
            decoding=settings,
            description=AGGLOMERATION_DESCRIPTION.format(scoring=options.scoring),
        )
        result = relabel_outputs(
            staged, scratch, grid, source, thresholds, numberings, attributes, token, progress, ids_per_threshold=False
        )
    return DecodeResult(result, size)


def _fragment_pass(
    staged,
    scratch: FragmentScratch,
    source: str,
    mask: str | None,
    grid: BlockGrid,
    options: WaterzOptions,
    token: str,
    progress: bool,
) -> np.ndarray:
    """Pass 1 over every block not yet done; returns ``(B,) int64`` fragments per block (C order)."""
    work = staged.pending(
        BlockwisePass(
            "fragments", grid, (ScratchFiles(scratch.blocks_present),), what="blocks already cut into fragments"
        )
    )
    counts = np.zeros(grid.n_blocks, dtype=np.int64)
    for block, payload in work.done.items():
        counts[grid.linear(block)] = int(json.loads(payload))
    tasks, order = [], []
    with dask.annotate(priority=task_priority):
        for block in work.pending:
            read = grid.read_region(block, options.context, options.context)
            write = grid.write_region(block)
            write_in_read = write.local(read)
            tasks.append(
                dask.delayed(_fragment_task, pure=True)(
                    source,
                    mask,
                    read,
                    write_in_read,
                    grid.shape,
                    options,
                    scratch,
                    grid.linear(block),
                    staged.marker("fragments", grid.key(block)),
                    staged.run_id,
                    dask_key_name=(f"waterz-fragments-{token}",) + block,
                )
            )
            order.append(grid.linear(block))
    if tasks:
        for block_id, n in zip(order, compute_tasks(tasks, "decode (waterz): fragments", progress=progress)):
            counts[block_id] = n
    return counts


def _agglomerate(
    scratch: FragmentScratch, grid: BlockGrid, counts, offsets, thresholds, scoring: str, token: str, progress: bool
):
    """Passes 2 and 3: edge tables per block, then one agglomeration task."""
    tables = []
    with dask.annotate(priority=task_priority):
        for block in grid.indices():
            lower = [grid.lower_neighbour(block, axis) for axis in SPATIAL_AXES]
            lower_ids = [None if n is None else grid.linear(n) for n in lower]
            tables.append(
                dask.delayed(_block_edges, pure=True)(
                    scratch,
                    grid.linear(block),
                    int(offsets[grid.linear(block)]),
                    lower_ids,
                    [None if i is None else int(offsets[i]) for i in lower_ids],
                    dask_key_name=(f"waterz-block-edges-{token}",) + block,
                )
            )
    task = dask.delayed(_agglomerate_task, pure=True)(
        int(np.sum(counts)), list(thresholds), scoring, *tables, dask_key_name=f"waterz-agglomerate-{token}"
    )
    [(numbered, size)] = compute_tasks(
        [task], "decode (waterz): region graph and agglomeration", progress=progress, track=tables
    )
    return numbered, size
