"""Decoding: affinities → segmentation, by connected components (BANIS ``decode_affinity_cc``) or by watershed and
agglomeration (waterz, ``decode_affinity_waterz``); ``decode_to_zarr`` runs either block-wise."""

from nisbflow.decode.agglomerate import decode_affinity_waterz
from nisbflow.decode.cc_blockwise import decode_affinity_cc
from nisbflow.decode.outputs import DecodeResult, threshold_array_name
from nisbflow.decode.to_zarr import decode_to_zarr
from nisbflow.decode.kernel import hard_edges, label_hard_edges, segmentation_dtype

__all__ = [
    "DecodeResult",
    "decode_affinity_cc",
    "decode_affinity_waterz",
    "decode_to_zarr",
    "hard_edges",
    "label_hard_edges",
    "segmentation_dtype",
    "threshold_array_name",
]
