"""The BANIS network: MONAI's MedNeXt, and checkpoints that carry their own model configuration.

A checkpoint is a ``torch.save`` dict ``{"format": "nisbflow-checkpoint", "version": 1, "model": <ModelConfig as a
dict>, "state_dict": ..., "metadata": {...}}``, loaded with ``weights_only=True`` (no code runs on load).
Lightning checkpoints written by training (``state_dict`` keys prefixed ``model.``, configuration under
``hyper_parameters``) load too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from nisbflow.config.schema import ModelConfig
from nisbflow.errors import NisbflowError

CHECKPOINT_FORMAT = "nisbflow-checkpoint"

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

ARCHITECTURES = {"mednext-s": ModelConfig(), "tiny": ModelConfig(init_filters=4)}
"""Named model configurations for ``nisbflow model init --arch``."""

SHIPPED_DIR = Path(__file__).parent / "shipped"
SHIPPED_MODELS = {"nisb-tiny-synthetic": "nisb_tiny_synthetic"}
"""Models inside the package: name → file stem in :data:`SHIPPED_DIR` (``<stem>.pt`` weights, ``<stem>.yaml`` the
resolved configuration it was trained with and should be run with). See ``nisbflow/model/shipped/README.md``."""
DEFAULT_SHIPPED = "nisb-tiny-synthetic"


class CheckpointError(NisbflowError, ValueError):
    """A checkpoint file that is missing, unreadable, or does not fit the requested model."""


def build(config: ModelConfig | None = None) -> torch.nn.Module:
    """MedNeXt for a model configuration (default: BANIS's MedNeXt-S, kernel 3, 1 → 6 channels, no deep supervision).

    With the canonical 32 initial filters this is ``monai.networks.nets.mednext.create_mednext`` itself; other
    ``init_filters`` (e.g. 4 for CPU tests) build MONAI's ``MedNeXt`` with the same variant settings.
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


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A checkpoint path, or the name of a shipped model (``nisb-tiny-synthetic``) → the file to load."""
    name = str(checkpoint)
    if name in SHIPPED_MODELS and not Path(name).exists():
        return SHIPPED_DIR / f"{SHIPPED_MODELS[name]}.pt"
    return Path(checkpoint)


def shipped_config(name: str = DEFAULT_SHIPPED, overrides=()):
    """The resolved configuration a shipped model was trained with (``inference.*`` and ``decoding.threshold``
    are the settings to run it with), as a :class:`nisbflow.config.Config`."""
    from nisbflow.config import load_config

    if name not in SHIPPED_MODELS:
        raise CheckpointError(f"no shipped model named {name!r}; shipped: {', '.join(SHIPPED_MODELS)}")
    return load_config(SHIPPED_DIR / f"{SHIPPED_MODELS[name]}.yaml", overrides)


def checkpoint_config(checkpoint: str | Path, overrides=()):
    """The full configuration a checkpoint should run with: a shipped model's YAML, or the training configuration a
    nisbflow training checkpoint records; None when it records none (e.g. ``nisbflow model init``)."""
    from nisbflow.config import Config, apply_overrides

    name = str(checkpoint)
    if name in SHIPPED_MODELS and not Path(name).exists():
        return shipped_config(name, overrides)
    payload = torch.load(resolve_checkpoint(checkpoint), map_location="cpu", weights_only=True)
    recorded = payload.get("metadata", {}).get("config") if isinstance(payload, dict) else None
    return None if recorded is None else Config.model_validate(apply_overrides(recorded, overrides))


def save_random_checkpoint(path: str | Path, config: ModelConfig, seed: int = 0) -> torch.nn.Module:
    """Write an untrained network of ``config`` with weights from ``torch.manual_seed(seed)``; returns it."""
    torch.manual_seed(seed)
    model = build(config)
    save_checkpoint(path, model, config, initialised="random", seed=seed)
    return model


def checkpoint_payload(model: torch.nn.Module, config: ModelConfig, metadata: dict, **training_state) -> dict:
    """The dict a checkpoint file holds: format header, model configuration, weights, ``metadata``, and any
    ``training_state`` entries (``optimizer``, ``scheduler``, ``scaler`` from training, for resuming)."""
    return {"format": CHECKPOINT_FORMAT, "version": 1, "model": config.model_dump(mode="json"),
            "state_dict": model.state_dict(), **training_state, "metadata": metadata}


def write_checkpoint(path: str | Path, payload: dict) -> None:
    """``torch.save`` a checkpoint payload to a temporary name next to ``path``, then rename it into place."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    torch.save(payload, temporary)
    temporary.replace(path)


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: ModelConfig, /, **metadata) -> None:
    """Write a checkpoint (written to a temporary name, then renamed)."""
    write_checkpoint(path, checkpoint_payload(model, config, metadata))


def checkpoint_hash(path: str | Path) -> str:
    """SHA-256 of a checkpoint file (first 16 hex digits), recorded in the outputs it produces."""
    digest = hashlib.sha256()
    with open(resolve_checkpoint(path), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_checkpoint(path: str | Path, expected: ModelConfig | None = None,
                    map_location="cpu") -> tuple[torch.nn.Module, ModelConfig]:
    """Load a nisbflow or Lightning checkpoint → ``(model in eval mode, its ModelConfig)``.

    ``expected``: when given, the checkpoint's architecture and channel counts must match it.
    """
    path = resolve_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist (give a .pt file or a shipped model name: "
                              f"{', '.join(SHIPPED_MODELS)})")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for foreign or corrupt files
        raise CheckpointError(f"checkpoint {path} cannot be read as a torch checkpoint with weights_only=True: "
                              f"{error}") from error
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"checkpoint {path} has no state_dict; expected a nisbflow or Lightning checkpoint")
    if payload.get("format") == CHECKPOINT_FORMAT:
        config_dict, state = payload["model"], payload["state_dict"]
    else:  # Lightning: the module stores the model under "model." and its configuration in hyper_parameters
        hyper = payload.get("hyper_parameters", {})
        config_dict = hyper.get("model") or hyper.get("config", {}).get("model")
        if config_dict is None:
            raise CheckpointError(f"checkpoint {path} carries no model configuration (hyper_parameters.model)")
        state = {k.removeprefix("model."): v for k, v in payload["state_dict"].items()}
    config = ModelConfig.model_validate(config_dict)
    if expected is not None:
        for key in ("arch", "size", "init_filters", "kernel_size", "in_channels", "out_channels"):
            if getattr(config, key) != getattr(expected, key):
                raise CheckpointError(f"checkpoint {path} holds model.{key}={getattr(config, key)!r}, but "
                                      f"model.{key}={getattr(expected, key)!r} was asked for")
    model = build(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit {config.arch}-{config.size} "
                              f"(init_filters {config.init_filters}): {len(missing)} missing keys "
                              f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    return model.eval(), config


def export_checkpoint(source: str | Path, output: str | Path, **metadata) -> dict:
    """Weights-only copy of a checkpoint (training state dropped), keeping its model configuration and metadata.

    The result is what ships inside the package or goes to collaborators: a training ``last.pt`` with AdamW
    state is about three times larger. ``metadata`` entries are added (e.g. the command that trained it).
    Returns the metadata written.
    """
    model, config = load_checkpoint(source)
    payload = torch.load(resolve_checkpoint(source), map_location="cpu", weights_only=True)
    kept = dict(payload.get("metadata", {})) if payload.get("format") == CHECKPOINT_FORMAT else {}
    kept.update(metadata, exported_from=str(source), source_sha256=checkpoint_hash(source))
    save_checkpoint(output, model, config, **kept)
    return kept
