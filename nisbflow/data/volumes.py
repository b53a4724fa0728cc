"""Open NISB seeds and zarr volumes lazily, validate them, and write outputs safely.

Axis order is positional XYZ as NISB stores it: images are ``(X, Y, Z, C) uint8``, segmentations
``(X, Y, Z)`` unsigned integers. Opening a volume reads metadata only, never voxels.
"""

from __future__ import annotations

import atexit
import datetime
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import fsspec
import numcodecs
import numpy as np
import xarray as xr
import zarr
import zarr.codecs

from .. import __version__
from ..errors import ConfigError, VolumeError
from ..region import triple

ZARR_IO_EXIT_WAIT_S = 30.0
"""How long, at interpreter exit, zarr's I/O thread may take to finish what it is doing before its loop closes."""


def close_zarr_io(wait_s: float = ZARR_IO_EXIT_WAIT_S) -> None:
    """Stop zarr's background I/O event loop and wait for its thread (up to ``wait_s`` seconds) before closing it.

    zarr 3 closes that loop in its own exit handler after waiting only 0.2 s; on a loaded machine the thread is
    often still busy then and the process prints ``RuntimeError: Cannot close a running event loop`` after a
    command whose output is complete. Registered with :mod:`atexit` after zarr's handler, so it runs first and
    leaves zarr's with nothing to do. Safe to call when no loop was ever started.
    """
    from zarr.core import sync

    with sync._get_lock():
        loop, thread = sync.loop[0], sync.iothread[0]
        if loop is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=wait_s)
        if loop.is_running():  # still busy after wait_s: leave it to the process's exit rather than raising
            return
        loop.close()
        sync.loop[0], sync.iothread[0] = None, None


atexit.register(close_zarr_io)  # after ``import zarr`` registered zarr's own handler: atexit runs this one first

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
            return f"{role} array not found: '{missing}' is not in zarr store {parent} (it holds: {', '.join(members)})"
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
        The array itself, e.g. ``run/seed101/data.zarr/img`` or ``s3://bucket/seed101/data.zarr/seg``, or an
        OME-NGFF image group such as the ``seg.zarr`` nisbflow writes (its full-resolution level is opened, see
        :mod:`nisbflow.data.ngff`).
    role
        What the array is for ("image", "segmentation", …); used in error messages.
    ndims, dtype_kinds, dtypes
        Allowed ranks, NumPy dtype kinds (``"u"``, ``"iu"``, ``"f"``) and exact dtypes; a mismatch raises
        :class:`~nisbflow.errors.VolumeError` naming the path, the expected and the found value.
    """
    path = str(path)
    from ..paths import locate

    where = locate(path)
    if where.kind != "zarr":
        stem = Path(where.file).stem
        raise VolumeError(
            f"{role}: {path} is {where.kind.upper()}; this command reads zarr arrays: convert it first "
            f"with `nisbflow convert {path} {stem}.zarr` (add --axes if it is not "
            f"{'ZYX / CZYX' if where.kind == 'hdf5' else 'ZYX'}, as PyTorch Connectomics writes)"
        )
    try:
        array = zarr.open_array(array_url(path), mode="r")
    except (FileNotFoundError, zarr.errors.NodeTypeValidationError):
        members = _members(path)
        if not members:
            raise VolumeError(_missing_array_message(path, role)) from None
        held = f" (it holds: {', '.join(members)}; name one, e.g. {path.rstrip('/')}/{members[0]})" if members else ""
        raise VolumeError(f"{role}: {path} is a zarr group, not an array{held}") from None
    except Exception as error:  # corrupt metadata and the like
        raise VolumeError(f"{role}: cannot open zarr array {path}: {error}") from error
    check_volume(array.shape, array.dtype, path, role=role, ndims=ndims, dtype_kinds=dtype_kinds, dtypes=dtypes)
    from .chunks import open_checked

    return open_checked(array, f"{role} {path}")


def array_url(path: str | Path) -> str:
    """The zarr array ``path`` names: ``path`` itself, or for an OME-NGFF image group its first resolution level
    (``path/0`` in what nisbflow writes). Reads one metadata document. A local path comes back absolute, so the
    zarr array opened from it (and sent to Dask workers) names the same files in every process, whatever its
    working folder."""
    from ..paths import storage_url
    from .ngff import image_level_path

    path = storage_url(path)
    try:
        group = zarr.open_group(path, mode="r")
    except Exception:  # an array, or nothing there
        return path
    level = image_level_path(group.attrs)
    return f"{path.rstrip('/')}/{level}" if level else path


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
    if any(int(n) == 0 for n in shape):
        raise VolumeError(
            f"{role} {where}: the array is empty (shape {tuple(shape)}); every axis needs at least one voxel"
        )
    if ndims is not None and len(shape) not in ndims:
        expected = " or ".join(str(n) for n in ndims)
        raise VolumeError(f"{role} {where}: expected {expected} dimensions, found {len(shape)} (shape {tuple(shape)})")
    if dtypes is not None and dtype.name not in dtypes:
        raise VolumeError(f"{role} {where}: expected dtype {' or '.join(dtypes)}, found {dtype.name}")
    if dtype_kinds is not None and dtype.kind not in dtype_kinds:
        names = {
            "iu": "an integer",
            "ui": "an integer",
            "u": "an unsigned integer",
            "i": "a signed integer",
            "f": "a floating-point",
            "b": "a boolean",
        }
        expected = names.get(dtype_kinds, f"a '{dtype_kinds}'-kind")
        raise VolumeError(f"{role} {where}: expected {expected} dtype, found {dtype.name}")


def open_image(path: str | Path) -> zarr.Array:
    """Open an EM image, ``(X, Y, Z, 1) uint8`` (a 3-D ``(X, Y, Z)`` array is accepted as one channel)."""
    image = open_volume(path, role="image", ndims=(3, 4), dtypes=("uint8",))
    if image.ndim == 4 and image.shape[3] != 1:
        raise VolumeError(
            f"image {path}: expected one grey channel, shape (X, Y, Z, 1) or (X, Y, Z), found shape "
            f"{tuple(image.shape)}; select the channel to segment, e.g. into an (X, Y, Z) array"
        )
    return image


AFFINITY_CHANNELS = (3, 6)
"""Affinity channel counts nisbflow reads: the 3 short-range edges, or BANIS's 6 (short- then long-range)."""


