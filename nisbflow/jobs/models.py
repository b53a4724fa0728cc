"""The entries of the ``model`` commands: ``init``, ``export``, ``import`` and ``list``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nisbflow.errors import ConfigError

if TYPE_CHECKING:  # report fields' types; the modules load where a command uses them
    from nisbflow.config.schema import ModelConfig


@dataclass
class ModelInitReport:
    """``nisbflow model init``: the file written, its architecture, parameter count and seed."""

    output: str
    arch: str
    parameters: int
    seed: int


def model_init(
    output: str, *, arch: str = "mednext-s", seed: int = 0, overwrite: bool = False, force: bool = False
) -> ModelInitReport:
    """``nisbflow model init``: a randomly initialised checkpoint of ``arch`` (``mednext-s`` or ``tiny``) with
    weights from ``torch.manual_seed(seed)``."""
    from nisbflow.file_outputs import CHECKPOINT, check_file_output
    from nisbflow.model import ARCHITECTURES, save_random_checkpoint

    if arch not in ARCHITECTURES:
        raise ConfigError(f"--arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    check_file_output(output, CHECKPOINT, overwrite=overwrite, force=force, weights_only=True)
    model = save_random_checkpoint(output, ARCHITECTURES[arch], seed=seed)
    return ModelInitReport(str(output), arch, sum(p.numel() for p in model.parameters()), seed)


@dataclass
class ModelExportReport:
    """``nisbflow model export``: the weights-only file, its size in MiB, the metadata it records, and the
    configuration YAML written beside it (or None)."""

    output: str
    mebibytes: float
    metadata: dict
    config_yaml: str | None = None


def model_export(
    checkpoint: str,
    output: str,
    *,
    command: str | None = None,
    config_yaml: str | None = None,
    overrides=None,
    overwrite: bool = False,
    force: bool = False,
) -> ModelExportReport:
    """``nisbflow model export``: a copy of ``checkpoint`` without its training state, ``overrides`` applied to the
    configuration it records (e.g. a tuned ``decoding.threshold``); with ``config_yaml`` that configuration is also
    written as YAML usable with ``--config``. Both files are checked before either is written."""
    from nisbflow.config import Config, config_to_yaml
    from nisbflow.file_outputs import CHECKPOINT, YAML, check_file_output
    from nisbflow.model import export_checkpoint
    from nisbflow.model.checkpoint import resolve_checkpoint
    from nisbflow.staging import write_file

    inputs = {"checkpoint": str(resolve_checkpoint(checkpoint))}
    check_file_output(output, CHECKPOINT, inputs=inputs, overwrite=overwrite, force=force, weights_only=True)
    if config_yaml:
        check_file_output(
            config_yaml,
            YAML,
            inputs=dict(inputs, output=output),
            overwrite=overwrite,
            force=force,
            option="--config-yaml",
        )
    metadata = export_checkpoint(
        checkpoint,
        output,
        overrides or [],
        require_config=bool(config_yaml),
        **({"command": command} if command else {}),
    )
    if config_yaml:
        write_file(
            config_yaml,
            f"# nisbflow model export: the configuration of {output}\n"
            + config_to_yaml(Config.model_validate(metadata["config"])),
        )
    return ModelExportReport(str(output), Path(output).stat().st_size / 2**20, metadata, config_yaml)


@dataclass
class ModelImportReport:
    """``nisbflow model import``: the file written, its model and what was taken from where."""

    output: str
    model: ModelConfig
    weights: str
    notes: list


def model_import(
    checkpoint: str, output: str, *, weights: str = "auto", overwrite: bool = False, force: bool = False
) -> ModelImportReport:
    """``nisbflow model import``: a BANIS or PyTorch Connectomics checkpoint as a nisbflow ``.pt``
    (:func:`~nisbflow.model.import_checkpoint`); ``weights``: ``auto`` (EMA when present), ``ema`` or ``raw``."""
    from nisbflow.file_outputs import CHECKPOINT, check_file_output
    from nisbflow.model import Checkpoint, import_checkpoint

    check_file_output(
        output, CHECKPOINT, inputs={"checkpoint": checkpoint}, overwrite=overwrite, force=force, weights_only=True
    )
    metadata = import_checkpoint(checkpoint, output, weights=weights)
    return ModelImportReport(str(output), Checkpoint.open(output).model, metadata["weights"], metadata["notes"])


@dataclass
class ShippedModel:
    """One model inside the package (``nisbflow model list``)."""

    name: str
    size: str
    init_filters: int
    parameters: int
    path: str


def model_list() -> list[ShippedModel]:
    """``nisbflow model list``: the models shipped inside nisbflow, usable by name as ``--checkpoint``."""
    from nisbflow.model import SHIPPED_DIR, SHIPPED_MODELS, load_checkpoint

    shipped = []
    for name, stem in SHIPPED_MODELS.items():
        model, config = load_checkpoint(name)
        shipped.append(
            ShippedModel(
                name,
                config.size,
                config.init_filters,
                sum(p.numel() for p in model.parameters()),
                str(SHIPPED_DIR / f"{stem}.pt"),
            )
        )
    return shipped
