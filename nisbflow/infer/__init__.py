"""Inference: MedNeXt sliding-window prediction with the BANIS geometry (:mod:`nisbflow.infer.geometry`)."""

from nisbflow.infer.geometry import blending_weight, read_region, redundancy, window_grid, window_starts

__all__ = ["blending_weight", "read_region", "redundancy", "window_grid", "window_starts"]
