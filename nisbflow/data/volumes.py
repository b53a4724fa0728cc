"""Open NISB seeds and zarr volumes lazily, validate them, and write outputs safely.

Axis order is positional XYZ as NISB stores it: images are ``(X, Y, Z, C) uint8``, segmentations
``(X, Y, Z)`` unsigned integers. Opening a volume reads metadata only, never voxels.
"""

from __future__ import annotations

import contextlib
import datetime
import shlex
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import dask.array as da
import fsspec
import numcodecs
import numpy as np
import xarray as xr
import zarr
import zarr.codecs

from .. import __version__
from ..errors import OutputExistsError, VolumeError

DEFAULT_VOXEL_SIZE = (9.0, 9.0, 20.0)
"""NISB voxel size in nm, (x, y, z)."""


def _members(group_path: str) -> list[str]:
    try:
        group = zarr.open_group(group_path, mode="r")
    except Exception:
        return []
    return sorted(group.keys())


def _missing_array_message(path: str, role: str) -> str:
    """Name the deepest existing zarr group on ``path`` and what it holds, so a typo is easy to see."""
    parts = path.rstrip("/").split("/")
    for cut in range(len(parts) - 1, 0, -1):
        parent = "/".join(parts[:cut])
        members = _members(parent)
        if members:
            missing = "/".join(parts[cut:])
            return (
                f"{role} array not found: '{missing}' is not in zarr store {parent} "
                f"(it holds: {', '.join(members)})"
            )
    return f"{role} array not found: {path} does not exist or is not a zarr array"


def open_volume(
    path: str | Path,
    *,
    role: str = "volume",
    ndims: tuple[int, ...] | None = None,
    dtype_kinds: str | None = None,
    dtypes: tuple[str, ...] | None = None,
) -> zarr.Array:
    """Open one zarr array (format 2 or 3) read-only, from a local path or an fsspec URL.

    Parameters
    ----------
    path
        The array itself, e.g. ``run/seed101/data.zarr/img`` or ``s3://bucket/seed101/data.zarr/seg``.
    role
        What the array is for ("image", "segmentation", …); used in error messages.
    ndims, dtype_kinds, dtypes
        Allowed ranks, NumPy dtype kinds (``"u"``, ``"iu"``, ``"f"``) and exact dtypes; a mismatch raises
        :class:`~nisbflow.errors.VolumeError` naming the path, the expected and the found value.
    """
    path = str(path)
    try:
        array = zarr.open_array(path, mode="r")
    except (FileNotFoundError, zarr.errors.NodeTypeValidationError):
        members = _members(path)
        if not members:
            raise VolumeError(_missing_array_message(path, role)) from None
        held = f" (it holds: {', '.join(members)}; name one, e.g. {path.rstrip('/')}/{members[0]})" if members else ""
        raise VolumeError(f"{role}: {path} is a zarr group, not an array{held}") from None
    except Exception as error:  # corrupt metadata and the like
        raise VolumeError(f"{role}: cannot open zarr array {path}: {error}") from error
    check_volume(array.shape, array.dtype, path, role=role, ndims=ndims, dtype_kinds=dtype_kinds, dtypes=dtypes)
    return array


def check_volume(
    shape: tuple[int, ...],
    dtype: np.dtype,
    where: str,
    *,
    role: str = "volume",
    ndims: tuple[int, ...] | None = None,
    dtype_kinds: str | None = None,
    dtypes: tuple[str, ...] | None = None,
) -> None:
    """Raise :class:`VolumeError` unless ``shape`` and ``dtype`` are of an allowed rank and dtype."""
    dtype = np.dtype(dtype)
    if ndims is not None and len(shape) not in ndims:
        expected = " or ".join(str(n) for n in ndims)
        raise VolumeError(f"{role} {where}: expected {expected} dimensions, found {len(shape)} (shape {tuple(shape)})")
    if dtypes is not None and dtype.name not in dtypes:
        raise VolumeError(f"{role} {where}: expected dtype {' or '.join(dtypes)}, found {dtype.name}")
    if dtype_kinds is not None and dtype.kind not in dtype_kinds:
        names = {"iu": "an integer", "ui": "an integer", "u": "an unsigned integer", "i": "a signed integer",
                 "f": "a floating-point", "b": "a boolean"}
        expected = names.get(dtype_kinds, f"a '{dtype_kinds}'-kind")
        raise VolumeError(f"{role} {where}: expected {expected} dtype, found {dtype.name}")


def open_image(path: str | Path) -> zarr.Array:
    """Open an EM image, ``(X, Y, Z, C) uint8`` (a 3-D ``(X, Y, Z)`` array is accepted as one channel)."""
    return open_volume(path, role="image", ndims=(3, 4), dtypes=("uint8",))


def open_segmentation(path: str | Path) -> zarr.Array:
    """Open a segmentation, ``(X, Y, Z)`` integer labels, 0 = background."""
    return open_volume(path, role="segmentation", ndims=(3,), dtype_kinds="iu")


def voxel_size_of(array: zarr.Array, default=DEFAULT_VOXEL_SIZE) -> tuple[float, float, float]:
    """The voxel size in nm recorded in an array's attrs (``voxel_size`` or ``resolution``), else ``default``."""
    for key in ("voxel_size", "resolution"):
        value = array.attrs.get(key)
        if value is not None and len(value) >= 3:
            return tuple(float(v) for v in value[:3])
    return tuple(float(v) for v in default)


