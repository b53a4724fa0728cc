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
from nisbflow.data.volumes import array_url

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
    assert np.array_equal(served(shown.chunk_url("seg.zarr", start, end)), zarr.open_array(array_url(str(root / "seg.zarr")))[region])
    assert np.array_equal(served(shown.chunk_url("ground truth", start, end)),
                          zarr.open_array(str(root / "seed/data.zarr/seg"))[region])
    affinities = served(shown.chunk_url("affinities", (0,) + start, (3,) + end))
    assert affinities.dtype == np.float32
    assert np.array_equal(affinities, zarr.open_array(array_url(str(root / "aff.zarr")))[(slice(0, 3),) + region].astype(np.float32))

    # every node, coloured by its skeleton's error type as an independent evaluation finds it
    graph = load_skeleton(root / "seed/skeleton.pkl")
    error_type = nerl(zarr.open_array(array_url(str(root / "seg.zarr"))), graph).error_type
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


def _devtools(port: int, url: str, seconds: float) -> tuple[bytes, list[str]]:
    """Drive a headless chromium over its DevTools protocol: open ``url``, let it draw for ``seconds`` (neuroglancer
    renders over a websocket after load, which a plain ``--screenshot`` does not wait for), and return a PNG
    screenshot and the console errors."""
    import asyncio
    import base64
    import json

    from tornado.websocket import websocket_connect

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
        page = next(t for t in json.loads(response.read()) if t["type"] == "page")

    async def drive():
        connection = await websocket_connect(page["webSocketDebuggerUrl"], max_message_size=64 * 2**20)
        errors, replies, counter = [], {}, iter(range(1, 10**6))

        async def call(method, **params):
            number = next(counter)
            connection.write_message(json.dumps({"id": number, "method": method, "params": params}))
            while number not in replies:
                message = json.loads(await connection.read_message())
                if message.get("method") == "Runtime.exceptionThrown":
                    errors.append(message["params"]["exceptionDetails"].get("text", "exception"))
                elif message.get("method") == "Runtime.consoleAPICalled" and message["params"]["type"] == "error":
                    errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in
                                           message["params"]["args"]))
                elif "id" in message:
                    replies[message["id"]] = message
            return replies[number].get("result", {})

        await call("Runtime.enable")
        await call("Page.enable")
        await call("Page.navigate", url=url)
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:  # keep reading events while it draws
            await call("Runtime.evaluate", expression="1")
            await asyncio.sleep(0.5)
        shot = await call("Page.captureScreenshot", format="png")
        connection.close()
        return base64.b64decode(shot["data"]), errors

    return asyncio.run(drive())


@pytest.mark.slow
def test_the_segmentation_renders_in_a_real_headless_browser(evaluated, tmp_path):
    """chromium (Debian's package) loads the viewer and draws the segmentation: the screenshot is not blank and
    shows many segment colours, and the page logs no console errors. NISBFLOW_VIEW_SCREENSHOT=path keeps the PNG."""
    import os
    import shutil
    import socket

    from matplotlib.image import imread

    from nisbflow.view import view

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed: apt-get install chromium (see docs/view.md)")
    root = evaluated
    shown = view(str(root / "seed/data.zarr/img"), segmentations=[str(root / "seg.zarr")],
                 skeleton=str(root / "seed/skeleton.pkl"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([browser, "--headless=new", "--no-sandbox", f"--remote-debugging-port={port}",
                                "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--window-size=1200,800",
                                f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        png, errors = _devtools(port, shown.url, seconds=20)
    finally:
        process.terminate()
        process.wait(timeout=30)
    (tmp_path / "view.png").write_bytes(png)
    pixels = imread(tmp_path / "view.png")[..., :3]
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert pixels.std() > 0.05 and len(colours) > 200, len(colours)  # drawn, not a blank page
    assert not errors, errors
    if os.environ.get("NISBFLOW_VIEW_SCREENSHOT"):
        shutil.copy(tmp_path / "view.png", os.environ["NISBFLOW_VIEW_SCREENSHOT"])
