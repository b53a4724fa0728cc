"""``nisbflow view``: a neuroglancer viewer over zarr volumes, read lazily, with skeleton error overlays.

Layers (all in nm, from the arrays' ``voxel_size`` attributes, axes x, y, z):

- ``image``: the EM image ``(X, Y, Z)`` or ``(X, Y, Z, 1)`` uint8;
- ``affinities``: channels 0..2 of ``(C, X, Y, Z)`` affinities as RGB (x edges red, y green, z blue);
- one segmentation layer per segmentation ``(X, Y, Z)``, and ``ground truth``;
- ``skeleton``: every skeleton node as a point, coloured by its skeleton's error type in ``evaluate`` (merged red,
  split orange, correct green, without a type grey);
- ``worst errors``: the worst mergers and splits (lowest run length), one point each at the skeleton's first node,
  described, to jump to from the annotation list: a proofreading view.

Chunks are served by neuroglancer's own Python server from the zarr arrays as the browser asks for them; nothing
is loaded whole.
"""

from __future__ import annotations

import json
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ERROR_COLOURS = {"merged": "#ff3030", "split": "#ffa000", "correct": "#30d040", None: "#a0a0a0"}
"""Annotation colour per skeleton error type (``None``: no type known)."""

WORST_ERRORS = 10
"""Mergers and splits each listed in the ``worst errors`` layer."""


class _Spatial:
    """An ``(X, Y, Z, 1)`` image seen as ``(X, Y, Z)``; slicing reads only the asked region."""

    def __init__(self, array):
        self.array = array
        self.shape = tuple(array.shape[:3])
        self.dtype = np.dtype(array.dtype)
        self.ndim = 3

    def __getitem__(self, index):
        return np.asarray(self.array[tuple(index) + (0,)])


class _ShortRange:
    """Channels 0..2 of ``(C, X, Y, Z)`` affinities as float32 (neuroglancer has no float16)."""

    def __init__(self, array):
        self.array = array
        self.shape = (3,) + tuple(array.shape[1:])
        self.dtype = np.dtype("float32")
        self.ndim = 4

    def __getitem__(self, index):
        channels, *spatial = index
        start, stop, _ = channels.indices(3)
        return np.asarray(self.array[(slice(start, stop),) + tuple(spatial)], dtype=np.float32)


RGB_SHADER = """void main() {
  emitRGB(vec3(getDataValue(0), getDataValue(1), getDataValue(2)));
}"""

IFRAME_HEIGHT = 600
"""Height in pixels of the viewer shown inline in a notebook."""

POINT_SHADER = """void main() {
  setColor(prop_colour());
  setPointMarkerSize(6.0);
}"""


@dataclass
class View:
    """A running viewer: its ``url``, the neuroglancer ``viewer``, and the served volumes by layer name."""

    viewer: Any  # a neuroglancer.Viewer (imported where a viewer starts)
    volumes: dict = field(default_factory=dict)
    nodes: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.viewer.get_viewer_url()

    def _repr_html_(self) -> str:
        """In Jupyter: the viewer itself, inline (an iframe on neuroglancer's local server), and a link to open it
        in a browser tab. The server must be reachable from the browser: over SSH, forward its port."""
        return (
            f'<iframe src="{self.url}" width="100%" height="{IFRAME_HEIGHT}" style="border: none"></iframe>'
            f'<div><a href="{self.url}" target="_blank">open the viewer in a new tab</a> ({self.url})</div>'
        )

    def chunk_url(self, layer: str, start, end) -> str:
        """Where neuroglancer's server serves the voxels ``start``..``end`` (layer axes) of a layer at full
        resolution, npz-encoded: what the browser fetches."""
        base = self.url.split("/v/")[0]
        key = f"{self.viewer.token}.{self.volumes[layer].token}"
        ones = ",".join("1" for _ in start)
        return (
            f"{base}/neuroglancer/npz/{key}/{ones}/{','.join(str(int(v)) for v in start)}/"
            f"{','.join(str(int(v)) for v in end)}"
        )


def skeleton_points(arrays, error_type: dict) -> list[tuple[int, np.ndarray, str | None]]:
    """``(node id, voxel position (x, y, z), error type of its skeleton)`` for every node of a skeleton's
    :class:`~nisbflow.data.skeleton.SkeletonArrays`."""
    types = {int(k): v for k, v in error_type.items()}
    return [
        (int(node), position, types.get(int(label)))
        for node, position, label in zip(arrays.nodes, arrays.index_position, arrays.id)
    ]


