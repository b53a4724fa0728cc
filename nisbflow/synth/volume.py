"""``nisbflow synth``: write synthetic NISB-like seeds block by block as a Dask graph.

A seed is ``<seed>/data.zarr`` with ``img (X, Y, Z, 1) uint8`` and ``seg (X, Y, Z) uint32`` plus
``<seed>/skeleton.pkl`` in the NISB format. The small global structure (:func:`~nisbflow.synth.kernel.grow_forest`)
is built once on the client and cut into one :class:`~nisbflow.synth.kernel.ForestRegion` per chunk (the capsules
near it); each task rasterises one chunk from its region (:func:`~nisbflow.synth.kernel.render_block`) and writes
it, so a worker's memory is bounded by the chunk size, not the volume.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import dask
import networkx as nx
import numpy as np
import zarr

from ..data.chunks import open_for_writing
from ..data.skeleton import save_skeleton, summarize_skeleton
from ..blocks import BlockGrid
from ..region import triple
from ..staging import BlockwisePass, StagedRun, default_log, staged_output, write_marker
from ..data.ngff import named_axes
from ..data.volumes import output_attrs
from ..errors import OutputExistsError
from ..tasks import compute_tasks
from .kernel import PRESETS, ForestRegion, NeuriteForest, SynthParams, forest_regions, grow_forest, render_block

DEFAULT_CHUNKS = (128, 128, 128)


@dataclass
class SeedSummary:
    """What was written: paths, shape (X, Y, Z), neuron and skeleton counts, and image statistics."""

    path: str
    shape: tuple[int, int, int]
    n_neurons: int
    n_skeleton_nodes: int
    n_skeletons: int
    path_length_nm: float
    background_fraction: float
    membrane_mean: float
    cytoplasm_mean: float
    n_scored_skeletons: int = 0
    """Skeletons with at least one edge: the ones NERL scores (``NerlResult.n_skeletons``)."""


def make_params(shape, seed: int = 0, presets=(), **overrides) -> SynthParams:
    """:class:`SynthParams` for ``shape`` (X, Y, Z voxels) with the named presets (``thin``, ``slice_defects``,
    ``low_contrast``) applied, then explicit overrides."""
    values: dict = {}
    for name in presets:
        key = name.replace("-", "_")
        if key not in PRESETS:
            raise ValueError(f"unknown synthetic preset '{name}'; choose from {', '.join(PRESETS)}")
        values.update(PRESETS[key])
    values.update(overrides)
    return SynthParams(shape=triple(shape), seed=int(seed), **values)


def _node_voxels(forest: NeuriteForest, params: SynthParams) -> tuple[np.ndarray, np.ndarray]:
    """Forest nodes that fall inside the volume: their indices and voxel positions ``(N, 3) int64`` (x, y, z)."""
    voxel = np.rint(forest.node_position / np.asarray(params.voxel_size)).astype(np.int64)
    inside = np.all((voxel >= 0) & (voxel < np.asarray(params.shape)), axis=1)
    return np.flatnonzero(inside), voxel[inside]


def _write_block(forest: ForestRegion, params, store: str, origin, shape, node_voxels, marker: str, run_id: str):
    """Render one chunk from its part of the forest, write ``img`` and ``seg`` there, then its marker, whose payload
    holds what the block reports
    (labels under the given nodes and image statistics) so a resumed run need not render it again."""
    image, segmentation = render_block(forest, params, origin, shape)
    region = tuple(slice(o, o + n) for o, n in zip(origin, shape))
    open_for_writing(f"{store}/img")[region + (slice(0, 1),)] = image[..., None]
    open_for_writing(f"{store}/seg")[region] = segmentation
    local = node_voxels - np.asarray(origin)
    background = segmentation == 0
    result = {
        "node_labels": segmentation[local[:, 0], local[:, 1], local[:, 2]],
        "labels": np.unique(segmentation[~background]),
        "n_background": int(background.sum()),
        "sum_background": float(image[background].sum(dtype=np.float64)),
        "sum_foreground": float(image[~background].sum(dtype=np.float64)),
        "n_voxels": int(segmentation.size),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in result.items()})  # type: ignore[arg-type]  # numpy's stub
    write_marker(marker, run_id, buffer.getvalue())
    return result


def _block_result(payload: bytes) -> dict:
    """What :func:`_write_block` returned, from its marker's payload."""
    with np.load(io.BytesIO(payload), allow_pickle=False) as data:
        return {k: (data[k] if data[k].ndim else data[k].item()) for k in data.files}


