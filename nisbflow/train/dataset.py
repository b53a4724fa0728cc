"""Random training crops with BANIS affinity targets, read lazily from NISB seeds' zarr arrays.

Each sample is a random crop of ``patch_size + context`` voxels (the trailing context lets the 10-voxel long-range
targets near the patch's upper faces be computed), its segmentation relabelled into connected components inside the
crop (6-connectivity by default, as BANIS does: a neuron that leaves the crop and comes back becomes two; PyTorch
Connectomics' ``relabel_connected_components: false`` keeps the ids as stored), the targets and loss
mask of :func:`nisbflow.data.affinities` on the crop (after the BANIS augmentations of
:mod:`nisbflow.train.augment` when given), then everything cut back to ``patch_size``.
"""

from __future__ import annotations

import numpy as np
import torch

from nisbflow.data.affinities import BANIS_OFFSETS, affinities
from nisbflow.errors import ConfigError
from nisbflow.region import triple
from nisbflow.train.augment import Augmentations, augment


class AffinityCrops(torch.utils.data.Dataset):
    """Map-style dataset of random crops; sample ``i`` is a pure function of ``(seed, i)``, whatever the worker.

    ``relabel``: the connectivity (6, 18 or 26) of each crop's connected-component relabelling, None to keep the
    stored ids. ``seeds``: NISB seed folders (each holding ``data.zarr`` with ``img`` and ``seg``). zarr handles are
    opened
    lazily in each data-loader process and never pickled. Items are dicts of torch tensors: ``image (1, X, Y, Z)``
    float32 in [0, 1], ``target`` and ``mask`` ``(C, X, Y, Z)`` float32, ``segmentation (X, Y, Z)`` int64 (the
    relabelled, augmented labels the targets come from), plus ``seed_index`` and ``position``
    (voxel x, y, z of the crop in its seed).
    """

    def __init__(
        self,
        seeds,
        patch_size=(128, 128, 128),
        context: int = 10,
        offsets=BANIS_OFFSETS,
        erosion: int = 0,
        length: int = 1000,
        seed: int = 0,
        augmentations: Augmentations | None = None,
        relabel: int | None = 6,
    ):
        from nisbflow.data import open_seed

        self.seeds = [str(s) for s in seeds]
        if not self.seeds:
            raise ValueError("no training seeds given")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.context = int(context)
        self.offsets = offsets
        self.erosion = erosion
        self.length = int(length)
        self.seed = int(seed)
        self.augmentations = augmentations
        self.relabel = relabel  # connectivity of the crop's relabelling (6, 18, 26), None: ids as stored
        crop = np.array(self.patch_size) + self.context
        self.shapes = []
        for path in self.seeds:
            shape = open_seed(path).segmentation().shape  # a seed without seg is refused there, in one line
            if np.any(np.array(shape) < crop):
                raise ConfigError(
                    f"seed {path}: volume {tuple(shape)} is smaller than a crop of "
                    f"{tuple(crop.tolist())} voxels (data.patch_size + context); use larger "
                    "seeds or a smaller data.patch_size"
                )
            self.shapes.append(shape)
        self._opened = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_opened"] = None  # zarr handles are opened again in each process
        return state

    def _volumes(self):
        if self._opened is None:
            from nisbflow.data import open_seed

            self._opened = [open_seed(path) for path in self.seeds]
        return self._opened

    def __len__(self) -> int:
        return self.length

    def crop_of(self, index: int) -> tuple[int, tuple[int, int, int]]:
        """The seed and crop position of sample ``index``."""
        rng = np.random.default_rng([self.seed, index])
        seed_index = int(rng.integers(len(self.seeds)))
        crop = np.array(self.patch_size) + self.context
        position = triple(int(rng.integers(0, s - c + 1)) for s, c in zip(self.shapes[seed_index], crop))
        return seed_index, position

    def __getitem__(self, index: int) -> dict:
        import cc3d

        seed_index, position = self.crop_of(index)
        volume = self._volumes()[seed_index]
        crop = tuple(slice(p, p + s + self.context) for p, s in zip(position, self.patch_size))
        image = np.asarray(volume.img[crop])
        image = (image[..., 0] if image.ndim == 4 else image).astype(np.float32) / 255.0
        segmentation = np.asarray(volume.seg[crop])
        if self.relabel is not None:
            segmentation = cc3d.connected_components(segmentation, connectivity=self.relabel)  # type: ignore[call-overload]  # cc3d's stub
        if self.augmentations is not None:
            image, segmentation = augment(
                image, segmentation, np.random.default_rng([self.seed, index, 1]), self.augmentations
            )
        targets, mask = affinities(segmentation, self.offsets, erosion=self.erosion)
        patch = tuple(slice(0, s) for s in self.patch_size)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image[patch]))[None],
            "segmentation": torch.from_numpy(segmentation[patch].astype(np.int64)),
            "target": torch.from_numpy(np.ascontiguousarray(targets[(slice(None),) + patch])),
            "mask": torch.from_numpy(np.ascontiguousarray(mask[(slice(None),) + patch])),
            "seed_index": seed_index,
            "position": torch.tensor(position),
        }
