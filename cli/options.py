"""Options several commands share, declared once (Annotated types), and the parsers of option values."""

from __future__ import annotations

from typing import Annotated

import typer

DASHBOARD_HELP = (
    "Dashboard of a cluster nisbflow starts. Default (system.dashboard_address): any free port on "
    "127.0.0.1, this machine only (from elsewhere: ssh -L 8787:localhost:PORT); '127.0.0.1:8787' a "
    "fixed port; ':8787' every interface, reachable by other hosts."
)
CLUSTER_HELP = (
    "local | dask-cuda | slurm | sync | tcp://scheduler:8786 (default: $DASK_SCHEDULER_ADDRESS if set, "
    "else system.cluster)."
)
PARAMS_HELP = "Parameters YAML (best.yaml from nisbflow tune) layered over --config, under KEY=VALUE."

Cluster = Annotated[str | None, typer.Option("--cluster", help=CLUSTER_HELP)]
Workers = Annotated[
    int | None, typer.Option("--workers", help="Local workers or SLURM jobs (default: one per core, or per GPU).")
]
MemoryLimit = Annotated[str | None, typer.Option("--memory-limit", help="Memory per local worker, e.g. 8GiB.")]
DashboardAddress = Annotated[str | None, typer.Option("--dashboard-address", help=DASHBOARD_HELP)]
ConfigFile = Annotated[
    str | None, typer.Option("--config", "--config-file", "-c", help="YAML configuration (may use _base_ inheritance).")
]
MODES = ("train", "test", "tune", "tune-test")


def _mode(value: str) -> str:
    if value not in MODES:
        raise typer.BadParameter(f"--mode takes {', '.join(MODES)}, got '{value}'")
    return value


Mode = Annotated[
    str,
    typer.Option(
        "--mode",
        callback=_mode,
        help="PyTorch Connectomics' mode a --config file of "
        "its is read for: train, test, tune or tune-test (its train:, test: or tune: "
        "section over default:).",
    ),
]
Params = Annotated[str | None, typer.Option("--params", help=PARAMS_HELP)]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="key.path=value configuration overrides, e.g. decoding.threshold=0.8.")
]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace an existing output of the same kind that nisbflow wrote.")
]
Force = Annotated[
    bool, typer.Option("--force", help="Replace an existing output that nisbflow did not write (never an input).")
]
CheckpointForce = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Replace an existing file nisbflow did not write, or "
        "a training checkpoint by this weights-only one (never "
        "an input).",
    ),
]
Layout = Annotated[
    str,
    typer.Option(
        "--layout",
        help="ngff: an OME-NGFF image group (napari, neuroglancer); "
        "plain: the zarr array itself at the output path, which "
        "BANIS's metrics.py reads (zarr.open(path)[:]).",
    ),
]
InputAxes = Annotated[
    str | None,
    typer.Option(
        "--axes",
        help="An HDF5 or TIFF input's axis order (default zyx, "
        "czyx for affinities, as PyTorch Connectomics writes them); it "
        "is copied to zarr in X, Y, Z order beside the output, once.",
    ),
]
Checkpoint = Annotated[
    str,
    typer.Option(
        "--checkpoint",
        help="Model checkpoint (.pt from training or nisbflow "
        "model init), or a shipped model's name (nisbflow "
        "model list).",
    ),
]


def _weights(value: str | None) -> str | None:
    from nisbflow.jobs import weight_choices

    choices = weight_choices()
    if value is not None and value not in choices:
        raise typer.BadParameter(f"--weights takes {', '.join(choices[:-1])} or {choices[-1]}, got '{value}'")
    return value


Weights = Annotated[
    str | None,
    typer.Option(
        "--weights",
        callback=_weights,
        help="Which weights of a checkpoint "
        "that keeps two sets predict: auto (the EMA weights, as PyTorch "
        "Connectomics tests them), ema, or raw (the training weights); sets "
        "inference.weights.",
    ),
]


def with_weights(overrides, weights: str | None) -> list:
    """The KEY=VALUE overrides with ``--weights`` as ``inference.weights``."""
    return list(overrides or []) + ([f"inference.weights={weights}"] if weights else [])


InferenceChunks = Annotated[
    str | None, typer.Option("--chunks", help="Inference block (write region) size X,Y,Z (default 768,768,768).")
]
TuneOut = Annotated[
    str | None,
    typer.Option(
        "--out",
        help="Folder of the tuning outputs (default "
        "<save_path>/tune): <checkpoint>-<sha256[:8]>/ holds "
        "the cached affinities, and <method>/ in it best.yaml, "
        "the curve and tune-test's test/.",
    ),
]


def cluster_spec(cluster, workers, memory_limit, dashboard_address):
    """The shared cluster options as a :class:`nisbflow.jobs.ClusterSpec`."""
    from nisbflow.jobs import ClusterSpec

    return ClusterSpec(cluster, workers, memory_limit, dashboard_address)


def parse_thresholds(values: list[str]) -> list[float]:
    """``-t`` values, each one number or several separated by commas, as floats (range-checked by the caller)."""
    numbers = []
    for text in values:
        for part in text.split(","):
            try:
                numbers.append(float(part))
            except ValueError:
                raise typer.BadParameter(
                    f"-t / --threshold takes numbers in [0, 1] (several: -t 0.3,0.5), got '{text}'"
                ) from None
    return numbers


def parse_channels(text: str) -> list[int]:
    """``--channels 0,1,2`` as channel indices."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values):
        raise typer.BadParameter(f"--channels takes channel numbers separated by commas, e.g. 0,1,2, got '{text}'")
    return values


def parse_triple(text: str | None, name: str, kind=int) -> tuple | None:
    """Parse ``"X,Y,Z"`` into three numbers, with an error that names the option; None stays None."""
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or any(v <= 0 for v in values):
        raise typer.BadParameter(f"{name} must be three positive numbers X,Y,Z, got '{text}'")
    return values