def build_skeleton(
    forest: NeuriteForest, params: SynthParams, node_index: np.ndarray, node_voxels: np.ndarray, node_labels: np.ndarray
) -> nx.Graph:
    """The NISB skeleton graph: forest nodes inside the volume whose voxel carries their neuron's label.

    Nodes carry ``id``, ``index_position`` (voxel x, y, z, int64) and ``nm_position`` (= voxel × voxel size);
    edges join consecutive kept nodes of a centre line and carry ``edge_length`` in nm.
    """
    voxel_size = np.asarray(params.voxel_size, dtype=np.float64)
    keep = node_labels == forest.node_neuron[node_index]
    graph = nx.Graph()
    kept = set()
    for index, position in zip(node_index[keep], node_voxels[keep]):
        graph.add_node(
            int(index),
            id=int(forest.node_neuron[index]),
            index_position=position.astype(np.int64),
            nm_position=position * voxel_size,
        )
        kept.add(int(index))
    for index in kept:
        parent = int(forest.node_parent[index])
        if parent in kept:
            length = float(np.linalg.norm(graph.nodes[index]["nm_position"] - graph.nodes[parent]["nm_position"]))
            if length > 0:
                graph.add_edge(parent, index, edge_length=length)
    return graph


def synthesize_seed(
    out_dir: str | Path,
    shape,
    seed: int = 0,
    *,
    presets=(),
    chunks=DEFAULT_CHUNKS,
    zarr_format: Literal[2, 3] = 2,
    overwrite: bool = False,
    force: bool = False,
    progress: bool = True,
    num_workers: int | None = None,
    preview: str | Path | None = None,
    log=None,
    **overrides,
) -> SeedSummary:
    """Write one synthetic NISB-like seed: ``out_dir/data.zarr`` (``img``, ``seg``) and ``out_dir/skeleton.pkl``.

    Deterministic for ``seed`` and independent of ``chunks``. ``data.zarr`` is a :class:`~nisbflow.staging.StagedRun`
    (staged, locked, resumed block by block after an interruption); an existing seed is replaced only with
    ``overwrite`` (a seed nisbflow wrote) or ``force``.
    """
    params = make_params(shape, seed, presets, **overrides)
    out_dir = str(out_dir).rstrip("/")
    store_path, skeleton_path = f"{out_dir}/data.zarr", f"{out_dir}/skeleton.pkl"
    if Path(skeleton_path).exists() and not (overwrite or force):
        raise OutputExistsError(f"output {skeleton_path} already exists; pass --overwrite to replace it")
    description = f"synthetic NISB-like seed {seed}" + (f" ({', '.join(presets)})" if presets else "")
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(params).items()}
    grid = BlockGrid.regular(params.shape, chunks)
    identity = dict(synth=settings, chunks=list(grid.block_shape), zarr_format=zarr_format)
    with StagedRun(
        store_path, kind="seed", identity=identity, overwrite=overwrite, force=force, log=log or default_log
    ) as staged:
        forest = grow_forest(params)
        node_index, node_voxels = _node_voxels(forest, params)
        work = staged.pending(
            BlockwisePass.into_array(
                "synth",
                grid,
                staged.data,
                arrays=(f"{staged.data}/img", f"{staged.data}/seg"),
                create=lambda: _create_seed_store(
                    staged.data, params, grid, zarr_format, description, settings, staged.run_id
                ),
            )
        )
        block_nodes = _nodes_by_block(grid, node_voxels)
        results = _render_blocks(
            staged, work, grid, forest, params, node_voxels, block_nodes, seed, progress, num_workers
        )
        node_labels = np.zeros(len(node_index), dtype=np.uint32)
        for rows, result in zip(block_nodes, results):
            node_labels[rows] = result["node_labels"]
        graph = build_skeleton(forest, params, node_index, node_voxels, node_labels)
        with staged_output(skeleton_path, overwrite=True) as skeleton_tmp:
            save_skeleton(graph, skeleton_tmp)
    summary = _seed_summary(out_dir, params, results, summarize_skeleton(graph, params.voxel_size))
    if preview is not None:
        write_preview(store_path, preview, title=f"{out_dir} (seed {seed})")
    return summary


def _create_seed_store(
    store: str, params, grid: BlockGrid, zarr_format: Literal[2, 3], description: str, settings: dict, run_id: str
) -> None:
    """The seed's empty zarr group: ``img (X, Y, Z, 1) uint8`` and ``seg (X, Y, Z) uint32``, chunked by the grid,
    with the attributes that say what they are and which run made them."""
    group = zarr.open_group(store, mode="w", zarr_format=zarr_format)
    group.attrs.update(
        output_attrs(description, params.voxel_size, "xyz", synth=settings, nisbflow_output="seed", nisbflow_run=run_id)
    )
    group.create_array(
        "img",
        shape=params.shape + (1,),
        chunks=grid.block_shape + (1,),
        dtype="uint8",
        **named_axes(
            output_attrs("EM image, grey levels 0-255 (synthetic)", params.voxel_size, "xyzc", nisbflow_output="image"),
            zarr_format,
        ),
    )
    group.create_array(
        "seg",
        shape=params.shape,
        chunks=grid.block_shape,
        dtype="uint32",
        **named_axes(
            output_attrs(
                "neuron ids; 0 = membrane / extracellular space",
                params.voxel_size,
                "xyz",
                nisbflow_output="segmentation",
            ),
            zarr_format,
        ),
    )


