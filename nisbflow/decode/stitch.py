"""Pure block functions of block-wise decoding: label one block with its lower halo, pair labels across faces,
merge label equivalences (union-find on a sparse graph), and number the merged segments 1..N.

Words: a block's *write region* is the part of the volume it owns (one chunk); its *read region* adds one voxel on
the lower side of each axis (the *halo*), so every hard edge ending in the write region is seen by the block that
owns its destination. Provisional ids are unique across blocks without any serial step: ``block << label_bits |
local label`` (the block's linear index in C order in the high bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numba
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

from nisbflow.decode.backends import label_bits
from nisbflow.decode.kernel import count_nan, masked_bits, segmentation_dtype

SPATIAL_AXES = (0, 1, 2)


class BlockLabels(NamedTuple):
    """One block's labelling at one threshold.

    ``labels (x, y, z) uint32``: local ids of the write region (may be None once written to disk);
    ``halo_faces[a] ``: local ids on the halo plane below the write region along axis ``a`` (None at the volume's
    lower face); ``upper_faces[a]``: local ids on the write region's last plane along ``a`` (both empty tuples in
    a summary whose faces went to scratch); ``count``: local ids
    1..count are in use (halo-only components included); ``nan_count``: NaN affinities in the write region.
    """

    labels: np.ndarray | None
    halo_faces: tuple
    upper_faces: tuple
    count: int  # type: ignore[assignment]  # the field shadows tuple.count, which nothing here calls
    nan_count: int = 0


def upper_planes(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The last planes of a block along spatial axes x, y, z: ``(..., X, Y, Z)`` → three arrays with that axis of
    size 1 (the halo planes of its upper neighbours)."""
    planes = []
    for axis in SPATIAL_AXES:
        index: list[Any] = [slice(None)] * block.ndim
        index[block.ndim - 3 + axis] = slice(-1, None)
        planes.append(np.ascontiguousarray(block[tuple(index)]))
    x, y, z = planes
    return x, y, z


def label_block(
    affinities, halo_affinities, thresholds, mask=None, halo_mask=(None, None, None), backend: str = "numba"
) -> list[BlockLabels]:
    """Label one block's read region at each threshold.

    ``affinities (3, x, y, z)`` float: the write region; ``halo_affinities[a] (3, ...)``: the plane below it along
    axis ``a`` (the lower neighbour's last plane; None at the volume's lower face). ``mask (x, y, z)`` and
    ``halo_mask`` likewise, or None. Edges among halo voxels of different faces (the read region's lower edges and
    corner) are left out: an edge ending in the write region never starts there, and any other edge is seen by the
    block that owns its destination.
    """
    region, halo = read_region_bits(affinities, halo_affinities, mask, halo_mask)
    nan_count = count_nan(affinities[:3])
    results = []
    for threshold in thresholds:
        labels, count = label_bits(region, threshold, affinities.dtype, backend)
        write = labels[halo[0] :, halo[1] :, halo[2] :]
        halo_faces = tuple(_halo_plane(labels, halo, axis) for axis in SPATIAL_AXES)
        upper_faces = (
            np.ascontiguousarray(write[-1]),
            np.ascontiguousarray(write[:, -1]),
            np.ascontiguousarray(write[:, :, -1]),
        )
        results.append(BlockLabels(write, halo_faces, upper_faces, int(count), nan_count))
    return results


