"""In-memory affinity connected components: the pure kernel of ``decode_affinity_cc``.

Conventions (../shared/DESIGN.md): affinities are ``(C, X, Y, Z)`` with source-voxel storage, ``aff[c][v]`` being
the edge between voxel ``v`` and ``v + e_c`` for ``e_0, e_1, e_2 = (1,0,0), (0,1,0), (0,0,1)``. An edge is hard when
``aff > threshold`` (strict, compared in the array's dtype). Foreground is every voxel with a hard outgoing edge
(also one that points out of the volume) plus the destination of every hard in-volume edge; components are
6-connected through hard edges only; background is 0.

Labels come out consecutive, 1..N, numbered in the raster (C) order of each component's first voxel, so the same
input always gives the same ids.
"""

from __future__ import annotations

import warnings

import numba
import numpy as np

from nisbflow.errors import VolumeError

UINT32_LIMIT = 2**32
"""Segment counts below this are stored as uint32, larger ones as uint64."""


def segmentation_dtype(n_segments: int) -> np.dtype:
    """``uint32`` when ids 1..``n_segments`` fit in it (``n_segments < 2**32``), else ``uint64``."""
    return np.dtype(np.uint32) if n_segments < UINT32_LIMIT else np.dtype(np.uint64)


def check_affinities(shape: tuple[int, ...], dtype, where: str = "affinities") -> None:
    """Raise :class:`VolumeError` unless ``shape``/``dtype`` are ``(C >= 3, X, Y, Z)`` floating point."""
    dtype = np.dtype(dtype)
    if len(shape) != 4:
        raise VolumeError(f"{where}: expected affinities of shape (C, X, Y, Z) with C >= 3, found shape {tuple(shape)}")
    if shape[0] < 3:
        raise VolumeError(f"{where}: expected at least 3 affinity channels (offsets x, y, z) on axis 0, "
                          f"found shape {tuple(shape)}")
    if dtype.kind != "f":
        raise VolumeError(f"{where}: expected float16 or float32 affinities in [0, 1], found dtype {dtype.name} "
                          "(convert integer predictions to probabilities first)")


def check_mask(mask_shape: tuple[int, ...], spatial_shape: tuple[int, ...], where: str = "affinity mask") -> None:
    """Raise :class:`VolumeError` unless the mask is ``(X, Y, Z)`` equal to the affinities' spatial shape."""
    if tuple(mask_shape) != tuple(spatial_shape):
        raise VolumeError(f"{where}: expected shape {tuple(spatial_shape)} (X, Y, Z) to match the affinities, "
                          f"found {tuple(mask_shape)}")


def check_thresholds(thresholds) -> tuple[float, ...]:
    """Thresholds as a tuple of floats in [0, 1]; raise ValueError otherwise."""
    values = tuple(float(t) for t in np.atleast_1d(thresholds))
    if not values or any(not 0.0 <= t <= 1.0 for t in values):
        raise ValueError(f"thresholds must be in [0, 1], got {values}")
    return values


BACKENDS = ("numba", "cupy")


