"""Outputs readable by the ecosystem: xarray opens every kind nisbflow writes with named axes, the values and
dtypes as stored (no fill-value masking), and coordinates in nm."""

import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from nisbflow.data.volumes import array_url
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
    assert np.array_equal(affinities.values, zarr.open_array(array_url(str(tmp_path / "aff.zarr")))[...])

    infer_to_zarr(str(seed / "data.zarr/img"), str(tmp_path / "pred.zarr"), "nisb-tiny-synthetic",
                  block=(64, 64, 32), progress=False)
    assert open_dataarray(tmp_path / "pred.zarr").dims == ("c", "x", "y", "z")

    decode_to_zarr(str(tmp_path / "aff.zarr"), str(tmp_path / "seg.zarr"), progress=False)
    segmentation = open_dataarray(tmp_path / "seg.zarr")
    assert segmentation.dims == ("x", "y", "z") and segmentation.dtype == np.uint32
    assert np.array_equal(segmentation.values, zarr.open_array(array_url(str(tmp_path / "seg.zarr")))[...])
    decode_to_zarr(str(tmp_path / "aff.zarr"), str(tmp_path / "segs.zarr"), thresholds=(0.5, 0.9), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        image = xr.open_zarr(tmp_path / "segs.zarr", group="threshold-0.5")  # an NGFF image group: level "0"
    assert list(image.data_vars) == ["0"] and image["0"].dims == ("x", "y", "z") and image["0"].dtype == np.uint32
    assert open_dataarray(tmp_path / "segs.zarr/threshold-0.9").attrs["threshold"] == 0.9


def _read_with_ome_zarr(path):
    """The first image node ome-zarr's own reader finds at ``path``: its axes, scale and full-resolution data."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    nodes = [node for node in Reader(parse_url(str(path)))() if node.load(Multiscales)]
    assert len(nodes) == 1, f"{path}: ome-zarr found {len(nodes)} images"
    node = nodes[0]
    scale = node.metadata["coordinateTransformations"][0][0]
    return [a["name"] for a in node.metadata["axes"]], scale, node.data[0]


def _validate_ngff(path, zarr_format):
    """Validate ``path`` against the NGFF spec with ome-zarr-models (an implementation independent of ome-zarr's
    reader and of nisbflow): NGFF 0.4 for zarr format 2, 0.5 for format 3. Returns the validated multiscale."""
    if zarr_format == 2:
        from ome_zarr_models.v04.image import Image

        return Image.from_zarr(zarr.open_group(str(path), mode="r")).attributes.multiscales[0]
    from ome_zarr_models.v05.image import Image

    return Image.from_zarr(zarr.open_group(str(path), mode="r")).attributes.ome.multiscales[0]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_outputs_are_ome_ngff_images_that_ome_zarr_reads_with_their_scale(tmp_path, zarr_format):
    """Affinities (synth-affinities and infer) and segmentations (one threshold and each of several) are NGFF image
    groups: ome-zarr's reader finds one image with axes c,x,y,z / x,y,z, scale = the seed's voxel size in nm (1 for
    channels) and data equal to what nisbflow reads; ome-zarr-models validates each against the spec."""
    from nisbflow.data.volumes import open_volume
    from nisbflow.infer.blockwise import infer_to_zarr

    seed = tmp_path / "seed"
    synthesize_seed(seed, (64, 48, 32), seed=5, chunks=(32, 32, 32), zarr_format=zarr_format,
                    voxel_size=(8.0, 8.0, 30.0), progress=False)
    write_noisy_affinities(seed / "data.zarr/seg", tmp_path / "aff.zarr", progress=False)
    infer_to_zarr(str(seed / "data.zarr/img"), str(tmp_path / "pred.zarr"), "nisb-tiny-synthetic",
                  block=(64, 48, 32), progress=False)
    decode_to_zarr(str(tmp_path / "aff.zarr"), str(tmp_path / "seg.zarr"), progress=False)
    decode_to_zarr(str(tmp_path / "aff.zarr"), str(tmp_path / "segs.zarr"), thresholds=(0.5, 0.9), progress=False)
    expected = {"aff.zarr": (["c", "x", "y", "z"], [1.0, 8.0, 8.0, 30.0]),
                "pred.zarr": (["c", "x", "y", "z"], [1.0, 8.0, 8.0, 30.0]),
                "seg.zarr": (["x", "y", "z"], [8.0, 8.0, 30.0]),
                "segs.zarr/threshold-0.5": (["x", "y", "z"], [8.0, 8.0, 30.0]),
                "segs.zarr/threshold-0.9": (["x", "y", "z"], [8.0, 8.0, 30.0])}
    for name, (axes, scale) in expected.items():
        found_axes, found_scale, data = _read_with_ome_zarr(tmp_path / name)
        assert found_axes == axes and found_scale == {"type": "scale", "scale": scale}, name
        stored = open_volume(tmp_path / name)[...]
        assert data.shape == stored.shape and np.array_equal(np.asarray(data), stored), name
        multiscale = _validate_ngff(tmp_path / name, zarr_format)
        assert [a.name for a in multiscale.axes] == axes, name
        assert [a.unit for a in multiscale.axes if a.type == "space"] == ["nanometer"] * 3
    assert not np.array_equal(open_volume(tmp_path / "segs.zarr/threshold-0.5")[...],
                              open_volume(tmp_path / "segs.zarr/threshold-0.9")[...])
