"""Whole-volume sliding-window prediction (the reference every chunked run must equal).

Input ``image (X, Y, Z)`` or ``(X, Y, Z, 1)`` uint8, normalised by /255; output ``(C, X, Y, Z)`` affinities in
``output_dtype`` after the activation (BANIS ``scale_sigmoid``: ``sigmoid(0.2 · logit)``), blended over the BANIS
window grid of :mod:`nisbflow.infer.geometry` as Σ p·w / Σ w with chessboard-distance weights.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from nisbflow.errors import VolumeError
from nisbflow.infer.geometry import blending_weight, padded_shape, window_grid

ACTIVATIONS = {
    "scale_sigmoid": lambda logits: torch.sigmoid(0.2 * logits),
    "sigmoid": torch.sigmoid,
}


def check_image(image, where: str = "image") -> None:
    """Raise :class:`VolumeError` unless ``image`` is uint8 ``(X, Y, Z)`` or ``(X, Y, Z, 1)``."""
    if np.dtype(image.dtype) != np.uint8:
        raise VolumeError(f"{where}: expected a uint8 EM image, found dtype {np.dtype(image.dtype).name}")
    if not (len(image.shape) == 3 or (len(image.shape) == 4 and image.shape[3] == 1)):
        raise VolumeError(f"{where}: expected shape (X, Y, Z) or (X, Y, Z, 1), found {tuple(image.shape)}")


def pad_to_window(image: np.ndarray, window) -> np.ndarray:
    """Pad axes shorter than the window up to it (reflect; edge for a 1-voxel axis), at the upper end."""
    pad = [(0, max(0, w - s)) for s, w in zip(image.shape, window)]
    if not any(p for _, p in pad):
        return image
    short = any(s == 1 and p for s, (_, p) in zip(image.shape, pad))
    return np.pad(image, pad, mode="edge" if short else "reflect")


def apply_model(model, crops: torch.Tensor, activation: str) -> torch.Tensor:
    """``crops (N, Wx, Wy, Wz) uint8`` tensor → ``(N, C, Wx, Wy, Wz) float32`` activations on the crops' device:
    /255, the network (float16 autocast on CUDA), then the activation in float32."""
    batch = crops.to(dtype=torch.float32).div_(255.0).unsqueeze(1)
    with (
        torch.inference_mode(),
        torch.autocast(device_type=crops.device.type, dtype=torch.float16, enabled=crops.device.type == "cuda"),
    ):
        logits = model(batch)
    return ACTIVATIONS[activation](logits.float())


@dataclass(frozen=True)
class Augmentation:
    """Test-time augmentation of every window (:mod:`nisbflow.infer.tta`): its ``views``, the ensemble ``modes`` of
    the kept channels and the network's affinity ``offsets`` (X, Y, Z, every output channel)."""

    views: tuple
    modes: tuple[str, ...]
    offsets: tuple[tuple[int, int, int], ...]

    def record(self) -> dict:
        return {"views": [view.name() for view in self.views], "ensemble": list(self.modes)}


def predict_crops(
    model, crops: torch.Tensor, activation: str, channels=None, augmentation: Augmentation | None = None
) -> torch.Tensor:
    """``crops (N, Wx, Wy, Wz) uint8`` tensor → ``(N, C, Wx, Wy, Wz)`` float32 activations of the kept
    ``channels`` (None: all): the network once (:func:`apply_model`), or in every view of ``augmentation``, turned
    back and ensembled (:func:`nisbflow.infer.tta.predict_views`)."""
    if augmentation is None:
        predictions = apply_model(model, crops, activation)
        return predictions if channels is None else predictions[:, list(channels)]
    from nisbflow.infer.tta import predict_views

    return predict_views(
        lambda views: apply_model(model, views[:, 0], activation),
        crops[:, None],
        list(augmentation.views),
        augmentation.offsets,
        channels,
        list(augmentation.modes),
    )


def run_windows(
    model, crops: np.ndarray, activation: str, device, channels=None, augmentation: Augmentation | None = None
) -> np.ndarray:
    """``crops (N, Wx, Wy, Wz) uint8`` → ``(N, C, Wx, Wy, Wz) float32`` activations (autocast float16 on CUDA) of the
    kept ``channels`` (:func:`predict_crops`)."""
    return (
        predict_crops(
            model, torch.from_numpy(np.ascontiguousarray(crops)).to(device), activation, channels, augmentation
        )
        .cpu()
        .numpy()
    )


def predict_whole(
    image,
    model,
    *,
    window=(128, 128, 128),
    stride=(64, 64, 64),
    sw_batch_size: int = 8,
    activation: str = "scale_sigmoid",
    channels=None,
    output_dtype="float16",
    device="cpu",
    augmentation: Augmentation | None = None,
) -> np.ndarray:
    """Affinities of a whole in-memory image; see the module docstring. ``augmentation``: test-time augmentation
    of every window (:class:`Augmentation`)."""
    check_image(image)
    image = np.asarray(image)
    if image.ndim == 4:
        image = image[..., 0]
    window = tuple(int(w) for w in window)
    shape = image.shape
    padded = pad_to_window(image, window)
    grid = window_grid(shape, window, stride)
    weight = blending_weight(window)
    starts = list(itertools.product(*grid))
    weights = np.zeros(padded_shape(shape, window), dtype=np.float32)
    total: np.ndarray | None = None
    model = model.to(device).eval()
    for i in range(0, len(starts), sw_batch_size):
        batch = starts[i : i + sw_batch_size]
        crops = np.stack([padded[tuple(slice(s, s + w) for s, w in zip(start, window))] for start in batch])
        predictions = run_windows(model, crops, activation, device, channels, augmentation)
        if total is None:
            total = np.zeros((predictions.shape[1],) + weights.shape, dtype=np.float32)
        for start, prediction in zip(batch, predictions):
            region = tuple(slice(s, s + w) for s, w in zip(start, window))
            total[(slice(None),) + region] += prediction * weight
            weights[region] += weight
    assert total is not None  # a volume has at least one window
    result = total / weights
    result = result[(slice(None),) + tuple(slice(0, s) for s in shape)]
    return result.astype(output_dtype)
