"""The ``nisbflow`` command line: a thin Typer layer, each command calling one library function.

Configuration keys and modes follow PyTorch Connectomics' ``scripts/main.py`` so NISB tutorial users feel at home.
"""

from __future__ import annotations

import functools
from typing import List, Optional

import typer
from typer.core import TyperGroup
from rich.console import Console
from rich.table import Table

from nisbflow.errors import NisbflowError

class ReadableGroup(TyperGroup):
    """nisbflow's command groups: ``-h`` as well as ``--help``, and option types in help as words (``TEXT``,
    ``INTEGER``, ``FLOAT``; nothing after a flag) rather than ``<str>``/``<bool>``."""

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None:
            readable_metavars(command, ctx)
        return command

    def format_help(self, ctx, formatter):
        readable_metavars(self, ctx)
        return super().format_help(ctx, formatter)


READABLE_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": ""}


def readable_type(bare: str) -> str:
    """``str`` → ``TEXT``, ``list[float]`` → ``FLOAT ...`` and so on."""
    if bare.startswith("list[") and bare.endswith("]"):
        return readable_type(bare[5:-1]) + " ..."
    return READABLE_TYPES.get(bare, bare.upper())


def readable_metavars(command, ctx) -> None:
    """Give every parameter a readable type in help; flags get none."""
    from typer.core import TyperArgument, TyperOption

    for param in command.get_params(ctx):
        if isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = "" if param.is_flag else readable_type(param.bare_type())
        elif isinstance(param, TyperArgument) and "display_type_rich" not in vars(param):
            label = readable_type(param.bare_type())
            param.display_type_rich = lambda ctx, label=label: label  # this parameter's type column only


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="nisbflow",
    help="Dense neuron segmentation of EM volumes at scale: the NISB BANIS baseline as Dask graphs over zarr.\n\n"
    "Axes are XYZ as NISB stores them; volumes are zarr arrays named by path or URL, e.g. run/seed101/data.zarr/img.",
    no_args_is_help=True,
    add_completion=False,
    cls=ReadableGroup,
    context_settings=HELP_OPTIONS,
)
config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True, cls=ReadableGroup,
                         context_settings=HELP_OPTIONS)
skeleton_app = typer.Typer(help="Work with NISB skeletons (skeleton.pkl).", no_args_is_help=True, cls=ReadableGroup,
                           context_settings=HELP_OPTIONS)
app.add_typer(config_app, name="config")
app.add_typer(skeleton_app, name="skeleton")
model_app = typer.Typer(help="Model checkpoints.", no_args_is_help=True, cls=ReadableGroup,
                        context_settings=HELP_OPTIONS)
app.add_typer(model_app, name="model")

console = Console()
errors = Console(stderr=True)


OPTIONAL_EXTRAS = {"cupy": "gpu", "cupy_backends": "gpu", "dask_cuda": "gpu", "dask_jobqueue": "slurm",
                   "kimimaro": "skeleton", "s3fs": "cloud", "gcsfs": "cloud"}
"""Optional packages and the nisbflow extra that installs each."""

OPTIONS = {"debug": False}


def _print_version(value: bool) -> None:
    if value:
        from nisbflow import __version__

        typer.echo(f"nisbflow {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error instead of one line."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print nisbflow's version and exit."),
):
    """Dense neuron segmentation of EM volumes at scale: the NISB BANIS baseline as Dask graphs over zarr."""
    OPTIONS["debug"] = debug


def one_line(error: BaseException) -> str:
    """An expected failure as one line: nisbflow's own errors as they are, missing optional packages with the extra
    that installs them, and file-system or network errors with the path or address they concern."""
    if isinstance(error, NisbflowError):
        return " ".join(str(error).split())
    if isinstance(error, ImportError):
        name = (error.name or str(error)).split(".")[0]
        extra = OPTIONAL_EXTRAS.get(name)
        return f"missing optional package {name}" + (f": pip install 'nisbflow[{extra}]'" if extra else f" ({error})")
    if isinstance(error, OSError):
        import errno

        reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
        staging = getattr(error, "nisbflow_staging", None)
        if error.errno in (errno.ENOSPC, errno.EDQUOT) and staging:
            return (f"{reason} while writing {error.filename or staging}; the finished blocks are kept in {staging}: "
                    "free space (or raise the quota) and re-run the same command to resume, or delete that folder")
        return f"{error.filename}: {reason}" if error.filename else reason
    return f"{type(error).__name__}: {error}"


def _error(message: str) -> None:
    from rich.text import Text

    errors.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)


def interrupted_message(error: KeyboardInterrupt) -> str:
    staging = getattr(error, "nisbflow_staging", None)
    if staging is None:
        return "interrupted"
    return f"interrupted; finished blocks are kept in {staging}: re-run the same command to resume"


def _terminate_as_interrupt():
    """Make SIGTERM (a batch system's or container's stop) behave like Ctrl-C, and both remembered
    (:data:`nisbflow.progress.INTERRUPTED`); returns the previous handlers."""
    import signal
    import threading

    from nisbflow.progress import INTERRUPTED, interrupt_requested

    if threading.current_thread() is not threading.main_thread():
        return None
    INTERRUPTED.clear()
    return {number: signal.signal(number, interrupt_requested) for number in (signal.SIGINT, signal.SIGTERM)}


