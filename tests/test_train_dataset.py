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


def test_relabelling_follows_data_relabel_settings(seeds):
    """PyTC's relabel_connected_components: false keeps the stored ids; relabel_connectivity 26 joins diagonal
    touches that 6-connectivity keeps apart."""
    kept = AffinityCrops(seeds, patch_size=(24, 20, 16), context=10, length=3, seed=3, relabel=None)
    banis = AffinityCrops(seeds, patch_size=(24, 20, 16), context=10, length=3, seed=3)
    for index in range(3):
        sample = kept[index]
        seed = open_seed(str(seeds[sample["seed_index"]]))
        x, y, z = sample["position"].tolist()
        stored = np.asarray(seed.seg[x:x + 24, y:y + 20, z:z + 16]).astype(np.int64)
        assert np.array_equal(sample["segmentation"].numpy(), stored)
        assert np.array_equal(sample["target"].numpy(), affinities(np.asarray(seed.seg[x:x + 34, y:y + 30,
                                                                                       z:z + 26]))[0][:, :24, :20,
                                                                                                      :16])
        assert banis[index]["position"].tolist() == [x, y, z]
    crop = np.zeros((8, 8, 8), np.uint32)
    crop[1, 1, 1] = crop[2, 2, 2] = 5  # one id, touching only at a corner
    assert cc3d.connected_components(crop, connectivity=26).max() == 1
    assert cc3d.connected_components(crop, connectivity=6).max() == 2


def test_the_relabel_settings_reach_training():
    from nisbflow.config import load_config

    config = load_config(overrides=["data.relabel_connected_components=false", "data.relabel_connectivity=26"])
    assert (config.data.relabel_connected_components, config.data.relabel_connectivity) == (False, 26)
    with pytest.raises(Exception, match="relabel_connectivity"):
        load_config(overrides=["data.relabel_connectivity=8"])


def test_activation_checkpointing_gives_the_same_gradients():
    from nisbflow.config.schema import ModelConfig
    from nisbflow.model.network import build, checkpoint_activations

    torch.manual_seed(0)
    plain = build(ModelConfig(init_filters=4))
    recomputed = build(ModelConfig(init_filters=4))
    recomputed.load_state_dict(plain.state_dict())
    assert checkpoint_activations(recomputed) is recomputed
    assert list(recomputed.state_dict()) == list(plain.state_dict())
    assert sum("forward" in vars(m) for m in recomputed.modules()) == 26  # 18 stage blocks, 4 down, 4 up
    image = torch.randn(1, 1, 32, 32, 32)
    for network in (plain, recomputed):
        network(image).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        assert torch.equal(a.grad, b.grad), name
    with torch.no_grad():
        assert torch.equal(plain.eval()(image), recomputed.eval()(image))


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


def test_crop_starts_cover_every_position_with_its_full_context_and_no_more(seeds):
    """nisbflow's choice (docs/coming-from-pytc-banis.md): starts over [0, S - patch - context] on every axis, both
    ends reached, so every crop holds its 10 trailing context voxels (BANIS draws over [0, S - patch] and cuts)."""
    crops = AffinityCrops(seeds[:1], patch_size=(32, 24, 16), context=10, length=4000)
    starts = np.array([crops.crop_of(i)[1] for i in range(4000)])
    assert starts.min(axis=0).tolist() == [0, 0, 0]
    assert starts.max(axis=0).tolist() == [48 - 42, 40 - 34, 36 - 26]
    assert tuple(crops[0]["image"].shape) == (1, 32, 24, 16)


def test_a_seed_smaller_than_a_crop_is_refused(seeds):
    with pytest.raises(ValueError, match=r"seed0.*smaller than a crop of \(138, 138, 138\)"):
        AffinityCrops(seeds[:1])


def octant_volume(size=40):
    x, y, z = np.meshgrid(*[np.arange(size)] * 3, indexing="ij")
    segmentation = 1 + (x >= 20) + 2 * (y >= 15) + 4 * (z >= 25)
    return (segmentation / 10).astype(np.float32), segmentation


