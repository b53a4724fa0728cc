"""The BANIS affinity loss: binary cross-entropy with logits, averaged over the voxels the loss mask keeps.

(PyTorch Connectomics calls the configured loss ``WeightedBCEWithLogitsLoss``; with BANIS's targets the weight is
the loss mask, so this is ``binary_cross_entropy_with_logits(logits[mask], target[mask])`` as in ``BANIS.py``.)
"""

from __future__ import annotations

import torch
from torch.nn.functional import binary_cross_entropy_with_logits


def affinity_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over voxels where ``mask`` is nonzero; all ``(N, C, X, Y, Z)``. Zero if none is kept."""
    keep = mask != 0
    if not bool(keep.any()):
        return logits.sum() * 0.0  # keeps the graph (and DDP's gradient buckets) intact
    return binary_cross_entropy_with_logits(logits[keep].float(), target[keep].float())
