"""The entries of the tuning commands: ``tune`` and ``tune-test``, and the ``best.yaml`` a tuned checkpoint has."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nisbflow.jobs.common import ClusterSpec, cluster_session, print_line, resolve_run
from nisbflow.pipelines import tune_and_test

if TYPE_CHECKING:  # report fields' types; the modules load where a command uses them
    from nisbflow.evaluate import NerlResult
    from nisbflow.settings import RunSettings
    from nisbflow.tune import TuneResult


def tuned_params(checkpoint, *, config: str | None = None, overrides=None, out: str | None = None) -> Path | None:
    """The ``best.yaml`` that ``nisbflow tune`` (or ``--mode tune``) wrote for this checkpoint, its weights and
    decoding method under ``out`` (default ``<save_path>/tune``), or None: what PyTorch Connectomics' workflow
    (tune, then test) decodes with, found where ``tune`` puts it."""
    from nisbflow.settings import resolve_settings
    from nisbflow.tune import checkpoint_folder

    run = resolve_settings(checkpoint, config=config, overrides=overrides or (), mode="test")
    root = Path(out) if out else Path(str(run.config.save_path)) / "tune"  # filled in when the config validates
    found = checkpoint_folder(root, run) / run.config.decoding.method / "best.yaml"
    return found if found.is_file() else None


def tune(
    checkpoint,
    *,
    out: str | None = None,
    chunks: tuple[int, int, int] | None = None,
    config: str | None = None,
    params: str | None = None,
    overrides=None,
    cluster: ClusterSpec | None = None,
    log=print_line,
):
    """``nisbflow tune``: the decoding threshold tuned on the validation seed (``data.val.path``); returns the
    :class:`~nisbflow.tune.TuneResult` (best threshold, curve, best.yaml and threshold_curve.png written)."""
    from nisbflow.tune import tune as tune_study

    run = resolve_run(checkpoint, config, params, overrides, "tune", ("val",), log)
    with cluster_session(run.config, cluster, log):
        return tune_study(run, out_dir=out, block=chunks, log=log)


@dataclass
class TuneTestReport:
    """What ``nisbflow tune-test`` did: ``settings``, ``tuning`` (:class:`~nisbflow.tune.TuneResult` on
    ``data.val``), the test output ``folder`` and ``test`` (:class:`~nisbflow.evaluate.NerlResult` on ``data.test``
    at the tuned threshold)."""

    settings: RunSettings
    tuning: TuneResult
    folder: Path
    test: NerlResult


def tune_test(
    checkpoint,
    *,
    out: str | None = None,
    chunks: tuple[int, int, int] | None = None,
    config: str | None = None,
    params: str | None = None,
    overrides=None,
    cluster: ClusterSpec | None = None,
    log=print_line,
) -> TuneTestReport:
    """``nisbflow tune-test``: :func:`tune` on ``data.val``, then :func:`test` on ``data.test`` at the best
    threshold."""

    run = resolve_run(checkpoint, config, params, overrides, "tune-test", ("val", "test"), log)
    with cluster_session(run.config, cluster, log):
        tuned = tune_and_test(run, out_dir=out, block=chunks, log=log)
    return TuneTestReport(run, tuned.tuning, tuned.test.folder, tuned.test.result)