@dataclass
class NisbSeed:
    """One NISB seed folder: ``<seed>/data.zarr`` with ``img`` and ``seg`` and usually ``skeleton.pkl``.

    ``img`` is ``(X, Y, Z, C) uint8`` and ``seg`` ``(X, Y, Z)`` integer, both lazily opened zarr arrays.
    """

    path: str
    img: zarr.Array
    seg: zarr.Array | None
    skeleton_path: str | None
    voxel_size: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape in voxels, (X, Y, Z)."""
        return tuple(self.img.shape[:3])

    def image(self) -> da.Array:
        """The image as a lazy dask array, ``(X, Y, Z, C) uint8``, chunked like the store."""
        return da.from_zarr(self.img)

    def segmentation(self) -> da.Array:
        """The segmentation as a lazy dask array, ``(X, Y, Z)``."""
        if self.seg is None:
            raise VolumeError(f"seed {self.path} has no 'seg' array")
        return da.from_zarr(self.seg)

    def to_xarray(self) -> xr.Dataset:
        """A lazy :class:`xarray.Dataset` with ``img (x, y, z, c)`` and ``seg (x, y, z)``; coordinates in nm."""
        coords = {axis: np.arange(n) * size for axis, n, size in zip("xyz", self.shape, self.voxel_size)}
        variables = {"img": (("x", "y", "z", "c"), self.image())}
        if self.seg is not None:
            variables["seg"] = (("x", "y", "z"), self.segmentation())
        attrs = {"voxel_size_nm": list(self.voxel_size), "axis_order": "xyz", "source": self.path}
        return xr.Dataset(variables, coords=coords, attrs=attrs)


def _exists(path: str) -> bool:
    fs, root = fsspec.core.url_to_fs(path)
    return fs.exists(root)


def open_seed(path: str | Path, *, require_segmentation: bool = True) -> NisbSeed:
    """Open a NISB seed folder lazily and check that ``img`` and ``seg`` agree.

    >>> seed = open_seed("outputs/synthetic/test/seed101")      # doctest: +SKIP
    >>> seed.img.shape, seed.img.dtype                            # doctest: +SKIP
    ((512, 512, 256, 1), dtype('uint8'))
    """
    path = str(path).rstrip("/")
    store = f"{path}/data.zarr"
    if not _exists(store):
        raise VolumeError(f"NISB seed {path}: no data.zarr store found at {store}")
    img = open_image(f"{store}/img")
    if img.ndim != 4:
        raise VolumeError(f"image {store}/img: NISB stores (X, Y, Z, C), found {img.ndim} dimensions {img.shape}")
    seg = None
    if require_segmentation or "seg" in _members(store):
        seg = open_segmentation(f"{store}/seg")
        if tuple(seg.shape) != tuple(img.shape[:3]):
            raise VolumeError(
                f"NISB seed {path}: seg shape {tuple(seg.shape)} does not match img spatial shape {tuple(img.shape[:3])}"
            )
    skeleton = None
    for name in ("skeleton.pkl", "skeleton.json", "skeleton.npz"):
        if _exists(f"{path}/{name}"):
            skeleton = f"{path}/{name}"
            break
    return NisbSeed(path=path, img=img, seg=seg, skeleton_path=skeleton, voxel_size=voxel_size_of(img))


def fast_compressors(zarr_format: int, shuffle: bool = True):
    """Blosc LZ4, for arrays that later stages read block by block; give it as ``compressors=`` to ``zarr.create_array``.

    ``shuffle`` (byte shuffle) suits float affinities: on float16 they decompress about 3× faster than with zarr's
    default Zstandard, which matters because decoding is I/O-bound. Segmentations compress better and faster
    without it (long runs of equal ids): ``shuffle=False``.
    """
    if zarr_format == 2:
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE if shuffle else numcodecs.Blosc.NOSHUFFLE)
    return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle" if shuffle else "noshuffle")


def output_attrs(description: str, voxel_size, axis_order: str, config=None, **extra) -> dict:
    """Attributes every nisbflow output records: what the values mean, voxel size, axis order and provenance."""
    attrs = {
        "description": description,
        "voxel_size": [float(v) for v in voxel_size],
        "voxel_size_unit": "nm",
        "axis_order": axis_order,
        "nisbflow_version": __version__,
        "command": shlex.join(sys.argv),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if config is not None:
        attrs["config"] = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    attrs.update(extra)
    return attrs


def _remove(fs, path: str) -> None:
    if fs.exists(path):
        fs.rm(path, recursive=True)


@contextlib.contextmanager
def staged_output(path: str | Path, *, overwrite: bool = False) -> Iterator[str]:
    """Write an output under a temporary sibling name and move it to ``path`` only when complete.

    Yields the temporary path. An exception inside the block removes the temporary output and leaves any
    existing ``path`` untouched; an existing ``path`` is refused unless ``overwrite`` is true.
    """
    path = str(path).rstrip("/")
    fs, final = fsspec.core.url_to_fs(path)
    if fs.exists(final) and not overwrite:
        raise OutputExistsError(f"output {path} already exists; pass --overwrite to replace it")
    parent, name = final.rsplit("/", 1) if "/" in final else (".", final)
    token = uuid.uuid4().hex[:8]
    stem, dot, suffix = name.rpartition(".")
    stem, suffix = (stem, dot + suffix) if stem else (name, "")
    temporary = f"{parent}/.{stem}.partial-{token}{suffix}"  # keeps the suffix, which names the format
    fs.makedirs(parent, exist_ok=True)
    protocol = path[: -len(final)] if path.endswith(final) and path != final else ""
    try:
        yield protocol + temporary
    except BaseException:
        _remove(fs, temporary)
        raise
    retired = f"{parent}/.{name}.replaced-{token}"
    if fs.exists(final):
        fs.mv(final, retired, recursive=True)
    fs.mv(temporary, final, recursive=True)
    _remove(fs, retired)
