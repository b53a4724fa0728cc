"""The affinity losses, both masked by the loss mask of :func:`nisbflow.data.affinities` (1 where an edge's target
voxel lies inside the crop).

- ``WeightedBCEWithLogitsLoss`` (:func:`affinity_loss`, BANIS-S/L): binary cross-entropy with logits, one mean over
  every kept voxel of every channel, ``binary_cross_entropy_with_logits(logits[mask], target[mask])`` as in
  ``BANIS.py`` (PyTorch Connectomics' name for it: with BANIS's targets its weight is the loss mask).
- ``PerChannelBCEWithLogitsLoss`` (:func:`per_channel_loss`, BANIS+): PyTorch Connectomics' class-balanced loss. Per
  channel ``c``, over the batch's kept voxels, the positive weight ``w_c = min(negatives / positives,
  max_pos_weight)`` (1 where the channel has no positive voxel; ``auto_pos_weight`` off: 1), the mean of
  ``BCE(logit, target, pos_weight=w_c)`` over the channel's kept voxels (0 when none is kept); the loss is the
  **sum** of the channel means, as PyTC's (so six channels give about six times BANIS's loss).

Tensors are ``(N, C, X, Y, Z)``; the loss is computed in float32 whatever the logits' autocast dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn.functional import binary_cross_entropy_with_logits

LossFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def affinity_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over voxels where ``mask`` is nonzero; all ``(N, C, X, Y, Z)``. Zero if none is kept."""
    keep = mask != 0
    if not bool(keep.any()):
        return logits.sum() * 0.0  # keeps the graph (and DDP's gradient buckets) intact
    return binary_cross_entropy_with_logits(logits[keep].float(), target[keep].float())


def positive_weights(target: torch.Tensor, mask: torch.Tensor, max_pos_weight: float) -> torch.Tensor:
    """``(C,)`` float32: per channel, ``min(negatives / positives, max_pos_weight)`` over the voxels ``mask`` keeps
    (a target > 0 is positive), 1 for a channel without positives."""
    kept = mask > 0
    dims = (0, *range(2, target.ndim))
    positives = ((target > 0) & kept).sum(dim=dims).float()
    negatives = ((target <= 0) & kept).sum(dim=dims).float()
    weights = torch.ones(target.shape[1], device=target.device, dtype=torch.float32)
    some = positives > 0
    weights[some] = torch.clamp(negatives[some] / positives[some], max=max_pos_weight)
    return weights


def per_channel_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    auto_pos_weight: bool = True,
    max_pos_weight: float = 10.0,
) -> torch.Tensor:
    """BANIS+'s PerChannelBCEWithLogitsLoss (module docstring): the sum over channels of each channel's mean
    class-balanced BCE over its kept voxels."""
    logits, target = logits.float(), target.float()
    pos_weight = None
    if auto_pos_weight:
        pos_weight = positive_weights(target, mask, max_pos_weight).reshape(1, -1, *[1] * (target.ndim - 2))
    bce = binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
    kept = mask > 0
    total = logits.sum() * 0.0  # a channel without kept voxels adds 0, and the graph stays whole
    for channel in range(logits.shape[1]):
        keep = kept[:, channel]
        if bool(keep.any()):
            total = total + bce[:, channel][keep].mean()
    return total


def loss_function(model) -> LossFunction:
    """The loss ``model.loss`` names, with its settings (a :class:`~nisbflow.config.schema.ModelConfig`)."""
    if model.loss == "PerChannelBCEWithLogitsLoss":

        def loss(logits, target, mask):
            return per_channel_loss(
                logits, target, mask, auto_pos_weight=model.auto_pos_weight, max_pos_weight=model.max_pos_weight
            )

        return loss
    return affinity_loss
