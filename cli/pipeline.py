"""The main job's commands: ``infer``, ``decode``, ``evaluate``, ``test`` and ``demo``. Each parses its options,
calls its library entry in :mod:`nisbflow.jobs` and prints the report."""

from __future__ import annotations


import typer

from nisbflow_cli.app import app
from nisbflow_cli.errors import friendly_errors
from nisbflow_cli.options import (
    Checkpoint,
    Cluster,
    ConfigFile,
    DashboardAddress,
    Force,
    InferenceChunks,
    InputAxes,
    Layout,
    MemoryLimit,
    Overrides,
    Overwrite,
    Params,
    Weights,
    Workers,
    cluster_spec,
    parse_channels,
    parse_thresholds,
    parse_triple,
    with_weights,
)
from nisbflow_cli.tables import console, demo_table, dense_table, metrics_table, say


@app.command()
@friendly_errors
def infer(
    image: str = typer.Argument(
        ...,
        help="EM image zarr array, (X, Y, Z) or (X, Y, Z, 1) uint8, e.g. "
        "seed/data.zarr/img; or an HDF5 dataset (im.h5:/main) or TIFF stack "
        "(see --axes).",
    ),
    output: str = typer.Argument(..., help="Affinities zarr array to write, (C, X, Y, Z) float16."),
    checkpoint: Checkpoint = ...,
    chunks: str | None = typer.Option(
        None,
        help="Block (write region) size X,Y,Z (default 768,768,768). Each "
        "grid window runs once whatever the block; smaller blocks need "
        "less memory per task and give more tasks.",
    ),
    split: int = typer.Option(
        1,
        "--split",
        min=1,
        help="Tasks per block, each predicting a share of its windows "
        "(no window runs twice): with fewer blocks than workers, "
        "e.g. one large block, set it to the worker count.",
    ),
    cluster: Cluster = None,
    workers: Workers = None,
    memory_limit: MemoryLimit = None,
    dashboard_address: DashboardAddress = None,
    whole: bool = typer.Option(False, "--whole", help="Single-process whole-volume reference (loads the image)."),
    channels: str | None = typer.Option(
        None,
        help="Output channels to keep, e.g. 0,1,2,3,4,5 (sets "
        "inference.select_channel; default: the checkpoint's, else "
        "0,1,2, the short-range affinities decoding reads).",
    ),
    axes: InputAxes = None,
    layout: Layout = "ngff",
    overwrite: Overwrite = False,
    force: Force = False,
    config: ConfigFile = None,
    params: Params = None,
    overrides: Overrides = None,
    weights: Weights = None,
):
    """Affinities from an EM image with the BANIS sliding-window geometry, block by block on Dask.

    Settings resolve as defaults ← the checkpoint's recorded ones (window size, overlap, channels, threshold) ←
    --config ← --params ← KEY=VALUE, and are printed first and recorded in the output's attributes. Every window
    of the global grid runs once, in the task of the block holding its start, and blocks blend the weighted sums of
    the tasks reaching them, so the result equals --whole for any block size. A second bar counts windows.
    Finished blocks are recorded: re-running after an interruption resumes where it stopped.
    """
    from nisbflow.jobs import infer as infer_job

    report = infer_job(
        image,
        output,
        checkpoint,
        chunks=parse_triple(chunks, "--chunks"),
        split=split,
        whole=whole,
        channels=parse_channels(channels) if channels else None,
        overwrite=overwrite,
        force=force,
        config=config,
        params=params,
        overrides=with_weights(overrides, weights),
        log=say,
        axes=axes,
        layout=layout,
        cluster=cluster_spec(cluster, workers, memory_limit, dashboard_address),
    )
    summary = report.summary
    if report.whole:
        say(
            f"wrote {output}: {summary.shape} {report.settings.config.inference.output_dtype}, "
            f"{summary.voxels_per_second / 1e6:.2f} Mvoxel/s (whole volume, one process)"
        )
        return
    say(
        f"wrote {output}: {summary.blocks} blocks ({summary.blocks_skipped} already done), "
        f"{summary.voxels_per_second / 1e6:.2f} Mvoxel/s, {summary.windows_line()}"
        + (
            f"; compiled in {summary.warm_up_seconds:.0f} s before the blocks"
            if summary.warm_up_seconds is not None
            else ""
        )
    )


