"""Inference: MedNeXt sliding-window prediction with the BANIS geometry (:mod:`nisbflow.infer.geometry`).

``predict_affinities`` (a block-wise dask graph), ``predict_affinities_whole`` (the single-process reference),
``infer_to_zarr`` (zarr → zarr, resumable) and ``WindowSettings`` load torch on first use, so importing this package
stays light.
"""

from nisbflow.infer.geometry import blending_weight, read_region, window_grid, window_starts

__all__ = [
    "WindowSettings",
    "blending_weight",
    "infer_to_zarr",
    "predict_affinities",
    "predict_affinities_whole",
    "read_region",
    "window_grid",
    "window_starts",
]

_BLOCKWISE = {"WindowSettings", "infer_to_zarr", "predict_affinities", "predict_affinities_whole"}


def __getattr__(name):
    if name in _BLOCKWISE:
        from nisbflow.infer import blockwise

        return getattr(blockwise, name)
    raise AttributeError(f"module 'nisbflow.infer' has no attribute {name!r}")
