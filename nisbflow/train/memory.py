"""Memory of one training process, estimated before training, and activation checkpointing where it is needed.

A training step holds the weights, their gradients, AdamW's two moments and, with ``optimization.ema``, the
average: 4 or 5 float32 copies of the parameters. Its peak adds the activations that the backward pass needs, which
dominate for MedNeXt on 128³ crops. They are counted by running one forward and backward pass of the network on
PyTorch's ``meta`` device (shapes only, no memory, no arithmetic) while summing the bytes of live tensors, with and
without activation checkpointing, whatever the architecture.

The count is float32. Under mixed precision on a GPU (``16-mixed``, ``bf16-mixed``) most activations are 16-bit,
and the estimate halves them (:data:`MIXED_ACTIVATIONS`, an approximation). :data:`TRAIN_WORKSPACE_FACTOR` covers what
the count cannot see: the convolutions' scratch buffers and the allocator's slack.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

from nisbflow.errors import ConfigError

TRAIN_WORKSPACE_FACTOR = 1.4
"""Measured peak over the counted activations of one step on the CPU (MedNeXt-S, width 32, 64³ crop, batch 1):
2.00 GiB measured against 1.81 GiB counted without checkpointing (1.11×), 0.98 against 0.70 GiB with it (1.40×)."""

MIXED_ACTIVATIONS = 0.5
"""The share of the float32 activation count that a mixed-precision step on a GPU keeps (16-bit activations)."""

MEMORY_FRACTION = 0.9
"""Share of the device's memory a training process may plan to use."""


def counted_step_bytes(model_config, patch: tuple[int, int, int], checkpointing: bool) -> int:
    """Peak bytes of live tensors in one forward and backward pass of ``model_config``'s network on one crop of
    ``patch`` voxels (X, Y, Z), batch 1, counted on the ``meta`` device (cached per architecture, crop and mode)."""
    return _counted(
        json.dumps(model_config.model_dump(mode="json"), sort_keys=True),
        tuple(int(p) for p in patch),
        bool(checkpointing),
    )


@functools.lru_cache(maxsize=16)
def _counted(model_json: str, patch: tuple[int, int, int], checkpointing: bool) -> int:
    import torch
    from torch.nn.functional import binary_cross_entropy_with_logits

    from nisbflow.config.schema import ModelConfig
    from nisbflow.infer.memory import LiveBytes
    from nisbflow.model import build
    from nisbflow.model.network import checkpoint_activations

    model_config = ModelConfig.model_validate(json.loads(model_json))
    network = build(model_config).to("meta").train()
    if checkpointing:
        checkpoint_activations(network)
    image = torch.empty((1, model_config.in_channels, *patch), device="meta")
    target = torch.empty((1, model_config.out_channels, *patch), device="meta")
    counter = LiveBytes()
    with counter:
        binary_cross_entropy_with_logits(network(image), target).backward()
    return int(counter.peak)


@dataclass(frozen=True)
class TrainingMemory:
    """Estimated peak bytes of one training process and its parts (``state``: weights, gradients, AdamW and the EMA;
    ``activations``: the batch's, with :data:`TRAIN_WORKSPACE_FACTOR`; ``data``: the batch's crops, targets and
    masks)."""

    batch: int
    checkpointing: bool
    state: int
    activations: int
    data: int
    ema: bool = False

    @property
    def total(self) -> int:
        return self.state + self.activations + self.data

    def line(self) -> str:
        from dask.utils import format_bytes

        return (
            f"about {format_bytes(self.total)} per training process (weights, gradients, AdamW"
            f"{' and EMA' if self.ema else ''} {format_bytes(self.state)}; activations "
            f"{format_bytes(self.activations)} for {self.batch} crop(s)"
            f"{' with activation checkpointing' if self.checkpointing else ''}; data {format_bytes(self.data)})"
        )


def training_peak(config, checkpointing: bool | None = None, mixed: bool = False) -> TrainingMemory:
    """The estimate for a :class:`~nisbflow.config.schema.Config`: ``data.patch_size`` crops, ``batch_size`` of them,
    ``model.activation_checkpointing`` unless ``checkpointing`` says otherwise; ``mixed``: a mixed-precision step
    on a GPU (:data:`MIXED_ACTIVATIONS`)."""
    model = config.model
    checkpointing = model.activation_checkpointing if checkpointing is None else checkpointing
    parameters = _parameter_count(json.dumps(model.model_dump(mode="json"), sort_keys=True))
    copies = 5 if config.optimization.ema.enabled else 4
    batch = config.data.dataloader.batch_size
    patch = tuple(config.data.patch_size)
    voxels = math.prod(patch)
    activations = int(
        TRAIN_WORKSPACE_FACTOR
        * batch
        * counted_step_bytes(model, patch, checkpointing)
        * (MIXED_ACTIVATIONS if mixed else 1.0)
    )
    data = batch * voxels * 4 * (model.in_channels + 2 * model.out_channels)
    return TrainingMemory(batch, checkpointing, copies * 4 * parameters, activations, data, copies == 5)


@functools.lru_cache(maxsize=16)
def _parameter_count(model_json: str) -> int:
    import torch

    from nisbflow.config.schema import ModelConfig
    from nisbflow.model import build

    with torch.device("meta"):
        network = build(ModelConfig.model_validate(json.loads(model_json)))
    return sum(p.numel() for p in network.parameters())


def plan_training_memory(config, memory: int, where: str, log, mixed: bool = False) -> bool:
    """Whether to train with activation checkpointing, said through ``log``: as configured when the estimate fits
    :data:`MEMORY_FRACTION` of ``memory`` bytes (``where`` names them: "the GPU", "this machine"); turned on, and
    said, when only the checkpointed step fits; a one-line :class:`~nisbflow.errors.ConfigError` with the numbers
    when neither fits."""
    from dask.utils import format_bytes

    budget = int(MEMORY_FRACTION * memory)
    planned = training_peak(config, mixed=mixed)
    log(f"training: {planned.line()}; {where} has {format_bytes(memory)}")
    if planned.total <= budget:
        return config.model.activation_checkpointing
    if not config.model.activation_checkpointing:
        checkpointed = training_peak(config, checkpointing=True, mixed=mixed)
        if checkpointed.total <= budget:
            log(
                f"training: activation checkpointing turned on (model.activation_checkpointing), as without it the "
                f"step does not fit {where}: {checkpointed.line()}; the same gradients, about a third more time "
                "per step"
            )
            return True
        planned = checkpointed
    raise ConfigError(
        f"training needs {planned.line()}, but {where} has {format_bytes(memory)} (plans use "
        f"{int(MEMORY_FRACTION * 100)} %): lower data.dataloader.batch_size or data.patch_size, or "
        "use a device with more memory"
    )