def check_affinity_layout(shape, dtype, where: str = "affinities") -> None:
    """Raise :class:`VolumeError` unless ``shape``/``dtype`` are channels-first ``(C, X, Y, Z)`` floats, C = 3 or 6;
    a channels-last array ``(X, Y, Z, C)`` is named as such."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    if any(n == 0 for n in shape):
        raise VolumeError(f"{where}: the array is empty (shape {shape})")
    if len(shape) != 4:
        raise VolumeError(f"{where}: expected affinities of shape (C, X, Y, Z) with C = 3 or 6, found shape {shape}")
    if shape[0] not in AFFINITY_CHANNELS:
        if shape[3] in AFFINITY_CHANNELS:
            raise VolumeError(
                f"{where}: shape {shape} looks channels-last (X, Y, Z, C); nisbflow reads channels "
                f"first, (C, X, Y, Z): store it transposed, e.g. numpy.moveaxis(a, -1, 0)"
            )
        raise VolumeError(
            f"{where}: expected 3 or 6 affinity channels (offsets x, y, z, then long-range) on axis 0 "
            f"of (C, X, Y, Z), found shape {shape}"
        )
    if dtype.kind != "f":
        raise VolumeError(
            f"{where}: expected float16 or float32 affinities in [0, 1], found dtype {dtype.name} "
            "(convert integer predictions to probabilities first)"
        )


AFFINITY_SAMPLE_CHUNKS = 8
"""Chunks of an affinities array whose values :func:`open_affinities` checks before a run."""


def sample_affinity_range(array: zarr.Array, n_chunks: int = AFFINITY_SAMPLE_CHUNKS) -> dict:
    """Fractions of NaN and of finite values outside [0, 1] among channels 0..2 of up to ``n_chunks`` chunks spread
    over the array (a cheap look, not a scan), with the sampled minimum and maximum."""
    grid = [range(0, n, c) for n, c in zip(array.shape[1:], array.chunks[1:])]
    corners = list(np.ndindex(*[len(g) for g in grid]))
    picks = [corners[int(i)] for i in np.unique(np.linspace(0, len(corners) - 1, n_chunks).round())]
    total = outside = nan = 0
    low, high = np.inf, -np.inf
    for corner in picks:
        region = tuple(slice(g[i], g[i] + c) for g, i, c in zip(grid, corner, array.chunks[1:]))
        values = np.asarray(array[(slice(0, 3),) + region], dtype=np.float32)
        finite = values[np.isfinite(values)]
        total += values.size
        nan += int(np.isnan(values).sum())
        outside += int(((finite < 0) | (finite > 1)).sum()) + int(np.isinf(values).sum())
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    return {
        "sampled": total,
        "nan_fraction": nan / max(total, 1),
        "outside_fraction": outside / max(total, 1),
        "min": low,
        "max": high,
    }


def open_affinities(path: str | Path, *, log=None, sample: bool = True) -> zarr.Array:
    """Open affinities ``(C, X, Y, Z)`` float16/float32 (C = 3 or 6) read-only and check them before any work:
    the layout (:func:`check_affinity_layout`), the recorded channel ``offsets`` (channels 0..2 must be the
    short-range x, y, z edges), and a sample of the values (:func:`sample_affinity_range`): values outside [0, 1]
    (logits) or NaN are reported through ``log`` (a ``print``-like function; default stderr), naming the fraction."""
    array = open_volume(path, role="affinities")
    check_affinity_layout(array.shape, array.dtype, where=f"affinities {path}")
    offsets: Any = array.attrs.get("offsets")
    if offsets is not None and tuple(str(o) for o in list(offsets)[:3]) != SHORT_RANGE_OFFSETS:
        raise VolumeError(
            f"affinities {path}: channels 0, 1, 2 must be the short-range offsets "
            f"{list(SHORT_RANGE_OFFSETS)}, but its offsets attribute records {list(offsets)}; infer "
            "with inference.select_channel starting 0,1,2"
        )
    if sample:
        found = sample_affinity_range(array)
        say = log or (lambda message: print(message, file=sys.stderr))
        if found["outside_fraction"] > 0:
            say(
                f"warning: affinities {path}: {100 * found['outside_fraction']:.2f} % of sampled values lie outside "
                f"[0, 1] (min {found['min']:.3g}, max {found['max']:.3g}); they look like logits, not probabilities "
                "(inference.activation); thresholds compare with the stored values as they are"
            )
        if found["nan_fraction"] > 0:
            say(
                f"warning: affinities {path}: {100 * found['nan_fraction']:.2f} % of sampled values are NaN; NaN "
                "affinities count as no edge"
            )
    return array


SHORT_RANGE_OFFSETS = ("1-0-0", "0-1-0", "0-0-1")
"""The ``offsets`` attribute of channels 0, 1, 2 that decoding reads: +1 along x, y and z."""


def open_segmentation(path: str | Path) -> zarr.Array:
    """Open a segmentation, ``(X, Y, Z)`` integer labels, 0 = background."""
    return open_volume(path, role="segmentation", ndims=(3,), dtype_kinds="iu")


def voxel_size_of(array: zarr.Array, default=DEFAULT_VOXEL_SIZE) -> tuple[float, float, float]:
    """The voxel size in nm recorded in an array's attrs (``voxel_size`` or ``resolution``), else ``default``."""
    for key in ("voxel_size", "resolution"):
        value: Any = array.attrs.get(key)
        if value is not None and len(value) >= 3:
            x, y, z = (float(v) for v in value[:3])
            return x, y, z
    x, y, z = (float(v) for v in default)
    return x, y, z


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
        return triple(self.img.shape[:3])

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
        variables: dict[str, tuple[tuple[str, ...], da.Array]] = {"img": (("x", "y", "z", "c"), self.image())}
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
                f"NISB seed {path}: seg shape {tuple(seg.shape)} does not match img spatial shape "
                f"{tuple(img.shape[:3])}"
            )
    skeleton = None
    for name in ("skeleton.pkl", "skeleton.json", "skeleton.npz"):
        if _exists(f"{path}/{name}"):
            skeleton = f"{path}/{name}"
            break
    return NisbSeed(path=path, img=img, seg=seg, skeleton_path=skeleton, voxel_size=voxel_size_of(img))


