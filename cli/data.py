"""Data commands: ``synth``, ``synth-affinities``, ``convert``, ``skeleton convert``, ``skeletonize`` and ``view``."""

from __future__ import annotations


import typer

from nisbflow_cli.app import app, skeleton_app
from nisbflow_cli.errors import friendly_errors
from nisbflow_cli.options import Force, InputAxes, parse_triple
from nisbflow_cli.tables import console, say, synth_table


@app.command()
@friendly_errors
def synth(
    out: str = typer.Argument(
        ..., help="Seed folder to write (layout 'seed'), or the root of a NISB tree (layout 'nisb')."
    ),
    shape: str = typer.Option("256,256,128", help="Volume size in voxels, X,Y,Z (9×9×20 nm voxels)."),
    seed: int = typer.Option(0, help="Random seed; the same seed always gives the same volume."),
    layout: str = typer.Option(
        "seed", help="'seed': one seed folder; 'nisb': train/seed0..K-1, val/seed100, test/seed101."
    ),
    train_seeds: int = typer.Option(2, "--train-seeds", help="Training seeds for --layout nisb."),
    chunks: str = typer.Option("128,128,128", help="Zarr chunk (and Dask block) size, X,Y,Z."),
    thin_neurites: bool = typer.Option(
        False, "--thin-neurites", help="NISB's hard setting: thin, tightly touching neurites."
    ),
    slice_defects: bool = typer.Option(False, "--slice-defects", help="Dropped and shifted z slices in the image."),
    low_contrast: bool = typer.Option(False, "--low-contrast", help="Weak membranes and more noise."),
    zarr_format: int = typer.Option(2, "--zarr-format", help="2 (what NISB ships) or 3."),
    workers: int | None = typer.Option(None, help="Threads for the local scheduler (default: all cores)."),
    preview: str | None = typer.Option(None, help="Also save a PNG of image and segmentation slices."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace seeds nisbflow wrote."),
    force: Force = False,
):
    """Write synthetic NISB-like data: data.zarr (img uint8 X,Y,Z,1; seg uint32 X,Y,Z) and skeleton.pkl."""
    from nisbflow.jobs import synth as synth_job

    presets = [
        name
        for name, on in (("thin", thin_neurites), ("slice_defects", slice_defects), ("low_contrast", low_contrast))
        if on
    ]
    summaries = synth_job(
        out,
        shape=parse_triple(shape, "--shape"),
        seed=seed,
        layout=layout,
        train_seeds=train_seeds,
        chunks=parse_triple(chunks, "--chunks"),
        presets=presets,
        zarr_format=zarr_format,
        workers=workers,
        preview=preview,
        overwrite=overwrite,
        force=force,
        log=say,
    )
    console.print(synth_table(summaries))
    for s in summaries:
        console.print(f"wrote {s.path}/data.zarr (img, seg) and {s.path}/skeleton.pkl")
    if preview:
        console.print(f"preview: {preview}")


@app.command("synth-affinities")
@friendly_errors
def synth_affinities(
    segmentation: str = typer.Argument(
        ...,
        help="Ground-truth segmentation zarr array (X, Y, Z), e.g. "
        "seed/data.zarr/seg; or an HDF5 dataset or TIFF stack (--axes).",
    ),
    output: str = typer.Argument(..., help="Affinities zarr array to write, (3, X, Y, Z) float16."),
    noise: float = typer.Option(0.15, help="Standard deviation of the Gaussian noise added to 0.9 / 0.1."),
    seed: int = typer.Option(0, help="Random seed of the noise."),
    chunks: str | None = typer.Option(None, help="Spatial chunk size X,Y,Z (default: the segmentation's)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing output of the same kind that nisbflow wrote."
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing output that nisbflow did not write (never an input)."
    ),
    axes: InputAxes = None,
):
    """Stand-in predictions: noisy short-range affinities of a ground truth (0.9 inside a neuron, 0.1 across a
    boundary, plus noise), for trying decoding and evaluation without a trained model."""
    from nisbflow.jobs import synth_affinities as synth_affinities_job

    synth_affinities_job(
        segmentation,
        output,
        noise=noise,
        seed=seed,
        chunks=parse_triple(chunks, "--chunks"),
        overwrite=overwrite,
        force=force,
        log=say,
        axes=axes,
    )
    console.print(f"wrote {output}: (3, X, Y, Z) float16 affinities, noise {noise:g}")


@skeleton_app.command("convert")
@friendly_errors
def skeleton_convert(
    source: str = typer.Argument(..., help="skeleton.pkl (loaded with a restricted unpickler), .json or .npz"),
    destination: str = typer.Argument(..., help="Output; the suffix picks the format: .json (node-link) or .npz"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing skeleton nisbflow wrote."),
    force: Force = False,
):
    """Convert a skeleton to a pickle-free form (JSON node-link or npz) that every command also accepts."""
    from nisbflow.jobs import skeleton_convert as convert_job

    summary = convert_job(source, destination, overwrite=overwrite, force=force)
    console.print(
        f"wrote {destination}: {summary.n_nodes} nodes, {summary.n_neurons} skeletons "
        f"({summary.n_scored} with edges, which NERL scores), "
        f"{summary.path_length_nm / 1000:.1f} µm of path"
    )


@app.command()
@friendly_errors
def convert(
    source: str = typer.Argument(
        ...,
        help="Volume to read: zarr (seg.zarr, data.zarr/img), HDF5 (pred.h5:/main, or "
        "pred.h5 for its main or only dataset) or a TIFF stack (stack.tif).",
    ),
    output: str = typer.Argument(
        ...,
        help="Volume to write, format by suffix: .zarr, .h5 (file.h5:/dataset; "
        "PyTorch Connectomics' ZYX layout) or .tif.",
    ),
    axes: str | None = typer.Option(
        None,
        "--axes",
        help="The source's axis order, e.g. zyx or czyx (default: "
        "zyx / czyx for HDF5 and TIFF, as PyTorch Connectomics writes them; the "
        "recorded order for zarr).",
    ),
    layout: str = typer.Option(
        "ngff",
        "--layout",
        help="zarr output: ngff (an OME-NGFF image group, what nisbflow "
        "writes) or plain (the array at the store's root, which BANIS's metrics.py reads).",
    ),
    chunks: str | None = typer.Option(None, "--chunks", help="Output chunks X,Y,Z (default 128,128,128)."),
    voxel_size: str | None = typer.Option(
        None, "--voxel-size", help="nm per voxel X,Y,Z to record (default: the source's, else 9,9,20)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing volume nisbflow wrote."),
    force: Force = False,
):
    """Convert a volume between zarr, HDF5 and TIFF block by block, to nisbflow's XYZ order from the source's
    (--axes) and back to ZYX for HDF5 and TIFF outputs."""
    from nisbflow.jobs import convert as convert_job

    report = convert_job(
        source,
        output,
        axes=axes,
        layout=layout,
        chunks=parse_triple(chunks, "--chunks"),
        voxel_size=parse_triple(voxel_size, "--voxel-size", float),
        overwrite=overwrite,
        force=force,
    )
    console.print(
        f"wrote {report.output}: {report.dtype} {report.axes.upper()} "
        f"{'×'.join(map(str, report.shape))} (source axes {report.source_axes.upper()})"
    )


@app.command()
@friendly_errors
def skeletonize(
    segmentation: str = typer.Argument(
        ..., help="Dense ground-truth segmentation zarr array (X, Y, Z), or an HDF5 dataset or TIFF stack (--axes)."
    ),
    output: str = typer.Argument(..., help="Skeleton file to write: .pkl (NISB), .json or .npz."),
    voxel_size: str = typer.Option("9,9,20", "--voxel-size", help="nm per voxel, X,Y,Z."),
    dust_threshold: int = typer.Option(1000, "--dust-threshold", help="Skip segments with fewer voxels."),
    parallel: int = typer.Option(1, help="kimimaro processes (0: all cores)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing skeleton nisbflow wrote."),
    force: Force = False,
    axes: str | None = typer.Option(
        None,
        "--axes",
        help="An HDF5 or TIFF segmentation's axis order (default zyx, as PyTorch Connectomics writes it).",
    ),
):
    """Skeletons in the NISB format (nodes with id, index_position, nm_position; edge_length in nm) from a dense
    segmentation, with kimimaro's TEASAR. The volume is loaded whole: use it on seeds and crops."""
    from nisbflow.jobs import skeletonize as skeletonize_job

    summary = skeletonize_job(
        segmentation,
        output,
        voxel_size=parse_triple(voxel_size, "--voxel-size", float),
        dust_threshold=dust_threshold,
        parallel=parallel,
        overwrite=overwrite,
        force=force,
        axes=axes,
    )
    console.print(
        f"wrote {output}: {summary.n_neurons} skeletons ({summary.n_scored} with edges, which NERL "
        f"scores), {summary.n_nodes} nodes, "
        f"{summary.path_length_nm / 1000:.1f} µm of path"
    )


def serve_view(shown, what: str) -> None:
    """Print a running viewer's link and keep serving it until Ctrl-C (which ends the command normally)."""
    import time

    console.print(f"neuroglancer: [link={shown.url}]{shown.url}[/link]  ({what})")
    console.print("serving until Ctrl-C; over SSH: ssh -L PORT:localhost:PORT host, with --port PORT")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("viewer stopped")


@app.command()
@friendly_errors
def view(
    image: str | None = typer.Argument(None, help="EM image zarr array, (X, Y, Z) or (X, Y, Z, 1) uint8."),
    affinities: str | None = typer.Option(
        None, "--affinities", help="Affinities (C, X, Y, Z); channels 0..2 shown as RGB."
    ),
    segmentation: list[str] | None = typer.Option(None, "--seg", help="Segmentation (X, Y, Z); repeat for several."),
    ground_truth: str | None = typer.Option(None, "--gt", help="Ground-truth segmentation (X, Y, Z)."),
    skeleton: str | None = typer.Option(
        None,
        "--skeleton",
        help="NISB skeleton: nodes as points coloured by error type (merged red, split orange, correct green).",
    ),
    metrics: str | None = typer.Option(
        None,
        "--metrics",
        help="metrics.json from nisbflow evaluate --json for the error types (default: evaluate the first --seg).",
    ),
    bind: str = typer.Option("127.0.0.1", "--bind", help="Address the viewer's server listens on."),
    port: int = typer.Option(0, "--port", help="Port of the viewer's server (0: any free port)."),
):
    """A neuroglancer viewer over zarr volumes, read lazily: EM image, affinities, segmentations and ground truth
    in nm, with skeleton nodes coloured by evaluate's error type and the worst mergers and splits listed in the
    'worst errors' layer."""
    from nisbflow.view import view as start_view

    shown = start_view(
        image,
        affinities=affinities,
        segmentations=segmentation or (),
        ground_truth=ground_truth,
        skeleton=skeleton,
        metrics=metrics,
        bind=bind,
        port=port,
    )
    serve_view(shown, "layers: " + ", ".join(layer.name for layer in shown.viewer.state.layers))
