"""The BANIS network: MONAI's MedNeXt, built from a :class:`~nisbflow.config.schema.ModelConfig`."""

from __future__ import annotations

import torch

from nisbflow.config.schema import MEDNEXT_DOWNSAMPLING, ModelConfig

_VARIANTS = {  # MONAI create_mednext's settings per size, so other init_filters keep the same architecture
    "S": dict(encoder_expansion_ratio=2, decoder_expansion_ratio=2, bottleneck_expansion_ratio=2,
              blocks_down=(2, 2, 2, 2), blocks_bottleneck=2, blocks_up=(2, 2, 2, 2)),
    "B": dict(encoder_expansion_ratio=(2, 3, 4, 4), decoder_expansion_ratio=(4, 4, 3, 2), bottleneck_expansion_ratio=4,
              blocks_down=(2, 2, 2, 2), blocks_bottleneck=2, blocks_up=(2, 2, 2, 2)),
    "M": dict(encoder_expansion_ratio=(2, 3, 4, 4), decoder_expansion_ratio=(4, 4, 3, 2), bottleneck_expansion_ratio=4,
              blocks_down=(3, 4, 4, 4), blocks_bottleneck=4, blocks_up=(4, 4, 4, 3)),
    "L": dict(encoder_expansion_ratio=(3, 4, 8, 8), decoder_expansion_ratio=(8, 8, 4, 3), bottleneck_expansion_ratio=8,
              blocks_down=(3, 4, 8, 8), blocks_bottleneck=8, blocks_up=(8, 8, 4, 3)),
}
assert all(2 ** len(v["blocks_down"]) == MEDNEXT_DOWNSAMPLING for v in _VARIANTS.values())

ARCHITECTURES = {"mednext-s": ModelConfig(), "tiny": ModelConfig(init_filters=4)}
"""Named model configurations for ``nisbflow model init --arch``."""


def build(config: ModelConfig | None = None) -> torch.nn.Module:
    """MedNeXt for a model configuration (default: BANIS's MedNeXt-S, kernel 3, 1 → 6 channels, no deep supervision).

    With the canonical 32 initial filters this is ``monai.networks.nets.mednext.create_mednext`` itself; other
    ``init_filters`` (e.g. 4 for CPU tests) build MONAI's ``MedNeXt`` with the same variant settings. Input
    ``(N, in_channels, X, Y, Z)`` float with each spatial size a multiple of 16 (four 2× downsamplings); output
    ``(N, out_channels, X, Y, Z)`` logits.
    """
    from monai.networks.nets.mednext import MedNeXt, create_mednext

    config = config or ModelConfig()
    if config.init_filters == 32:
        return create_mednext(config.size, spatial_dims=3, in_channels=config.in_channels,
                              out_channels=config.out_channels, kernel_size=config.kernel_size,
                              deep_supervision=config.deep_supervision)
    return MedNeXt(spatial_dims=3, init_filters=config.init_filters, in_channels=config.in_channels,
                   out_channels=config.out_channels, kernel_size=config.kernel_size,
                   deep_supervision=config.deep_supervision, use_residual_connection=True, norm_type="group",
                   global_resp_norm=False, **_VARIANTS[config.size])