SPLIT_USE = {"val": "tuning needs the validation seed", "test": "testing needs the test seed"}


def seed_of(config, split: str) -> tuple[NisbSeed, str]:
    """A configuration's seed ``data.<split>.path`` (``val`` for tuning, ``test`` for testing) opened, and its
    skeleton (``data.<split>.skeleton``, else the one inside the folder); a :class:`~nisbflow.errors.ConfigError`
    naming the key when either is missing."""
    section = getattr(config.data, split)
    if not section.path:
        example = f"outputs/synthetic/{split}/seed{100 if split == 'val' else 101}"
        raise ConfigError(
            f"data.{split}.path is not set: {SPLIT_USE.get(split, 'this needs the seed')} folder "
            f"(holding data.zarr), e.g. data.{split}.path={example}"
        )
    seed = open_seed(section.path)
    skeleton = section.skeleton or seed.skeleton_path
    if not skeleton or "://" not in str(skeleton) and not Path(skeleton).exists():
        raise ConfigError(f"no skeleton for the {split} seed {section.path}: set data.{split}.skeleton")
    return seed, str(skeleton)


def fast_compressors(zarr_format: int, shuffle: bool = True):
    """Blosc LZ4, for arrays that later stages read block by block; give it as ``compressors=`` to
    ``zarr.create_array``.

    ``shuffle`` (byte shuffle) suits float affinities: on float16 they decompress about 3× faster than with zarr's
    default Zstandard, which matters because decoding is I/O-bound. Segmentations compress better and faster
    without it (long runs of equal ids): ``shuffle=False``.
    """
    if zarr_format == 2:
        return numcodecs.Blosc(
            cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE if shuffle else numcodecs.Blosc.NOSHUFFLE
        )
    return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle" if shuffle else "noshuffle")


