"""Synthetic NISB-like volumes: a pure kernel (:mod:`.kernel`) and its Dask block writer (:mod:`.volume`)."""

from .kernel import PRESETS, NeuriteForest, SynthParams, grow_forest, render_block
from .volume import SeedSummary, make_params, synthesize_layout, synthesize_seed

__all__ = [
    "PRESETS",
    "NeuriteForest",
    "SeedSummary",
    "SynthParams",
    "grow_forest",
    "make_params",
    "render_block",
    "synthesize_layout",
    "synthesize_seed",
]
