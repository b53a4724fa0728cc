"""The one place a decoding backend is chosen: ``numba`` (the CPU kernel, :mod:`nisbflow.decode.kernel`) or
``cupy`` (its GPU twin, :mod:`nisbflow.decode.gpu`, imported only when asked for). Both give the same labels."""

from __future__ import annotations

import numpy as np

from nisbflow.decode.kernel import check_affinities, check_mask, label_affinities, masked_bits, threshold_bits, warn_nan
from nisbflow.errors import ConfigError

BACKENDS = ("numba", "cupy")


def check_backend(backend: str) -> str:
    """Return ``backend`` if it is a decoding backend that can run here, else raise
    :class:`~nisbflow.errors.ConfigError` (``cupy`` needs cupy and a GPU: the ``gpu`` extra)."""
    if backend not in BACKENDS:
        raise ConfigError(f"decoding.backend / --backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "cupy":
        import importlib.util

        if importlib.util.find_spec("cupy") is None:
            raise ConfigError(
                "--backend cupy needs cupy and a CUDA GPU: pip install 'nisbflow[gpu]' (or use --backend numba)"
            )
    return backend


def label_bits(
    bits: np.ndarray, threshold: float, dtype, backend: str = "numba", labels_dtype=np.uint32
) -> tuple[np.ndarray, int]:
    """Components of ``bits (3, X, Y, Z)`` (affinity bit patterns of ``dtype``,
    :func:`~nisbflow.decode.kernel.masked_bits`)
    at ``threshold`` on ``backend``: ``(labels (X, Y, Z) labels_dtype, n)``, ids 1..n in raster order."""
    if backend == "cupy":
        from nisbflow.decode.gpu import label_hard_edges_on_gpu

        threshold_value, infinity = threshold_bits(dtype, threshold)
        return label_hard_edges_on_gpu((bits > threshold_value) & (bits <= infinity), dtype=labels_dtype)
    return label_affinities(bits, threshold, dtype, labels_dtype=labels_dtype)


def decode_in_memory(
    affinities: np.ndarray, thresholds: tuple[float, ...], mask: np.ndarray | None, backend: str = "numba"
) -> list[np.ndarray]:
    """One segmentation per threshold for an in-memory ``(C >= 3, X, Y, Z)`` float array, on ``backend`` (cupy:
    the affinities go to the GPU once, :func:`nisbflow.decode.gpu.decode_on_gpu`)."""
    check_affinities(affinities.shape, affinities.dtype)
    if mask is not None:
        check_mask(mask.shape, affinities.shape[1:])
    warn_nan(affinities)
    if check_backend(backend) == "cupy":
        from nisbflow.decode.gpu import decode_on_gpu

        return decode_on_gpu(affinities, thresholds, mask)
    bits = masked_bits(affinities, mask)
    return [label_affinities(bits, t, affinities.dtype)[0] for t in thresholds]