def friendly_errors(command):
    """Expected failures (nisbflow's errors, missing or unwritable paths, unreachable schedulers, missing optional
    packages) print one line on stderr and exit with code 2; an interrupt (Ctrl-C, SIGTERM) prints one line and exits
    with 130 after in-flight block writes end, keeping what a re-run resumes from. ``--debug`` shows tracebacks."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import signal

        previous = _terminate_as_interrupt()
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt as error:
            if OPTIONS["debug"]:
                import traceback

                traceback.print_exc()
            _error(interrupted_message(error))
            raise typer.Exit(code=130) from None
        except (NisbflowError, OSError, ImportError) as error:
            if OPTIONS["debug"]:
                raise
            _error(one_line(error))
            raise typer.Exit(code=2) from None
        finally:
            for number, handler in (previous or {}).items():
                signal.signal(number, handler)

    return wrapper


def say(line: str) -> None:
    """A library entry's ``log``: one plain line on the console (no Rich markup read into it)."""
    console.print(line, highlight=False, markup=False)


DASHBOARD_HELP = ("Dashboard of a cluster nisbflow starts: ':8787' a fixed port, '127.0.0.1:8787' this machine "
                  "only (then ssh -L 8787:localhost:8787); default system.dashboard_address, any free port.")
FORCE_HELP = "Replace an existing output that nisbflow did not write (never an input)."
OVERWRITE_HELP = "Replace an existing output of the same kind that nisbflow wrote."


def parse_thresholds(values: list[str]) -> list[float]:
    """``-t`` values, each one number or several separated by commas, as floats (range-checked by the caller)."""
    numbers = []
    for text in values:
        for part in text.split(","):
            try:
                numbers.append(float(part))
            except ValueError:
                raise typer.BadParameter(f"-t / --threshold takes numbers in [0, 1] (several: -t 0.3,0.5), got "
                                         f"'{text}'") from None
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


