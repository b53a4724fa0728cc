"""Volumes in the formats the field's tools use, read lazily and converted block by block.

nisbflow's own volumes are zarr (OME-NGFF image groups, or plain arrays) in positional XYZ order: images
``(X, Y, Z)`` / ``(X, Y, Z, 1)``, affinities ``(C, X, Y, Z)``, segmentations ``(X, Y, Z)``. PyTorch Connectomics
reads and writes HDF5 and TIFF in ZYX order: ``(D, H, W)`` = ``(Z, Y, X)`` and ``(C, D, H, W)`` = ``(C, Z, Y, X)``,
its HDF5 dataset named ``main`` (else the file's first dataset), multi-page TIFF stacks one page per z.

A volume is named by a path: ``file.h5:/dataset`` (or ``file.h5`` for its ``main`` / only dataset; ``.hdf5``,
``.hdf`` likewise), ``stack.tif`` / ``stack.tiff``, or a zarr array or NGFF group (``seg.zarr``,
``data.zarr/img``). :func:`open_lazy` opens any of them as a dask array in nisbflow's order without reading voxels
(h5py datasets through ``dask.array.from_array``, TIFF through tifffile's zarr store), given the source's axis
order (``axes``: letters x, y, z and c, e.g. ``zyx``, ``czyx``; default from the format as above, or from a zarr
array's ``axis_order`` attribute). :func:`write_volume` writes one to zarr (``layout`` ``ngff`` or ``plain``: the
array at the store's root, which ``zarr.open(path)[:]``, as BANIS's ``metrics.py`` calls it, reads), HDF5
(PyTorch Connectomics' layout: ZYX, dataset ``main``) or TIFF (ZYX pages), chunk by chunk, under a temporary name
moved into place when complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import dask
import dask.array as da
import numpy as np

from ..errors import ConfigError, VolumeError
from ..paths import VolumeLocation, locate
from .ngff import check_layout

__all__ = ["LazyVolume", "VolumeLocation", "locate", "open_lazy", "stored_axes", "write_volume"]

HDF5_DATASET = "main"
"""PyTorch Connectomics' HDF5 dataset name (``write_hdf5(..., dataset="main")``)."""


def target_axes(ndim: int, source_axes: str) -> str:
    """nisbflow's axis order for a volume with ``source_axes``: ``xyz``, ``cxyz`` (affinities) or ``xyzc`` (an image
    with a channel axis, as NISB stores ``img``)."""
    if ndim == 3:
        return "xyz"
    return "xyzc" if source_axes.endswith("c") else "cxyz"


def check_axes(axes: str, ndim: int, where: str) -> str:
    """``axes`` lower-cased, or :class:`ConfigError` unless it names x, y, z (and c for 4-D) once each."""
    axes = str(axes).lower()
    wanted = {"x", "y", "z"} | ({"c"} if ndim == 4 else set())
    if len(axes) != ndim or set(axes) != wanted:
        raise ConfigError(
            f"--axes {axes!r} for {where}: expected {ndim} letters naming "
            f"{', '.join(sorted(wanted))} once each (e.g. {'zyx' if ndim == 3 else 'czyx'}) for its "
            f"{ndim}-D array"
        )
    return axes


@dataclass
class LazyVolume:
    """A volume opened without reading voxels: ``data`` a dask array in nisbflow's order ``axes``; ``source_axes``
    its order in the file; ``attrs`` what the source records (zarr attributes, HDF5 attributes)."""

    data: da.Array
    axes: str
    source_axes: str
    location: VolumeLocation
    attrs: dict = field(default_factory=dict)