@app.command()
@friendly_errors
def decode(
    affinities: str = typer.Argument(
        ...,
        help="Affinities zarr array, (C, X, Y, Z) float16/float32 with C = 3 or "
        "6, e.g. pred.zarr; or PyTorch Connectomics' HDF5 prediction "
        "(test_im_prediction.h5, CZYX) or a TIFF stack (see --axes).",
    ),
    output: str = typer.Argument(
        ...,
        help="Segmentation zarr to write: an (X, Y, Z) array, or a group of "
        "threshold-T arrays when several thresholds are given.",
    ),
    threshold: list[str] | None = typer.Option(
        None,
        "--threshold",
        "-t",
        metavar="FLOAT[,FLOAT...]",
        help="cc: hard edge at affinity > T; waterz: merge while the "
        "cheapest edge scores below T. Several at once: repeat -t or "
        "separate with commas (-t 0.3,0.5). Default: decoding.threshold "
        "(cc) as resolved: --config/--params/KEY=VALUE, else the one the "
        "affinities record (the model's tuned value), else 0.75; "
        "decoding.waterz.thresholds (waterz).",
    ),
    chunks: str | None = typer.Option(
        None, help="Block and output chunk size X,Y,Z (default: the affinities' chunks)."
    ),
    cluster: Cluster = None,
    workers: Workers = None,
    memory_limit: MemoryLimit = None,
    dashboard_address: DashboardAddress = None,
    mask: str | None = typer.Option(None, help="Affinity mask zarr array (X, Y, Z); 0 turns off a voxel's edges."),
    backend: str | None = typer.Option(
        None, help="numba (CPU) or cupy (GPU); default decoding.backend (connected components only)."
    ),
    method: str | None = typer.Option(
        None,
        "--method",
        help="cc: connected components of affinities > "
        "threshold (BANIS); waterz: watershed fragments agglomerated until the "
        "threshold (decoding.waterz.*). Default decoding.method (cc).",
    ),
    scoring: str | None = typer.Option(
        None,
        "--scoring",
        help="With --method waterz: the edge scoring function, "
        "mean_aff or affQ_his256 (default decoding.waterz.scoring, aff85_his256).",
    ),
    gt: str | None = typer.Option(
        None,
        "--gt",
        help="Dense ground truth zarr array (X, Y, Z): report adapted Rand error and VOI for every threshold.",
    ),
    axes: InputAxes = None,
    layout: Layout = "ngff",
    overwrite: Overwrite = False,
    force: Force = False,
    config: ConfigFile = None,
    params: Params = None,
    overrides: Overrides = None,
):
    """Affinities → segmentation, block-wise on Dask: connected components (BANIS decode_affinity_cc, the default)
    or watershed + agglomeration (--method waterz).

    cc: every block is labelled with a one-voxel halo and a union-find stitches the blocks, so the result equals
    whole-volume decoding for any chunking. waterz: each block's watershed fragments, one region adjacency graph
    summed over blocks, one agglomeration for every threshold (-t, repeatable; default decoding.waterz.thresholds),
    then a relabel pass. The output is written under a temporary name and renamed when done; a re-run resumes.
    """
    from nisbflow.jobs import decode as decode_job

    report = decode_job(
        affinities,
        output,
        thresholds=parse_thresholds(threshold) if threshold else None,
        method=method,
        scoring=scoring,
        chunks=parse_triple(chunks, "--chunks"),
        mask=mask,
        backend=backend,
        gt=gt,
        overwrite=overwrite,
        force=force,
        config=config,
        params=params,
        overrides=overrides or [],
        log=say,
        thresholds_given_as="(-t)",
        axes=axes,
        layout=layout,
        cluster=cluster_spec(cluster, workers, memory_limit, dashboard_address),
    )
    if report.graph:
        say(f"region adjacency graph: {report.graph['fragments']:,} fragments, {report.graph['edges']:,} edges")
    for value, n in report.counts.items():
        say(f"threshold {value:g}: {n} segments → {report.outputs[value]}")
    if report.dense:
        console.print(dense_table([(value, report.counts[value], dense) for value, dense in report.dense.items()], gt))


