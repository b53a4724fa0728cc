"""``nisbflow run``: PyTorch Connectomics' ``scripts/main.py --config FILE --mode MODE [--checkpoint C]`` with
nisbflow's stages; ``nisbflow --config FILE --mode MODE …`` lands here too (:class:`nisbflow_cli.app.RootGroup`)."""

from __future__ import annotations

from pathlib import Path

import typer

from nisbflow_cli.app import app
from nisbflow_cli.errors import friendly_errors
from nisbflow_cli.tables import say
from nisbflow_cli.options import (
    Cluster,
    ConfigFile,
    DashboardAddress,
    InferenceChunks,
    MemoryLimit,
    Mode,
    Overrides,
    Params,
    Weights,
    Workers,
    with_weights,
)


def tuned_params_said(checkpoint: str, config: str, overrides: list) -> str | None:
    """``--mode test`` without ``--params``: the best.yaml ``--mode tune`` wrote for this checkpoint, weights and
    method (:func:`nisbflow.jobs.tuned_params`), said; None when there is none."""
    from nisbflow.jobs import tuned_params

    found = tuned_params(checkpoint, config=config, overrides=overrides)
    if found is None:
        return None
    say(
        f"--mode test: decoding with {found}, the tuning of this checkpoint (--mode tune wrote it); --params FILE "
        "for another, or KEY=VALUE decoding.threshold=… to override it"
    )
    return str(found)


def train_run_dir(checkpoint: str | None, params: str | None = None, weights: str | None = None) -> str | None:
    """The run folder a train-mode ``--checkpoint`` resumes: ``<run>/checkpoints/last.pt`` → ``<run>``. Train mode
    takes neither ``--params`` nor ``--weights``."""
    if params is not None or weights is not None:
        raise typer.BadParameter(
            "--params and --weights are for --mode test, tune and tune-test (they choose what a "
            "trained model decodes and predicts with)",
            param_hint="--params",
        )
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    if path.name == "last.ckpt" and path.parent.name == "checkpoints" and not path.exists():
        if path.with_suffix(".pt").is_file():  # PyTC's tutorial names last.ckpt; nisbflow's run holds last.pt
            raise typer.BadParameter(
                f"{checkpoint} does not exist, but {path.with_suffix('.pt')} does (nisbflow "
                "writes .pt checkpoints where PyTorch Connectomics writes .ckpt): give that "
                "file to resume",
                param_hint="--checkpoint",
            )
    if path.name != "last.pt" or path.parent.name != "checkpoints":
        raise typer.BadParameter(
            f"--mode train resumes a nisbflow run from its <run>/checkpoints/last.pt, not "
            f"{checkpoint}; to start from other weights, import them (nisbflow model import)",
            param_hint="--checkpoint",
        )
    return str(path.parent.parent)


@app.command("run")
@friendly_errors
def run(
    config: ConfigFile = None,
    mode: Mode = "train",
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        help="test/tune/tune-test: the model (a nisbflow "
        ".pt, a BANIS or PyTorch Connectomics .ckpt, or a shipped model's "
        "name); train: <run>/checkpoints/last.pt to resume.",
    ),
    chunks: InferenceChunks = None,
    cluster: Cluster = None,
    workers: Workers = None,
    memory_limit: MemoryLimit = None,
    dashboard_address: DashboardAddress = None,
    overrides: Overrides = None,
    weights: Weights = None,
    params: Params = None,
):
    """PyTorch Connectomics' command line: nisbflow --config FILE --mode train|test|tune|tune-test [--checkpoint C]
    [KEY=VALUE ...], as python scripts/main.py takes it.

    FILE may be a PyTorch Connectomics configuration (its default:/train:/test:/tune: sections, _base_ recipes and
    profile libraries, read for --mode; nisbflow config show --config FILE --mode MODE lists what each key becomes)
    or a nisbflow one. train runs nisbflow train; test runs nisbflow test (infer → decode → NERL and em_erl on
    data.test); tune runs nisbflow tune on data.val; tune-test tunes, then tests at the best threshold. Overrides
    use PyTC's keys (train.data.train.path=…, system.num_gpus=4, data.dataloader.batch_size=2,
    decoding.affinity_mask_path=null) or nisbflow's own.
    """
    from nisbflow_cli.models import train
    from nisbflow_cli.pipeline import test_command
    from nisbflow_cli.tuning import tune, tune_test

    if config is None:
        raise typer.BadParameter("nisbflow run (nisbflow --mode …) needs --config FILE", param_hint="--config")
    overrides = overrides or []
    if mode == "train":
        train(config=config, run_dir=train_run_dir(checkpoint, params, weights), overrides=overrides)
        return
    if checkpoint is None:
        raise typer.BadParameter(f"--mode {mode} needs --checkpoint: the model to run", param_hint="--checkpoint")
    if mode == "test" and params is None:
        params = tuned_params_said(checkpoint, config, with_weights(overrides, weights))
    shared = dict(
        checkpoint=checkpoint,
        config=config,
        chunks=chunks,
        cluster=cluster,
        workers=workers,
        memory_limit=memory_limit,
        dashboard_address=dashboard_address,
        params=params,
        overrides=overrides,
        weights=weights,
    )
    if mode == "test":
        test_command(**shared)
    else:
        (tune if mode == "tune" else tune_test)(out=None, **shared)