def read_region_bits(affinities, halo_affinities, mask=None, halo_mask=(None, None, None)) -> tuple[np.ndarray, tuple]:
    """One block's read region as affinity bit patterns (:func:`~nisbflow.decode.kernel.masked_bits`).

    Returns ``(region (3, x + hx, y + hy, z + hz) unsigned, (hx, hy, hz))`` where ``h`` is 1 along an axis with a
    halo plane and 0 at the volume's lower face. Halo planes are placed below the write region; the lines where two
    halo planes meet stay +0.0 (no edge). Without any halo the region is a view of the input.
    """
    halo = tuple(int(face is not None) for face in halo_affinities)
    bits = masked_bits(affinities, mask)
    if not any(halo):
        return bits, halo
    region = np.zeros((3,) + tuple(n + h for n, h in zip(bits.shape[1:], halo)), dtype=bits.dtype)
    region[:, halo[0] :, halo[1] :, halo[2] :] = bits
    for axis, face in enumerate(halo_affinities):
        if face is not None:
            index = [slice(None), slice(halo[0], None), slice(halo[1], None), slice(halo[2], None)]
            index[1 + axis] = slice(0, 1)
            region[tuple(index)] = masked_bits(face, halo_mask[axis])
    return region, halo


def _halo_plane(labels: np.ndarray, halo: tuple, axis: int) -> np.ndarray | None:
    """The read region's halo plane below the write region along ``axis`` (None where there is no halo)."""
    if not halo[axis]:
        return None
    index: list[Any] = [slice(h, None) for h in halo]
    index[axis] = 0
    return np.ascontiguousarray(labels[tuple(index)])


def without_labels(block_labels: list[BlockLabels]) -> list[BlockLabels]:
    """The same summaries with ``labels`` dropped, so only faces and counts travel between workers."""
    return [b._replace(labels=None) for b in block_labels]


def block_counts(block_labels: list[BlockLabels]) -> np.ndarray:
    """``(T + 1,) int64``: the local label count of one block at each threshold, then its NaN count."""
    return np.array([b.count for b in block_labels] + [block_labels[0].nan_count], dtype=np.int64)


def face_pairs(block: list[BlockLabels], block_id: int, lower: list, lower_ids: list, label_bits: int) -> list:
    """Equivalent provisional ids across one block's lower faces, per threshold.

    ``lower[a]`` is the lower neighbour's summary along axis ``a`` (or None) and ``lower_ids[a]`` its linear index.
    Returns, per threshold, a ``(P, 2) uint64`` array of (neighbour id, this block's id) pairs, unique rows.
    """
    pairs = []
    for t, mine in enumerate(block):
        found = [np.empty((0, 2), dtype=np.uint64)]
        for axis in SPATIAL_AXES:
            if lower[axis] is None:
                continue
            halo = mine.halo_faces[axis].ravel().astype(np.uint64)
            theirs = lower[axis][t].upper_faces[axis].ravel().astype(np.uint64)
            keep = (halo > 0) & (theirs > 0)
            # local ids are uint32: one uint64 per pair makes the de-duplication a fast 1-D unique
            unique = np.unique((theirs[keep] << np.uint64(32)) | halo[keep])
            found.append(
                np.stack(
                    [
                        (np.uint64(lower_ids[axis]) << np.uint64(label_bits)) | (unique >> np.uint64(32)),
                        (np.uint64(block_id) << np.uint64(label_bits)) | (unique & np.uint64(0xFFFFFFFF)),
                    ],
                    axis=1,
                )
            )
        pairs.append(np.concatenate(found))
    return pairs


def merge_equivalences(*parts: list) -> list:
    """Union-find over equivalence lists, per threshold.

    Each part is a list (one entry per threshold) of ``(P, 2) uint64`` id pairs. Returns per threshold a ``(M, 2)
    uint64`` array of (member, root) for every id that is not the smallest of its merged set; its root is that
    smallest id. The output is again a valid part, so merges nest in a tree.
    """
    merged = []
    for t in range(len(parts[0])):
        edges = np.concatenate([part[t] for part in parts])
        if len(edges) == 0:
            merged.append(np.empty((0, 2), dtype=np.uint64))
            continue
        ids, inverse = np.unique(edges.ravel(), return_inverse=True)
        inverse = inverse.reshape(-1, 2)
        graph = scipy.sparse.coo_matrix(
            (np.ones(len(inverse), dtype=np.int8), (inverse[:, 0], inverse[:, 1])), shape=(len(ids), len(ids))
        )
        _, component = scipy.sparse.csgraph.connected_components(graph, directed=False)
        _, first = np.unique(component, return_index=True)  # ids are sorted: the first member is the smallest
        root = ids[first[component]]
        keep = ids != root
        merged.append(np.stack([ids[keep], root[keep]], axis=1))
    return merged


