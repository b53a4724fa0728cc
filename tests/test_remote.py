"""Remote stores end to end: synth → synth-affinities → infer → decode → evaluate with every input and output on a
real S3 server (moto's server mode on a local port; s3fs speaks HTTP to it as to AWS), equal to the same work done
on local copies."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from nisbflow.data.volumes import array_url

NISBFLOW = str(Path(sys.executable).with_name("nisbflow"))


@pytest.fixture
def s3_server(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    environment = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "lab",
                   "AWS_SECRET_ACCESS_KEY": "lab", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    filesystem = s3fs.S3FileSystem()
    filesystem.mkdir("lab")
    yield filesystem
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def nisbflow(*arguments, cwd):
    result = subprocess.run([NISBFLOW, *arguments], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (arguments, result.stdout[-2000:], result.stderr[-2000:])
    return result


@pytest.mark.slow  # about a minute with a moto S3 server; `make test-slow` runs it (memory:// and file:// in default)
def test_the_pipeline_on_s3_equals_the_same_work_on_local_copies(s3_server, tmp_path):
    from nisbflow.decode import decode_to_zarr
    from nisbflow.evaluate import nerl
    from nisbflow.synth import synthesize_seed
    from nisbflow.synth.affinities import write_noisy_affinities

    nisbflow("synth", "s3://lab/seed", "--shape", "64,64,32", "--chunks", "32,32,16", "--seed", "4", cwd=tmp_path)
    nisbflow("synth-affinities", "s3://lab/seed/data.zarr/seg", "s3://lab/noisy.zarr", cwd=tmp_path)
    nisbflow("infer", "s3://lab/seed/data.zarr/img", "s3://lab/pred.zarr", "--checkpoint", "nisb-tiny-synthetic",
             "--chunks", "32,32,32", "--workers", "1", cwd=tmp_path)
    nisbflow("decode", "s3://lab/pred.zarr", "s3://lab/seg.zarr", "--workers", "1", cwd=tmp_path)
    nisbflow("evaluate", "s3://lab/seg.zarr", "--skeleton", "s3://lab/seed/skeleton.pkl", "--json",
             str(tmp_path / "metrics.json"), cwd=tmp_path)
    assert sorted(p.rsplit("/", 1)[-1] for p in s3_server.ls("lab")) == ["noisy.zarr", "pred.zarr", "seed",
                                                                          "seg.zarr"]  # no staging left behind

    def remote(name):
        return zarr.open_array(array_url(f"s3://lab/{name}"), mode="r")[...]

    local = tmp_path / "local"
    synthesize_seed(local / "seed", (64, 64, 32), seed=4, chunks=(32, 32, 16), progress=False)
    for name in ("img", "seg"):
        assert np.array_equal(remote(f"seed/data.zarr/{name}"), zarr.open_array(str(local / "seed/data.zarr" / name))[...])
    write_noisy_affinities(local / "seed/data.zarr/seg", local / "noisy.zarr", progress=False)
    assert np.array_equal(remote("noisy.zarr"), zarr.open_array(array_url(str(local / "noisy.zarr")))[...])
    prediction = remote("pred.zarr")
    assert prediction.shape == (3, 64, 64, 32) and prediction.dtype == np.float16 and 0 <= prediction.min()
    zarr.create_array(str(local / "pred.zarr"), shape=prediction.shape, chunks=(3, 32, 32, 32),
                      dtype=prediction.dtype, attributes=dict(zarr.open_array(array_url("s3://lab/pred.zarr")).attrs))[...] = \
        prediction
    decode_to_zarr(str(local / "pred.zarr"), str(local / "seg.zarr"), thresholds=(0.7,), progress=False)
    segmentation = remote("seg.zarr")
    assert np.array_equal(segmentation, zarr.open_array(array_url(str(local / "seg.zarr")))[...]) and segmentation.max() > 1
    result = nerl(zarr.open_array(array_url(str(local / "seg.zarr"))), str(local / "seed" / "skeleton.pkl"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["nerl"] == pytest.approx(result.nerl, abs=1e-12) and 0 < metrics["nerl"] <= 1
