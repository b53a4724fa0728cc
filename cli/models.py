"""Model commands: ``model init``, ``model export``, ``model list`` and ``train``."""

from __future__ import annotations


import typer

from nisbflow_cli.app import app, model_app
from nisbflow_cli.errors import friendly_errors
from nisbflow_cli.options import CheckpointForce, ConfigFile, Overrides
from nisbflow_cli.tables import console, models_table, say


@model_app.command("init")
@friendly_errors
def model_init(
    output: str = typer.Argument(..., help="Checkpoint file to write (.pt)."),
    arch: str = typer.Option(
        "mednext-s",
        "--arch",
        help="mednext-s (BANIS: MedNeXt-S, kernel 3, 1 → 6 channels) or "
        "tiny (4 initial filters, for CPU tests and smoke runs).",
    ),
    seed: int = typer.Option(0, help="Random seed of the initial weights."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing weights-only checkpoint nisbflow wrote."
    ),
    force: CheckpointForce = False,
):
    """Write a randomly initialised checkpoint (model configuration + weights) for tests and smoke runs."""
    from nisbflow.jobs import model_init as model_init_job

    report = model_init_job(output, arch=arch, seed=seed, overwrite=overwrite, force=force)
    console.print(
        f"wrote {report.output}: {report.arch}, {report.parameters:,} parameters, random weights (seed {report.seed})"
    )


@model_app.command("export")
@friendly_errors
def model_export(
    checkpoint: str = typer.Argument(..., help="Training checkpoint (e.g. run/checkpoints/best-step-4000.pt)."),
    output: str = typer.Argument(..., help="Weights-only checkpoint to write (.pt)."),
    command: str | None = typer.Option(None, help="The command that trained it, recorded in the metadata."),
    config_yaml: str | None = typer.Option(
        None, "--config-yaml", help="Also write the configuration it was trained with as YAML (usable with --config)."
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="key.path=value changes to that YAML (e.g. a tuned decoding.threshold)."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace existing files nisbflow wrote (not a "
        "training checkpoint: its optimizer and RNG state would be lost).",
    ),
    force: CheckpointForce = False,
):
    """Copy a checkpoint without its optimizer state (about a third of the size), keeping its configuration."""
    from nisbflow.jobs import model_export as model_export_job

    report = model_export_job(
        checkpoint,
        output,
        command=command,
        config_yaml=config_yaml,
        overrides=overrides or [],
        overwrite=overwrite,
        force=force,
    )
    if report.config_yaml:
        console.print(f"wrote {report.config_yaml}")
    console.print(
        f"wrote {report.output}: {report.mebibytes:.2f} MiB, step {report.metadata.get('step', '?')}, "
        f"source sha256 {report.metadata['source_sha256']}"
    )


@model_app.command("import")
@friendly_errors
def model_import(
    checkpoint: str = typer.Argument(
        ..., help="A BANIS Lightning .ckpt (last.ckpt) or a PyTorch Connectomics checkpoint of MIC-DKFZ's MedNeXt."
    ),
    output: str = typer.Argument(..., help="nisbflow checkpoint to write (.pt)."),
    weights: str = typer.Option(
        "auto",
        "--weights",
        help="auto (the EMA weights when the checkpoint keeps them, as "
        "PyTorch Connectomics validates with them), ema, or raw (the training weights).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing weights-only checkpoint nisbflow wrote."
    ),
    force: CheckpointForce = False,
):
    """Convert a BANIS or PyTorch Connectomics checkpoint into a nisbflow .pt, with the architecture read off its
    tensors and the window and threshold it records. --checkpoint also takes such files directly."""
    from nisbflow.jobs import model_import as model_import_job

    report = model_import_job(checkpoint, output, weights=weights, overwrite=overwrite, force=force)
    for note in report.notes:
        console.print(note)
    console.print(
        f"wrote {report.output}: MedNeXt-{report.model.size}, kernel {report.model.kernel_size}, "
        f"width {report.model.init_filters}, {report.weights} weights"
    )


@model_app.command("list")
@friendly_errors
def model_list():
    """The models shipped inside nisbflow, usable by name wherever a --checkpoint is asked for."""
    from pathlib import Path

    from nisbflow.jobs import model_list as model_list_job

    models = model_list_job()
    console.print(models_table(models))
    console.print(f"training configuration and command: {Path(models[0].path).parent}/README.md")


@app.command()
@friendly_errors
def train(
    config: ConfigFile = None,
    run_dir: str | None = typer.Option(
        None, "--run-dir", help="Run folder to write or resume (default <save_path>/<timestamp>)."
    ),
    overrides: Overrides = None,
):
    """Train the affinity model (BANIS train_base_long by default) with PyTorch DDP.

    With system.num_gpus=-1 every visible GPU is used: on a machine with several GPUs this command re-launches itself
    under torchrun, one process per GPU. Multi-node runs: start it with torchrun (or srun) yourself, see
    docs/training.md. Checkpoints go to <run>/checkpoints (last.pt, top-k by validation loss, step-N.pt), TensorBoard
    logs to <run>/tensorboard; re-running with --run-dir resumes from last.pt.
    """
    from nisbflow.jobs import train as train_job

    report = train_job(config=config, run_dir=run_dir, overrides=overrides or [], log=say)
    if report.rank0:
        console.print(
            f"trained {report.steps} steps → {report.run}/checkpoints/last.pt (TensorBoard: {report.run}/tensorboard)"
        )