@dataclass(frozen=True)
class SegmentNumbering:
    """How provisional ids map to final segment ids 1..``n_segments`` at one threshold.

    ``members (M,) uint64`` sorted: provisional ids merged into a smaller one; ``member_ids (M,)``: their final ids;
    ``offsets (B,) int64``: final ids before each block's own segments; ``counts (B,)``: local ids per block.
    """

    members: np.ndarray
    member_ids: np.ndarray
    offsets: np.ndarray
    counts: np.ndarray
    label_bits: int
    n_segments: int

    @property
    def dtype(self) -> np.dtype:
        return segmentation_dtype(self.n_segments)

    def lookup_table(self, block_id: int) -> np.ndarray:
        """``(count + 1,)`` final id of each local id of block ``block_id`` (index 0 → 0)."""
        bits = np.uint64(self.label_bits)
        lo, hi = np.searchsorted(self.members, [np.uint64(block_id) << bits, np.uint64(block_id + 1) << bits])
        local_members = (self.members[lo:hi] & ((np.uint64(1) << bits) - np.uint64(1))).astype(np.int64)
        local = np.arange(int(self.counts[block_id]) + 1, dtype=np.int64)
        table = self.offsets[block_id] + local - np.searchsorted(local_members, local)
        table[local_members] = self.member_ids[lo:hi]
        table[0] = 0
        return table.astype(self.dtype)


def number_segments(counts: np.ndarray, equivalences: np.ndarray, label_bits: int) -> SegmentNumbering:
    """Give every merged set of provisional ids a final id, consecutive over blocks in C order.

    ``counts (B,) int64`` local ids per block; ``equivalences (M, 2) uint64`` (member, root) from
    :func:`merge_equivalences`. A set's final id belongs to its root (its smallest id); roots are numbered block by
    block, in local-label order within a block.
    """
    order = np.argsort(equivalences[:, 0], kind="stable")
    members, roots = equivalences[order, 0], equivalences[order, 1]
    bits = np.uint64(label_bits)
    member_block = (members >> bits).astype(np.int64)
    roots_per_block = counts - np.bincount(member_block, minlength=len(counts))
    offsets = np.concatenate([[0], np.cumsum(roots_per_block)[:-1]]).astype(np.int64)
    root_block = (roots >> bits).astype(np.int64)
    root_local = (roots & ((np.uint64(1) << bits) - np.uint64(1))).astype(np.int64)
    members_below_root = np.searchsorted(members, roots) - np.searchsorted(
        members, root_block.astype(np.uint64) << bits
    )
    member_ids = offsets[root_block] + root_local - members_below_root
    return SegmentNumbering(
        members, member_ids.astype(np.int64), offsets, counts.astype(np.int64), label_bits, int(roots_per_block.sum())
    )


def relabel_block(labels: np.ndarray, numbering: SegmentNumbering, block_id: int) -> np.ndarray:
    """``(x, y, z)`` local ids of one block → final segment ids, in ``numbering.dtype``."""
    table = numbering.lookup_table(block_id)
    out = np.empty(labels.shape, dtype=table.dtype)
    _apply_lookup_table(labels, table, out)
    return out


@numba.njit(cache=True, nogil=True)
def _apply_lookup_table(labels, table, out):
    """``out[v] = table[labels[v]]`` without NumPy's conversion of the whole index array to intp."""
    for x in range(labels.shape[0]):
        for y in range(labels.shape[1]):
            for z in range(labels.shape[2]):
                out[x, y, z] = table[labels[x, y, z]]
