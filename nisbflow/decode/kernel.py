"""In-memory affinity connected components: the pure kernel of ``decode_affinity_cc``.

Conventions (docs/design.md): affinities are ``(C, X, Y, Z)`` with source-voxel storage, ``aff[c][v]`` being
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

from nisbflow.data.volumes import check_affinity_layout
from nisbflow.errors import ConfigError, VolumeError

UINT32_LIMIT = 2**32
"""Segment counts below this are stored as uint32, larger ones as uint64."""


def segmentation_dtype(n_segments: int) -> np.dtype:
    """``uint32`` when ids 1..``n_segments`` fit in it (``n_segments < 2**32``), else ``uint64``."""
    return np.dtype(np.uint32) if n_segments < UINT32_LIMIT else np.dtype(np.uint64)


def check_affinities(shape: tuple[int, ...], dtype, where: str = "affinities") -> None:
    """Raise :class:`VolumeError` unless ``shape``/``dtype`` are ``(C, X, Y, Z)`` floating point with C = 3 or 6
    (:func:`nisbflow.data.volumes.check_affinity_layout`)."""
    check_affinity_layout(shape, dtype, where)


def check_mask(mask_shape: tuple[int, ...], spatial_shape: tuple[int, ...], where: str = "affinity mask") -> None:
    """Raise :class:`VolumeError` unless the mask is ``(X, Y, Z)`` equal to the affinities' spatial shape."""
    if tuple(mask_shape) != tuple(spatial_shape):
        raise VolumeError(
            f"{where}: expected shape {tuple(spatial_shape)} (X, Y, Z) to match the affinities, "
            f"found {tuple(mask_shape)}"
        )


def check_thresholds(thresholds) -> tuple[float, ...]:
    """Thresholds as a tuple of floats in [0, 1]; raise :class:`~nisbflow.errors.ConfigError` otherwise (NaN and
    booleans included)."""
    raw = list(np.atleast_1d(np.asarray(thresholds, dtype=object)))
    if any(isinstance(t, (bool, np.bool_)) for t in raw):
        raise ConfigError(f"decoding threshold / -t: expected numbers in [0, 1], got a boolean in {raw}")
    try:
        values = tuple(float(t) for t in raw)
    except (TypeError, ValueError):
        raise ConfigError(f"decoding threshold / -t: expected numbers in [0, 1], got {raw}") from None
    if not values or any(not 0.0 <= t <= 1.0 for t in values):  # NaN fails both comparisons
        percent = [t for t in values if 1.0 < t <= 100.0]
        hint = f"; did you mean {', '.join(f'{t / 100:g}' for t in percent)}?" if percent else ""
        raise ConfigError(
            f"decoding threshold / -t: every threshold must be a number in [0, 1], got "
            f"{', '.join(f'{t:g}' for t in values) or 'none'}{hint}"
        )
    return values


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


# ----------------------------------------------------------------------------------------------------------------
# comparing floats through their bit patterns
#
# The labelling kernel reads affinities as unsigned integers of the same width. For a threshold t >= 0 (thresholds
# are checked to lie in [0, 1]) and IEEE floats, ``a > t`` holds exactly when ``bits(t) < bits(a) <= bits(+inf)``:
# non-negative floats sort like their bit patterns, negative ones (sign bit set) and NaN lie above +inf. This keeps
# float16 exact (NumPy's float16 arithmetic is emulated and slow, numba has none on CPU) and fuses thresholding into
# the labelling scan, so no boolean edge array is built.

_UNSIGNED = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_INFINITY_BITS = {2: 0x7C00, 4: 0x7F800000, 8: 0x7FF0000000000000}


def affinity_bits(affinities: np.ndarray) -> np.ndarray:
    """The bit patterns of a float array as unsigned integers of the same width (a view, no copy)."""
    return affinities.view(_UNSIGNED[affinities.dtype.itemsize])


def threshold_bits(dtype, threshold: float) -> tuple:
    """``(bits of the threshold in dtype, bits of +inf)`` as numpy unsigned scalars for the labelling kernel."""
    dtype = np.dtype(dtype)
    unsigned = _UNSIGNED[dtype.itemsize]
    return np.array(threshold, dtype=dtype).view(unsigned)[()], unsigned(_INFINITY_BITS[dtype.itemsize])


@numba.njit(cache=True, nogil=True)
def _count_nan_bits(bits, magnitude, infinity):
    count = 0
    for value in bits.ravel():
        if value & magnitude >= infinity:  # sign bit cleared: ±inf is infinity itself, NaN lies above it
            count += 1
    return count


def count_nan(affinities: np.ndarray) -> int:
    """Number of values that are not finite (NaN, +inf, -inf) in a float array (any shape): none is a
    probability."""
    unsigned = _UNSIGNED[affinities.dtype.itemsize]
    magnitude = unsigned((1 << (8 * affinities.dtype.itemsize - 1)) - 1)
    infinity = threshold_bits(affinities.dtype, 0.0)[1]
    return int(_count_nan_bits(np.ascontiguousarray(affinity_bits(affinities)), magnitude, infinity))


def warn_nan(affinities: np.ndarray, where: str = "affinities") -> None:
    """Warn (once per call) when ``affinities[0:3]`` hold NaN or infinite values (NaN and -inf decode as 'no
    edge', +inf as an edge)."""
    n_nan = count_nan(affinities[:3])
    if n_nan:
        warnings.warn(f"{where}: {n_nan} {NON_FINITE}", RuntimeWarning, stacklevel=3)


NON_FINITE = "NaN or infinite affinities (not probabilities: NaN and -inf count as no edge, +inf as an edge)"