def output_attrs(description: str, voxel_size, axis_order: str, config=None, **extra) -> dict:
    """Attributes every nisbflow output records: what the values mean, voxel size, axis order and provenance."""
    attrs = {
        "description": description,
        "voxel_size": [float(v) for v in voxel_size],
        "voxel_size_unit": "nm",
        "axis_order": axis_order,
        "nisbflow_version": __version__,
        "nisbflow_chunks": "all",  # every chunk is stored: a missing one is an error (nisbflow.data.chunks)
        "command": shlex.join(sys.argv),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if config is not None:
        attrs["config"] = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    attrs.update(extra)
    return attrs


def open_dataarray(path: str | Path) -> xr.DataArray:
    """A zarr array nisbflow wrote (or any with named axes) as a lazy :class:`xarray.DataArray`: dimensions from its
    ``_ARRAY_DIMENSIONS`` / ``dimension_names`` (else ``axis_order``), spatial coordinates in nm from its voxel size,
    attributes kept. For stores whose root is an array, which ``xarray.open_zarr`` (groups only) cannot open; a
    group (a seed's ``data.zarr``, a multi-threshold segmentation) opens with ``xarray.open_zarr`` directly."""
    array = open_volume(path)
    attrs: dict[str, Any] = dict(array.attrs)
    names = (
        attrs.pop("_ARRAY_DIMENSIONS", None)
        or getattr(array.metadata, "dimension_names", None)
        or list(attrs.get("axis_order", ""))
        or None
    )
    if names is None or len(names) != array.ndim:
        raise VolumeError(
            f"{path}: its axes are not named (no _ARRAY_DIMENSIONS, dimension_names or axis_order "
            f"for {array.ndim} dimensions)"
        )
    voxel_size = dict(zip("xyz", voxel_size_of(array)))
    coords = {name: np.arange(n) * voxel_size[name] for name, n in zip(names, array.shape) if name in voxel_size}
    return xr.DataArray(
        da.from_zarr(array), dims=list(names), coords=coords, attrs=attrs, name=str(path).rstrip("/").rsplit("/", 1)[-1]
    )
