"""``nisbflow config show``: the resolved configuration."""

from __future__ import annotations

import typer

from nisbflow_cli.app import config_app
from nisbflow_cli.errors import friendly_errors
from nisbflow_cli.options import Cluster, ConfigFile, Mode, Overrides


@config_app.command("show")
@friendly_errors
def config_show(overrides: Overrides = None, config: ConfigFile = None, cluster: Cluster = None, mode: Mode = "train"):
    """Print the resolved configuration as YAML: defaults ← --config file ← KEY=VALUE overrides. A PyTorch
    Connectomics file is read for --mode and the YAML starts with what became of each of its keys (set, matches,
    ignored, refused). On SLURM (--cluster slurm or system.cluster: slurm) it ends with each worker job setting,
    where it came from, and the job script dask-jobqueue would submit."""
    from nisbflow.jobs import ConfigRefused, show_config

    try:
        text = show_config(config, overrides or [], cluster, mode=mode)
    except ConfigRefused as refused:
        typer.echo(refused.listing, nl=False)
        raise
    typer.echo(text, nl=False)
