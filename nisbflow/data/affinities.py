"""Affinity targets and loss mask from a segmentation, in BANIS source-voxel convention.

``targets[c][v]`` is the edge between voxel ``v`` and ``v + offsets[c]``: 1 when both voxels carry the same
non-zero label, else 0. ``mask[c][v]`` is 1 where ``v + offsets[c]`` lies inside the volume, 0 where the
edge leaves it (those edges are excluded from the loss). Axis order is XYZ throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ..config.schema import BANIS_AFFINITY_OFFSETS, parse_offset

BANIS_OFFSETS: tuple[tuple[int, int, int], ...] = tuple(parse_offset(t) for t in BANIS_AFFINITY_OFFSETS)
"""(x, y, z) voxel offsets of the six BANIS channels: 1 along x, y, z, then 10 along x, y, z."""


def widen_instance_borders(segmentation: np.ndarray, erosion: int) -> np.ndarray:
    """Set to background every voxel whose in-plane ``(2e+1) × (2e+1) × 1`` window holds more than one
    non-zero label (Kisuk Lee's border widening, PyTorch Connectomics ``seg_widen_border``).

    ``segmentation`` is ``(X, Y, Z)`` integer; the window spans x and y, not z. Returns a new array.
    """
    if erosion <= 0:
        return segmentation
    size = (2 * erosion + 1, 2 * erosion + 1, 1)
    highest = ndimage.maximum_filter(segmentation, size=size, mode="reflect")
    top = np.iinfo(segmentation.dtype).max
    lowest_positive = ndimage.minimum_filter(np.where(segmentation == 0, top, segmentation), size=size, mode="reflect")
    keep = highest == lowest_positive  # one positive label (plus background) in the window
    return np.where(keep, segmentation, 0).astype(segmentation.dtype)


def affinities(
    segmentation: np.ndarray,
    offsets: Sequence[Sequence[int]] | Sequence[str] = BANIS_OFFSETS,
    *,
    erosion: int = 0,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Affinity targets and loss mask of a segmentation, BANIS source-voxel convention.

    Parameters
    ----------
    segmentation
        ``(X, Y, Z)`` integer labels, 0 = background.
    offsets
        Per channel a non-negative ``(x, y, z)`` offset in voxels, or PyTorch Connectomics strings ``"10-0-0"``.
    erosion
        Widen instance borders in-plane by this many voxels first (:func:`widen_instance_borders`).
    dtype
        Output dtype (float32 for a loss, uint8 to save memory).

    Returns
    -------
    targets, mask
        Both ``(C, X, Y, Z)`` of ``dtype``: ``targets[c][v] = seg[v] == seg[v + o_c] and seg[v] > 0``;
        ``mask[c][v] = 1`` where ``v + o_c`` is inside the volume.

    Examples
    --------
    >>> seg = np.array([1, 1, 2, 0], dtype=np.uint32).reshape(4, 1, 1)
    >>> targets, mask = affinities(seg, [(1, 0, 0)])
    >>> targets[0, :, 0, 0].tolist(), mask[0, :, 0, 0].tolist()
    ([1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0])
    """
    segmentation = np.asarray(segmentation)
    if segmentation.ndim != 3:
        raise ValueError(f"segmentation must be (X, Y, Z), found {segmentation.ndim} dimensions {segmentation.shape}")
    if segmentation.dtype.kind not in "iu":
        raise ValueError(f"segmentation must hold integer labels, found dtype {segmentation.dtype}")
    offsets = [parse_offset(o) if isinstance(o, str) else tuple(int(v) for v in o) for o in offsets]
    segmentation = widen_instance_borders(segmentation, erosion)
    shape = segmentation.shape
    targets = np.zeros((len(offsets), *shape), dtype=dtype)
    mask = np.zeros((len(offsets), *shape), dtype=dtype)
    for channel, offset in enumerate(offsets):
        if any(o < 0 for o in offset):
            raise ValueError(f"affinity offsets must be non-negative (source-voxel storage), got {offset}")
        if any(o >= n for o, n in zip(offset, shape)):
            continue  # every edge of this channel leaves the volume: target 0, mask 0
        source = tuple(slice(0, int(n - o)) for o, n in zip(offset, shape))
        target = tuple(slice(int(o), int(n)) for o, n in zip(offset, shape))
        a, b = segmentation[source], segmentation[target]
        edges: tuple[Any, ...] = (channel, *source)
        targets[edges] = (a == b) & (a > 0)
        mask[edges] = 1
    return targets, mask