def _hdf5_dataset(location: VolumeLocation):
    import h5py

    if not Path(location.file).is_file():
        raise VolumeError(f"{location.file}: no such HDF5 file")
    try:
        handle = h5py.File(location.file, "r")
    except OSError as error:
        raise VolumeError(f"{location.file}: not a readable HDF5 file ({error})") from None
    names: list[str] = []
    handle.visititems(lambda name, node: names.append(name) if isinstance(node, h5py.Dataset) else None)
    name = location.dataset or (HDF5_DATASET if HDF5_DATASET in names else names[0] if len(names) == 1 else None)
    if name is None or name.strip("/") not in names:
        held = ", ".join(f"/{n}" for n in names) or "none"
        asked = (
            f"dataset /{location.dataset}" if location.dataset else f"a dataset named /{HDF5_DATASET} or a single one"
        )
        raise VolumeError(f"{location.file}: no {asked} (it holds: {held}); name one as {location.file}:/DATASET")
    return handle[name.strip("/")]


def _source_array(location: VolumeLocation):
    """(dask array in the file's order, attributes, default axis order) of a volume."""
    if location.kind == "hdf5":
        dataset = _hdf5_dataset(location)
        chunks = dataset.chunks or "auto"
        array = da.from_array(dataset, chunks=chunks, lock=True, name=f"hdf5-{dask.base.tokenize(str(location))}")
        attrs = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in dataset.attrs.items()}
        return array, attrs, {3: "zyx", 4: "czyx"}.get(array.ndim)
    if location.kind == "tiff":
        import tifffile
        import zarr

        if not Path(location.file).is_file():
            raise VolumeError(f"{location.file}: no such TIFF file")
        try:
            with tifffile.TiffFile(location.file) as tiff:
                series_axes = tiff.series[0].axes.lower()
            store = tifffile.imread(location.file, aszarr=True)
        except (tifffile.TiffFileError, ValueError) as error:
            raise VolumeError(f"{location.file}: not a readable TIFF stack ({error})") from None
        array = da.from_zarr(zarr.open(store, mode="r"))
        default = {"qyx": "zyx", "iyx": "zyx", "zyx": "zyx", "zcyx": "zcyx", "qcyx": "zcyx"}.get(series_axes)
        return array, {"tiff_axes": series_axes}, default if default and len(default) == array.ndim else None
    from .volumes import open_volume

    array = open_volume(location.file)
    attrs = dict(array.attrs)
    default = attrs.get("axis_order") or {3: "xyz", 4: "cxyz"}.get(array.ndim)
    return da.from_zarr(array), attrs, default


def open_lazy(path: str | Path, axes: str | None = None) -> LazyVolume:
    """Open the volume at ``path`` (:func:`locate`) as a dask array in nisbflow's order, reading metadata only.
    ``axes``: the source's axis order (default: ``zyx`` / ``czyx`` for HDF5 and TIFF as PyTorch Connectomics writes
    them, a zarr array's ``axis_order`` or ``xyz`` / ``cxyz``)."""
    location = locate(path)
    array, attrs, default = _source_array(location)
    if array.ndim not in (3, 4):
        raise VolumeError(
            f"{location}: a {array.ndim}-D array of shape {tuple(array.shape)}; volumes are 3-D "
            "(X, Y, Z) or 4-D (C, X, Y, Z)"
        )
    source_axes = check_axes(axes or default or "", array.ndim, str(location))
    order = target_axes(array.ndim, source_axes)
    data = array.transpose([source_axes.index(a) for a in order])
    return LazyVolume(data, order, source_axes, location, attrs)


def _check_output(output: str, overwrite: bool, inputs: dict, force: bool = False) -> tuple[VolumeLocation, bool]:
    """Refuse ``output`` before any work (an input, or an existing file or store nisbflow did not write, unless
    ``force``: :func:`nisbflow.file_outputs.check_file_output`); returns its location and whether it exists."""
    from ..file_outputs import VOLUME, check_file_output
    from ..staging import check_not_input, check_replaceable

    location = locate(output)
    inputs = {role: locate(p).file for role, p in inputs.items()}
    if location.kind != "zarr":
        return location, check_file_output(location.file, VOLUME, inputs=inputs, overwrite=overwrite, force=force)
    check_not_input(location.file, inputs)
    return location, check_replaceable(location.file, None, overwrite=overwrite, force=force)  # any zarr of ours


