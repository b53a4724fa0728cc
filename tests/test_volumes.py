import dask.array as da
import numpy as np
import pytest
import zarr

from nisbflow.data import open_image, open_seed, open_segmentation
from nisbflow.staging import staged_output
from nisbflow.errors import OutputExistsError, VolumeError


def make_store(path, img_shape=(8, 8, 4, 1), img_dtype="uint8", seg_shape=(8, 8, 4), seg_dtype="uint32", zarr_format=2):
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    group.create_array("img", shape=img_shape, chunks=img_shape, dtype=img_dtype)[...] = 1
    if seg_shape is not None:
        group.create_array("seg", shape=seg_shape, chunks=seg_shape, dtype=seg_dtype)[...] = 2
    return group


def test_open_synthetic_seed_lazily(synthetic_seed):
    root, _ = synthetic_seed
    seed = open_seed(root)
    assert seed.img.dtype == np.uint8 and seed.img.shape == (64, 64, 32, 1)
    assert seed.seg.shape == (64, 64, 32) and seed.voxel_size == (9.0, 9.0, 20.0)
    assert seed.skeleton_path.endswith("skeleton.pkl")
    image = seed.image()
    assert isinstance(image, da.Array) and image.chunksize == (32, 32, 32, 1)
    ds = seed.to_xarray()
    assert ds.img.dims == ("x", "y", "z", "c") and ds.seg.dims == ("x", "y", "z")
    assert float(ds.z[1]) == 20.0 and ds.attrs["voxel_size_nm"] == [9.0, 9.0, 20.0]
    np.testing.assert_array_equal(ds.seg[5:9, 3, 2].values, seed.seg[5:9, 3, 2])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_open_by_path_and_url(tmp_path, zarr_format):
    make_store(tmp_path / "data.zarr", zarr_format=zarr_format)
    assert open_image(tmp_path / "data.zarr" / "img").shape == (8, 8, 4, 1)
    assert open_segmentation(f"file://{tmp_path}/data.zarr/seg")[0, 0, 0] == 2
    assert open_seed(tmp_path).seg.shape == (8, 8, 4)


def test_missing_store_and_array_are_named(tmp_path):
    with pytest.raises(VolumeError, match="no data.zarr store found"):
        open_seed(tmp_path / "nowhere")
    make_store(tmp_path / "data.zarr")
    with pytest.raises(VolumeError) as error:
        open_image(f"{tmp_path}/data.zarr/imgg")
    assert "'imgg' is not in zarr store" in str(error.value) and "img, seg" in str(error.value)
    with pytest.raises(VolumeError, match="is a zarr group, not an array"):
        open_image(f"{tmp_path}/data.zarr")


def test_wrong_rank_and_dtype_are_reported(tmp_path):
    make_store(tmp_path / "a.zarr", img_shape=(8, 8), seg_dtype="float32")
    with pytest.raises(VolumeError, match=r"expected 3 or 4 dimensions, found 2"):
        open_image(f"{tmp_path}/a.zarr/img")
    with pytest.raises(VolumeError, match="expected an integer dtype, found float32"):
        open_segmentation(f"{tmp_path}/a.zarr/seg")
    make_store(tmp_path / "b.zarr", img_dtype="uint16")
    with pytest.raises(VolumeError, match="image .*b.zarr/img: expected dtype uint8, found uint16"):
        open_image(f"{tmp_path}/b.zarr/img")


def test_seed_shape_mismatch(tmp_path):
    make_store(tmp_path / "data.zarr", seg_shape=(8, 8, 5))
    with pytest.raises(VolumeError, match=r"seg shape \(8, 8, 5\) does not match img spatial shape \(8, 8, 4\)"):
        open_seed(tmp_path)
    make_store(tmp_path / "data.zarr", img_shape=(8, 8, 4))
    with pytest.raises(VolumeError, match=r"NISB stores \(X, Y, Z, C\)"):
        open_seed(tmp_path)


def test_staged_output_never_destroys_existing(tmp_path):
    target = tmp_path / "out.zarr"
    with staged_output(target) as path:
        zarr.open_array(path, mode="w", shape=(2,), dtype="uint8")[...] = 7
    assert zarr.open_array(str(target))[0] == 7
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with staged_output(target):
            pass
    with pytest.raises(RuntimeError):
        with staged_output(target, overwrite=True) as path:
            zarr.open_array(path, mode="w", shape=(2,), dtype="uint8")[...] = 9
            raise RuntimeError("crash half-way")
    assert zarr.open_array(str(target))[0] == 7  # untouched by the failed run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]  # no partial left behind
    with staged_output(target, overwrite=True) as path:
        zarr.open_array(path, mode="w", shape=(2,), dtype="uint8")[...] = 9
    assert zarr.open_array(str(target))[0] == 9
