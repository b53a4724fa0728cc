"""nisbflow view: a real neuroglancer server over real zarr stores; the chunks it serves equal the stores, and the
skeleton layer colours every node by its skeleton's error type as evaluate finds it."""

import io
import signal
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import zarr

pytest.importorskip("neuroglancer")  # the `view` extra; part of the dev extra, so the suite always runs this


def served(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response:
        return np.load(io.BytesIO(zlib.decompress(response.read())))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from nisbflow.decode import decode_to_zarr
    from nisbflow.synth import synthesize_seed
    from nisbflow.synth.affinities import write_noisy_affinities

    root = tmp_path_factory.mktemp("view")
    synthesize_seed(root / "seed", (64, 64, 32), seed=9, chunks=(32, 32, 16), progress=False)
    write_noisy_affinities(root / "seed/data.zarr/seg", root / "aff.zarr", noise=0.15, progress=False)
    decode_to_zarr(str(root / "aff.zarr"), str(root / "seg.zarr"), thresholds=(0.5,), progress=False)
    return root


def test_the_viewer_serves_the_stores_and_colours_nodes_by_error_type(evaluated):
    from nisbflow.data import load_skeleton
    from nisbflow.evaluate import nerl
    from nisbflow.view import ERROR_COLOURS, view

    root = evaluated
    shown = view(str(root / "seed/data.zarr/img"), affinities=str(root / "aff.zarr"),
                 segmentations=[str(root / "seg.zarr")], ground_truth=str(root / "seed/data.zarr/seg"),
                 skeleton=str(root / "seed/skeleton.pkl"))
    with urllib.request.urlopen(shown.url, timeout=30) as page:
        assert page.status == 200
    layers = [layer.name for layer in shown.viewer.state.layers]
    assert layers == ["image", "affinities", "seg.zarr", "ground truth", "skeleton", "worst errors"]
    dimensions = shown.viewer.state.dimensions  # neuroglancer keeps SI units: the seed's 9 × 9 × 20 nm in metres
    assert list(dimensions.names) == ["x", "y", "z"] and np.allclose(dimensions.scales, [9e-9, 9e-9, 20e-9])
    region = (slice(32, 64), slice(0, 32), slice(16, 32))
    start, end = (32, 0, 16), (64, 32, 32)
    assert np.array_equal(served(shown.chunk_url("image", start, end)),
                          zarr.open_array(str(root / "seed/data.zarr/img"))[region + (0,)])
    assert np.array_equal(served(shown.chunk_url("seg.zarr", start, end)), zarr.open_array(str(root / "seg.zarr"))[region])
    assert np.array_equal(served(shown.chunk_url("ground truth", start, end)),
                          zarr.open_array(str(root / "seed/data.zarr/seg"))[region])
    affinities = served(shown.chunk_url("affinities", (0,) + start, (3,) + end))
    assert affinities.dtype == np.float32
    assert np.array_equal(affinities, zarr.open_array(str(root / "aff.zarr"))[(slice(0, 3),) + region].astype(np.float32))

    # every node, coloured by its skeleton's error type as an independent evaluation finds it
    graph = load_skeleton(root / "seed/skeleton.pkl")
    error_type = nerl(zarr.open_array(str(root / "seg.zarr")), graph).error_type
    assert {"merged", "correct"} <= set(error_type.values())  # noisy enough to show more than one colour
    points = {a.id: a for a in shown.viewer.state.layers["skeleton"].annotations}
    assert len(points) == graph.number_of_nodes()
    for node, attributes in graph.nodes(data=True):
        point = points[str(node)]
        assert list(point.point) == [float(v) for v in attributes["index_position"]]
        assert point.props[0] == ERROR_COLOURS[error_type.get(attributes["id"])]  # None: a skeleton without edges
    worst = shown.viewer.state.layers["worst errors"].annotations
    mergers = [s for s, kind in error_type.items() if kind == "merged"]
    assert len([a for a in worst if a.id.startswith("merged-")]) == min(len(mergers), 10)
    assert all(a.description.startswith(("merger: skeleton", "split: skeleton")) for a in worst)


def test_the_view_command_prints_its_link_serves_and_stops_on_ctrl_c(evaluated):
    root = evaluated
    process = subprocess.Popen([str(Path(sys.executable).with_name("nisbflow")), "view",
                                str(root / "seed/data.zarr/img"), "--seg", str(root / "seg.zarr"), "--skeleton",
                                str(root / "seed/skeleton.pkl")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline, url = time.monotonic() + 120, None
    while url is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("neuroglancer: http://127.0.0.1:"):
            url = line.split()[1]
    assert url, process.stderr.read()
    with urllib.request.urlopen(url, timeout=30) as page:
        assert page.status == 200 and b"neuroglancer" in page.read().lower()
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and "viewer stopped" in out
