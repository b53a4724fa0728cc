"""Real LocalClusters: the dashboard serves nisbflow's task names over HTTP; GPU resources reach prediction tasks."""

import urllib.request

import numpy as np


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
        from nisbflow.infer.blockwise import _gpu_annotations

        assert _gpu_annotations(cluster_device(client)) == {"resources": {"GPU": 1}}


def test_small_workers_keep_memory_trimming(monkeypatch):
    from nisbflow.cluster import _allocator_environment

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    unset = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    assert _allocator_environment("auto") == unset and _allocator_environment("4GiB") == unset
    assert _allocator_environment("1GiB") == {} and _allocator_environment(2**30) == {}
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert _allocator_environment("4GiB") == {}
