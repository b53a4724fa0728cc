"""The ``cupy`` decoding backend: hard-edge connected components on a GPU, same results as the numba kernel.

Imported only when ``backend="cupy"`` is asked for. The algorithm is a lock-free union-find (every voxel starts as
its own root; each hard edge links the two roots, the larger pointing to the smaller, with ``atomicMin``), so a
component's root is its smallest flat index, i.e. its first voxel in raster order, and numbering roots in sorted
order gives exactly the ids of :func:`nisbflow.decode.kernel.label_hard_edges`.
"""

from __future__ import annotations

import numpy as np

from nisbflow.decode.kernel import UINT32_LIMIT, hard_edges, segmentation_dtype

_SOURCE = r"""
__device__ unsigned long long find_root(const unsigned long long* parent, unsigned long long i) {
    while (parent[i] != i) i = parent[i];
    return i;
}

extern "C" __global__ void link_hard_edges(const bool* hard, unsigned long long* parent,
                                           long long nx, long long ny, long long nz) {
    long long n = nx * ny * nz;
    long long v = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= n) return;
    long long z = v % nz, y = (v / nz) % ny, x = v / (ny * nz);
    long long step[3] = {ny * nz, nz, 1};
    bool inside[3] = {x + 1 < nx, y + 1 < ny, z + 1 < nz};
    for (int c = 0; c < 3; ++c) {
        if (!inside[c] || !hard[c * n + v]) continue;
        unsigned long long a = v, b = v + step[c];
        while (true) {
            a = find_root(parent, a);
            b = find_root(parent, b);
            if (a == b) break;
            if (a < b) { unsigned long long t = a; a = b; b = t; }   // now a > b: a's root will point to b
            unsigned long long old = atomicMin(&parent[a], b);
            if (old == a) break;                                      // a was still a root: linked
            a = old;                                                  // someone linked a meanwhile; retry
        }
    }
}

extern "C" __global__ void flatten(unsigned long long* parent, long long n) {
    long long v = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= n) return;
    parent[v] = find_root(parent, v);
}
"""

_kernels: dict = {}


def _cupy():
    try:
        import cupy
    except ImportError as error:  # pragma: no cover - depends on the machine
        raise ImportError(
            "decoding backend 'cupy' needs cupy (pip install 'nisbflow[gpu]') and an NVIDIA GPU; "
            "use backend 'numba' on CPU machines"
        ) from error
    return cupy


def _kernel(name: str):
    cupy = _cupy()
    if not _kernels:
        module = cupy.RawModule(code=_SOURCE)
        _kernels.update(link=module.get_function("link_hard_edges"), flatten=module.get_function("flatten"))
    return _kernels[name]


def label_hard_edges_on_gpu(hard, dtype=None) -> tuple[np.ndarray, int]:
    """GPU twin of :func:`nisbflow.decode.kernel.label_hard_edges`: ``(3, X, Y, Z) bool`` → ``(labels, n)``.

    Accepts a numpy or cupy array; returns a numpy array.
    """
    cupy = _cupy()
    hard = cupy.ascontiguousarray(cupy.asarray(hard, dtype=cupy.bool_))
    nx, ny, nz = hard.shape[1:]
    n = nx * ny * nz
    foreground = hard.any(axis=0)
    foreground[1:] |= hard[0, :-1]
    foreground[:, 1:] |= hard[1, :, :-1]
    foreground[:, :, 1:] |= hard[2, :, :, :-1]
    parent = cupy.arange(n, dtype=cupy.uint64)
    threads = 256
    blocks = (n + threads - 1) // threads
    _kernel("link")((blocks,), (threads,), (hard, parent, np.int64(nx), np.int64(ny), np.int64(nz)))
    _kernel("flatten")((blocks,), (threads,), (parent, np.int64(n)))
    roots = parent.reshape(nx, ny, nz)[foreground]
    unique_roots = cupy.unique(roots)
    count = int(unique_roots.size)
    out_dtype = np.dtype(dtype) if dtype is not None else segmentation_dtype(count)
    if count >= UINT32_LIMIT and out_dtype == np.uint32:
        raise OverflowError(f"{count} segments do not fit in uint32")
    labels = cupy.zeros((nx, ny, nz), dtype=out_dtype)
    labels[foreground] = (cupy.searchsorted(unique_roots, roots) + 1).astype(out_dtype)
    return cupy.asnumpy(labels), count


def decode_on_gpu(affinities: np.ndarray, thresholds, mask=None) -> list[np.ndarray]:
    """One segmentation per threshold, thresholding and labelling on the GPU."""
    cupy = _cupy()
    on_gpu = cupy.asarray(affinities[:3])
    gpu_mask = None if mask is None else cupy.asarray(mask)
    return [label_hard_edges_on_gpu(hard_edges(on_gpu, t, gpu_mask))[0] for t in thresholds]
