"""HDF5 and TIFF volumes: `nisbflow convert` between zarr (NGFF and plain), HDF5 (PyTorch Connectomics' ZYX layout)
and TIFF stacks, in both axis orders; evaluate reading HDF5 / TIFF lazily; infer and decode reading them through a
zarr copy staged beside the output; the plain layout BANIS reads; an interrupted or doubled conversion."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest
import tifffile
import zarr

from nisbflow.data.volumes import array_url
from nisbflow.errors import ConfigError, VolumeError

NISBFLOW = str(Path(sys.executable).with_name("nisbflow"))


def run(arguments, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([NISBFLOW, *arguments], cwd=cwd, capture_output=True, text=True, timeout=300)


def read(path) -> np.ndarray:
    return zarr.open_array(array_url(str(path)), mode="r")[...]


@pytest.fixture
def files(tmp_path):
    """PyTorch Connectomics-style files: affinities (C, Z, Y, X) float32 and a segmentation (Z, Y, X) uint32 in one
    HDF5 file (datasets main and seg), an image stack (Z, Y, X) uint8 as multi-page TIFF, and an XYZ HDF5."""
    rng = np.random.default_rng(0)
    affinities = rng.random((3, 20, 30, 40)).astype(np.float32)
    segmentation = rng.integers(0, 50, (20, 30, 40)).astype(np.uint32)
    with h5py.File(tmp_path / "pred.h5", "w") as handle:
        handle.create_dataset("main", data=affinities, chunks=(3, 8, 8, 8))
        handle.create_dataset("seg", data=segmentation)
    with h5py.File(tmp_path / "xyz.h5", "w") as handle:
        handle.create_dataset("volume", data=segmentation.transpose(2, 1, 0))
    image = (segmentation * 5 % 256).astype(np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", image)
    return tmp_path, affinities, segmentation, image


def test_convert_reads_zyx_files_into_xyz_zarr_and_writes_them_back(files):
    folder, affinities, segmentation, image = files
    for arguments in (["pred.h5", "aff.zarr", "--chunks", "16,16,16"], ["pred.h5:/seg", "seg.zarr"],
                      ["stack.tif", "img.zarr"], ["xyz.h5", "xyz.zarr", "--axes", "xyz"],
                      ["seg.zarr", "back.h5:/main"], ["seg.zarr", "back.tif"], ["aff.zarr", "aff_back.h5"]):
        done = run(["convert", *arguments], folder)
        assert done.returncode == 0, done.stderr
    assert np.array_equal(read(folder / "aff.zarr"), affinities.transpose(0, 3, 2, 1))
    assert zarr.open_array(array_url(str(folder / "aff.zarr"))).chunks == (3, 16, 16, 16)
    assert np.array_equal(read(folder / "seg.zarr"), segmentation.transpose(2, 1, 0))
    assert np.array_equal(read(folder / "img.zarr"), image.transpose(2, 1, 0))
    assert np.array_equal(read(folder / "xyz.zarr"), segmentation.transpose(2, 1, 0))
    attrs = dict(zarr.open_group(str(folder / "aff.zarr")).attrs)
    assert attrs["axis_order"] == "cxyz" and attrs["source_axes"] == "czyx" and attrs["source"] == "pred.h5"
    assert attrs["multiscales"]  # an OME-NGFF image, as nisbflow writes
    with h5py.File(folder / "back.h5") as handle:  # PyTorch Connectomics' layout again: ZYX, dataset main
        assert np.array_equal(handle["main"][...], segmentation) and handle["main"].attrs["axis_order"] == "zyx"
    with h5py.File(folder / "aff_back.h5") as handle:
        assert np.array_equal(handle["main"][...], affinities)
    assert np.array_equal(tifffile.imread(folder / "back.tif"), segmentation)


def test_plain_layout_is_what_banis_metrics_reads(files):
    """BANIS's metrics.py: ``zarr.open(path, mode='r')`` on a path ending in .zarr, then ``pred_seg[x, y, z]``."""
    folder, _, segmentation, _ = files
    assert run(["convert", "pred.h5:/seg", "seg.zarr", "--layout", "plain"], folder).returncode == 0
    opened = zarr.open(str(folder / "seg.zarr"), mode="r")
    assert isinstance(opened, zarr.Array) and opened.shape == (40, 30, 20)
    assert opened[7, 3, 11] == segmentation[11, 3, 7] and np.array_equal(opened[:], segmentation.transpose(2, 1, 0))
    assert opened.attrs["axis_order"] == "xyz"
    nested = zarr.open(str(folder / "pred.h5".replace("pred.h5", "seg.zarr")), mode="r")
    assert not isinstance(nested, zarr.Group)
    refused = run(["convert", "pred.h5:/seg", "seg.h5", "--layout", "plain"], folder)
    assert refused.returncode == 2 and "--layout plain applies to zarr outputs" in refused.stderr


