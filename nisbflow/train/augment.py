"""BANIS training augmentations (BANIS ``data.py``), applied to a crop's image and segmentation before targets.

Geometric transforms move image and labels together: axis permutation, 90° rotations in each axis pair, flips, and
(with probability ``affine``) a MONAI ``RandAffine`` with rotations up to π, scale ±``affine_scale`` and shear
±``affine_shear`` (bilinear for the image, nearest for labels, reflection padding). Slice defects and intensity
changes touch the image only: dropped slices (set to 0), shifted slices (rolled up to ``shift_magnitude`` voxels
in-plane), intensity scale/shift, Gaussian noise. Each group fires with probability 0.5, as in BANIS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Augmentations:
    """BANIS train_base_long settings."""

    drop_slice_prob: float = 0.05
    shift_slice_prob: float = 0.05
    shift_magnitude: int = 10
    intensity: bool = True
    mul_int: float = 0.1
    add_int: float = 0.1
    noise_scale: float = 0.5
    affine: float = 0.5
    affine_scale: float = 0.2
    affine_shear: float = 0.5

    @classmethod
    def geometric_only(cls) -> Augmentations:
        """Only the transforms that move labels (for checking alignment)."""
        return cls(drop_slice_prob=0, shift_slice_prob=0, intensity=False, noise_scale=0)


def augment(
    image: np.ndarray, segmentation: np.ndarray, rng: np.random.Generator, settings: Augmentations = Augmentations()
) -> tuple[np.ndarray, np.ndarray]:
    """``image (X, Y, Z)`` float32 in [0, 1] and ``segmentation (X, Y, Z)`` int → both augmented (new arrays)."""
    order = rng.permutation(3)
    image, segmentation = image.transpose(order), segmentation.transpose(order)
    for axes in ((-1, -2), (-1, -3), (-2, -3)):
        turns = int(rng.integers(4))
        image, segmentation = np.rot90(image, turns, axes), np.rot90(segmentation, turns, axes)
    for axis in range(3):
        if rng.random() < 0.5:
            image, segmentation = np.flip(image, axis), np.flip(segmentation, axis)
    image = np.array(image, dtype=np.float32)
    segmentation = np.ascontiguousarray(segmentation)
    if settings.drop_slice_prob > 0 and rng.random() < 0.5:
        axis = int(rng.integers(3))
        index: list[Any] = [slice(None)] * 3
        index[axis] = rng.random(image.shape[axis]) < settings.drop_slice_prob
        image[tuple(index)] = 0
    if settings.shift_slice_prob > 0 and rng.random() < 0.5:
        axis = int(rng.integers(3))
        for i in range(image.shape[axis]):
            if rng.random() < settings.shift_slice_prob:
                index = [slice(None)] * 3
                index[axis] = i
                plane = image[tuple(index)]
                for other in (0, 1):  # the plane's two axes
                    plane = np.roll(
                        plane, int(rng.integers(-settings.shift_magnitude, settings.shift_magnitude + 1)), axis=other
                    )
                image[tuple(index)] = plane
    if settings.intensity and rng.random() < 0.5:
        image = image * rng.uniform(1 - settings.mul_int, 1 + settings.mul_int)
        image = image + rng.uniform(-settings.add_int, settings.add_int)
    if settings.noise_scale > 0 and rng.random() < 0.5:
        image = image + rng.normal(0, rng.random() * settings.noise_scale, image.shape)
    if settings.affine > 0 and rng.random() < settings.affine:
        image, segmentation = _random_affine(image, segmentation, rng, settings)
    return image.astype(np.float32), segmentation


def _random_affine(image, segmentation, rng, settings: Augmentations):
    from monai.transforms import RandAffined

    transform = RandAffined(
        keys=["image", "seg"],
        mode=("bilinear", "nearest"),
        prob=1.0,
        rotate_range=(np.pi, np.pi, np.pi),
        scale_range=(settings.affine_scale,) * 3,
        shear_range=(settings.affine_shear,) * 6,
        padding_mode="reflection",
    )
    transform.set_random_state(seed=int(rng.integers(2**31)))
    data = transform({"image": image[None].astype(np.float32), "seg": segmentation[None].astype(np.float32)})
    image = np.asarray(data["image"][0], dtype=np.float32)
    segmentation = np.rint(np.asarray(data["seg"][0])).astype(segmentation.dtype)
    return image, segmentation
