import numpy as np
import pytest

from nisbflow.data.affinities import BANIS_OFFSETS, affinities, widen_instance_borders


def brute_force(seg, offsets):
    targets = np.zeros((len(offsets), *seg.shape), np.float32)
    mask = np.zeros_like(targets)
    for c, o in enumerate(offsets):
        for v in np.ndindex(seg.shape):
            w = tuple(a + b for a, b in zip(v, o))
            if all(x < n for x, n in zip(w, seg.shape)):
                mask[(c, *v)] = 1
                targets[(c, *v)] = seg[v] == seg[w] and seg[v] > 0
    return targets, mask


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_source_voxel_convention_along_each_axis(axis):
    line = np.array([1, 1, 2, 2, 0, 0, 3], dtype=np.uint32)
    shape = [1, 1, 1]
    shape[axis] = len(line)
    seg = line.reshape(shape)
    targets, mask = affinities(seg)
    assert targets.shape == (6, *seg.shape) and targets.dtype == np.float32
    short = targets[axis].reshape(-1)
    # edge v -> v+1: 1-1 yes, 1-2 no, 2-2 yes, 2-0 no, 0-0 no (background), 0-3 no, last leaves the volume
    assert short.tolist() == [1, 0, 1, 0, 0, 0, 0]
    assert mask[axis].reshape(-1).tolist() == [1, 1, 1, 1, 1, 1, 0]
    # the other short channels point out of this one-voxel-thick volume: all masked out
    for other in {0, 1, 2} - {axis}:
        assert mask[other].sum() == 0 and targets[other].sum() == 0


def test_long_range_at_ten_voxels():
    seg = np.ones((12, 3, 3), dtype=np.uint32)
    seg[11] = 5
    targets, mask = affinities(seg)
    assert mask[3, :2].all() and not mask[3, 2:].any()  # v + 10 inside only for x = 0, 1
    assert targets[3, 0].all() and not targets[3, 1].any()  # x=1 joins x=11, another neuron
    assert not mask[4].any() and not mask[5].any()  # y and z are shorter than 10


def test_matches_brute_force_on_random_labels():
    rng = np.random.default_rng(0)
    seg = rng.integers(0, 3, size=(12, 11, 13)).astype(np.uint64)
    offsets = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (10, 0, 0), (0, 10, 0), (0, 0, 10)]
    for got, want in zip(affinities(seg, offsets), brute_force(seg, offsets)):
        np.testing.assert_array_equal(got, want)


def test_string_offsets_and_dtype():
    seg = np.ones((4, 4, 4), dtype=np.int32)
    targets, _ = affinities(seg, ["1-0-0", "0-0-10"], dtype=np.uint8)
    assert targets.dtype == np.uint8 and targets.shape == (2, 4, 4, 4)
    assert targets[0, :3].all() and not targets[1].any()
    assert BANIS_OFFSETS[3] == (10, 0, 0)


def test_erosion_widens_borders_in_plane_only():
    seg = np.zeros((6, 3, 2), dtype=np.uint32)
    seg[:3], seg[3:] = 1, 2
    eroded = widen_instance_borders(seg, 1)
    assert (eroded[2] == 0).all() and (eroded[3] == 0).all()  # both sides of the 1|2 border
    assert (eroded[:2] == 1).all() and (eroded[4:] == 2).all()
    lone = np.zeros((5, 5, 1), dtype=np.uint32)
    lone[1:4, 1:4] = 9  # one label next to background keeps every voxel
    np.testing.assert_array_equal(widen_instance_borders(lone, 1), lone)
    targets, _ = affinities(seg, [(1, 0, 0)], erosion=1)
    assert targets[0, 2].sum() == 0 and targets[0, 0].all()


def test_bad_inputs():
    with pytest.raises(ValueError, match="integer labels"):
        affinities(np.zeros((3, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(X, Y, Z\)"):
        affinities(np.zeros((3, 3), np.uint32))
    with pytest.raises(ValueError, match="exactly one axis"):
        affinities(np.zeros((3, 3, 3), np.uint32), ["1-1-0"])
