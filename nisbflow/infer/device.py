"""Where prediction runs and how much it may hold: whether the workers have a GPU, the batch of windows that fits a
CPU worker's memory (:mod:`nisbflow.infer.memory`), the GPU resource annotation of prediction tasks, and compiling
the network on every worker before the first block.
"""

from __future__ import annotations

import dask

from nisbflow.infer.windows import WindowSettings, warm_up


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def runs_on_cpu(device: str | None) -> bool:
    """Whether prediction tasks will run on a CPU: ``device`` when given, else whether no worker of the current
    client (or, without one, this process) sees a GPU."""
    if device is not None:
        return not device.startswith("cuda")
    from nisbflow.tasks import current_client

    client = current_client()
    if client is None:
        return not _cuda_available()
    answers = client.run(_cuda_available, on_error="return")
    for address, answer in answers.items():
        if isinstance(answer, BaseException):
            from nisbflow.tasks import WorkerDiedError, worker_memory_limit

            raise WorkerDiedError(
                f"Dask worker {address} failed while importing torch to look for a GPU "
                f"({type(answer).__name__}: {answer}); with {worker_memory_limit(client, address)} "
                "this is usually its memory: torch alone needs about 0.45 GiB per worker before "
                "any block, so give workers more memory (--memory-limit, system.memory_limit)"
            )
    return not any(answers.values())


def fit_to_memory(
    settings: WindowSettings,
    model_config,
    block_shape,
    n_channels: int,
    device: str | None,
    log,
    threads: int | None = None,
) -> WindowSettings:
    """On a CPU: ``settings`` with the largest ``sw_batch_size`` (at most the configured one) whose task (its sums
    over ``block_shape``, a unit's footprint) fits the
    workers' memory (:mod:`nisbflow.infer.memory`), saying so through ``log`` when it is lowered; refused with the
    numbers when one window does not fit. On a GPU: ``settings`` as they are."""
    if not runs_on_cpu(device):
        return settings
    from dataclasses import replace

    from dask.utils import format_bytes

    from nisbflow.infer.memory import fit_batch
    from nisbflow.tasks import current_client, memory_per_task

    limit, where = memory_per_task(current_client(), threads)
    estimate = fit_batch(model_config, settings.window, block_shape, n_channels, settings.sw_batch_size, limit, where)
    if estimate.batch == settings.sw_batch_size:
        log(
            f"inference: about {format_bytes(estimate.total)} per prediction task on the CPU (network "
            f"{format_bytes(estimate.network)} for {estimate.batch} window(s) at once, weighted sums "
            f"{format_bytes(estimate.block_sums)} over a {'×'.join(map(str, block_shape))} footprint); {where} has "
            f"{format_bytes(limit)} per task"
        )
        return settings
    log(
        f"inference.sw_batch_size {settings.sw_batch_size} → {estimate.batch} on the CPU, so a task fits {where}'s "
        f"{format_bytes(limit)}: about {format_bytes(estimate.total)} (network {format_bytes(estimate.network)} for "
        f"{estimate.batch} window(s), weighted sums {format_bytes(estimate.block_sums)} over a "
        f"{'×'.join(map(str, block_shape))} footprint)"
    )
    return replace(settings, sw_batch_size=estimate.batch)


def warm_up_workers(model, settings: WindowSettings, device: str | None, log=None) -> float | None:
    """Run :func:`warm_up` once on every worker of the current Dask client when the network is compiled
    (``inference.compile``), so compilation is neither inside a block's task nor in the measured throughput.
    Returns the slowest worker's seconds, or None when nothing was compiled or there is no client."""
    from nisbflow.tasks import current_client

    client = current_client()
    if client is None or not settings.compiled_on(device or ""):
        return None
    workers = list(client.scheduler_info().get("workers", {}))
    if log is not None:
        log(f"compiling the network (inference.compile) on {len(workers)} worker(s)")
    futures = [
        client.submit(
            warm_up,
            model,
            settings,
            device,
            workers=[address],
            allow_other_workers=False,
            pure=False,
            key=f"infer-warm-up-{i}-{dask.base.tokenize(model, settings)}",
            **gpu_annotations(device),
        )
        for i, address in enumerate(workers)
    ]
    return max(client.gather(futures))


def gpu_annotations(device: str | None) -> dict:
    """Dask annotations for prediction tasks: a ``GPU`` resource on CUDA, so a GPU runs one block at a time."""
    return {"resources": {"GPU": 1}} if (device or "").startswith("cuda") else {}
