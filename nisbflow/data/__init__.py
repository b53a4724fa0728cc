"""Data: NISB seeds and zarr volumes, skeletons, and affinity targets."""

from .affinities import BANIS_OFFSETS, affinities, widen_instance_borders
from .skeleton import (
    RestrictedUnpickler,
    check_skeleton_in_volume,
    convert_skeleton,
    crop_skeleton,
    load_skeleton,
    load_skeleton_arrays,
    save_skeleton,
    skeleton_arrays,
    summarize_skeleton,
)
from .volumes import (
    NisbSeed,
    open_image,
    open_seed,
    open_segmentation,
    open_volume,
    output_attrs,
)

__all__ = [
    "BANIS_OFFSETS",
    "NisbSeed",
    "RestrictedUnpickler",
    "affinities",
    "check_skeleton_in_volume",
    "convert_skeleton",
    "crop_skeleton",
    "load_skeleton",
    "load_skeleton_arrays",
    "open_image",
    "open_seed",
    "open_segmentation",
    "open_volume",
    "output_attrs",
    "save_skeleton",
    "skeleton_arrays",
    "summarize_skeleton",
    "widen_instance_borders",
]