def test_evaluate_reads_an_hdf5_or_tiff_segmentation_lazily_as_it_reads_zarr(tmp_path):
    from nisbflow.jobs import evaluate
    from nisbflow.synth import synthesize_seed

    synthesize_seed(tmp_path / "seed", (48, 48, 24), seed=2, chunks=(24, 24, 24), progress=False)
    segmentation = read(tmp_path / "seed/data.zarr/seg")
    with h5py.File(tmp_path / "seg.h5", "w") as handle:  # PyTorch Connectomics writes ZYX
        handle.create_dataset("main", data=segmentation.transpose(2, 1, 0))
    tifffile.imwrite(tmp_path / "seg.tif", segmentation.transpose(2, 1, 0))
    broken = segmentation.copy()
    broken[:, :, 12:] += 1000  # a split plane, so NERL is below 1 and the axis order matters
    with h5py.File(tmp_path / "split.h5", "w") as handle:
        handle.create_dataset("main", data=broken.transpose(2, 1, 0))
    zarr.create_array(str(tmp_path / "split.zarr"), shape=broken.shape, chunks=(24, 24, 24),
                      dtype=broken.dtype)[...] = broken
    skeleton = str(tmp_path / "seed/skeleton.pkl")
    reference = evaluate(str(tmp_path / "split.zarr"), skeleton, progress=False).result
    assert reference.nerl < 0.99
    assert evaluate(str(tmp_path / "split.h5"), skeleton, progress=False).result.nerl == pytest.approx(reference.nerl)
    for name in ("seg.h5", "seg.h5:/main", "seg.tif"):
        assert evaluate(str(tmp_path / name), skeleton, progress=False).result.nerl == pytest.approx(1.0), name
    # read in the wrong order, the file is another volume: refused, not scored
    from nisbflow.errors import SkeletonError

    with pytest.raises(SkeletonError, match=r"lies outside the segmentation of shape \[24, 48, 48\]"):
        evaluate(str(tmp_path / "split.h5"), skeleton, progress=False, axes="xyz")
    shown = run(["evaluate", str(tmp_path / "split.h5"), "-s", skeleton], tmp_path)
    assert shown.returncode == 0 and f"{reference.nerl:.4f}" in shown.stdout
    # skeletonize and synth-affinities take the same files: the same skeletons, the same affinities as from zarr
    from nisbflow.data import load_skeleton
    from nisbflow.jobs import skeletonize, synth_affinities

    skeletonize(str(tmp_path / "seed/data.zarr/seg"), str(tmp_path / "zarr.pkl"), dust_threshold=10)
    skeletonize(str(tmp_path / "seg.tif"), str(tmp_path / "tif.pkl"), dust_threshold=10)
    ours, theirs = load_skeleton(str(tmp_path / "tif.pkl")), load_skeleton(str(tmp_path / "zarr.pkl"))
    assert ours.number_of_nodes() == theirs.number_of_nodes() > 0
    assert sorted(map(tuple, (d["index_position"] for _, d in ours.nodes(data=True)))) == sorted(
        map(tuple, (d["index_position"] for _, d in theirs.nodes(data=True))))
    synth_affinities(str(tmp_path / "seed/data.zarr/seg"), str(tmp_path / "noisy.zarr"), chunks=(24,) * 3, log=print)
    synth_affinities(str(tmp_path / "seg.h5"), str(tmp_path / "noisy-h5.zarr"), chunks=(24,) * 3, log=print)  # noise per chunk
    assert np.array_equal(read(tmp_path / "noisy-h5.zarr"), read(tmp_path / "noisy.zarr"))