def parse_triple(text: str, name: str, kind=int) -> tuple:
    """Parse ``"X,Y,Z"`` into three numbers, with an error that names the option."""
    try:
        values = tuple(kind(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or any(v <= 0 for v in values):
        raise typer.BadParameter(f"{name} must be three positive numbers X,Y,Z, got '{text}'")
    return values


def print_settings(run, command: str) -> None:
    """Print the resolved settings ``command`` uses (each value and the layer it came from) before it starts."""
    for line in run.describe(command):
        say(line)


PARAMS_HELP = "Parameters YAML (best.yaml from nisbflow tune) layered over --config, under KEY=VALUE."


@config_app.command("show")
@friendly_errors
def config_show(
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides, e.g. decoding.threshold=0.8"),
    config: Optional[str] = typer.Option(None, "--config", "--config-file", "-c", help="YAML file (may use _base_ inheritance)."),
):
    """Print the resolved configuration as YAML: defaults ← --config file ← KEY=VALUE overrides."""
    from nisbflow.config import config_to_yaml, load_config

    typer.echo(config_to_yaml(load_config(config, overrides or [])), nl=False)


def _summary_table(summaries) -> Table:
    """One column per seed, one row per property (fits an 80-column terminal)."""
    table = Table(title="synthetic NISB-like data", title_justify="left")
    table.add_column("")
    for s in summaries:
        table.add_column(s.path.rstrip("/").rsplit("/", 1)[-1], justify="right")
    rows = [
        ("shape (X,Y,Z)", lambda s: "×".join(str(n) for n in s.shape)),
        ("neurons", lambda s: str(s.n_neurons)),
        ("skeletons (with edges)", lambda s: f"{s.n_skeletons} ({s.n_scored_skeletons})"),
        ("skeleton nodes", lambda s: str(s.n_skeleton_nodes)),
        ("path length", lambda s: f"{s.path_length_nm / 1000:.1f} µm"),
        ("background voxels", lambda s: f"{100 * s.background_fraction:.1f} %"),
        ("grey: membrane / cell", lambda s: f"{s.membrane_mean:.0f} / {s.cytoplasm_mean:.0f}"),
    ]
    for name, value in rows:
        table.add_row(name, *(value(s) for s in summaries))
    return table


@app.command()
@friendly_errors
def synth(
    out: str = typer.Argument(..., help="Seed folder to write (layout 'seed'), or the root of a NISB tree (layout 'nisb')."),
    shape: str = typer.Option("256,256,128", help="Volume size in voxels, X,Y,Z (9×9×20 nm voxels)."),
    seed: int = typer.Option(0, help="Random seed; the same seed always gives the same volume."),
    layout: str = typer.Option("seed", help="'seed': one seed folder; 'nisb': train/seed0..K-1, val/seed100, test/seed101."),
    train_seeds: int = typer.Option(2, "--train-seeds", help="Training seeds for --layout nisb."),
    chunks: str = typer.Option("128,128,128", help="Zarr chunk (and Dask block) size, X,Y,Z."),
    thin_neurites: bool = typer.Option(False, "--thin-neurites", help="NISB's hard setting: thin, tightly touching neurites."),
    slice_defects: bool = typer.Option(False, "--slice-defects", help="Dropped and shifted z slices in the image."),
    low_contrast: bool = typer.Option(False, "--low-contrast", help="Weak membranes and more noise."),
    zarr_format: int = typer.Option(2, "--zarr-format", help="2 (what NISB ships) or 3."),
    workers: Optional[int] = typer.Option(None, help="Threads for the local scheduler (default: all cores)."),
    preview: Optional[str] = typer.Option(None, help="Also save a PNG of image and segmentation slices."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace seeds nisbflow wrote."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
):
    """Write synthetic NISB-like data: data.zarr (img uint8 X,Y,Z,1; seg uint32 X,Y,Z) and skeleton.pkl."""
    from nisbflow.synth import synthesize_layout, synthesize_seed

    size = parse_triple(shape, "--shape")
    chunk = parse_triple(chunks, "--chunks")
    if zarr_format not in (2, 3):
        raise typer.BadParameter(f"--zarr-format must be 2 or 3, got {zarr_format}")
    presets = [name for name, on in (("thin", thin_neurites), ("slice_defects", slice_defects),
                                     ("low_contrast", low_contrast)) if on]
    options = dict(presets=presets, chunks=chunk, zarr_format=zarr_format, overwrite=overwrite, force=force,
                   num_workers=workers, log=console.print)
    if layout == "seed":
        summaries = [synthesize_seed(out, size, seed, preview=preview, **options)]
    elif layout == "nisb":
        summaries = synthesize_layout(out, size, train_seeds=train_seeds, **options)
        if preview:
            from nisbflow.synth.volume import write_preview

            write_preview(f"{out.rstrip('/')}/test/seed101/data.zarr", preview, title=f"{out} test/seed101")
    else:
        raise typer.BadParameter(f"--layout must be 'seed' or 'nisb', got '{layout}'")
    console.print(_summary_table(summaries))
    for s in summaries:
        console.print(f"wrote {s.path}/data.zarr (img, seg) and {s.path}/skeleton.pkl")
    if preview:
        console.print(f"preview: {preview}")


@app.command("synth-affinities")
@friendly_errors
def synth_affinities(
    segmentation: str = typer.Argument(..., help="Ground-truth segmentation zarr array (X, Y, Z), e.g. seed/data.zarr/seg."),
    output: str = typer.Argument(..., help="Affinities zarr array to write, (3, X, Y, Z) float16."),
    noise: float = typer.Option(0.15, help="Standard deviation of the Gaussian noise added to 0.9 / 0.1."),
    seed: int = typer.Option(0, help="Random seed of the noise."),
    chunks: Optional[str] = typer.Option(None, help="Spatial chunk size X,Y,Z (default: the segmentation's)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
):
    """Stand-in predictions: noisy short-range affinities of a ground truth (0.9 inside a neuron, 0.1 across a
    boundary, plus noise), for trying decoding and evaluation without a trained model."""
    from nisbflow.synth.affinities import write_noisy_affinities

    block = parse_triple(chunks, "--chunks") if chunks else None
    write_noisy_affinities(segmentation, output, noise=noise, seed=seed, chunks=block, overwrite=overwrite,
                           force=force, log=console.print)
    console.print(f"wrote {output}: (3, X, Y, Z) float16 affinities, noise {noise:g}")


@skeleton_app.command("convert")
@friendly_errors
def skeleton_convert(
    source: str = typer.Argument(..., help="skeleton.pkl (loaded with a restricted unpickler), .json or .npz"),
    destination: str = typer.Argument(..., help="Output; the suffix picks the format: .json (node-link) or .npz"),
):
    """Convert a skeleton to a pickle-free form (JSON node-link or npz) that every command also accepts."""
    from nisbflow.data.skeleton import convert_skeleton, summarize_skeleton

    graph = convert_skeleton(source, destination)
    summary = summarize_skeleton(graph)
    console.print(f"wrote {destination}: {summary.n_nodes} nodes, {summary.n_neurons} skeletons "
                  f"({summary.n_scored} with edges, which NERL scores), "
                  f"{summary.path_length_nm / 1000:.1f} µm of path")


@app.command()
@friendly_errors
def decode(
    affinities: str = typer.Argument(..., help="Affinities zarr array, (C, X, Y, Z) float16/float32 with C = 3 or 6, e.g. pred.zarr/affinities."),
    output: str = typer.Argument(..., help="Segmentation zarr to write: an (X, Y, Z) array, or a group of "
                                           "threshold-T arrays when several thresholds are given."),
    threshold: Optional[List[str]] = typer.Option(None, "--threshold", "-t", metavar="FLOAT[,FLOAT...]",
                                                  help="cc: hard edge at affinity > T; waterz: merge while the "
                                                  "cheapest edge scores below T. Several at once: repeat -t or "
                                                  "separate with commas (-t 0.3,0.5). Default: decoding.threshold "
                                                  "(cc) as resolved: --config/--params/KEY=VALUE, else the one the "
                                                  "affinities record (the model's tuned value), else 0.75; "
                                                  "decoding.waterz.thresholds (waterz)."),
    chunks: Optional[str] = typer.Option(None, help="Block and output chunk size X,Y,Z (default: the affinities' chunks)."),
    cluster: Optional[str] = typer.Option(None, help="local | dask-cuda | slurm | sync | tcp://scheduler:8786 "
                                                     "(default: $DASK_SCHEDULER_ADDRESS if set, else system.cluster)."),
    workers: Optional[int] = typer.Option(None, help="Local workers or SLURM jobs (default: one per core)."),
    memory_limit: Optional[str] = typer.Option(None, "--memory-limit", help="Memory per local worker, e.g. 4GiB."),
    dashboard_address: Optional[str] = typer.Option(None, "--dashboard-address", help=DASHBOARD_HELP),
    mask: Optional[str] = typer.Option(None, help="Affinity mask zarr array (X, Y, Z); 0 turns off a voxel's edges."),
    backend: Optional[str] = typer.Option(None, help="numba (CPU) or cupy (GPU); default decoding.backend "
                                                     "(connected components only)."),
    method: Optional[str] = typer.Option(None, "--method", help="cc: connected components of affinities > "
                                         "threshold (BANIS); waterz: watershed fragments agglomerated until the "
                                         "threshold (decoding.waterz.*). Default decoding.method (cc)."),
    scoring: Optional[str] = typer.Option(None, "--scoring", help="With --method waterz: the edge scoring function, "
                                          "mean_aff or affQ_his256 (default decoding.waterz.scoring, aff85_his256)."),
    gt: Optional[str] = typer.Option(None, "--gt", help="Dense ground truth zarr array (X, Y, Z): report adapted "
                                                        "Rand error and VOI for every threshold."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    config: Optional[str] = typer.Option(None, "--config", "--config-file", "-c", help="YAML configuration."),
    params: Optional[str] = typer.Option(None, "--params", help=PARAMS_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value configuration overrides."),
):
    """Affinities → segmentation, block-wise on Dask: connected components (BANIS decode_affinity_cc, the default)
    or watershed + agglomeration (--method waterz).

    cc: every block is labelled with a one-voxel halo and a union-find stitches the blocks, so the result equals
    whole-volume decoding for any chunking. waterz: each block's watershed fragments, one region adjacency graph
    summed over blocks, one agglomeration for every threshold (-t, repeatable; default decoding.waterz.thresholds),
    then a relabel pass. The output is written under a temporary name and renamed when done; a re-run resumes.
    """
    from nisbflow.jobs import ClusterSpec, decode as decode_job

    report = decode_job(affinities, output, thresholds=parse_thresholds(threshold) if threshold else None,
                        method=method, scoring=scoring, chunks=parse_triple(chunks, "--chunks") if chunks else None,
                        mask=mask, backend=backend, gt=gt, overwrite=overwrite, force=force, config=config,
                        params=params, overrides=overrides or [], log=say, thresholds_given_as="(-t)",
                        cluster=ClusterSpec(cluster, workers, memory_limit, dashboard_address))
    if report.graph:
        say(f"region adjacency graph: {report.graph['fragments']:,} fragments, {report.graph['edges']:,} edges")
    for value, n in report.counts.items():
        say(f"threshold {value:g}: {n} segments → {report.outputs[value]}")
    if report.dense:
        console.print(_dense_table([(value, report.counts[value], dense) for value, dense in report.dense.items()],
                                   gt))


def _dense_table(rows, gt: str) -> Table:
    """Adapted Rand error and VOI of each threshold's segmentation against dense ground truth."""
    table = Table(title=f"dense metrics against {gt}")
    for column in ("threshold", "segments", "adapted Rand error", "VOI split", "VOI merge", "VOI sum"):
        table.add_column(column, justify="right")
    for value, n, dense in rows:
        table.add_row(f"{value:g}", f"{n:,}", f"{dense.adapted_rand_error:.4f}", f"{dense.voi_split:.4f}",
                      f"{dense.voi_merge:.4f}", f"{dense.voi_split + dense.voi_merge:.4f}")
    return table


@app.command()
@friendly_errors
def evaluate(
    segmentation: str = typer.Argument(..., help="Predicted segmentation zarr array (X, Y, Z), e.g. seg.zarr."),
    skeleton: str = typer.Option(..., "--skeleton", "-s", help="NISB skeleton.pkl (or .json / .npz) of the volume."),
    voxel_size: str = typer.Option("9,9,20", "--voxel-size", help="nm per voxel, X,Y,Z (for edge lengths when the "
                                   "skeleton has no edge_length or nm_position)."),
    merge_threshold: float = typer.Option(1, "--merge-threshold", help="Nodes a skeleton needs inside a segment to "
                                          "count toward a merger there (1, as BANIS: any node)."),
    gt: Optional[str] = typer.Option(None, "--gt", help="Dense ground truth zarr array for adapted Rand and VOI."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write every metric to this JSON file."),
    plot: Optional[str] = typer.Option(None, "--plot", help="PNG of each skeleton's run length, sorted, by error type."),
    view: bool = typer.Option(False, "--view", help="Then open the result in neuroglancer (nisbflow view) with the "
                                                    "skeleton coloured by error type; serves until Ctrl-C."),
    port: int = typer.Option(0, "--port", help="With --view: the viewer's port (0: any free port)."),
):
    """NERL, ERL and skeleton VOI of a segmentation against NISB skeletons (BANIS metrics.py semantics); dense
    adapted Rand error and VOI with --gt. Segment ids are read only in the chunks that hold skeleton nodes."""
    from nisbflow.evaluate.report import metrics_table
    from nisbflow.jobs import evaluate as evaluate_job

    report = evaluate_job(segmentation, skeleton, voxel_size=parse_triple(voxel_size, "--voxel-size", float),
                          merge_threshold=merge_threshold, gt=gt, json_path=json_path, plot=plot)
    result = report.result
    console.print(metrics_table(result, report.dense, title=f"{segmentation} against {skeleton}"))
    for written in (report.json_path, report.plot):
        if written:
            console.print(f"wrote {written}")
    if view:
        from nisbflow.view import view as start_view

        shown = start_view(segmentations=[segmentation], ground_truth=gt, skeleton=skeleton,
                           metrics=result.to_dict(), port=port)
        serve_view(shown, f"{segmentation}, skeleton by error type")


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
    image: Optional[str] = typer.Argument(None, help="EM image zarr array, (X, Y, Z) or (X, Y, Z, 1) uint8."),
    affinities: Optional[str] = typer.Option(None, "--affinities", help="Affinities (C, X, Y, Z); channels 0..2 "
                                             "shown as RGB."),
    segmentation: Optional[List[str]] = typer.Option(None, "--seg", help="Segmentation (X, Y, Z); repeat for "
                                                     "several."),
    ground_truth: Optional[str] = typer.Option(None, "--gt", help="Ground-truth segmentation (X, Y, Z)."),
    skeleton: Optional[str] = typer.Option(None, "--skeleton", help="NISB skeleton: nodes as points coloured by "
                                           "error type (merged red, split orange, correct green)."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="metrics.json from nisbflow evaluate --json for "
                                          "the error types (default: evaluate the first --seg)."),
    bind: str = typer.Option("127.0.0.1", "--bind", help="Address the viewer's server listens on."),
    port: int = typer.Option(0, "--port", help="Port of the viewer's server (0: any free port)."),
):
    """A neuroglancer viewer over zarr volumes, read lazily: EM image, affinities, segmentations and ground truth
    in nm, with skeleton nodes coloured by evaluate's error type and the worst mergers and splits listed in the
    'worst errors' layer."""
    from nisbflow.view import view as start_view

    shown = start_view(image, affinities=affinities, segmentations=segmentation or (), ground_truth=ground_truth,
                       skeleton=skeleton, metrics=metrics, bind=bind, port=port)
    serve_view(shown, "layers: " + ", ".join(layer.name for layer in shown.viewer.state.layers))


@app.command()
@friendly_errors
def skeletonize(
    segmentation: str = typer.Argument(..., help="Dense ground-truth segmentation zarr array (X, Y, Z)."),
    output: str = typer.Argument(..., help="Skeleton file to write: .pkl (NISB), .json or .npz."),
    voxel_size: str = typer.Option("9,9,20", "--voxel-size", help="nm per voxel, X,Y,Z."),
    dust_threshold: int = typer.Option(1000, "--dust-threshold", help="Skip segments with fewer voxels."),
    parallel: int = typer.Option(1, help="kimimaro processes (0: all cores)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
):
    """Skeletons in the NISB format (nodes with id, index_position, nm_position; edge_length in nm) from a dense
    segmentation, with kimimaro's TEASAR. The volume is loaded whole: use it on seeds and crops."""
    from nisbflow.jobs import skeletonize as skeletonize_job

    summary = skeletonize_job(segmentation, output, voxel_size=parse_triple(voxel_size, "--voxel-size", float),
                              dust_threshold=dust_threshold, parallel=parallel, overwrite=overwrite)
    console.print(f"wrote {output}: {summary.n_neurons} skeletons ({summary.n_scored} with edges, which NERL "
                  f"scores), {summary.n_nodes} nodes, "
                  f"{summary.path_length_nm / 1000:.1f} µm of path")


@model_app.command("init")
@friendly_errors
def model_init(
    output: str = typer.Argument(..., help="Checkpoint file to write (.pt)."),
    arch: str = typer.Option("mednext-s", "--arch", help="mednext-s (BANIS: MedNeXt-S, kernel 3, 1 → 6 channels) or "
                                                         "tiny (4 initial filters, for CPU tests and smoke runs)."),
    seed: int = typer.Option(0, help="Random seed of the initial weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
):
    """Write a randomly initialised checkpoint (model configuration + weights) for tests and smoke runs."""
    from pathlib import Path

    from nisbflow.errors import ConfigError, OutputExistsError
    from nisbflow.model import ARCHITECTURES, save_random_checkpoint

    if arch not in ARCHITECTURES:
        raise ConfigError(f"--arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    if Path(output).exists() and not overwrite:
        raise OutputExistsError(f"output {output} already exists; pass --overwrite to replace it")
    model = save_random_checkpoint(output, ARCHITECTURES[arch], seed=seed)
    n = sum(p.numel() for p in model.parameters())
    console.print(f"wrote {output}: {arch}, {n:,} parameters, random weights (seed {seed})")


@model_app.command("export")
@friendly_errors
def model_export(
    checkpoint: str = typer.Argument(..., help="Training checkpoint (e.g. run/checkpoints/best-step-4000.pt)."),
    output: str = typer.Argument(..., help="Weights-only checkpoint to write (.pt)."),
    command: Optional[str] = typer.Option(None, help="The command that trained it, recorded in the metadata."),
    config_yaml: Optional[str] = typer.Option(None, "--config-yaml", help="Also write the configuration it was "
                                              "trained with as YAML (usable with --config)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value changes to that YAML (e.g. a tuned "
                                                               "decoding.threshold)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files."),
):
    """Copy a checkpoint without its optimizer state (about a third of the size), keeping its configuration."""
    from pathlib import Path

    from nisbflow.errors import ConfigError, OutputExistsError
    from nisbflow.model import export_checkpoint

    if Path(output).exists() and not overwrite:
        raise OutputExistsError(f"output {output} already exists; pass --overwrite to replace it")
    extra = {"command": command} if command else {}
    metadata = export_checkpoint(checkpoint, output, overrides or [], **extra)
    if config_yaml:
        from nisbflow.config import Config, apply_overrides, config_to_yaml, without_derived_paths

        if "config" not in metadata:
            raise ConfigError(f"checkpoint {checkpoint} records no training configuration; --config-yaml needs one")
        if Path(config_yaml).exists() and not overwrite:
            raise OutputExistsError(f"output {config_yaml} already exists; pass --overwrite to replace it")
        trained = Config.model_validate(apply_overrides(without_derived_paths(metadata["config"]), overrides or []))
        Path(config_yaml).write_text(f"# configuration of {output} (nisbflow model export)\n" + config_to_yaml(trained))
        console.print(f"wrote {config_yaml}")
    size = Path(output).stat().st_size / 2**20
    console.print(f"wrote {output}: {size:.2f} MiB, step {metadata.get('step', '?')}, "
                  f"source sha256 {metadata['source_sha256']}")


@model_app.command("list")
@friendly_errors
def model_list():
    """The models shipped inside nisbflow, usable by name wherever a --checkpoint is asked for."""
    from nisbflow.model import SHIPPED_DIR, SHIPPED_MODELS, load_checkpoint

    table = Table(title="shipped models")
    for column in ("name", "architecture", "parameters", "file"):
        table.add_column(column)
    for name, stem in SHIPPED_MODELS.items():
        model, config = load_checkpoint(name)
        n = sum(p.numel() for p in model.parameters())
        table.add_row(name, f"MedNeXt-{config.size}, init_filters {config.init_filters}", f"{n:,}",
                      str(SHIPPED_DIR / f"{stem}.pt"))
    console.print(table)
    console.print(f"training configuration and command: {SHIPPED_DIR}/README.md")


@app.command()
@friendly_errors
def demo(
    out: str = typer.Argument("outputs/demo", help="Folder for the synthetic seed and every output."),
    shape: str = typer.Option("256,256,128", help="Size of the synthetic test seed, X,Y,Z voxels."),
    seed: int = typer.Option(101, help="Synthetic seed (101 is NISB's test seed number; never trained on)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Model to run (default: the shipped "
                                             "nisb-tiny-synthetic), with the inference settings it records."),
    threshold: Optional[float] = typer.Option(None, "--threshold", "-t", help="Decoding threshold (default: the "
                                              "shipped model's tuned decoding.threshold)."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also run the untrained architecture."),
    cluster: str = typer.Option("local", help="local | dask-cuda | sync | tcp://scheduler:8786."),
    workers: Optional[int] = typer.Option(2, help="Local workers."),
    memory_limit: Optional[str] = typer.Option(None, "--memory-limit", help="Memory per local worker."),
    dashboard_address: Optional[str] = typer.Option(None, "--dashboard-address", help=DASHBOARD_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the outputs of an earlier demo."),
):
    """The main job on built-in data: synthesize a test seed → infer (Dask) → decode → evaluate, printing NERL.

    Runs the model shipped inside nisbflow (a small MedNeXt trained on synthetic seeds, see `nisbflow model list`)
    and, for comparison, the same architecture untrained. Watch the Dask dashboard at the printed link.
    """
    from nisbflow.evaluate.report import metrics_table
    from nisbflow.jobs import ClusterSpec, demo as demo_job

    size = parse_triple(shape, "--shape")
    runs = demo_job(out, shape=size, seed=seed, checkpoint=checkpoint, threshold=threshold, baseline=baseline,
                    overwrite=overwrite, cluster=ClusterSpec(cluster, workers, memory_limit, dashboard_address),
                    log=say)
    for run in runs:
        console.print(metrics_table(run.result, title=f"{run.label} model: {run.checkpoint}"))
    summary = Table(title=f"demo: synthetic seed {seed}, {'×'.join(map(str, size))} voxels")
    for column in ("model", "NERL", "ERL (nm)", "mergers", "outputs"):
        summary.add_column(column)
    for run in runs:
        summary.add_row(run.label, f"{run.result.nerl:.3f}", f"{run.result.erl:,.0f}", str(run.result.n_mergers),
                        str(run.folder))
    console.print(summary)


@app.command()
@friendly_errors
def infer(
    image: str = typer.Argument(..., help="EM image zarr array, (X, Y, Z) or (X, Y, Z, 1) uint8, e.g. seed/data.zarr/img."),
    output: str = typer.Argument(..., help="Affinities zarr array to write, (C, X, Y, Z) float16."),
    checkpoint: str = typer.Option(..., "--checkpoint", help="Model checkpoint (.pt from training or nisbflow model "
                                                             "init), or a shipped model's name (nisbflow model list)."),
    chunks: Optional[str] = typer.Option(None, help="Block (write region) size X,Y,Z (default 768,768,768: "
                                                    "redundancy ≤ 1.25 on NISB-sized volumes)."),
    split: int = typer.Option(1, "--split", min=1, help="Tasks per block, each predicting a share of its windows "
                                                        "(no window runs twice): with fewer blocks than workers, "
                                                        "e.g. one large block, set it to the worker count."),
    cluster: Optional[str] = typer.Option(None, help="local | dask-cuda | slurm | sync | tcp://scheduler:8786 "
                                                     "(default: $DASK_SCHEDULER_ADDRESS if set, else system.cluster)."),
    workers: Optional[int] = typer.Option(None, help="Local workers (default: one per core, or per GPU)."),
    memory_limit: Optional[str] = typer.Option(None, "--memory-limit", help="Memory per local worker, e.g. 8GiB."),
    dashboard_address: Optional[str] = typer.Option(None, "--dashboard-address", help=DASHBOARD_HELP),
    whole: bool = typer.Option(False, "--whole", help="Single-process whole-volume reference (loads the image)."),
    channels: Optional[str] = typer.Option(None, help="Output channels to keep, e.g. 0,1,2,3,4,5 (sets "
                                                      "inference.select_channel; default: the checkpoint's, else "
                                                      "0,1,2, the short-range affinities decoding reads)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    config: Optional[str] = typer.Option(None, "--config", "--config-file", "-c", help="YAML configuration (inference.* settings)."),
    params: Optional[str] = typer.Option(None, "--params", help=PARAMS_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value configuration overrides."),
):
    """Affinities from an EM image with the BANIS sliding-window geometry, block by block on Dask.

    Settings resolve as defaults ← the checkpoint's recorded ones (window size, overlap, channels, threshold) ←
    --config ← --params ← KEY=VALUE, and are printed first and recorded in the output's attributes. Every block
    runs exactly the windows of the global grid that touch it, so the result equals --whole for any block size.
    Finished blocks are recorded: re-running after an interruption resumes where it stopped.
    """
    from nisbflow.jobs import ClusterSpec, infer as infer_job

    report = infer_job(image, output, checkpoint, chunks=parse_triple(chunks, "--chunks") if chunks else None,
                       split=split, whole=whole, channels=parse_channels(channels) if channels else None,
                       overwrite=overwrite, force=force, config=config, params=params, overrides=overrides or [],
                       cluster=ClusterSpec(cluster, workers, memory_limit, dashboard_address), log=say)
    summary = report.summary
    if report.whole:
        say(f"wrote {output}: {summary.shape} {report.settings.config.inference.output_dtype}, "
            f"{summary.voxels_per_second / 1e6:.2f} Mvoxel/s (whole volume, one process)")
        return
    say(f"wrote {output}: {summary.blocks} blocks ({summary.blocks_skipped} already done), "
        f"{summary.voxels_per_second / 1e6:.2f} Mvoxel/s, {summary.windows_computed} windows "
        f"for a grid of {summary.windows_in_grid} (redundancy {summary.redundancy:.2f})"
        + (f"; compiled in {summary.warm_up_seconds:.0f} s before the blocks"
           if summary.warm_up_seconds is not None else ""))


@app.command("test")
@friendly_errors
def test_command(
    checkpoint: str = typer.Option(..., "--checkpoint", help="Model checkpoint."),
    config: Optional[str] = typer.Option(None, "--config", "--config-file", "-c", help="YAML configuration (data.test.*, "
                                                                      "inference.*, decoding.*, evaluation.*)."),
    chunks: Optional[str] = typer.Option(None, help="Inference block size X,Y,Z (default 768,768,768)."),
    cluster: Optional[str] = typer.Option(None, help="local | dask-cuda | slurm | sync | tcp://… (default: $DASK_SCHEDULER_ADDRESS if set, else system.cluster)."),
    workers: Optional[int] = typer.Option(None, help="Local workers."),
    memory_limit: Optional[str] = typer.Option(None, "--memory-limit", help="Memory per local worker."),
    dashboard_address: Optional[str] = typer.Option(None, "--dashboard-address", help=DASHBOARD_HELP),
    params: Optional[str] = typer.Option(None, "--params", help=PARAMS_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value configuration overrides."),
):
    """Infer → decode → evaluate on data.test.path / data.test.skeleton, writing affinities.zarr,
    segmentation.zarr and metrics.json under <save_path>/<timestamp>/. Decodes with decoding.method: cc at
    decoding.threshold, or waterz at each of decoding.waterz.thresholds (one table each)."""
    from nisbflow.evaluate.report import metrics_table
    from nisbflow.jobs import ClusterSpec, test as test_job

    report = test_job(checkpoint, chunks=parse_triple(chunks, "--chunks") if chunks else None, config=config,
                      params=params, overrides=overrides or [], log=say,
                      cluster=ClusterSpec(cluster, workers, memory_limit, dashboard_address))
    settings, folder = report.settings.config, report.folder
    method = "waterz threshold" if settings.decoding.method == "waterz" else "threshold"
    for value, one in report.results.items():
        console.print(metrics_table(one, title=f"{settings.data.test.path}: {method} {value:g}"))
    console.print(f"wrote {folder}/affinities.zarr, segmentation.zarr, metrics.json")


@app.command()
@friendly_errors
def tune(
    checkpoint: str = typer.Option(..., "--checkpoint", help="Model checkpoint, or a shipped model's name."),
    config: Optional[str] = typer.Option(None, "--config", "--config-file", "-c", help="YAML configuration (data.val.*, tune.*, "
                                                                      "inference.*, decoding.*)."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for cached affinities, best.yaml and the curve "
                                                          "(default <save_path>/tune)."),
    chunks: Optional[str] = typer.Option(None, help="Inference block size X,Y,Z (default 768,768,768)."),
    cluster: Optional[str] = typer.Option(None, help="local | dask-cuda | slurm | sync | tcp://… (default: $DASK_SCHEDULER_ADDRESS if set, else system.cluster)."),
    workers: Optional[int] = typer.Option(None, help="Local workers."),
    memory_limit: Optional[str] = typer.Option(None, "--memory-limit", help="Memory per local worker."),
    dashboard_address: Optional[str] = typer.Option(None, "--dashboard-address", help=DASHBOARD_HELP),
    params: Optional[str] = typer.Option(None, "--params", help=PARAMS_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value configuration overrides, e.g. "
                                                               "tune.sampler=grid tune.n_trials=8."),
):
    """Optuna search of decoding.threshold on the validation seed (data.val), maximising NERL; with
    decoding.method=waterz, of the agglomeration threshold (tune.waterz_threshold, default 0.1–0.7 step 0.1).

    Infers the validation affinities once (cached), then each trial decodes block-wise and scores NERL. Defaults:
    TPE with 4 random startup trials, 4 trials, threshold 0.4–0.9 step 0.1; tune.sampler=grid scores the whole grid
    in one decoding pass. The study is kept in tune.storage (sqlite under save_path): re-running appends trials.
    Writes best.yaml (use it with nisbflow test --params) and threshold_curve.png.
    """
    from nisbflow.jobs import ClusterSpec, tune as tune_job

    result = tune_job(checkpoint, out=out, chunks=parse_triple(chunks, "--chunks") if chunks else None,
                      config=config, params=params, overrides=overrides or [], log=say,
                      cluster=ClusterSpec(cluster, workers, memory_limit, dashboard_address))
    console.print(_curve_table(result))
    console.print(f"best threshold {result.best_threshold:g}: {result.metric} {result.best_value:.4f} "
                  f"({result.n_trials} completed trials in study {result.study_name!r}, {result.storage})")
    console.print(f"wrote {result.params_path} and {result.plot_path}")


def _curve_table(result) -> Table:
    table = Table(title=f"{result.metric} by decoding threshold (validation seed)")
    table.add_column("threshold", justify="right")
    table.add_column(result.metric, justify="right")
    for threshold, value in result.curve.items():
        mark = " ◀ best" if threshold == result.best_threshold else ""
        table.add_row(f"{threshold:g}", f"{value:.4f}{mark}")
    return table


@app.command("tune-test")
@friendly_errors
def tune_test(
    checkpoint: str = typer.Option(..., "--checkpoint", help="Model checkpoint, or a shipped model's name."),
    config: Optional[str] = typer.Option(None, "--config", "--config-file", "-c", help="YAML configuration (data.val.*, "
                                                                      "data.test.*, tune.*)."),
    out: Optional[str] = typer.Option(None, "--out", help="Output folder (default <save_path>/tune)."),
    chunks: Optional[str] = typer.Option(None, help="Inference block size X,Y,Z (default 768,768,768)."),
    cluster: Optional[str] = typer.Option(None, help="local | dask-cuda | slurm | sync | tcp://… (default: $DASK_SCHEDULER_ADDRESS if set, else system.cluster)."),
    workers: Optional[int] = typer.Option(None, help="Local workers."),
    memory_limit: Optional[str] = typer.Option(None, "--memory-limit", help="Memory per local worker."),
    dashboard_address: Optional[str] = typer.Option(None, "--dashboard-address", help=DASHBOARD_HELP),
    params: Optional[str] = typer.Option(None, "--params", help=PARAMS_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value configuration overrides."),
):
    """Tune decoding.threshold on data.val, then infer → decode → evaluate data.test with the best threshold."""
    from nisbflow.evaluate.report import metrics_table
    from nisbflow.jobs import ClusterSpec, tune_test as tune_test_job

    report = tune_test_job(checkpoint, out=out, chunks=parse_triple(chunks, "--chunks") if chunks else None,
                           config=config, params=params, overrides=overrides or [], log=say,
                           cluster=ClusterSpec(cluster, workers, memory_limit, dashboard_address))
    settings, result, folder, test_result = report.settings.config, report.tuning, report.folder, report.test
    console.print(_curve_table(result))
    console.print(metrics_table(test_result, title=f"test {settings.data.test.path}: threshold "
                                                   f"{result.best_threshold:g} (tuned on {settings.data.val.path})"))
    console.print(f"wrote {result.params_path}, {result.plot_path} and {folder}/metrics.json")


@app.command()
@friendly_errors
def train(
    config: Optional[str] = typer.Option(None, "--config", "--config-file", "-c", help="YAML configuration (data.*, model.*, "
                                                                      "optimization.*)."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="Run folder to write or resume (default "
                                                                  "<save_path>/<timestamp>)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value configuration overrides."),
):
    """Train the affinity model (BANIS train_base_long by default) with PyTorch DDP.

    With system.num_gpus=-1 every visible GPU is used: on a machine with several GPUs this command re-launches itself
    under torchrun, one process per GPU. Multi-node runs: start it with torchrun (or srun) yourself, see
    docs/training.md. Checkpoints go to <run>/checkpoints (last.pt, top-k by validation loss, step-N.pt), TensorBoard
    logs to <run>/tensorboard; re-running with --run-dir resumes from last.pt.
    """
    import os
    import sys

    import torch

    from nisbflow.settings import resolve_settings
    from nisbflow.train.loop import train as run_training

    resolved = resolve_settings(None, config=config, overrides=overrides or [])
    settings = resolved.config
    gpus = torch.cuda.device_count() if settings.system.num_gpus < 0 else settings.system.num_gpus
    if gpus > 1 and "WORLD_SIZE" not in os.environ:  # pragma: no cover - needs several GPUs
        import datetime

        folder = run_dir or f"{settings.save_path}/{datetime.datetime.now():%Y%m%d-%H%M%S}"
        arguments = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                     "-m", "nisbflow_cli.main", "train", "--run-dir", folder]
        arguments += (["--config", config] if config else []) + list(overrides or [])
        os.execv(sys.executable, arguments)
    if int(os.environ.get("RANK", "0")) == 0:
        print_settings(resolved, "train")
    run, _ = run_training(settings, run_dir=run_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        console.print(f"trained {settings.optimization.max_steps} steps → {run}/checkpoints/last.pt "
                      f"(TensorBoard: {run}/tensorboard)")


def main():  # pragma: no cover - console-script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
