"""Outputs readable by the ecosystem: xarray opens every kind nisbflow writes with named axes, the values and
dtypes as stored (no fill-value masking), and coordinates in nm."""

import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from nisbflow.data.volumes import open_dataarray
from nisbflow.decode import decode_to_zarr
from nisbflow.synth import synthesize_seed
from nisbflow.synth.affinities import write_noisy_affinities


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_every_output_kind_opens_with_xarray(tmp_path, zarr_format):
    from nisbflow.infer.blockwise import infer_to_zarr

    seed = tmp_path / "seed"
    synthesize_seed(seed, (64, 64, 32), seed=5, chunks=(32, 32, 32), zarr_format=zarr_format, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no consolidated metadata: a warning, not an error
        dataset = xr.open_zarr(seed / "data.zarr")
    stored = zarr.open_group(str(seed / "data.zarr"), mode="r")
    assert dataset.img.dims == ("x", "y", "z", "c") and dataset.seg.dims == ("x", "y", "z")
    assert dataset.seg.dtype == np.uint32 and dataset.img.dtype == np.uint8  # 0 = background is not masked
    assert np.array_equal(dataset.seg.values, stored["seg"][...]) and (dataset.seg.values == 0).any()
    assert np.array_equal(dataset.img.values, stored["img"][...])

    write_noisy_affinities(seed / "data.zarr/seg", tmp_path / "aff.zarr", progress=False)
    affinities = open_dataarray(tmp_path / "aff.zarr")
    assert affinities.dims == ("c", "x", "y", "z") and affinities.dtype == np.float16
    assert float(affinities.z[1]) == 20.0 and float(affinities.x[2]) == 18.0  # nm, from the seed's voxel size
    assert np.array_equal(affinities.values, zarr.open_array(str(tmp_path / "aff.zarr"))[...])

    infer_to_zarr(str(seed / "data.zarr/img"), str(tmp_path / "pred.zarr"), "nisb-tiny-synthetic",
                  block=(64, 64, 32), progress=False)
    assert open_dataarray(tmp_path / "pred.zarr").dims == ("c", "x", "y", "z")

    decode_to_zarr(str(tmp_path / "aff.zarr"), str(tmp_path / "seg.zarr"), progress=False)
    segmentation = open_dataarray(tmp_path / "seg.zarr")
    assert segmentation.dims == ("x", "y", "z") and segmentation.dtype == np.uint32
    assert np.array_equal(segmentation.values, zarr.open_array(str(tmp_path / "seg.zarr"))[...])
    decode_to_zarr(str(tmp_path / "aff.zarr"), str(tmp_path / "segs.zarr"), thresholds=(0.5, 0.9), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        group = xr.open_zarr(tmp_path / "segs.zarr")
    assert sorted(group.data_vars) == ["threshold-0.5", "threshold-0.9"]
    assert group["threshold-0.5"].dims == ("x", "y", "z") and group["threshold-0.5"].dtype == np.uint32