def test_infer_and_decode_read_pytc_hdf5_and_tiff_as_their_zarr_equivalents(tmp_path):
    """An image stack (Z, Y, X) as TIFF or HDF5 infers to the affinities of the same image as XYZ zarr; PyTC's
    prediction (C, Z, Y, X) HDF5 decodes to the segmentation of the same affinities as zarr. The copy staged beside
    the output is reused while the file is unchanged, a changed file gets a new one, and the outputs record the
    source and its axis order."""
    import os

    from nisbflow.jobs import ClusterSpec, decode, infer
    from nisbflow.synth import synthesize_seed

    synthesize_seed(tmp_path / "seed", (64, 64, 32), seed=3, chunks=(32, 32, 32), progress=False)
    image = read(tmp_path / "seed/data.zarr/img")[..., 0]  # (X, Y, Z) uint8
    tifffile.imwrite(tmp_path / "im.tif", image.transpose(2, 1, 0))
    with h5py.File(tmp_path / "im.h5", "w") as handle:
        handle.create_dataset("main", data=image.transpose(2, 1, 0), chunks=(8, 16, 16))
    with h5py.File(tmp_path / "xyz.h5", "w") as handle:
        handle.create_dataset("raw", data=image)
    sync = ClusterSpec(cluster="sync")
    said = []
    options = dict(chunks=(32, 32, 32), cluster=sync, progress=False, log=said.append)
    infer(str(tmp_path / "seed/data.zarr/img"), str(tmp_path / "aff.zarr"), "nisb-tiny-synthetic", **options)
    expected = read(tmp_path / "aff.zarr")
    for name, axes in (("im.tif", None), ("im.h5", None), ("im.h5:/main", "zyx"), ("xyz.h5:/raw", "xyz")):
        output = tmp_path / f"aff-{name.replace(':/', '-')}.zarr"
        infer(str(tmp_path / name), str(output), "nisb-tiny-synthetic", axes=axes, **options)
        assert np.array_equal(read(output), expected), name
        source = zarr.open_array(array_url(str(output)), mode="r").attrs["input_source"]
        assert source["file"] == str(tmp_path / name.split(":")[0]) and source["axes"] == (axes or "zyx")
    staged = sorted(p.name for p in (tmp_path / ".nisbflow-inputs").iterdir() if p.suffix == ".zarr")
    assert len(staged) == 4 and [s for s in said if "read from its zarr copy" in s] == [
        s for s in said if "im.h5:/main" in s and "read from its zarr copy" in s]  # im.h5 and im.h5:/main: one copy
    os.utime(tmp_path / "im.tif", ns=(1, 1))  # the file changed: a new copy, not the old one
    infer(str(tmp_path / "im.tif"), str(tmp_path / "again.zarr"), "nisb-tiny-synthetic", **options)
    assert len([p for p in (tmp_path / ".nisbflow-inputs").iterdir() if p.suffix == ".zarr"]) == 5

    affinities = read(tmp_path / "aff.zarr")  # (C, X, Y, Z)
    with h5py.File(tmp_path / "test_im_prediction.h5", "w") as handle:  # PyTC's layout: (C, Z, Y, X), dataset main
        handle.create_dataset("main", data=affinities.transpose(0, 3, 2, 1).astype(np.float32))
    decoding = dict(thresholds=[0.5], chunks=(32, 32, 32), cluster=sync, progress=False, log=said.append)
    decode(str(tmp_path / "aff.zarr"), str(tmp_path / "seg.zarr"), **decoding)
    decode(str(tmp_path / "test_im_prediction.h5"), str(tmp_path / "seg-h5.zarr"), layout="plain", **decoding)
    plain = zarr.open(str(tmp_path / "seg-h5.zarr"), mode="r")  # BANIS's metrics.py: zarr.open(path)[:]
    assert isinstance(plain, zarr.Array) and np.array_equal(plain[:], read(tmp_path / "seg.zarr"))
    assert plain.attrs["input_source"]["axes"] == "czyx" and plain.attrs["nisbflow_output"] == "segmentation"
    # the command line: a TIFF stack on a real local cluster's workers, affinities as a plain array
    done = run(["infer", "im.tif", "plain-aff.zarr", "--checkpoint", "nisb-tiny-synthetic", "--chunks", "32,32,32",
                "--layout", "plain", "--workers", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "read from its zarr copy" in done.stdout
    on_workers = zarr.open(str(tmp_path / "plain-aff.zarr"), mode="r")[:]  # another process: float16 rounding
    np.testing.assert_allclose(on_workers.astype(np.float32), expected.astype(np.float32), atol=1e-3)


def test_input_axes_and_layouts_that_cannot_be_right_are_refused_in_one_line(files):
    folder = files[0]
    for arguments, line in (
            (["decode", "pred.h5", "seg.zarr", "--axes", "zyx"], "--axes 'zyx' for "),
            (["infer", "stack.tif", "aff.zarr", "--checkpoint", "nisb-tiny-synthetic", "--layout", "flat"],
             "--layout 'flat': expected ngff"),
            (["decode", "pred.h5", "pred.h5"], "")):
        refused = run(arguments, folder)
        assert refused.returncode == 2, refused.stderr
        (said,) = refused.stderr.strip().splitlines()
        assert said.startswith("error: ") and line in said
    from nisbflow.data.formats import zarr_input

    zarr.create_array(str(folder / "xyz.zarr"), shape=(4, 5, 6), dtype="uint8")
    with pytest.raises(ConfigError, match=r"--axes zyx: image .*xyz.zarr is zarr in XYZ order"):
        zarr_input(str(folder / "xyz.zarr"), role="image", near=str(folder / "out.zarr"), axes="zyx")
    assert not (folder / "seg.zarr").exists() and not (folder / "aff.zarr").exists()
    assert not (folder / ".nisbflow-inputs").exists()


def test_two_runs_staging_one_input_at_once_write_one_copy_or_are_refused(files):
    from nisbflow.data.formats import zarr_input
    from nisbflow.locks import LockedError

    folder, affinities, _, _ = files
    results, errors = [], []

    def stage():
        try:
            results.append(zarr_input(str(folder / "pred.h5"), role="affinities", near=str(folder / "seg.zarr"),
                                      progress=False))
        except LockedError as error:
            errors.append(str(error))

    writers = [threading.Thread(target=stage) for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert len(results) + len(errors) == 2 and results and len(set(results)) == 1
    assert all("is staging" in e and "re-run when it is done" in e for e in errors)
    assert np.array_equal(read(results[0]), affinities.transpose(0, 3, 2, 1))
    assert not [p for p in (folder / ".nisbflow-inputs").iterdir() if ".partial-" in p.name or p.suffix == ".lock"]


def test_bad_axes_datasets_and_outputs_are_one_line_errors(files):
    from nisbflow.data.formats import open_lazy
    from nisbflow.jobs import convert

    folder = files[0]
    with pytest.raises(ConfigError, match="--axes 'zyy'.*x, y, z once each"):
        open_lazy(str(folder / "pred.h5:/seg"), "zyy")
    with pytest.raises(VolumeError, match=r"no dataset /nothing \(it holds: /main, /seg\)"):
        open_lazy(str(folder / "pred.h5:/nothing"))
    with pytest.raises(ConfigError, match="a TIFF stack holds one channel"):
        convert(str(folder / "pred.h5"), str(folder / "aff.tif"), progress=False)
    assert not (folder / "aff.tif").exists()
    convert(str(folder / "pred.h5:/seg"), str(folder / "seg.zarr"), progress=False)
    before = read(folder / "seg.zarr")
    refused = run(["convert", "stack.tif", "seg.zarr"], folder)
    assert refused.returncode == 2 and "already exists; pass --overwrite" in refused.stderr
    assert np.array_equal(read(folder / "seg.zarr"), before)
    inside = run(["convert", "seg.zarr", "seg.zarr", "--overwrite"], folder)
    assert inside.returncode == 2 and "error:" in inside.stderr and np.array_equal(read(folder / "seg.zarr"), before)


def test_an_interrupted_conversion_leaves_no_output_and_two_at_once_write_the_same(files):
    from nisbflow.data.formats import LazyVolume, open_lazy, write_volume
    from nisbflow.paths import locate

    folder, _, segmentation, _ = files
    source = open_lazy(str(folder / "pred.h5:/seg"))

    def fail_late(block, block_info=None):
        if block_info[0]["chunk-location"] == (1, 1, 1):
            raise KeyboardInterrupt  # Ctrl-C in the middle of the conversion
        return block

    failing = LazyVolume(da.map_blocks(fail_late, source.data.rechunk((16, 16, 16)), dtype=source.data.dtype),
                         source.axes, source.source_axes, locate(str(folder / "pred.h5:/seg")))
    for output in ("seg.zarr", "seg.h5", "seg.tif"):
        with pytest.raises(KeyboardInterrupt):
            write_volume(failing, str(folder / output), chunks=(16, 16, 16), progress=False)
        assert not (folder / output).exists()
    assert not [p for p in folder.iterdir() if ".partial-" in p.name]

    errors = []

    def write():
        try:
            write_volume(open_lazy(str(folder / "pred.h5:/seg")), str(folder / "twice.zarr"), overwrite=True,
                         chunks=(16, 16, 16), progress=False)
        except Exception as error:  # a refusal would be a clear error: none is expected here
            errors.append(error)

    writers = [threading.Thread(target=write) for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert not errors
    assert np.array_equal(read(folder / "twice.zarr"), segmentation.transpose(2, 1, 0))