def _nodes_by_block(grid: BlockGrid, node_voxels: np.ndarray) -> list[np.ndarray]:
    """Per block (C order), the rows of ``node_voxels (N, 3)`` inside it, in node order: grouped in one sort (a scan
    of every node per block grew as blocks × nodes)."""
    node_block = (
        np.ravel_multi_index(grid.block_of(node_voxels).T, grid.blocks_per_axis)
        if len(node_voxels)
        else np.zeros(0, dtype=np.int64)
    )
    by_block = np.argsort(node_block, kind="stable")
    bounds = np.searchsorted(node_block[by_block], np.arange(grid.n_blocks + 1))
    return [by_block[bounds[i] : bounds[i + 1]] for i in range(grid.n_blocks)]


def _render_blocks(
    staged, work, grid: BlockGrid, forest, params, node_voxels, block_nodes, seed: int, progress: bool, num_workers
) -> list[dict]:
    """Render every block not done yet (one task each, ``synth-block-i-j-k-<seed>``) and return every block's
    result in C order, the finished ones from their markers. Each task carries only the capsules and organelles near
    its block, not the whole forest (168 MB at 1536³), so a worker's memory does not grow with the volume."""
    bounds = [list(range(0, size, step)) + [size] for size, step in zip(grid.shape, grid.block_shape)]
    regions = forest_regions(forest, params, bounds)
    results, tasks = {}, {}
    for index in grid.indices():
        key = grid.key(index)
        if index in work.done:
            results[key] = _block_result(work.done[index])
            continue
        corner = tuple(int(o) for o in grid.origin(index))
        size = grid.write_region(index).shape
        tasks[key] = dask.delayed(_write_block, pure=False)(
            regions[triple(index)],
            params,
            staged.data,
            corner,
            size,
            node_voxels[block_nodes[grid.linear(index)]],
            staged.marker("synth", key),
            staged.run_id,
            dask_key_name=f"synth-block-{key.replace('.', '-')}-{seed}",
        )
    computed = compute_tasks(list(tasks.values()), f"synth seed {seed}", progress=progress, num_workers=num_workers)
    results.update(zip(tasks, computed))
    return [results[grid.key(index)] for index in grid.indices()]


def _seed_summary(out_dir: str, params, results: list[dict], skeleton) -> SeedSummary:
    """What a seed holds, from its blocks' results and its skeleton's summary."""
    n_voxels = sum(r["n_voxels"] for r in results)
    n_background = sum(r["n_background"] for r in results)
    labels = np.unique(np.concatenate([r["labels"] for r in results])) if results else np.zeros(0)
    return SeedSummary(
        path=out_dir,
        shape=params.shape,
        n_neurons=int(len(labels)),
        n_skeleton_nodes=skeleton.n_nodes,
        n_skeletons=skeleton.n_neurons,
        path_length_nm=skeleton.path_length_nm,
        background_fraction=n_background / n_voxels,
        membrane_mean=sum(r["sum_background"] for r in results) / max(n_background, 1),
        cytoplasm_mean=sum(r["sum_foreground"] for r in results) / max(n_voxels - n_background, 1),
        n_scored_skeletons=skeleton.n_scored,
    )


def write_preview(store_path: str, png: str | Path, title: str = "", max_side: int = 256) -> None:
    """Save slices of a seed's image and segmentation to ``png`` (reads one XY and one XZ slice only)."""
    from .preview import save_preview

    img: Any = zarr.open_array(f"{store_path}/img", mode="r")  # numpy arrays where read
    seg: Any = zarr.open_array(f"{store_path}/seg", mode="r")
    x, y, z = seg.shape
    crop = (slice(0, min(x, max_side)), slice(0, min(y, max_side)))
    image_xy, seg_xy = img[crop + (slice(z // 2, z // 2 + 1), 0)], seg[crop + (slice(z // 2, z // 2 + 1),)]
    image_xz, seg_xz = img[crop[0], y // 2, :, 0], seg[crop[0], y // 2, :]
    save_preview(image_xy[..., 0], seg_xy[..., 0], image_xz, seg_xz, str(png), title)


SPLIT_SEEDS = {"val": 100, "test": 101}


def synthesize_layout(root: str | Path, shape, train_seeds: int = 2, **kwargs) -> list[SeedSummary]:
    """Write a NISB-style tree: ``train/seed0..K-1``, ``val/seed100`` and ``test/seed101`` under ``root``."""
    root = str(root).rstrip("/")
    targets = [(f"{root}/train/seed{i}", i) for i in range(train_seeds)]
    targets += [(f"{root}/{split}/seed{n}", n) for split, n in SPLIT_SEEDS.items()]
    if not (kwargs.get("overwrite") or kwargs.get("force")):
        for path, _ in targets:
            if Path(path, "data.zarr").exists():
                raise OutputExistsError(f"output {path}/data.zarr already exists; pass --overwrite to replace it")
    return [synthesize_seed(path, shape, seed, **kwargs) for path, seed in targets]
