"""Memory of one inference task, estimated before the run, and the window batch that fits a CPU worker.

On a CPU the network's activations dominate: MedNeXt-S holds about 2.8 GiB per 128³ window at its peak (3.6 GiB
with the convolutions' scratch buffers), so the default ``inference.sw_batch_size=8`` needs about 23 GB and a worker
with less is killed mid-block (measured:
22.9 GB at 8, 4.4 GB at 1). A block also keeps its weighted sums, ``(C + 1) × block voxels × 4`` bytes (7.2 GB for
three channels of a 768³ block). :func:`task_peak` adds these up; :func:`fit_batch` picks the largest batch, at most
the configured one, whose task fits the worker's memory, or refuses with the numbers.

The activation peak comes from running the network once on PyTorch's ``meta`` device (shapes only, no memory, no
arithmetic) while counting the bytes of live tensors (:func:`activation_bytes`): exact for the eager forward pass,
whatever the architecture.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass

from torch.utils._python_dispatch import TorchDispatchMode

from nisbflow.errors import NisbflowError
from nisbflow.region import triple

RUNTIME_BYTES = 600 * 2**20
"""A worker process with torch and the model loaded, before any block (measured about 0.45 GiB; a margin added)."""

WORKSPACE_FACTOR = 1.3
"""The counted activation peak times this is what a CPU forward pass takes: the count sees only the tensors the
network keeps, not the convolutions' scratch buffers (oneDNN) or the allocator's slack. Measured with MedNeXt-S on
128³ windows (benchmarks/infer_memory.py, docs/BENCHMARKS.md): 3.78 GiB above the loaded process at batch 1 and
7.04 GiB at batch 2, against 2.85 and 5.70 GiB counted plus 0.18 GiB of sums (1.25× and 1.20× the count)."""

MEMORY_FRACTION = 0.75
"""Share of a worker's memory limit a task may plan to use: Dask pauses a worker at 80 % and restarts it at 95 %."""


class InferenceMemoryError(NisbflowError):
    """An inference task cannot fit the workers' memory even one window at a time."""


def activation_bytes(model_config, window: tuple[int, int, int]) -> int:
    """Peak bytes of live tensors in one eager forward pass of ``model_config``'s network on one ``window``
    (X, Y, Z voxels), counted on the ``meta`` device (once per architecture and window in a process)."""
    import json

    return _activation_bytes(
        json.dumps(model_config.model_dump(mode="json"), sort_keys=True), tuple(int(w) for w in window)
    )


@functools.lru_cache(maxsize=16)
def _activation_bytes(model_json: str, window: tuple[int, int, int]) -> int:
    import json

    from nisbflow.config.schema import ModelConfig

    model_config = ModelConfig.model_validate(json.loads(model_json))
    import torch

    from nisbflow.model import build

    network = build(model_config).to("meta").eval()
    counter = LiveBytes()
    with torch.no_grad(), counter:
        network(torch.empty((1, model_config.in_channels) + tuple(window), device="meta"))
    return int(counter.peak)


class LiveBytes(TorchDispatchMode):
    """A dispatch mode that counts the bytes of live tensor storages and their peak (``live``, ``peak``): what a
    pass run inside it holds at most (meta tensors included)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import torch

        result = func(*args, **(kwargs or {}))
        for tensor in result if isinstance(result, (tuple, list)) else (result,):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            if id(storage) in self.seen:
                continue
            self.seen.add(id(storage))
            size = storage.nbytes()
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, id(storage), size)
        return result

    def _freed(self, key, size):
        self.live -= size
        self.seen.discard(key)


@dataclass(frozen=True)
class TaskMemory:
    """Estimated peak bytes of one prediction task and its parts."""

    batch: int
    runtime: int
    network: int
    block_sums: int

    @property
    def total(self) -> int:
        return self.runtime + self.network + self.block_sums


def task_peak(model_config, window, block_shape, n_channels: int, batch: int) -> TaskMemory:
    """The peak of one block's prediction task: the worker's runtime, ``batch`` windows through the network (their
    activations with :data:`WORKSPACE_FACTOR`, and float32 inputs) and the block's weighted sums (``n_channels`` + 1
    float32 arrays of the block)."""
    import math

    voxels = math.prod(window)
    activations = int(WORKSPACE_FACTOR * activation_bytes(model_config, triple(window)))
    network = batch * (activations + 4 * voxels)
    sums = (n_channels + 1) * math.prod(int(b) for b in block_shape) * 4
    return TaskMemory(batch, RUNTIME_BYTES, network, sums)


def fit_batch(
    model_config, window, block_shape, n_channels: int, batch: int, memory_per_task: int, where: str = "each worker"
) -> TaskMemory:
    """The estimate at the largest batch from ``batch`` down to 1 whose task fits
    :data:`MEMORY_FRACTION` × ``memory_per_task`` bytes; raise :class:`InferenceMemoryError` with the numbers when
    not even one window fits."""
    from dask.utils import format_bytes

    budget = int(MEMORY_FRACTION * memory_per_task)
    for size in range(int(batch), 0, -1):
        estimate = task_peak(model_config, window, block_shape, n_channels, size)
        if estimate.total <= budget:
            return estimate
    one = task_peak(model_config, window, block_shape, n_channels, 1)
    raise InferenceMemoryError(
        f"inference: a task needs about {format_bytes(one.total)} even one window at a time (runtime "
        f"{format_bytes(one.runtime)}, network {format_bytes(one.network)} for a "
        f"{'×'.join(map(str, window))} window, weighted sums {format_bytes(one.block_sums)} over a "
        f"{'×'.join(map(str, block_shape))} footprint), but {where} has {format_bytes(memory_per_task)} per task "
        f"(plans use {int(MEMORY_FRACTION * 100)} %): give workers more memory (--memory-limit), or use smaller blocks "
        "(--chunks)"
    )