def _volume(source, role: str, ndims: tuple[int, ...]):
    """A zarr array opened lazily from a path or URL (an NGFF image group opens its full resolution), or an
    in-memory array (numpy, or anything ``np.asarray`` reads, such as a dask array of a crop) checked for rank."""
    from nisbflow.data.volumes import check_volume, open_volume

    if isinstance(source, (str, Path)):
        return open_volume(source, role=role, ndims=ndims)
    array = source if hasattr(source, "attrs") else np.asarray(source)
    check_volume(array.shape, array.dtype, "(in memory)", role=role, ndims=ndims)
    return array


def view(
    image=None,
    *,
    affinities=None,
    segmentations=(),
    ground_truth=None,
    skeleton=None,
    metrics=None,
    voxel_size=None,
    bind: str = "127.0.0.1",
    port: int = 0,
) -> View:
    """Start a neuroglancer viewer on the given volumes and return it (see the module docstring); in Jupyter the
    returned :class:`View` shows the viewer inline.

    Volumes are zarr arrays (paths or URLs, read lazily) or in-memory arrays (numpy; a crop in a notebook), axes
    ``(X, Y, Z[, C])`` for the image and segmentations, ``(C, X, Y, Z)`` for affinities. ``segmentations``: each a
    layer named after its file (``segmentation``, ``segmentation 2``, … in memory). ``skeleton``: a NISB skeleton
    file or networkx graph; its nodes are coloured by ``metrics`` (``evaluate --json`` output, with ``error_type``
    and ``per_skeleton_erl``), else by evaluating the first segmentation. ``voxel_size``: (x, y, z) nm, by default
    from the first volume's attributes (NISB's 9 × 9 × 20 for in-memory arrays). ``bind``/``port``: where
    neuroglancer's server listens (0: any free port).
    """
    import neuroglancer

    from nisbflow.data.volumes import DEFAULT_VOXEL_SIZE, voxel_size_of

    arrays = {}
    if image is not None:
        arrays["image"] = _volume(image, "image", (3, 4))
    if affinities is not None:
        arrays["affinities"] = _volume(affinities, "affinities", (4,))
    names = []
    for number, path in enumerate(segmentations, start=1):
        name = (
            str(path).rstrip("/").rsplit("/", 1)[-1]
            if isinstance(path, (str, Path))
            else "segmentation" + (f" {number}" if number > 1 else "")
        )
        arrays[name] = _volume(path, "segmentation", (3,))
        names.append(name)
    if ground_truth is not None:
        arrays["ground truth"] = _volume(ground_truth, "ground truth", (3,))
    if not arrays:
        from nisbflow.errors import ConfigError

        raise ConfigError("nisbflow view: give at least one volume (an image, affinities or a segmentation)")
    spatial_shapes = {name: tuple(a.shape[1:] if name == "affinities" else a.shape[:3]) for name, a in arrays.items()}
    if len(set(spatial_shapes.values())) > 1:
        from nisbflow.errors import VolumeError

        shown = ", ".join(f"{name} {'×'.join(map(str, shape))}" for name, shape in spatial_shapes.items())
        raise VolumeError(
            f"nisbflow view: the volumes are not of one shape (X, Y, Z): {shown}; each layer would "
            "cover another extent and nothing would line up (crop them to one region first)"
        )
    first = next(iter(arrays.values()))
    voxel_size = (
        tuple(float(v) for v in voxel_size)
        if voxel_size is not None
        else voxel_size_of(first)
        if hasattr(first, "attrs")
        else DEFAULT_VOXEL_SIZE
    )
    space = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm", scales=list(voxel_size))
    neuroglancer.set_server_bind_address(bind, port)
    result = View(neuroglancer.Viewer())
    with result.viewer.txn() as state:
        state.dimensions = space
        for name, array in arrays.items():
            if name == "image":
                data = _Spatial(array) if array.ndim == 4 else array
                volume = neuroglancer.LocalVolume(data=data, dimensions=space, volume_type="image")
                state.layers[name] = neuroglancer.ImageLayer(source=volume)
            elif name == "affinities":
                channel_space = neuroglancer.CoordinateSpace(
                    names=["c^", "x", "y", "z"], units=["", "nm", "nm", "nm"], scales=[1] + list(voxel_size)
                )
                volume = neuroglancer.LocalVolume(
                    data=_ShortRange(array), dimensions=channel_space, volume_type="image"
                )
                state.layers.append(
                    name=name, layer=neuroglancer.ImageLayer(source=volume, shader=RGB_SHADER), visible=False
                )
            else:
                volume = neuroglancer.LocalVolume(data=array, dimensions=space, volume_type="segmentation")
                state.layers[name] = neuroglancer.SegmentationLayer(source=volume)
            result.volumes[name] = volume
        if skeleton is not None:
            _add_skeleton(state, result, skeleton, metrics, arrays[names[0]] if names else None, space)
        shape = next(iter(arrays.values())).shape
        spatial = shape[1:] if "affinities" in arrays and len(arrays) == 1 else shape[:3]
        state.position = [s // 2 for s in spatial]
        state.cross_section_scale = max(spatial[:2]) / 250  # voxels per screen pixel: the x-y extent fits a panel
    return result


def read_metrics(path) -> dict:
    """A metrics JSON of ``nisbflow evaluate --json``, checked: one line naming the file when it does not parse, is
    not a JSON object, or lacks the per-skeleton ``error_type`` and ``per_skeleton_erl`` maps the viewer colours by."""
    from nisbflow.errors import ConfigError

    try:
        recorded = json.loads(Path(path).read_text())
    except ValueError as error:
        raise ConfigError(
            f"--metrics {path} is not valid JSON ({error}); was it cut? write it again with nisbflow evaluate --json"
        ) from None
    if not isinstance(recorded, dict):
        raise ConfigError(
            f"--metrics {path} holds a JSON {type(recorded).__name__}, not the object nisbflow evaluate --json writes"
        )
    for key in ("error_type", "per_skeleton_erl"):
        if not isinstance(recorded.get(key), dict):
            raise ConfigError(
                f"--metrics {path} has no '{key}' map of skeleton ids; expected the JSON of nisbflow evaluate --json"
            )
    return recorded


def _add_skeleton(state, result: View, skeleton, metrics, segmentation, space) -> None:
    import neuroglancer

    from nisbflow.data.skeleton import load_skeleton, skeleton_arrays

    graph = skeleton if hasattr(skeleton, "nodes") else load_skeleton(skeleton)  # a graph, or a file
    if metrics is not None:
        recorded = dict(metrics) if isinstance(metrics, dict) else read_metrics(metrics)
        error_type, run_length = recorded.get("error_type", {}), recorded.get("per_skeleton_erl", {})
    elif segmentation is not None:
        from nisbflow.evaluate import nerl

        evaluated = nerl(segmentation, graph)
        error_type, run_length = evaluated.error_type, evaluated.per_skeleton_erl
    else:
        error_type, run_length = {}, {}
    arrays = skeleton_arrays(graph)
    result.nodes = skeleton_points(arrays, error_type)
    colour = neuroglancer.AnnotationPropertySpec(id="colour", type="rgb", default="#a0a0a0")
    points = [
        neuroglancer.PointAnnotation(
            id=str(node), point=position.tolist(), props=[ERROR_COLOURS.get(kind, ERROR_COLOURS[None])]
        )
        for node, position, kind in result.nodes
    ]
    state.layers["skeleton"] = neuroglancer.LocalAnnotationLayer(
        dimensions=space, annotation_properties=[colour], annotations=points, shader=POINT_SHADER
    )
    first_node: dict = {}
    for label, position in zip(arrays.id, arrays.index_position):
        first_node.setdefault(int(label), position)
    worst = []
    for kind in ("merged", "split"):
        chosen = sorted((s for s, k in error_type.items() if k == kind), key=lambda s: run_length.get(s, 0.0))
        for s in chosen[:WORST_ERRORS]:
            if int(s) in first_node:
                worst.append(
                    neuroglancer.PointAnnotation(
                        id=f"{kind}-{s}",
                        point=first_node[int(s)].tolist(),
                        props=[ERROR_COLOURS[kind]],
                        description=f"{'merger' if kind == 'merged' else 'split'}: skeleton {s}, run length "
                        f"{float(run_length.get(s, 0.0)) / 1000:.2f} µm",
                    )
                )
    state.layers["worst errors"] = neuroglancer.LocalAnnotationLayer(
        dimensions=space, annotation_properties=[colour], annotations=worst, shader=POINT_SHADER
    )
