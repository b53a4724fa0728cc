"""Tuning commands: ``tune`` (the decoding threshold on the validation seed) and ``tune-test`` (then the test
seed at the best threshold)."""

from __future__ import annotations

from nisbflow_cli.app import app
from nisbflow_cli.errors import friendly_errors
from nisbflow_cli.options import (
    Checkpoint,
    Cluster,
    ConfigFile,
    DashboardAddress,
    InferenceChunks,
    MemoryLimit,
    Overrides,
    Params,
    TuneOut,
    Weights,
    Workers,
    cluster_spec,
    parse_triple,
    with_weights,
)
from nisbflow_cli.tables import console, curve_table, metrics_table, say


@app.command()
@friendly_errors
def tune(
    checkpoint: Checkpoint = ...,
    config: ConfigFile = None,
    out: TuneOut = None,
    chunks: InferenceChunks = None,
    cluster: Cluster = None,
    workers: Workers = None,
    memory_limit: MemoryLimit = None,
    dashboard_address: DashboardAddress = None,
    params: Params = None,
    overrides: Overrides = None,
    weights: Weights = None,
):
    """Optuna search of decoding.threshold on the validation seed (data.val), maximising NERL; with
    decoding.method=waterz, of the agglomeration threshold (tune.waterz_threshold, default 0.1–0.7 step 0.1).

    Infers the validation affinities once (cached), then each trial decodes block-wise and scores NERL. Defaults:
    TPE with 4 random startup trials, 4 trials, threshold 0.4–0.9 step 0.1; tune.sampler=grid scores the whole grid
    in one decoding pass. The study is kept in tune.storage (sqlite under save_path): re-running appends trials.
    Writes best.yaml (use it with nisbflow test --params) and threshold_curve.png. Overrides such as
    tune.sampler=grid tune.n_trials=8 go after the options.
    """
    from nisbflow.jobs import tune as tune_job

    result = tune_job(
        checkpoint,
        out=out,
        chunks=parse_triple(chunks, "--chunks"),
        config=config,
        params=params,
        overrides=with_weights(overrides, weights),
        log=say,
        cluster=cluster_spec(cluster, workers, memory_limit, dashboard_address),
    )
    console.print(curve_table(result))
    console.print(
        f"best threshold {result.best_threshold:g}: {result.metric} {result.best_value:.4f} "
        f"({result.n_trials} completed trials in study {result.study_name!r}, {result.storage})"
    )
    console.print(f"wrote {result.params_path} and {result.plot_path}")


@app.command("tune-test")
@friendly_errors
def tune_test(
    checkpoint: Checkpoint = ...,
    config: ConfigFile = None,
    out: TuneOut = None,
    chunks: InferenceChunks = None,
    cluster: Cluster = None,
    workers: Workers = None,
    memory_limit: MemoryLimit = None,
    dashboard_address: DashboardAddress = None,
    params: Params = None,
    overrides: Overrides = None,
    weights: Weights = None,
):
    """Tune decoding.threshold on data.val, then infer → decode → evaluate data.test with the best threshold."""
    from nisbflow.jobs import tune_test as tune_test_job

    report = tune_test_job(
        checkpoint,
        out=out,
        chunks=parse_triple(chunks, "--chunks"),
        config=config,
        params=params,
        overrides=with_weights(overrides, weights),
        log=say,
        cluster=cluster_spec(cluster, workers, memory_limit, dashboard_address),
    )
    configuration, result = report.settings.config, report.tuning
    console.print(curve_table(result))
    title = (
        f"test {configuration.data.test.path}: threshold {result.best_threshold:g} (tuned on "
        f"{configuration.data.val.path})"
    )
    console.print(metrics_table(report.test, title=title))
    console.print(f"wrote {result.params_path}, {result.plot_path} and {report.folder}/metrics.json")