def check_backend(backend: str) -> str:
    """Return ``backend`` if it is a decoding backend, else raise ValueError."""
    if backend not in BACKENDS:
        raise ValueError(f"decoding backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def hard_edges(affinities: np.ndarray, threshold: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Hard edges ``affinities[0:3] > threshold`` as ``(3, X, Y, Z) bool``.

    The comparison happens in the affinities' dtype (a float16 array is compared with the float16 nearest to
    ``threshold``, as BANIS does under NumPy 2). NaN is never above a threshold, so it gives no edge. Where
    ``mask (X, Y, Z)`` is 0 every edge stored at that voxel is off.
    """
    edges = affinities[:3] > affinities.dtype.type(threshold)
    if mask is not None:
        edges &= (mask != 0)[None]
    return edges


def warn_nan(affinities: np.ndarray, where: str = "affinities") -> None:
    """Warn (once per call) when ``affinities[0:3]`` hold NaN, which decodes as 'no edge'."""
    n_nan = int(np.isnan(affinities[:3]).sum())
    if n_nan:
        warnings.warn(f"{where}: {n_nan} NaN affinities; treated as no edge", RuntimeWarning, stacklevel=3)


@numba.njit(cache=True, nogil=True)
def _find(parent, label):
    root = label
    while parent[root] != root:
        root = parent[root]
    while parent[label] != root:  # path compression
        following = parent[label]
        parent[label] = root
        label = following
    return root


@numba.njit(cache=True, nogil=True)
def _join(parent, a, b):
    """Union of the sets holding provisional labels ``a`` and ``b``; the smaller root wins."""
    root_a, root_b = _find(parent, a), _find(parent, b)
    if root_a < root_b:
        parent[root_b] = root_a
    elif root_b < root_a:
        parent[root_a] = root_b


@numba.njit(cache=True, nogil=True)
def _label_hard_edges(hard, labels):
    """Connected components of the hard-edge graph, written into ``labels``; returns the component count.

    ``hard (3, X, Y, Z) bool``; ``labels (X, Y, Z)`` unsigned, all zero on entry. One raster scan gives each voxel
    the provisional label of a lower neighbour that reaches it by a hard edge (joining labels when several do), or a
    new one if it starts a hard edge itself; a second pass maps provisional labels to consecutive ids.
    """
    nx, ny, nz = labels.shape
    parent = np.empty(4096, dtype=np.int64)
    parent[0] = 0
    n_provisional = 0
    for x in range(nx):
        for y in range(ny):
            for z in range(nz):
                label = np.int64(0)
                if x > 0 and hard[0, x - 1, y, z]:
                    label = np.int64(labels[x - 1, y, z])
                if y > 0 and hard[1, x, y - 1, z]:
                    other = np.int64(labels[x, y - 1, z])
                    if label == 0:
                        label = other
                    elif other != label:
                        _join(parent, label, other)
                if z > 0 and hard[2, x, y, z - 1]:
                    other = np.int64(labels[x, y, z - 1])
                    if label == 0:
                        label = other
                    elif other != label:
                        _join(parent, label, other)
                if label == 0 and (hard[0, x, y, z] or hard[1, x, y, z] or hard[2, x, y, z]):
                    n_provisional += 1
                    if n_provisional == parent.shape[0]:
                        grown = np.empty(2 * parent.shape[0], dtype=np.int64)
                        grown[:n_provisional] = parent[:n_provisional]
                        parent = grown
                    parent[n_provisional] = n_provisional
                    label = np.int64(n_provisional)
                labels[x, y, z] = label
    # a component's root is its smallest provisional label, i.e. the label of its first voxel in raster order
    final = np.zeros(n_provisional + 1, dtype=np.int64)
    n_components = 0
    for label in range(1, n_provisional + 1):
        root = _find(parent, label)
        if root == label:
            n_components += 1
            final[label] = n_components
        else:
            final[label] = final[root]
    for x in range(nx):
        for y in range(ny):
            for z in range(nz):
                labels[x, y, z] = final[labels[x, y, z]]
    return n_components


def label_hard_edges(hard: np.ndarray, dtype=None) -> tuple[np.ndarray, int]:
    """Label the components of a hard-edge graph.

    ``hard (3, X, Y, Z) bool`` → ``(labels (X, Y, Z), n)``, ids 1..n in raster order of first voxel, 0 background.
    ``dtype`` is the label dtype (default: uint32 unless the volume has 2³² voxels or more, then uint64, shrunk
    back to uint32 when the count allows).
    """
    spatial = hard.shape[1:]
    wide = dtype is None and int(np.prod(spatial, dtype=np.int64)) >= UINT32_LIMIT
    labels = np.zeros(spatial, dtype=np.dtype(np.uint64) if wide else np.dtype(dtype or np.uint32))
    n = int(_label_hard_edges(np.ascontiguousarray(hard), labels))
    if wide and segmentation_dtype(n) == np.uint32:
        labels = labels.astype(np.uint32)
    return labels, n


def decode_in_memory(affinities: np.ndarray, thresholds: tuple[float, ...], mask: np.ndarray | None,
                     backend: str = "numba") -> list[np.ndarray]:
    """One segmentation per threshold for an in-memory ``(C >= 3, X, Y, Z)`` float array."""
    check_affinities(affinities.shape, affinities.dtype)
    if mask is not None:
        check_mask(mask.shape, affinities.shape[1:])
    warn_nan(affinities)
    if check_backend(backend) == "cupy":
        from nisbflow.decode.gpu import decode_on_gpu

        return decode_on_gpu(affinities, thresholds, mask)
    return [label_hard_edges(hard_edges(affinities, t, mask))[0] for t in thresholds]