def _output_chunks(volume: LazyVolume, chunks) -> tuple:
    spatial = tuple(int(c) for c in chunks) if chunks else (128, 128, 128)
    shape = volume.data.shape
    sizes = {"x": spatial[0], "y": spatial[1], "z": spatial[2], "c": None}
    return tuple(n if sizes[a] is None else min(sizes[a], n) for a, n in zip(volume.axes, shape))


def write_volume(
    volume: LazyVolume,
    output: str,
    *,
    layout: str = "ngff",
    chunks=None,
    overwrite: bool = False,
    force: bool = False,
    attributes: dict | None = None,
    source: str | None = None,
    progress: bool = True,
) -> VolumeLocation:
    """Write ``volume`` to ``output`` (format by its path, :func:`locate`), block by block (one output chunk read
    from the source at a time, on this process's threads): zarr in nisbflow's order (``layout`` ``ngff``: an
    OME-NGFF image group; ``plain``: the array at the store's root), HDF5 or TIFF in PyTorch Connectomics' ZYX order
    (channels first; TIFF one slab of pages at a time). ``chunks``: output chunks (X, Y, Z voxels; default 128³).
    ``attributes`` are recorded on zarr and HDF5 outputs, with the source and its axis order. An existing output
    is refused unless ``overwrite`` (and, unless ``force``, one nisbflow did not write); an interrupted write leaves
    no output."""
    from ..staging import staged_output

    check_layout(layout)
    location, overwrite = _check_output(output, overwrite, {"source": source} if source else {}, force)
    if layout == "plain" and location.kind != "zarr":
        raise ConfigError(f"--layout plain applies to zarr outputs; {location.file} is {location.kind.upper()}")
    if location.kind == "tiff" and "c" in volume.axes:
        raise ConfigError(
            f"TIFF output {location.file}: a TIFF stack holds one channel (Z, Y, X); this volume is "
            f"{volume.axes.upper()} of shape {tuple(volume.data.shape)}"
        )
    attrs = dict(attributes or {}, source=source, source_axes=volume.source_axes)
    block = _output_chunks(volume, chunks)
    with staged_output(location.file, overwrite=overwrite) as temporary:
        if location.kind == "zarr":
            target = _create_zarr(temporary, volume.data, block, volume.axes, attrs, layout)
            _copy_blocks(volume, block, lambda where, values: target.__setitem__(where, values), location, progress)
        elif location.kind == "hdf5":
            _write_hdf5(temporary, location.dataset or HDF5_DATASET, volume, block, attrs, location, progress)
        else:
            _write_tiff(temporary, volume, block, location, progress)
    return location


def _block_slices(shape, block):
    import itertools

    return [
        tuple(slice(s, min(s + b, n)) for s, b, n in zip(starts, block, shape))
        for starts in itertools.product(*(range(0, n, b) for n, b in zip(shape, block)))
    ]


def _copy_blocks(volume: LazyVolume, block, write, location, progress: bool, shape_block=None) -> None:
    """Read ``volume`` one ``block`` at a time (threads) and ``write(slices, values)`` each, with a progress bar."""
    from ..tasks import progress_bar

    slices = _block_slices(volume.data.shape, shape_block or block)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"convert → {location}", total=len(slices))
        for where in slices:
            write(where, np.asarray(volume.data[where].compute(scheduler="threads")))
            bar.advance(task)


def _create_zarr(target: str, data: da.Array, block, axes: str, attrs: dict, layout: str):
    import zarr

    from .ngff import create_image
    from .volumes import DEFAULT_VOXEL_SIZE, output_attrs

    attributes = output_attrs(
        attrs.pop("description", f"converted from {attrs.get('source')}"),
        attrs.pop("voxel_size", DEFAULT_VOXEL_SIZE),
        axes,
        **{k: v for k, v in attrs.items() if k not in ("axis_order", "multiscales")},
    )
    options = dict(shape=data.shape, chunks=block, dtype=data.dtype)
    return zarr.open_array(
        create_image(target, attributes=attributes, zarr_format=2, layout=layout, **options), mode="r+"
    )