def test_geometric_augmentations_keep_image_and_labels_in_register():
    from nisbflow.train.augment import Augmentations, augment

    image, segmentation = octant_volume()
    rigid = Augmentations(drop_slice_prob=0, shift_slice_prob=0, intensity=False, noise_scale=0, affine=0)
    for i in range(12):  # permutations, rotations and flips: exact
        augmented, labels = augment(image, segmentation, np.random.default_rng(i), rigid)
        assert np.array_equal(augmented, (labels / 10).astype(np.float32))
        assert sorted(np.unique(labels)) == list(range(1, 9))
    moved = 0
    for i in range(12):  # with the random affine: in register except where interpolation blurs boundaries
        augmented, labels = augment(image, segmentation, np.random.default_rng(i), Augmentations.geometric_only())
        assert np.mean(np.isclose(augmented, labels / 10, atol=0.02)) > 0.9
        moved += not np.array_equal(labels, segmentation)
    assert moved == 12


def test_slice_defects_and_intensity_touch_the_image_only():
    from nisbflow.train.augment import Augmentations, augment

    image, segmentation = octant_volume()
    image = image + 0.05  # no zero voxels before dropping slices
    defects = Augmentations(drop_slice_prob=1.0, shift_slice_prob=0, intensity=False, noise_scale=0, affine=0)
    dropped = 0
    for i in range(8):
        augmented, labels = augment(image, segmentation, np.random.default_rng(i), defects)
        zero_planes = [(augmented.take(k, axis=a) == 0).all() for a in range(3) for k in range(40)]
        dropped += any(zero_planes)
        assert np.array_equal(np.isin(labels, segmentation), np.ones_like(labels, dtype=bool))
    assert dropped > 0  # the group fires with probability 0.5
    noisy = Augmentations(drop_slice_prob=0, shift_slice_prob=0, intensity=True, noise_scale=0.5, affine=0)
    rigid = Augmentations(drop_slice_prob=0, shift_slice_prob=0, intensity=False, noise_scale=0, affine=0)
    changed = 0
    for i in range(6):  # the same geometric draws come first: labels identical, image changed when a group fires
        plain_image, plain_labels = augment(image, segmentation, np.random.default_rng(i), rigid)
        noisy_image, noisy_labels = augment(image, segmentation, np.random.default_rng(i), noisy)
        assert np.array_equal(noisy_labels, plain_labels)
        changed += not np.allclose(noisy_image, plain_image)
    assert changed > 0


def test_augmented_crops_have_targets_of_their_augmented_labels(seeds):
    from nisbflow.train.augment import Augmentations

    dataset = AffinityCrops(seeds, patch_size=(24, 24, 24), context=10, length=4, seed=5,
                            augmentations=Augmentations())
    for index in range(len(dataset)):
        sample = dataset[index]
        labels = sample["segmentation"].numpy()
        targets, _ = affinities(labels)
        inner = (slice(0, 3), slice(0, 23), slice(0, 23), slice(0, 23))  # short range, inside the patch
        assert np.array_equal(sample["target"].numpy()[inner], targets[inner])
    assert not torch.equal(dataset[0]["image"], AffinityCrops(seeds, patch_size=(24, 24, 24), length=4,
                                                              seed=5)[0]["image"])


def test_the_loss_ignores_masked_voxels():
    from nisbflow.train.loss import affinity_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 6, 4, 4, 4, requires_grad=True)
    target = (torch.rand(2, 6, 4, 4, 4) > 0.5).float()
    mask = (torch.rand(2, 6, 4, 4, 4) > 0.3).float()
    loss = affinity_loss(logits, target, mask)
    loss.backward()
    assert (logits.grad[mask == 0] == 0).all() and (logits.grad[mask == 1] != 0).any()
    changed = target.clone()
    changed[mask == 0] = 1 - changed[mask == 0]  # flipping masked targets changes nothing
    assert torch.allclose(affinity_loss(logits, changed, mask), loss)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[mask == 1], target[mask == 1])
    assert torch.allclose(loss, expected)
    assert affinity_loss(logits, target, torch.zeros_like(mask)).item() == 0.0
