"""OME-NGFF image groups: how nisbflow stores the volumes it writes, so napari-ome-zarr, neuroglancer and
``ome-zarr`` open them directly with their scale in nm.

An affinities or segmentation output ``OUT.zarr`` is an OME-NGFF image (one resolution level):

    OUT.zarr/        zarr group; attributes: nisbflow's (provenance, voxel size, ...) and the NGFF ``multiscales``
                     (NGFF 0.4 for zarr format 2, NGFF 0.5 under ``ome`` for format 3)
    OUT.zarr/0       the array itself, with the same nisbflow attributes and named axes

Axes keep nisbflow's positional XYZ order (nothing is transposed): affinities are ``c, x, y, z`` (channel, then
space), segmentations ``x, y, z``. NGFF requires space axes after the channel axis, which both satisfy, and
recommends (does not require) ``z, y, x``. The scale of each space axis is the voxel size in nm, 1 for channels.

A NISB seed's ``data.zarr`` keeps the benchmark's layout (``img`` is ``(X, Y, Z, C)``, channel last, which NGFF
forbids, and BANIS reads ``img`` and ``seg`` as arrays of that group), so it stays a plain group of two arrays
with named axes, which xarray opens.

Every nisbflow reader (:func:`nisbflow.data.volumes.open_volume`) accepts either an NGFF image group (it opens its
first resolution level) or a plain zarr array, such as outputs of nisbflow before 0.2 or another tool's arrays.
"""

from __future__ import annotations

from typing import Any, Literal

import zarr

IMAGE_LEVEL = "0"
"""Path of the full-resolution array inside an NGFF image group, as the NGFF examples and ``ome-zarr`` name it."""

NGFF_VERSION = {2: "0.4", 3: "0.5"}
"""The NGFF version written for each zarr format (NGFF 0.5 is zarr format 3 only)."""

AXIS_TYPES = {"c": "channel", "x": "space", "y": "space", "z": "space"}


def multiscales_attributes(axis_order: str, voxel_size, zarr_format: int, name: str = "") -> dict:
    """The NGFF attributes of a one-level image group whose array's axes are ``axis_order`` (e.g. ``"cxyz"``,
    ``"xyz"``) and whose space axes have ``voxel_size`` (x, y, z) nm: ``{"multiscales": [...]}`` for zarr format 2
    (NGFF 0.4), ``{"ome": {"version": "0.5", "multiscales": [...]}}`` for format 3."""
    spacing = dict(zip("xyz", (float(v) for v in voxel_size)))
    axes = [
        {"name": a, "type": AXIS_TYPES[a], **({"unit": "nanometer"} if AXIS_TYPES[a] == "space" else {})}
        for a in axis_order
    ]
    multiscale = {
        "name": name,
        "axes": axes,
        "datasets": [
            {
                "path": IMAGE_LEVEL,
                "coordinateTransformations": [{"type": "scale", "scale": [spacing.get(a, 1.0) for a in axis_order]}],
            }
        ],
    }
    version = NGFF_VERSION[zarr_format]
    if zarr_format == 2:
        return {"multiscales": [{"version": version, **multiscale}]}
    return {"ome": {"version": version, "multiscales": [multiscale]}}


LAYOUTS = ("ngff", "plain")
"""How an output volume is stored: ``ngff``, an OME-NGFF image group holding the array at ``0`` (the default), or
``plain``, the array itself at the output path, which ``zarr.open(path)[:]`` reads (BANIS's ``metrics.py``)."""


def check_layout(layout: str) -> str:
    """``layout`` if it is one of :data:`LAYOUTS`, else a one-line :class:`~nisbflow.errors.ConfigError`."""
    if layout not in LAYOUTS:
        from nisbflow.errors import ConfigError

        raise ConfigError(
            f"--layout {layout!r}: expected ngff (an OME-NGFF image group) or plain (the array at the "
            "output path, as BANIS's metrics.py reads it)"
        )
    return layout


def level_url(group: str) -> str:
    """The URL of the full-resolution array inside the NGFF image group at ``group``."""
    return f"{str(group).rstrip('/')}/{IMAGE_LEVEL}"


def output_array(target: str, layout: str = "ngff") -> str:
    """Where the array of an output created at ``target`` with ``layout`` lies: its NGFF level, or ``target``."""
    return target if layout == "plain" else level_url(target)


def image_level_path(attributes) -> str | None:
    """The path of the first (full-resolution) level of the NGFF image whose group has ``attributes``, or None
    when they are not an NGFF image's (no ``multiscales``, at the top or under ``ome``)."""
    multiscales: Any = attributes.get("multiscales") or (attributes.get("ome") or {}).get("multiscales")
    try:
        return str(multiscales[0]["datasets"][0]["path"])
    except (TypeError, LookupError):
        return None


def create_image(
    target: str, *, attributes: dict, zarr_format: Literal[2, 3], name: str = "", layout: str = "ngff", **array_options
) -> str:
    """Create (replacing whatever is there) an NGFF image group at ``target`` holding one empty array, and return
    the URL of that array for block writes; ``layout="plain"``: the array itself at ``target``, with the same
    attributes and named axes but no NGFF ``multiscales``.

    ``attributes`` are nisbflow's output attributes (:func:`~nisbflow.data.volumes.output_attrs`: they give the
    ``axis_order`` and ``voxel_size``); they go on the group and on the array, whose axes are also named for xarray
    (:func:`named_axes`). ``array_options`` go to :func:`zarr.create_array` (shape, chunks,
    dtype, compressors)."""
    if check_layout(layout) == "plain":
        zarr.create_array(
            target, zarr_format=zarr_format, overwrite=True, **named_axes(attributes, zarr_format), **array_options
        )
        return target
    ngff = multiscales_attributes(attributes["axis_order"], attributes["voxel_size"], zarr_format, name)
    group = zarr.open_group(target, mode="w", zarr_format=zarr_format)
    group.attrs.update({**attributes, **ngff})
    array = level_url(target)
    zarr.create_array(
        array, zarr_format=zarr_format, overwrite=True, **named_axes(attributes, zarr_format), **array_options
    )
    return array


def named_axes(attributes: dict, zarr_format: int) -> dict:
    """Keyword arguments for ``zarr.create_array`` that store ``attributes`` and name the array's axes from their
    ``axis_order`` (e.g. ``"cxyz"`` → c, x, y, z) where xarray looks for them: ``_ARRAY_DIMENSIONS`` in the
    attributes of a format-2 array, ``dimension_names`` in a format-3 array's metadata. Unwritten chunks read as 0
    either way."""
    names = list(attributes["axis_order"])
    if zarr_format == 2:  # no fill value: xarray would read a format-2 fill value of 0 as missing (background → NaN)
        return {"attributes": {**attributes, "_ARRAY_DIMENSIONS": names}, "fill_value": None}
    return {"attributes": attributes, "dimension_names": names, "fill_value": 0}
