"""Real LocalClusters: the dashboard serves nisbflow's task names over HTTP; GPU resources reach prediction tasks."""

import urllib.request

import numpy as np
from nisbflow.data.volumes import array_url


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200, url
        return response.read().decode()


def test_dashboard_status_page_and_task_names_after_a_decode(tmp_path):
    import dask.array as da
    from dask.distributed import Client, LocalCluster

    from nisbflow.decode import decode_affinity_cc

    affinities = np.random.default_rng(0).random((3, 64, 64, 32)).astype(np.float32)
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                      local_directory=str(tmp_path)) as cluster, Client(cluster) as client:
        segmentation = decode_affinity_cc(da.from_array(affinities, chunks=(3, 32, 32, 32)), 0.5).compute()
        assert segmentation.max() > 0
        base = client.dashboard_link.rsplit("/", 1)[0]
        assert base.startswith("http://127.0.0.1:")
        status = fetch(f"{base}/status")
        assert "<title>Dask Diagnostic UI</title>" in status and "bokeh" in status.lower()
        # the status page's plots stream over a Bokeh websocket; the same scheduler state (per task prefix) is
        # served as text on the dashboard's Prometheus endpoint
        metrics = fetch(f"{base}/metrics")
        for name in ("decode-label-block", "decode-face-pairs", "decode-merge-equivalences"):
            assert f'task_prefix_name="{name}"' in metrics, name


def test_workers_declaring_a_gpu_resource_make_prediction_tasks_ask_for_it():
    from dask.distributed import Client, LocalCluster

    from nisbflow.cluster import cluster_device

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as plain, \
            Client(plain) as client:
        assert cluster_device(client) is None
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                      resources={"GPU": 1}) as gpus, Client(gpus) as client:
        assert cluster_device(client) == "cuda"
        from nisbflow.infer.device import gpu_annotations

        assert gpu_annotations(cluster_device(client)) == {"resources": {"GPU": 1}}


def test_the_device_is_decided_once_the_first_worker_joined():
    """A cluster with no worker yet (SLURM jobs in the queue) once answered "no GPU" at once, so prediction tasks on
    GPU workers joining later carried no GPU resource and ran a block per thread on one GPU."""
    import threading

    from dask.distributed import Client, LocalCluster

    from nisbflow.cluster import cluster_device

    with LocalCluster(n_workers=0, threads_per_worker=4, processes=False, dashboard_address=None,
                      resources={"GPU": 1}) as later, Client(later) as client:
        assert not client.scheduler_info()["workers"]
        threading.Timer(1.0, later.scale, args=(1,)).start()
        assert cluster_device(client) == "cuda"


def test_small_workers_keep_memory_trimming(monkeypatch):
    from nisbflow.cluster import _allocator_environment

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    unset = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    assert _allocator_environment("auto") == unset and _allocator_environment("4GiB") == unset
    assert _allocator_environment("1GiB") == {} and _allocator_environment(2**30) == {}
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert _allocator_environment("4GiB") == {}


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_fixed_dashboard_address_is_used_and_its_link_is_the_real_one():
    from nisbflow.cluster import cluster_client, dashboard_link

    port = _free_port()
    address = f"127.0.0.1:{port}"
    with cluster_client("local", n_workers=1, processes=False, dashboard_address=address) as client:
        assert dashboard_link(client, address) == f"http://127.0.0.1:{port}/status"
        assert "Dask Diagnostic UI" in fetch(dashboard_link(client, address))
        assert dashboard_link(client, f":{port}") == client.dashboard_link  # every interface: distributed's link