def stored_axes(kind: str, axes: str) -> str:
    """The axis order a volume in nisbflow's ``axes`` is written in: ``axes`` for zarr, PyTorch Connectomics'
    ``zyx`` / ``czyx`` (channels first) for HDF5 and TIFF."""
    return axes if kind == "zarr" else ("czyx" if "c" in axes else "zyx")


def _zyx_order(axes: str) -> list[int]:
    """Axis permutation from nisbflow's ``axes`` to PyTorch Connectomics' ``zyx`` / ``czyx``."""
    return [axes.index(a) for a in stored_axes("hdf5", axes)]


def _hdf5_attribute(value):
    """An attribute value as HDF5 keeps it: numbers and strings as they are, a list of numbers (``voxel_size``) as
    an array, which reads back as numbers, anything else as JSON."""
    if isinstance(value, (str, int, float)):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
        return np.asarray(value)
    return json.dumps(value, default=str)


def _write_hdf5(target: str, dataset: str, volume: LazyVolume, block, attrs: dict, location, progress: bool) -> None:
    import h5py

    order = _zyx_order(volume.axes)
    shape = tuple(volume.data.shape[i] for i in order)
    from ..provenance import MARK, VOLUME

    with h5py.File(target, "w") as handle:
        handle.attrs[MARK] = VOLUME
        written = handle.create_dataset(
            dataset,
            shape=shape,
            dtype=volume.data.dtype,
            chunks=tuple(block[i] for i in order),
            compression="gzip",
            compression_opts=4,
        )
        for key, value in dict(attrs, axis_order=stored_axes("hdf5", volume.axes)).items():
            if value is not None:
                written.attrs[key] = _hdf5_attribute(value)

        def write(where, values):
            written[tuple(where[i] for i in order)] = values.transpose(order)

        _copy_blocks(volume, block, write, location, progress)


def _write_tiff(target: str, volume: LazyVolume, block, location, progress: bool) -> None:
    """ZYX pages, one z-slab of whole planes at a time (TIFF is written sequentially)."""
    import tifffile

    order = _zyx_order(volume.axes)
    slab = tuple(n if a != "z" else b for a, n, b in zip(volume.axes, volume.data.shape, block))
    from ..provenance import MARK, VOLUME

    with tifffile.TiffWriter(target, bigtiff=volume.data.nbytes > 2**31) as writer:
        first = [True]

        def write(where, values):
            for plane in values.transpose(order):
                if first[0]:  # the first page's description records that nisbflow wrote the stack
                    writer.write(plane, contiguous=True, description=json.dumps({MARK: VOLUME}), metadata=None)
                    first[0] = False
                else:
                    writer.write(plane, contiguous=True)

        _copy_blocks(volume, block, write, location, progress, shape_block=slab)


STAGED_INPUTS = ".nisbflow-inputs"
"""The folder, beside a run's output, where HDF5 and TIFF inputs are staged as zarr (:func:`zarr_input`)."""


def _source_identity(location: VolumeLocation, axes: str) -> dict:
    """What makes a staged copy of ``location`` current: the file (absolute), dataset, axis order, size and mtime."""
    import os

    stat = os.stat(location.file)
    return {
        "file": os.path.abspath(location.file),
        "dataset": location.dataset,
        "axes": axes,
        "size": int(stat.st_size),
        "mtime_ns": int(stat.st_mtime_ns),
    }


