"""Reading what the metrics need from large volumes with Dask: segment ids at skeleton nodes, grouped by chunk, and
dense contingency tables accumulated block by block."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from nisbflow.blocks import BlockGrid, tree_reduce
from nisbflow.errors import VolumeError
from nisbflow.evaluate.kernel import contingency, sum_contingencies
from nisbflow.tasks import compute_tasks

CONTINGENCY_FAN_IN = 16


def check_integral_ids(values: np.ndarray, role: str = "segmentation", positions: np.ndarray | None = None) -> None:
    """Refuse segment ids of a float volume that are not whole finite numbers (1.5, NaN): cast to integers they
    would be truncated, and merge segments with no word. Integer volumes pass untouched."""
    if values.dtype.kind != "f" or values.size == 0:
        return
    bad = ~np.isfinite(values) | (values != np.floor(values))
    if bad.any():
        first = int(np.argmax(bad.ravel()))
        where = f" at voxel {positions[first].tolist()}" if positions is not None else ""
        raise VolumeError(
            f"{role}: a {values.dtype} volume whose ids are not whole numbers "
            f"({values.ravel()[first].item()!r}"
            f"{where}; {int(bad.sum())} such value(s)): as integer ids they would be truncated and "
            "merged; write the segmentation with integer ids"
        )


def _contingency_checked(true: np.ndarray, test: np.ndarray):
    check_integral_ids(np.asarray(test))
    check_integral_ids(np.asarray(true), "ground truth")
    return contingency(true, test)


def _labels_in_chunk(block: np.ndarray, local: np.ndarray) -> np.ndarray:
    return block[local[:, 0], local[:, 1], local[:, 2]]


def node_labels(segmentation, positions: np.ndarray, *, progress: bool = False) -> np.ndarray:
    """Segment id at each voxel position.

    ``segmentation``: ``(X, Y, Z)`` numpy array, zarr array or dask array; ``positions (N, 3)`` int voxel (x, y, z),
    inside the volume. A numpy array is indexed directly. Otherwise nodes are grouped by chunk and every chunk that
    holds nodes is read once, as a Dask task (``evaluate-node-labels``), in parallel on the current scheduler or
    cluster: never the whole volume, never one read per node.
    """
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 3)
    if isinstance(segmentation, np.ndarray):
        labels = segmentation[positions[:, 0], positions[:, 1], positions[:, 2]]
        check_integral_ids(labels, positions=positions)
        return labels
    array = segmentation if isinstance(segmentation, da.Array) else da.from_zarr(segmentation)
    grid = BlockGrid(array.chunks)
    chunk_index = grid.block_of(positions)
    blocks = array.to_delayed()
    order = np.lexsort(chunk_index.T[::-1])
    keys, starts = np.unique(chunk_index[order], axis=0, return_index=True)
    ends = np.append(starts[1:], len(order))
    tasks = []
    for key, start, end in zip(keys, starts, ends):
        rows = order[start:end]
        origin = grid.origin(tuple(key))
        tasks.append(
            dask.delayed(_labels_in_chunk, pure=True)(
                blocks[tuple(key)],
                positions[rows] - origin,
                dask_key_name=("evaluate-node-labels-" + dask.base.tokenize(array.name, positions[rows]),)
                + tuple(int(k) for k in key),
            )
        )
    results = compute_tasks(tasks, "evaluate: node labels", progress=progress)
    labels = np.zeros(len(positions), dtype=array.dtype)
    for (start, end), values in zip(zip(starts, ends), results):
        labels[order[start:end]] = values
    check_integral_ids(labels, positions=positions)
    return labels


def dense_contingency(true, test, *, progress: bool = False):
    """Sparse contingency ``(true ids, test ids, counts)`` of two ``(X, Y, Z)`` volumes (numpy, zarr or dask),
    accumulated block by block (``evaluate-contingency``) and summed in a tree, so neither volume is loaded whole."""
    if isinstance(true, np.ndarray) and isinstance(test, np.ndarray):
        return _contingency_checked(true, test)
    true = (
        true
        if isinstance(true, da.Array)
        else da.from_array(true)
        if isinstance(true, np.ndarray)
        else da.from_zarr(true)
    )
    test = (
        test
        if isinstance(test, da.Array)
        else da.from_array(test)
        if isinstance(test, np.ndarray)
        else da.from_zarr(test)
    )
    if true.shape != test.shape:
        raise VolumeError(f"segmentation shape {test.shape} differs from ground truth shape {true.shape} (X, Y, Z)")
    test = test.rechunk(true.chunks)
    token = dask.base.tokenize(true.name, test.name)
    parts = [
        dask.delayed(_contingency_checked, pure=True)(t, p, dask_key_name=(f"evaluate-contingency-{token}", i))
        for i, (t, p) in enumerate(zip(true.to_delayed().ravel(), test.to_delayed().ravel()))
    ]
    table = tree_reduce(parts, sum_contingencies, f"evaluate-sum-contingency-{token}", fan_in=CONTINGENCY_FAN_IN)
    [table] = compute_tasks([table], "evaluate: contingency", progress=progress, track=parts)
    return table