def test_the_cluster_defaults_to_dask_scheduler_address(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import zarr
    from dask.distributed import Client, LocalCluster

    from nisbflow.cluster import chosen_cluster
    from nisbflow.config import load_config

    config = load_config(None, [])
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert chosen_cluster(None, config) == "local" and chosen_cluster("sync", config) == "sync"
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://10.0.0.1:8786")
    assert chosen_cluster(None, config) == "tcp://10.0.0.1:8786" and chosen_cluster("sync", config) == "sync"

    affinities = np.full((3, 16, 16, 16), 0.9, dtype=np.float32)
    zarr.create_array(str(tmp_path / "aff.zarr"), shape=affinities.shape, chunks=(3, 8, 8, 8),
                      dtype="float32")[...] = affinities
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        environment = {**os.environ, "DASK_SCHEDULER_ADDRESS": cluster.scheduler_address}
        result = subprocess.run([str(Path(sys.executable).with_name("nisbflow")), "decode", str(tmp_path / "aff.zarr"),
                                 str(tmp_path / "seg.zarr")], capture_output=True, text=True, env=environment,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        assert f"Dask dashboard: {client.dashboard_link}" in result.stdout  # the stack's scheduler, not a new one
        processed = client.run_on_scheduler(
            lambda dask_scheduler: sorted(p for p in dask_scheduler.task_prefixes if p.startswith("decode")))
        assert "decode-label-block" in processed
    assert zarr.open_array(array_url(str(tmp_path / "seg.zarr")))[...].max() == 1


def test_a_tls_scheduler_from_dask_configuration(tmp_path):
    """Dask TLS for multi-node set-ups: a scheduler that only speaks TLS with certificates; nisbflow connects with
    `--cluster tls://…` and the certificate files named in Dask's configuration (here its environment variables),
    and is refused in one line without them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import zarr
    from dask.distributed import LocalCluster
    from distributed.security import Security

    security = Security.temporary()  # a throw-away CA and certificate (PEM text), as a lab's would be files
    files = {}
    for name, text in (("ca", security.tls_ca_file), ("cert", security.tls_client_cert),
                       ("key", security.tls_client_key)):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text(text)
    zarr.create_array(str(tmp_path / "aff.zarr"), shape=(3, 8, 8, 8), chunks=(3, 8, 8, 8),
                      dtype="float32")[...] = np.full((3, 8, 8, 8), 0.9, dtype=np.float32)
    nisbflow = str(Path(sys.executable).with_name("nisbflow"))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls://", security=security,
                      dashboard_address=":0") as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        plain = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
        refused = subprocess.run([nisbflow, "decode", str(tmp_path / "aff.zarr"), str(tmp_path / "no.zarr"),
                                  "--cluster", address], capture_output=True, text=True, env=plain, timeout=120)
        assert refused.returncode == 2 and "without TLS certificates" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        with_tls = {**plain, "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(files["ca"]),
                    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(files["cert"]),
                    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(files["key"])}
        result = subprocess.run([nisbflow, "decode", str(tmp_path / "aff.zarr"), str(tmp_path / "seg.zarr"),
                                 "--cluster", address], capture_output=True, text=True, env=with_tls, timeout=120)
        assert result.returncode == 0, result.stderr
    assert zarr.open_array(array_url(str(tmp_path / "seg.zarr")))[...].max() == 1


def test_a_closed_dashboard_tab_logs_nothing_while_a_command_holds_its_cluster():
    """What the dashboard's web server logs when a browser tab closes mid-update (tornado's WebSocketClosedError,
    bokeh's "connection was closed") is dropped while nisbflow holds the cluster; other errors are kept."""
    import logging

    from tornado.websocket import WebSocketClosedError

    from nisbflow.cluster import cluster_client

    class Kept(logging.Handler):
        messages: list = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    loggers = [logging.getLogger("tornado.application"), logging.getLogger("bokeh.server.views.ws")]
    handler = Kept()
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)

    def closed_tab():
        try:
            raise WebSocketClosedError()
        except WebSocketClosedError:
            loggers[0].exception("Uncaught exception in /status/ws")
        loggers[1].warning("Failed sending message as connection was closed")
        loggers[0].error("a real error")

    try:
        with cluster_client("local", n_workers=1, processes=False, dashboard_address=None):
            closed_tab()
        assert handler.messages == ["a real error"]
        handler.messages.clear()
        closed_tab()  # outside a command's cluster, logging is left as it was
        assert handler.messages == ["Uncaught exception in /status/ws",
                                    "Failed sending message as connection was closed", "a real error"]
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)


def _listening(pids) -> set:
    import psutil

    found = set()
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except psutil.Error:
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    return found


def test_a_cluster_nisbflow_starts_listens_on_this_machine_only_by_default():
    """The dashboard, the scheduler and the workers of a LocalCluster with nisbflow's defaults (its configuration's
    system.dashboard_address) listen on the loopback interface only; the printed link says so truthfully."""
    import os
    import urllib.parse

    import psutil

    from nisbflow.cluster import cluster_from_config, dashboard_link
    from nisbflow.config import load_config

    config = load_config(None, [])
    assert config.system.dashboard_address == "127.0.0.1:0"
    with cluster_from_config(config, "local", n_workers=2, memory_limit="1GiB") as client:
        client.wait_for_workers(2)
        link = dashboard_link(client, config.system.dashboard_address)
        pids = [os.getpid()] + [child.pid for child in psutil.Process().children(recursive=True)]
        sockets = _listening(pids)
        port = urllib.parse.urlparse(link).port
        assert link.startswith("http://127.0.0.1:") and ("127.0.0.1", port) in sockets
        assert "Dask Diagnostic UI" in fetch(link)
        assert len(sockets) >= 4  # the dashboard, the scheduler and each worker at least
        assert {ip for ip, _ in sockets} <= {"127.0.0.1", "::1"}, sockets