def zarr_input(
    path: str | Path, *, role: str, near: str | Path, axes: str | None = None, log=None, progress: bool = True
) -> str:
    """The zarr array a command reads for the volume ``path``: ``path`` itself when it is zarr; for an HDF5 dataset
    or TIFF stack, a copy in nisbflow's XYZ order (the source read lazily through h5py / tifffile's zarr store, one
    128³ block at a time, :func:`write_volume`), staged in :data:`STAGED_INPUTS` beside the output ``near``.

    Dask workers then read zarr chunks as for any input: every block-wise stage, its resume fingerprints and its
    checks stay as they are. The copy records the source (``staged_from``: file, dataset, axis order, size and
    mtime) and is reused while the file is unchanged; a changed file gets a new copy. ``axes``: the source's axis
    order (default ``zyx`` / ``czyx``, as PyTorch Connectomics writes; :func:`open_lazy`); for a zarr input it must
    be its own order (transpose with ``nisbflow convert``). One process stages a given copy at a time: a second is
    refused, naming the lock, instead of racing the first."""
    import hashlib
    import json

    import zarr

    from ..locks import LockedError, RunLock

    location = locate(path)
    say = log or (lambda message: None)
    if location.kind == "zarr":
        if axes is not None:
            from .volumes import open_volume

            array = open_volume(str(path), role=role)
            own = str(array.attrs.get("axis_order") or {3: "xyz", 4: "cxyz"}.get(array.ndim, "")).lower()
            if str(axes).lower() != own:
                raise ConfigError(
                    f"--axes {axes}: {role} {path} is zarr in {own.upper() or 'its stored'} order, which "
                    "nisbflow reads as it is; --axes applies to HDF5 and TIFF inputs (transpose a zarr "
                    "array with nisbflow convert --axes)"
                )
        return str(path)
    volume = open_lazy(path, axes)
    identity = _source_identity(location, volume.source_axes)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(str(near)).absolute().parent / STAGED_INPUTS
    staged = folder / f"{Path(location.file).stem}-{digest}.zarr"
    if staged.exists():
        try:
            if dict(zarr.open_array(str(staged), mode="r").attrs).get("staged_from") == identity:
                say(f"{role}: {location} ({volume.source_axes.upper()}) read from its zarr copy {staged}")
                return str(staged)
        except Exception:
            pass
        raise VolumeError(
            f"{role}: {staged}, the zarr copy of {location}, is not one nisbflow staged from this file "
            "as it is now; delete it and re-run"
        )
    folder.mkdir(parents=True, exist_ok=True)

    def locked(holder: dict, url: str) -> Exception:
        return LockedError(
            f"{role}: another run (pid {holder.get('pid', '?')} on {holder.get('host', '?')}) is "
            f"staging {location} as {staged}; re-run when it is done (or, if that run is gone, delete "
            f"{url})"
        )

    lock = RunLock(str(staged) + ".lock", locked=locked, log=say, what=f"the zarr copy of {location}")
    lock.acquire()
    try:
        if not staged.exists():  # another run may have finished it between the check above and the lock
            say(
                f"{role}: {location} is {location.kind.upper()} ({volume.source_axes.upper()}); copying it block by "
                f"block to {staged} (nisbflow's {volume.axes.upper()} order) for the workers to read"
            )
            recorded = {k: v for k, v in volume.attrs.items() if k == "voxel_size"}
            write_volume(
                volume,
                str(staged),
                layout="plain",
                attributes=dict(recorded, staged_from=identity),
                source=str(path),
                progress=progress,
            )
    finally:
        lock.release()
    return str(staged)


def staged_source(attrs) -> dict:
    """``{"input_source": ...}`` for an output whose input was staged from HDF5 or TIFF (its ``staged_from``
    record: file, dataset, axis order), else ``{}``: what an output records of where its input came from."""
    staged = dict(attrs).get("staged_from")
    return {"input_source": staged} if staged else {}


def open_labels(path: str | Path, *, role: str, axes: str | None = None):
    """A label volume ``(X, Y, Z)`` read in this process (scoring): a zarr array, or an HDF5 dataset / TIFF stack
    as a lazy dask array in nisbflow's order (``axes``: the source's, default ``zyx``; :func:`open_lazy`)."""
    from .volumes import open_volume

    if locate(path).kind == "zarr":
        return open_volume(str(path), role=role, ndims=(3,))
    volume = open_lazy(path, axes).data
    if volume.ndim != 3:
        raise VolumeError(f"{role} {path}: expected 3 dimensions (X, Y, Z), found shape {tuple(volume.shape)}")
    return volume
