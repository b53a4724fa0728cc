"""Training crops: shapes, dtypes, targets equal affinities() of the relabelled crop, determinism, laziness."""

import pickle

import cc3d
import numpy as np
import pytest
import torch

from nisbflow.data import affinities, open_seed
from nisbflow.train.dataset import AffinityCrops


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    from nisbflow.synth import synthesize_seed

    root = tmp_path_factory.mktemp("train")
    paths = []
    for i in range(2):
        synthesize_seed(str(root / f"seed{i}"), (48, 40, 36), seed=20 + i, chunks=(32, 32, 32), progress=False)
        paths.append(root / f"seed{i}")
    return paths


def test_crops_have_banis_targets_of_the_relabelled_crop(seeds):
    dataset = AffinityCrops(seeds, patch_size=(24, 20, 16), context=10, length=6, seed=3)
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["image"].shape == (1, 24, 20, 16) and sample["image"].dtype == torch.float32
        assert sample["target"].shape == sample["mask"].shape == (6, 24, 20, 16)
        assert 0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1
        seed = open_seed(str(seeds[sample["seed_index"]]))
        x, y, z = sample["position"].tolist()
        crop = (slice(x, x + 34), slice(y, y + 30), slice(z, z + 26))
        relabelled = cc3d.connected_components(seed.seg[crop], connectivity=6)
        targets, mask = affinities(relabelled)
        assert np.array_equal(sample["target"].numpy(), targets[:, :24, :20, :16])
        assert np.array_equal(sample["mask"].numpy(), mask[:, :24, :20, :16])
        assert np.allclose(sample["image"].numpy()[0], seed.img[crop][:24, :20, :16, 0] / 255)
    # long-range targets near the patch's upper faces are valid thanks to the trailing context
    assert sample["mask"][3, -1].all()


def test_samples_are_deterministic_and_the_dataset_pickles_without_zarr_handles(seeds):
    dataset = AffinityCrops(seeds, patch_size=(16, 16, 16), length=4, seed=1)
    first = dataset[2]
    assert dataset._opened is not None
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._opened is None
    again = copy[2]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["target"], again["target"])
    assert not torch.equal(dataset[0]["image"], dataset[1]["image"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 1, 16, 16, 16)
    assert torch.equal(batch["image"][0], dataset[0]["image"])


def test_a_seed_smaller_than_a_crop_is_refused(seeds):
    with pytest.raises(ValueError, match=r"seed0.*smaller than a crop of \(138, 138, 138\)"):
        AffinityCrops(seeds[:1])
