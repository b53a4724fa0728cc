"""``nisbflow synth``: write synthetic NISB-like seeds block by block as a Dask graph.

A seed is ``<seed>/data.zarr`` with ``img (X, Y, Z, 1) uint8`` and ``seg (X, Y, Z) uint32`` plus
``<seed>/skeleton.pkl`` in the NISB format. The small global structure (:func:`~nisbflow.synth.kernel.grow_forest`)
is built once; each task rasterises one chunk (:func:`~nisbflow.synth.kernel.render_block`) and writes it, so
memory per task is bounded by the chunk size, not the volume.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path

import dask
import networkx as nx
import numpy as np
import zarr

from ..data.skeleton import save_skeleton, summarize_skeleton
from ..data.volumes import output_attrs, staged_output
from ..errors import OutputExistsError
from ..progress import compute_tasks
from .kernel import PRESETS, NeuriteForest, SynthParams, grow_forest, render_block

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
    return SynthParams(shape=tuple(int(v) for v in shape), seed=int(seed), **values)


def _node_voxels(forest: NeuriteForest, params: SynthParams) -> tuple[np.ndarray, np.ndarray]:
    """Forest nodes that fall inside the volume: their indices and voxel positions ``(N, 3) int64`` (x, y, z)."""
    voxel = np.rint(forest.node_position / np.asarray(params.voxel_size)).astype(np.int64)
    inside = np.all((voxel >= 0) & (voxel < np.asarray(params.shape)), axis=1)
    return np.flatnonzero(inside), voxel[inside]


def _write_block(forest, params, store: str, origin, shape, node_voxels):
    """Render one chunk, write ``img`` and ``seg`` there, and report labels under the given nodes and statistics."""
    image, segmentation = render_block(forest, params, origin, shape)
    region = tuple(slice(o, o + n) for o, n in zip(origin, shape))
    zarr.open_array(f"{store}/img", mode="r+")[region + (slice(0, 1),)] = image[..., None]
    zarr.open_array(f"{store}/seg", mode="r+")[region] = segmentation
    local = node_voxels - np.asarray(origin)
    node_labels = segmentation[local[:, 0], local[:, 1], local[:, 2]]
    background = segmentation == 0
    return {
        "node_labels": node_labels,
        "labels": np.unique(segmentation[~background]),
        "n_background": int(background.sum()),
        "sum_background": float(image[background].sum(dtype=np.float64)),
        "sum_foreground": float(image[~background].sum(dtype=np.float64)),
        "n_voxels": int(segmentation.size),
    }


def build_skeleton(forest: NeuriteForest, params: SynthParams, node_index: np.ndarray, node_voxels: np.ndarray,
                   node_labels: np.ndarray) -> nx.Graph:
    """The NISB skeleton graph: forest nodes inside the volume whose voxel carries their neuron's label.

    Nodes carry ``id``, ``index_position`` (voxel x, y, z, int64) and ``nm_position`` (= voxel × voxel size);
    edges join consecutive kept nodes of a centre line and carry ``edge_length`` in nm.
    """
    voxel_size = np.asarray(params.voxel_size, dtype=np.float64)
    keep = node_labels == forest.node_neuron[node_index]
    graph = nx.Graph()
    kept = set()
    for index, position in zip(node_index[keep], node_voxels[keep]):
        graph.add_node(int(index), id=int(forest.node_neuron[index]), index_position=position.astype(np.int64),
                       nm_position=position * voxel_size)
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
    zarr_format: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    num_workers: int | None = None,
    preview: str | Path | None = None,
    **overrides,
) -> SeedSummary:
    """Write one synthetic NISB-like seed: ``out_dir/data.zarr`` (``img``, ``seg``) and ``out_dir/skeleton.pkl``.

    Deterministic for ``seed`` and independent of ``chunks``. Existing outputs are refused unless ``overwrite``;
    both are written under temporary names and renamed only when complete.
    """
    params = make_params(shape, seed, presets, **overrides)
    out_dir = str(out_dir).rstrip("/")
    store_path, skeleton_path = f"{out_dir}/data.zarr", f"{out_dir}/skeleton.pkl"
    for path in (store_path, skeleton_path):
        if Path(path).exists() and not overwrite:
            raise OutputExistsError(f"output {path} already exists; pass --overwrite to replace it")
    chunks = tuple(int(min(c, n)) for c, n in zip(chunks, params.shape))
    forest = grow_forest(params)
    node_index, node_voxels = _node_voxels(forest, params)
    description = f"synthetic NISB-like seed {seed}" + (f" ({', '.join(presets)})" if presets else "")
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(params).items()}
    with staged_output(store_path, overwrite=overwrite) as store:
        group = zarr.open_group(store, mode="w", zarr_format=zarr_format)
        group.attrs.update(output_attrs(description, params.voxel_size, "xyz", synth=settings))
        img = group.create_array("img", shape=params.shape + (1,), chunks=chunks + (1,), dtype="uint8")
        img.attrs.update(output_attrs("EM image, grey levels 0-255 (synthetic)", params.voxel_size, "xyzc"))
        seg = group.create_array("seg", shape=params.shape, chunks=chunks, dtype="uint32")
        seg.attrs.update(output_attrs("neuron ids; 0 = membrane / extracellular space", params.voxel_size, "xyz"))
        forest_task = dask.delayed(forest, name=f"synth-forest-{seed}")
        tasks, block_nodes = [], []
        for corner in itertools.product(*(range(0, n, c) for n, c in zip(params.shape, chunks))):
            size = tuple(min(c, n - o) for o, c, n in zip(corner, chunks, params.shape))
            inside = np.all((node_voxels >= corner) & (node_voxels < np.add(corner, size)), axis=1)
            block_nodes.append(np.flatnonzero(inside))
            key = "synth-block-" + "-".join(str(o // c) for o, c in zip(corner, chunks)) + f"-{seed}"
            tasks.append(dask.delayed(_write_block, pure=False)(
                forest_task, params, store, corner, size, node_voxels[inside], dask_key_name=key))
        results = compute_tasks(tasks, f"synth seed {seed}", progress=progress, num_workers=num_workers)
        node_labels = np.zeros(len(node_index), dtype=np.uint32)
        for rows, result in zip(block_nodes, results):
            node_labels[rows] = result["node_labels"]
        graph = build_skeleton(forest, params, node_index, node_voxels, node_labels)
        with staged_output(skeleton_path, overwrite=overwrite) as skeleton_tmp:
            save_skeleton(graph, skeleton_tmp)
    n_voxels = sum(r["n_voxels"] for r in results)
    n_background = sum(r["n_background"] for r in results)
    labels = np.unique(np.concatenate([r["labels"] for r in results])) if results else np.zeros(0)
    skeleton = summarize_skeleton(graph, params.voxel_size)
    summary = SeedSummary(
        path=out_dir,
        shape=params.shape,
        n_neurons=int(len(labels)),
        n_skeleton_nodes=skeleton.n_nodes,
        n_skeletons=skeleton.n_neurons,
        path_length_nm=skeleton.path_length_nm,
        background_fraction=n_background / n_voxels,
        membrane_mean=sum(r["sum_background"] for r in results) / max(n_background, 1),
        cytoplasm_mean=sum(r["sum_foreground"] for r in results) / max(n_voxels - n_background, 1),
    )
    if preview is not None:
        write_preview(store_path, preview, title=f"{out_dir} (seed {seed})")
    return summary


def write_preview(store_path: str, png: str | Path, title: str = "", max_side: int = 256) -> None:
    """Save slices of a seed's image and segmentation to ``png`` (reads one XY and one XZ slice only)."""
    from .preview import save_preview

    img = zarr.open_array(f"{store_path}/img", mode="r")
    seg = zarr.open_array(f"{store_path}/seg", mode="r")
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
    if not kwargs.get("overwrite"):
        for path, _ in targets:
            if Path(path, "data.zarr").exists():
                raise OutputExistsError(f"output {path}/data.zarr already exists; pass --overwrite to replace it")
    return [synthesize_seed(path, shape, seed, **kwargs) for path, seed in targets]