@app.command()
@friendly_errors
def evaluate(
    segmentation: str = typer.Argument(..., help="Predicted segmentation zarr array (X, Y, Z), e.g. seg.zarr."),
    skeleton: str = typer.Option(..., "--skeleton", "-s", help="NISB skeleton.pkl (or .json / .npz) of the volume."),
    voxel_size: str = typer.Option(
        "9,9,20",
        "--voxel-size",
        help="nm per voxel, X,Y,Z (for edge lengths when the skeleton has no edge_length or nm_position).",
    ),
    merge_threshold: int = typer.Option(
        1,
        "--merge-threshold",
        min=1,
        help="Nodes a skeleton needs inside a segment to count toward a merger there (1, as BANIS: any node).",
    ),
    gt: str | None = typer.Option(None, "--gt", help="Dense ground truth zarr array for adapted Rand and VOI."),
    json_path: str | None = typer.Option(None, "--json", help="Write every metric to this JSON file."),
    plot: str | None = typer.Option(None, "--plot", help="PNG of each skeleton's run length, sorted, by error type."),
    view: bool = typer.Option(
        False,
        "--view",
        help="Then open the result in neuroglancer (nisbflow view) with the "
        "skeleton coloured by error type; serves until Ctrl-C.",
    ),
    port: int = typer.Option(0, "--port", help="With --view: the viewer's port (0: any free port)."),
    metric: list[str] = typer.Option(
        ["nerl"],
        "--metric",
        help="nerl (BANIS's metrics.py, the NISB leaderboard's; "
        "always computed) and/or em_erl (PyTorch Connectomics' NERL, em_erl's rules).",
    ),
    em_erl_merge_threshold: int = typer.Option(
        50,
        "--em-erl-merge-threshold",
        help="With --metric em_erl: nodes a skeleton needs in a segment to merge there (PyTC's NISB tutorial: 50).",
    ),
    axes: str | None = typer.Option(
        None,
        "--axes",
        help="An HDF5 or TIFF segmentation's axis order (default zyx, as PyTorch Connectomics writes it).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Let --json / --plot replace a file nisbflow did not write (never an input)."
    ),
):
    """NERL, ERL and skeleton VOI of a segmentation against NISB skeletons (BANIS metrics.py semantics); dense
    adapted Rand error and VOI with --gt; PyTorch Connectomics' NERL too with --metric em_erl. Segment ids are read
    only in the chunks that hold skeleton nodes."""
    from nisbflow.jobs import evaluate as evaluate_job

    report = evaluate_job(
        segmentation,
        skeleton,
        voxel_size=parse_triple(voxel_size, "--voxel-size", float),
        merge_threshold=merge_threshold,
        gt=gt,
        json_path=json_path,
        plot=plot,
        metrics=tuple(metric),
        em_erl_merge_threshold=em_erl_merge_threshold,
        axes=axes,
        force=force,
        log=say,
    )
    console.print(metrics_table(report.result, report.dense, title=f"{segmentation} against {skeleton}"))
    for written in (report.json_path, report.plot):
        if written:
            console.print(f"wrote {written}")
    if view:
        from nisbflow.view import view as start_view
        from nisbflow_cli.data import serve_view

        shown = start_view(
            segmentations=[segmentation], ground_truth=gt, skeleton=skeleton, metrics=report.result.to_dict(), port=port
        )
        serve_view(shown, f"{segmentation}, skeleton by error type")


@app.command("test")
@friendly_errors
def test_command(
    checkpoint: Checkpoint = ...,
    config: ConfigFile = None,
    chunks: InferenceChunks = None,
    cluster: Cluster = None,
    workers: Workers = None,
    memory_limit: MemoryLimit = None,
    dashboard_address: DashboardAddress = None,
    params: Params = None,
    overrides: Overrides = None,
    weights: Weights = None,
):
    """Infer → decode → evaluate on data.test.path / data.test.skeleton, writing affinities.zarr,
    segmentation.zarr and metrics.json under <save_path>/<timestamp>/. Decodes with decoding.method: cc at
    decoding.threshold, or waterz at each of decoding.waterz.thresholds (one table each)."""
    from nisbflow.jobs import test as test_job

    report = test_job(
        checkpoint,
        chunks=parse_triple(chunks, "--chunks"),
        config=config,
        params=params,
        overrides=with_weights(overrides, weights),
        log=say,
        cluster=cluster_spec(cluster, workers, memory_limit, dashboard_address),
    )
    configuration = report.settings.config
    method = "waterz threshold" if configuration.decoding.method == "waterz" else "threshold"
    for value, one in report.results.items():
        console.print(metrics_table(one, title=f"{configuration.data.test.path}: {method} {value:g}"))
    console.print(f"wrote {report.folder}/affinities.zarr, segmentation.zarr, metrics.json")


@app.command()
@friendly_errors
def demo(
    out: str = typer.Argument("outputs/demo", help="Folder for the synthetic seed and every output."),
    shape: str = typer.Option("256,256,128", help="Size of the synthetic test seed, X,Y,Z voxels."),
    seed: int = typer.Option(101, help="Synthetic seed (101 is NISB's test seed number; never trained on)."),
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        help="Model to run (default: the shipped nisb-tiny-synthetic), with the inference settings it records.",
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", "-t", help="Decoding threshold (default: the shipped model's tuned decoding.threshold)."
    ),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also run the untrained architecture."),
    cluster: str = typer.Option("local", help="local | dask-cuda | sync | tcp://scheduler:8786."),
    workers: int | None = typer.Option(2, help="Local workers."),
    memory_limit: MemoryLimit = None,
    dashboard_address: DashboardAddress = None,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the outputs of an earlier demo."),
):
    """The main job on built-in data: synthesize a test seed → infer (Dask) → decode → evaluate, printing NERL.

    Runs the model shipped inside nisbflow (a small MedNeXt trained on synthetic seeds, see `nisbflow model list`)
    and, for comparison, the same architecture untrained. Watch the Dask dashboard at the printed link.
    """
    from nisbflow.jobs import demo as demo_job

    size = parse_triple(shape, "--shape")
    runs = demo_job(
        out,
        shape=size,
        seed=seed,
        checkpoint=checkpoint,
        threshold=threshold,
        baseline=baseline,
        overwrite=overwrite,
        cluster=cluster_spec(cluster, workers, memory_limit, dashboard_address),
        log=say,
    )
    for run in runs:
        console.print(metrics_table(run.result, title=f"{run.label} model: {run.checkpoint}"))
    console.print(demo_table(runs, seed, size))