# ----------------------------------------------------------------------------------------------------------------
# the labelling kernel


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
def _union(parent, a, b):
    """Union of the sets holding provisional labels ``a`` and ``b``; returns the merged root (the smaller one)."""
    root_a, root_b = _find(parent, a), _find(parent, b)
    if root_b < root_a:
        parent[root_a] = root_b
        return root_b
    parent[root_b] = root_a
    return root_a


@numba.njit(cache=True, nogil=True)
def _is_hard(value, threshold, infinity):
    """1 if ``threshold < value <= infinity`` (bit patterns, see :func:`threshold_bits`), else 0, without a branch."""
    return np.int64(threshold < value) & np.int64(value <= infinity)


@numba.njit(cache=True, nogil=True)
def _label_affinity_bits(bits, threshold, infinity, labels):
    """Connected components of the hard-edge graph, written into ``labels``; returns the component count.

    ``bits (3, X, Y, Z)`` unsigned: affinities' bit patterns (an edge is hard when ``threshold < bits <= infinity``);
    ``labels (X, Y, Z)`` unsigned, C-contiguous, all zero on entry. One raster scan gives each voxel the provisional
    label of the lower neighbours that reach it by a hard edge (uniting their sets when they differ), or a new one if
    it starts a hard edge itself; a second pass maps provisional labels to consecutive ids. The scan works on rows
    along z and keeps the noisy edge tests out of branches (labels are multiplied by 0/1 edge values).
    """
    nx, ny, nz = labels.shape
    parent = np.empty(4096, dtype=np.int64)
    parent[0] = 0
    n_provisional = 0
    no_bits = np.zeros(nz, dtype=bits.dtype)
    no_labels = np.zeros(nz, dtype=labels.dtype)
    for x in range(nx):
        for y in range(ny):
            row = labels[x, y]
            out_x, out_y, out_z = bits[0, x, y], bits[1, x, y], bits[2, x, y]
            in_x, from_x = (bits[0, x - 1, y], labels[x - 1, y]) if x > 0 else (no_bits, no_labels)
            in_y, from_y = (bits[1, x, y - 1], labels[x, y - 1]) if y > 0 else (no_bits, no_labels)
            previous = np.int64(0)  # label of (x, y, z - 1) if its +z edge is hard, else 0
            for z in range(nz):
                a = np.int64(from_x[z]) * _is_hard(in_x[z], threshold, infinity)
                b = np.int64(from_y[z]) * _is_hard(in_y[z], threshold, infinity)
                label = max(a, max(b, previous))
                if a != 0 and a != label:
                    label = _union(parent, label, a)
                if b != 0 and b != label:
                    label = _union(parent, label, b)
                if previous != 0 and previous != label:
                    label = _union(parent, label, previous)
                up = _is_hard(out_z[z], threshold, infinity)
                if label == 0 and (
                    up | _is_hard(out_x[z], threshold, infinity) | _is_hard(out_y[z], threshold, infinity)
                ):
                    n_provisional += 1
                    if n_provisional == parent.shape[0]:
                        grown = np.empty(2 * parent.shape[0], dtype=np.int64)
                        grown[:n_provisional] = parent[:n_provisional]
                        parent = grown
                    parent[n_provisional] = n_provisional
                    label = np.int64(n_provisional)
                row[z] = label
                previous = label * up
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
    flat = labels.reshape(-1)
    for i in range(flat.size):
        flat[i] = final[flat[i]]
    return n_components


def _label_array(spatial: tuple[int, ...], dtype) -> tuple[np.ndarray, bool]:
    wide = dtype is None and int(np.prod(spatial, dtype=np.int64)) >= UINT32_LIMIT
    return np.zeros(spatial, dtype=np.dtype(np.uint64) if wide else np.dtype(dtype or np.uint32)), wide


def _narrowed(labels: np.ndarray, n: int, wide: bool) -> np.ndarray:
    return labels.astype(np.uint32) if wide and segmentation_dtype(n) == np.uint32 else labels


def label_affinities(bits: np.ndarray, threshold: float, dtype, labels_dtype=None) -> tuple[np.ndarray, int]:
    """Label the components of ``affinity_bits(affinities[:3]) > threshold`` (compared in float ``dtype``).

    ``bits (3, X, Y, Z)`` unsigned → ``(labels (X, Y, Z), n)``, ids 1..n in raster order of first voxel, 0 background.
    ``labels_dtype`` defaults to uint32 unless the volume has 2³² voxels or more (then uint64, shrunk back to uint32
    when the count allows).
    """
    labels, wide = _label_array(bits.shape[1:], labels_dtype)
    n = int(_label_affinity_bits(bits, *threshold_bits(dtype, threshold), labels))  # type: ignore[call-arg]  # numba
    return _narrowed(labels, n, wide), n


def label_hard_edges(hard: np.ndarray, dtype=None) -> tuple[np.ndarray, int]:
    """Label the components of a hard-edge graph.

    ``hard (3, X, Y, Z) bool`` → ``(labels (X, Y, Z), n)``, ids 1..n in raster order of first voxel, 0 background.
    ``dtype`` is the label dtype (default as in :func:`label_affinities`).
    """
    labels, wide = _label_array(hard.shape[1:], dtype)
    n = int(_label_affinity_bits(hard.view(np.uint8), np.uint8(0), np.uint8(1), labels))
    return _narrowed(labels, n, wide), n


def masked_bits(affinities: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``affinity_bits(affinities[:3])``, with every edge of a voxel where ``mask == 0`` set to +0.0 (never hard)."""
    bits = affinity_bits(affinities[:3])
    if mask is None:
        return bits
    return np.where((mask != 0)[None], bits, bits.dtype.type(0))
