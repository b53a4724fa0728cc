"""The BANIS network: MedNeXt as MIC-DKFZ defines it, built on MONAI's, from a
:class:`~nisbflow.config.schema.ModelConfig`.

MONAI's ``MedNeXt`` and MIC-DKFZ's (``nnunet_mednext``, the code BANIS and PyTorch Connectomics train) differ in one
rule: MIC-DKFZ's down block into stage i + 1 expands by that stage's ratio, MONAI's by stage i's. For MedNeXt-S
(ratio 2 everywhere) the two are the same network; for B, M and L six tensors have other shapes (MedNeXt-L:
61.78 M parameters in MONAI's against MIC-DKFZ's 61.73 M). nisbflow builds MONAI's network and replaces its down
blocks by MIC-DKFZ's rule, so the field's checkpoints load (:mod:`nisbflow.model.peers`) and give MIC-DKFZ's
logits (tests/test_peers.py, on fixtures made with MIC-DKFZ's own code).
"""

from __future__ import annotations

from typing import Any

import torch

from nisbflow.config.schema import MEDNEXT_DOWNSAMPLING, ModelConfig

# MONAI create_mednext's settings per size, so other init_filters keep the same architecture
_VARIANTS: dict[str, dict[str, Any]] = {
    "S": dict(
        encoder_expansion_ratio=2,
        decoder_expansion_ratio=2,
        bottleneck_expansion_ratio=2,
        blocks_down=(2, 2, 2, 2),
        blocks_bottleneck=2,
        blocks_up=(2, 2, 2, 2),
    ),
    "B": dict(
        encoder_expansion_ratio=(2, 3, 4, 4),
        decoder_expansion_ratio=(4, 4, 3, 2),
        bottleneck_expansion_ratio=4,
        blocks_down=(2, 2, 2, 2),
        blocks_bottleneck=2,
        blocks_up=(2, 2, 2, 2),
    ),
    "M": dict(
        encoder_expansion_ratio=(2, 3, 4, 4),
        decoder_expansion_ratio=(4, 4, 3, 2),
        bottleneck_expansion_ratio=4,
        blocks_down=(3, 4, 4, 4),
        blocks_bottleneck=4,
        blocks_up=(4, 4, 4, 3),
    ),
    "L": dict(
        encoder_expansion_ratio=(3, 4, 8, 8),
        decoder_expansion_ratio=(8, 8, 4, 3),
        bottleneck_expansion_ratio=8,
        blocks_down=(3, 4, 8, 8),
        blocks_bottleneck=8,
        blocks_up=(8, 8, 4, 3),
    ),
}
assert all(2 ** len(v["blocks_down"]) == MEDNEXT_DOWNSAMPLING for v in _VARIANTS.values())

ARCHITECTURES = {"mednext-s": ModelConfig(), "tiny": ModelConfig(init_filters=4)}
"""Named model configurations for ``nisbflow model init --arch``."""


def mic_dkfz_variant(block_counts, expansion_ratios) -> str | None:
    """The variant (S, B, M, L) with these nine block counts and expansion ratios (encoder stages 0-3, bottleneck,
    decoder stages 3-0, as MIC-DKFZ lists them), or None."""
    for size, v in _VARIANTS.items():
        ratios = (
            _expanded(v["encoder_expansion_ratio"])
            + [v["bottleneck_expansion_ratio"]]
            + _expanded(v["decoder_expansion_ratio"])
        )
        counts = list(v["blocks_down"]) + [v["blocks_bottleneck"]] + list(v["blocks_up"])
        if counts == list(block_counts) and ratios == list(expansion_ratios):
            return size
    return None


def _expanded(ratio) -> list[int]:
    return [ratio] * 4 if isinstance(ratio, int) else list(ratio)


def _with_mic_dkfz_down_blocks(network: torch.nn.Module, config: ModelConfig) -> torch.nn.Module:
    """``network`` (MONAI's MedNeXt) with each down block rebuilt to expand by the ratio of the stage it leads into
    (the bottleneck's for the last), MIC-DKFZ's rule; unchanged where the ratios agree (MedNeXt-S)."""
    from monai.networks.blocks.mednext_block import MedNeXtDownBlock

    variant = _VARIANTS[config.size]
    ratios = _expanded(variant["encoder_expansion_ratio"])
    following = ratios[1:] + [variant["bottleneck_expansion_ratio"]]
    down_blocks: Any = network.down_blocks  # a torch ModuleList
    for i in range(len(down_blocks)):
        if following[i] == ratios[i]:
            continue
        down_blocks[i] = MedNeXtDownBlock(
            in_channels=config.init_filters * 2**i,
            out_channels=config.init_filters * 2 ** (i + 1),
            expansion_ratio=following[i],
            kernel_size=config.kernel_size,
            use_residual_connection=True,
            norm_type="group",
            dim="3d",
        )
    return network


def build(config: ModelConfig | None = None) -> torch.nn.Module:
    """MedNeXt for a model configuration (default: BANIS's MedNeXt-S, kernel 3, 1 → 6 channels, no deep supervision).

    With the canonical 32 initial filters this starts from ``monai.networks.nets.mednext.create_mednext``; other
    ``init_filters`` (e.g. 4 for CPU tests) build MONAI's ``MedNeXt`` with the same variant settings; either way the
    down blocks follow MIC-DKFZ's rule (module docstring). Input
    ``(N, in_channels, X, Y, Z)`` float with each spatial size a multiple of 16 (four 2× downsamplings); output
    ``(N, out_channels, X, Y, Z)`` logits.
    """
    from monai.networks.nets.mednext import MedNeXt, create_mednext

    config = config or ModelConfig()
    if config.init_filters == 32:
        network = create_mednext(
            config.size,
            spatial_dims=3,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            kernel_size=config.kernel_size,
            deep_supervision=config.deep_supervision,
        )
    else:
        network = MedNeXt(
            spatial_dims=3,
            init_filters=config.init_filters,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            kernel_size=config.kernel_size,
            deep_supervision=config.deep_supervision,
            use_residual_connection=True,
            norm_type="group",
            global_resp_norm=False,
            **_VARIANTS[config.size],
        )
    return _with_mic_dkfz_down_blocks(network, config)


CHECKPOINTED_STAGES = ("enc_stages", "down_blocks", "bottleneck", "up_blocks", "dec_stages")


def checkpoint_activations(network: torch.nn.Module) -> torch.nn.Module:
    """Recompute the activations of every MedNeXt block in the backward pass instead of keeping them (MIC-DKFZ's
    ``checkpoint_style="outside_block"``): same outputs and gradients, less memory. Changes ``network`` in place
    (each block's ``forward``; parameters and state-dict keys stay) and returns it; only while training with
    gradients."""
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    def checkpointed(block, forward, *inputs):
        if block.training and torch.is_grad_enabled():
            return checkpoint(forward, *inputs, use_reentrant=False)
        return forward(*inputs)

    for stage in CHECKPOINTED_STAGES:
        for block in getattr(network, stage).modules():
            if (
                block is not getattr(network, stage)
                and not isinstance(block, (torch.nn.Sequential, torch.nn.ModuleList))
                and block.__class__.__name__.startswith("MedNeXt")
            ):
                block.forward = partial(checkpointed, block, block.forward)
    return network
