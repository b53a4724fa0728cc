"""What every command's entry shares: the cluster it runs on (:class:`ClusterSpec`, :func:`cluster_session`), the
refusal of a bad output before a cluster starts (:func:`preflight`), how a model command's settings resolve
(:func:`resolve_run`) and how settings are said."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nisbflow.errors import ConfigError

if TYPE_CHECKING:  # the modules load where a command uses them
    from nisbflow.config import Config


def weight_choices() -> tuple[str, ...]:
    """What ``--weights`` takes (``inference.weights``): auto, ema, raw."""
    from nisbflow.config.schema import INFERENCE_WEIGHTS

    return INFERENCE_WEIGHTS


def print_line(line: str) -> None:
    print(line)


@dataclass(frozen=True)
class ClusterSpec:
    """Where a command's Dask work runs. ``cluster``: ``local``, ``dask-cuda``, ``slurm``, ``sync`` or a scheduler
    address (``tcp://host:8786``); None: ``$DASK_SCHEDULER_ADDRESS`` if set, else ``system.cluster``. ``workers``:
    local workers or SLURM jobs; ``memory_limit``: per local worker (``"4GiB"``); ``dashboard_address``: where a
    cluster nisbflow starts serves its dashboard. Each None takes the ``system.*`` setting."""

    cluster: str | None = None
    workers: int | None = None
    memory_limit: str | None = None
    dashboard_address: str | None = None


@contextlib.contextmanager
def cluster_session(config: Config, spec: ClusterSpec | None = None, log=print_line) -> Iterator:
    """The one place a command opens its Dask cluster (``config.system`` overridden by ``spec``) and says where
    its dashboard is; yields the ``distributed.Client`` (None for ``sync``) and closes what it started. An interrupt
    keeps the logs of a cluster torn down mid-computation from burying the command's one line."""
    from nisbflow.cluster import chosen_cluster, cluster_from_config, dashboard_link
    from nisbflow.tasks import quiet_shutdown_logs

    spec = spec or ClusterSpec()
    with cluster_from_config(
        config,
        spec.cluster,
        n_workers=spec.workers,
        memory_limit=spec.memory_limit,
        dashboard_address=spec.dashboard_address,
    ) as client:
        if client is not None:
            link = dashboard_link(client, spec.dashboard_address or config.system.dashboard_address)
            log(f"Dask dashboard: {link}")
        try:
            yield client
        except KeyboardInterrupt:
            quiet_shutdown_logs()
            if client is not None and chosen_cluster(spec.cluster, config) in ("local", "dask-cuda"):
                try:  # workers this command started (never a shared cluster's) go quietly too
                    client.run(quiet_shutdown_logs)
                except Exception:
                    pass
            raise


def preflight(output: str, kind: str, inputs: dict, overwrite: bool, force: bool) -> None:
    """Refuse a run's output before any cluster starts: overlapping an input, existing without ``overwrite`` (or
    not nisbflow's without ``force``), or locked by a live run (:meth:`nisbflow.staging.StagedRun.preflight`)."""
    from nisbflow.staging import StagedRun

    StagedRun(output, kind=kind, inputs=inputs, overwrite=overwrite, force=force).preflight()


def say_settings(run, command: str, log) -> None:
    for line in run.describe(command):
        log(line)


def resolve_run(checkpoint, config, params, overrides, command: str, splits: tuple[str, ...], log):
    """A model command's settings, said through ``log``, with its seeds checked before any cluster starts."""
    from nisbflow.data.volumes import seed_of
    from nisbflow.settings import resolve_settings

    run = resolve_settings(checkpoint, config=config, params=params, overrides=overrides or (), mode=command)
    say_settings(run, command, log)
    if run.config.decoding.method == "cc":  # a backend this machine lacks fails here, not after the inference
        from nisbflow.decode.backends import check_backend

        check_backend(run.config.decoding.backend)
    for split in splits:
        seed, _ = seed_of(run.config, split)
        _check_affinity_mask(run, seed, split, log)
    return run


def _check_affinity_mask(run, seed, split: str, log) -> None:
    """``decoding.affinity_mask_path`` checked before any inference: it must exist and have the seed image's shape;
    an HDF5 or TIFF mask is copied to zarr once (under ``<save_path>/``) and the run decodes with the copy."""
    from nisbflow.data.formats import zarr_input
    from nisbflow.decode.outputs import open_affinity_mask
    from nisbflow.paths import locate

    mask = run.config.decoding.affinity_mask_path
    if mask is None:
        return
    if locate(mask).kind != "zarr":
        if not Path(locate(mask).file).is_file():
            raise ConfigError(
                f"decoding.affinity_mask_path {mask}: {locate(mask).file} does not exist (set the "
                "mask of the seed you decode, or decoding.affinity_mask_path=null)"
            )
        Path(run.config.save_path).mkdir(parents=True, exist_ok=True)
        mask = zarr_input(mask, role="affinity mask", near=Path(run.config.save_path) / "mask.zarr", log=log)
        run.config.decoding.affinity_mask_path = mask
    open_affinity_mask(mask, seed.shape)
