"""nisbflow.region.Region: the read/write region of every block-wise stage, a tuple of slices with its arithmetic."""

import pickle

import dask.array as da
import numpy as np
import pytest
import zarr

from nisbflow.blocks import BlockGrid
from nisbflow.region import Region


def test_a_region_knows_its_bounds_shape_and_size():
    region = Region.from_bounds((2, 0, 5), (6, 3, 5))
    assert (region.begin, region.end, region.shape, region.size, region.empty) == ((2, 0, 5), (6, 3, 5),
                                                                                   (4, 3, 0), 0, True)
    assert Region.of_shape((4, 5)) == (slice(0, 4), slice(0, 5))
    assert repr(Region.from_bounds((0, 1), (2, 3))) == "Region[0:2, 1:3]"
    with pytest.raises(ValueError, match="concrete bounds"):
        Region((slice(None), slice(0, 1)))


def test_local_grow_and_intersect_agree_with_the_slice_arithmetic_they_replace():
    write, bounds = Region.from_bounds((64, 0, 30), (128, 64, 64)), (256, 64, 64)
    read = write.grow(1, (2, 3, 4), bounds)
    assert read == (slice(63, 130), slice(0, 64), slice(29, 64))  # clipped at the volume's faces
    assert write.local(read) == tuple(slice(w.start - r.start, w.stop - r.start) for w, r in zip(write, read))
    assert write.intersect(Region.from_bounds((100, 10, 0), (300, 20, 40))) == Region.from_bounds((100, 10, 30),
                                                                                                  (128, 20, 40))
    assert write.intersect(Region.from_bounds((0, 0, 0), (64, 64, 64))) is None  # touching faces share no voxel
    assert read.contains(write) and not write.contains(read)


def test_numpy_zarr_and_dask_index_with_a_region_as_with_its_slices(tmp_path):
    values = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    region = Region.from_bounds((1, 1, 1), (3, 4, 5))
    plain = (slice(1, 3), slice(1, 4), slice(1, 5))
    stored = zarr.create_array(tmp_path / "a.zarr", shape=values.shape, dtype=values.dtype, chunks=(2, 2, 2))
    stored[...] = values
    for array in (values, stored, da.from_array(values, chunks=2)):
        assert np.array_equal(np.asarray(array[region]), values[plain])
    stored[region] = 0
    assert int(stored[plain].sum()) == 0 and int(stored[...].sum()) == int(values.sum() - values[plain].sum())
    copy = pickle.loads(pickle.dumps(region))
    assert type(copy) is Region and copy == region


def test_the_grid_hands_out_regions():
    grid = BlockGrid.regular((10, 7, 5), (4, 4, 4))
    write = grid.write_region((2, 1, 0))
    assert isinstance(write, Region) and write == Region.from_bounds((8, 4, 0), (10, 7, 4))
    assert grid.read_region((2, 1, 0), 1, 1) == Region.from_bounds((7, 3, 0), (10, 7, 5))
    assert sum(grid.write_region(i).size for i in grid.indices()) == 10 * 7 * 5
