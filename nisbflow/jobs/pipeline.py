"""The entries of the pipeline's commands: ``decode``, ``infer``, ``evaluate``, ``skeletonize``, ``test`` and
``demo``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nisbflow.config.tree import Overrides
from nisbflow.jobs.common import ClusterSpec, cluster_session, preflight, print_line, resolve_run, say_settings
from nisbflow.pipelines import DemoRun, run_demo, run_test

if TYPE_CHECKING:  # report fields' types; the modules load where a command uses them
    from nisbflow.decode.thresholds import ThresholdChoice
    from nisbflow.evaluate import DenseMetrics, NerlResult
    from nisbflow.infer.blockwise import InferSummary
    from nisbflow.settings import RunSettings


# ---------------------------------------------------------------------------------------------------------------
# decode


@dataclass
class DecodeReport:
    """What a decode did. ``settings``: the run's :class:`~nisbflow.settings.RunSettings`; ``thresholds``: the
    :class:`~nisbflow.decode.thresholds.ThresholdChoice`; ``counts``: threshold → segments; ``outputs``: threshold
    → the segmentation array written; ``graph``: waterz's region adjacency graph size (``fragments``, ``edges``),
    None for cc; ``dense``: threshold → :class:`~nisbflow.evaluate.DenseMetrics` against ``gt`` when given."""

    settings: RunSettings
    thresholds: ThresholdChoice
    counts: dict[float, int]
    outputs: dict[float, str]
    graph: dict | None = None
    dense: dict = field(default_factory=dict)


def decode(
    affinities: str,
    output: str,
    *,
    thresholds=None,
    method: str | None = None,
    scoring: str | None = None,
    chunks: tuple[int, int, int] | None = None,
    mask: str | None = None,
    backend: str | None = None,
    gt: str | None = None,
    overwrite: bool = False,
    force: bool = False,
    config: str | None = None,
    params: str | None = None,
    overrides=None,
    cluster: ClusterSpec | None = None,
    log=print_line,
    progress: bool = True,
    thresholds_given_as: str = "(given)",
    axes: str | None = None,
    layout: str = "ngff",
) -> DecodeReport:
    """``nisbflow decode``: affinities ``(C, X, Y, Z)`` → segmentation ``(X, Y, Z)`` at each threshold.

    Settings resolve as defaults ← ``config``'s ``_base_`` files ← what the affinities record (the model's tuned
    threshold) ← ``config`` ← ``params`` ← ``overrides``; ``method`` and ``scoring`` set ``decoding.method`` and
    ``decoding.waterz.scoring``. ``thresholds`` None: :func:`~nisbflow.decode.thresholds.choose_thresholds`.
    ``chunks``: block and output chunk size (X, Y, Z voxels; default the affinities' chunks). ``gt``: a dense
    ground truth ``(X, Y, Z)`` scored at every threshold (adapted Rand error, VOI).

    ``affinities`` and ``mask`` may be HDF5 datasets (``pred.h5:/main``, PyTorch Connectomics' prediction) or TIFF
    stacks, in the source's axis order ``axes`` (default ``czyx`` / ``zyx``, as PyTorch Connectomics writes them):
    staged as zarr beside the output (:func:`~nisbflow.data.formats.zarr_input`); ``gt`` too, read lazily.
    ``layout``: each segmentation an OME-NGFF image group (``ngff``) or the array itself (``plain``, which BANIS's
    ``metrics.py`` reads).
    """
    from nisbflow.data.ngff import check_layout
    from nisbflow.decode import decode_to_zarr, threshold_array_name
    from nisbflow.decode.agglomerate_blockwise import WaterzOptions
    from nisbflow.decode.backends import check_backend
    from nisbflow.decode.thresholds import choose_thresholds

    check_layout(layout)
    given = {"decoding.method": method} if method else {}
    given.update({"decoding.waterz.scoring": scoring} if scoring else {})
    opened = _zarr_affinities(affinities)
    run = _decode_settings(affinities, opened, config, params, Overrides.of(overrides).then(given))
    say_settings(run, "decode", log)
    decoding = run.config.decoding
    choice = choose_thresholds(run, thresholds, thresholds_given_as)
    log(choice.describe())
    backend = check_backend(backend or decoding.backend)
    inputs = _decode_inputs(
        affinities,
        opened,
        mask or decoding.affinity_mask_path,
        gt,
        output,
        chunks,
        axes,
        overwrite,
        force,
        log,
        progress,
    )
    with cluster_session(run.config, cluster, log):
        if decoding.method == "cc":
            from nisbflow.decode.memory import check_label_memory

            check_label_memory(chunks or inputs.chunks, inputs.itemsize, len(choice.values), log)
        result = decode_to_zarr(
            inputs.affinities,
            output,
            thresholds=list(choice.values),
            mask=inputs.mask,
            chunks=chunks,
            backend=backend,
            overwrite=overwrite,
            force=force,
            run=run,
            log=log,
            method=decoding.method,
            progress=progress,
            layout=layout,
            waterz=WaterzOptions.from_config(decoding),
        )
        outputs = {
            value: output if len(result.counts) == 1 else f"{output}/{threshold_array_name(value)}"
            for value in result.counts
        }
        dense = {}
        if inputs.ground_truth is not None:
            from nisbflow.data.volumes import open_volume
            from nisbflow.evaluate import dense_metrics

            for value, where in outputs.items():
                dense[value] = dense_metrics(
                    inputs.ground_truth, open_volume(where, role="segmentation", ndims=(3,)), progress=progress
                )
    return DecodeReport(run, choice, dict(result.counts), outputs, result.region_graph, dense)


def _zarr_affinities(affinities: str):
    """The affinities opened and checked when they are zarr (their values are sampled once, by decode_to_zarr); None
    for an HDF5 or TIFF input, which is opened once staged."""
    from nisbflow.data.formats import locate
    from nisbflow.data.volumes import open_affinities

    return open_affinities(affinities, sample=False) if locate(affinities).kind == "zarr" else None


def _decode_settings(affinities: str, opened, config, params, overrides: Overrides) -> RunSettings:
    """A decode's settings: the affinities' recorded layer is what a zarr output of ``infer`` records (``opened``,
    :func:`_zarr_affinities`; HDF5 and TIFF inputs record nothing)."""
    from nisbflow.settings import recorded_settings, resolve_settings

    recorded = {} if opened is None else recorded_settings(dict(opened.attrs))
    return resolve_settings(
        None,
        config=config,
        params=params,
        overrides=overrides,
        mode="test",
        recorded=recorded,
        recorded_from=f"the attributes of {affinities}",
    )


@dataclass(frozen=True)
class _DecodeInputs:
    """What a decode reads, checked before any cluster starts: the affinities and the mask as zarr (HDF5 and TIFF
    staged), their spatial ``chunks`` and ``itemsize``, and the ground truth opened lazily (or None)."""

    affinities: str
    mask: str | None
    chunks: tuple[int, ...]
    itemsize: int
    ground_truth: object


def _decode_inputs(
    affinities: str, opened, mask, gt, output: str, chunks, axes, overwrite: bool, force: bool, log, progress: bool
) -> _DecodeInputs:
    """The output refused once, on the files the run reads as given (before an HDF5 or TIFF input is staged), then
    the inputs staged (the copies, too, may not overlap the output) and their shapes checked. ``opened``: the zarr
    affinities already opened (:func:`_zarr_affinities`), else None."""
    from nisbflow.blocks import check_block_count
    from nisbflow.data.formats import locate, open_labels, zarr_input
    from nisbflow.data.volumes import open_affinities
    from nisbflow.decode.outputs import open_affinity_mask
    from nisbflow.errors import VolumeError
    from nisbflow.staging import check_not_input

    preflight(
        output,
        "segmentation",
        {"affinities": locate(affinities).file, "affinity mask": mask and locate(mask).file},
        overwrite,
        force,
    )
    affinities = zarr_input(affinities, role="affinities", near=output, axes=axes, log=log, progress=progress)
    if opened is None:  # a staged HDF5 or TIFF copy; its values are sampled once, by decode_to_zarr
        opened = open_affinities(affinities, sample=False)
    spatial = tuple(opened.shape[1:])
    if mask is not None:
        mask = zarr_input(mask, role="affinity mask", near=output, log=log, progress=progress)
        open_affinity_mask(mask, spatial)
    check_not_input(output, {"affinities": affinities, "affinity mask": mask})
    check_block_count(spatial, chunks or opened.chunks[1:], "--chunks" if chunks else "the affinities' chunks")
    ground_truth = open_labels(gt, role="ground truth") if gt else None  # fails before any decoding
    if ground_truth is not None and tuple(ground_truth.shape) != spatial:
        raise VolumeError(
            f"ground truth {gt}: shape {tuple(ground_truth.shape)} differs from the affinities' "
            f"spatial shape {spatial} (X, Y, Z)"
        )
    return _DecodeInputs(affinities, mask, tuple(opened.chunks[1:]), opened.dtype.itemsize, ground_truth)


# ---------------------------------------------------------------------------------------------------------------
# infer


@dataclass
class InferReport:
    """What an inference did: ``settings`` (the run's :class:`~nisbflow.settings.RunSettings`, checkpoint
    included), ``summary`` (:class:`~nisbflow.infer.blockwise.InferSummary`: blocks, windows, throughput) and
    whether it ran ``whole`` (one process, the whole volume in memory)."""

    settings: RunSettings
    summary: InferSummary
    whole: bool = False


def infer(
    image: str,
    output: str,
    checkpoint,
    *,
    chunks: tuple[int, int, int] | None = None,
    split: int = 1,
    whole: bool = False,
    channels=None,
    overwrite: bool = False,
    force: bool = False,
    config: str | None = None,
    params: str | None = None,
    overrides=None,
    cluster: ClusterSpec | None = None,
    log=print_line,
    progress: bool = True,
    axes: str | None = None,
    layout: str = "ngff",
) -> InferReport:
    """``nisbflow infer``: an EM image ``(X, Y, Z)`` or ``(X, Y, Z, 1)`` uint8 → affinities ``(C, X, Y, Z)``
    (float16 by default) with the BANIS sliding-window geometry, block by block.

    ``checkpoint``: a ``.pt`` path or a shipped model's name. Settings resolve as defaults ← the checkpoint's ←
    ``config`` ← ``params`` ← ``overrides``; ``channels`` (e.g. ``[0, 1, 2]``) sets ``inference.select_channel``.
    ``chunks``: the block (write region) size, X, Y, Z voxels (default 768³); ``split``: tasks per block;
    ``whole``: one process over the whole volume (the reference). ``image`` may be an HDF5 dataset or a TIFF stack
    in the source's axis order ``axes`` (default ``zyx``, as PyTorch Connectomics writes), staged as zarr beside
    the output (:func:`~nisbflow.data.formats.zarr_input`); ``layout``: the affinities as an OME-NGFF image group
    (``ngff``) or the array itself (``plain``).
    """
    from nisbflow.blocks import check_block_count
    from nisbflow.data.formats import locate, zarr_input
    from nisbflow.data.ngff import check_layout
    from nisbflow.data.volumes import open_image
    from nisbflow.infer.blockwise import DEFAULT_BLOCK, infer_to_zarr, infer_whole_to_zarr
    from nisbflow.infer.windows import WindowSettings, check_channels
    from nisbflow.settings import resolve_settings

    given = {"inference.select_channel": [int(c) for c in channels]} if channels is not None else {}
    run = resolve_settings(
        checkpoint, config=config, params=params, overrides=Overrides.of(overrides).then(given), mode="test"
    )
    say_settings(run, "infer", log)
    block = tuple(chunks) if chunks else DEFAULT_BLOCK
    check_layout(layout)
    preflight(output, "affinities", {"image": locate(image).file}, overwrite, force)
    image = zarr_input(image, role="image", near=output, axes=axes, log=log, progress=progress)
    source = open_image(image)
    check_block_count(source.shape[:3], block)
    handle = run.checkpoint
    assert handle is not None  # resolved from --checkpoint above
    check_channels(
        WindowSettings.from_config(run.config.inference, offsets=handle.model.offsets()),
        handle.model.out_channels,
        f"checkpoint {handle.name}",
    )
    if whole:
        summary = infer_whole_to_zarr(image, output, run, overwrite=overwrite, force=force, log=log, layout=layout)
        return InferReport(run, summary, whole=True)
    with cluster_session(run.config, cluster, log):
        summary = infer_to_zarr(
            image,
            output,
            run,
            block=block,
            split=split,
            overwrite=overwrite,
            force=force,
            log=log,
            progress=progress,
            layout=layout,
        )
    return InferReport(run, summary)


# ---------------------------------------------------------------------------------------------------------------
# evaluate and skeletonize


@dataclass
class EvaluateReport:
    """What an evaluation found: ``result`` (:class:`~nisbflow.evaluate.NerlResult`: NERL, ERL, merges, splits,
    per skeleton), ``dense`` (:class:`~nisbflow.evaluate.DenseMetrics` against ``gt``, or None) and the files
    written (``json_path``, ``plot``; None when not asked for)."""

    result: NerlResult
    dense: DenseMetrics | None = None
    json_path: str | None = None
    plot: str | None = None


def evaluate(
    segmentation: str,
    skeleton: str,
    *,
    voxel_size=(9.0, 9.0, 20.0),
    merge_threshold: int = 1,
    gt: str | None = None,
    json_path: str | None = None,
    plot: str | None = None,
    progress: bool = True,
    metrics=("nerl",),
    em_erl_merge_threshold: int | None = None,
    axes: str | None = None,
    force: bool = False,
    log=print_line,
) -> EvaluateReport:
    """``nisbflow evaluate``: NERL, ERL and skeleton VOI of a segmentation ``(X, Y, Z)`` against NISB skeletons
    (BANIS metrics.py semantics; ``voxel_size`` in nm, X, Y, Z), and adapted Rand error and VOI against a dense
    ground truth ``gt``. ``metrics`` with ``"em_erl"``: also PyTorch Connectomics' NERL (em_erl's rules) at
    ``em_erl_merge_threshold`` (default 50, PyTC's NISB tutorial). ``segmentation`` may also be an HDF5 dataset
    (``pred.h5:/main``) or a TIFF stack, read lazily in the source's axis order ``axes`` (default ZYX, as PyTorch
    Connectomics writes them; :mod:`nisbflow.data.formats`). ``json_path`` / ``plot``: also write every
    metric as JSON / a PNG of the run lengths, checked before any work
    (:func:`~nisbflow.file_outputs.check_file_output`:
    never an input, and an existing file only when nisbflow wrote it as such, unless ``force``). What the skeleton file
    says that nisbflow does not use (stored edge lengths that disagree with ``nm_position``) goes through ``log``.
    Runs on the current Dask client, if any."""
    from nisbflow.evaluate import dense_metrics, nerl
    from nisbflow.evaluate.report import plot_run_lengths, write_json

    from nisbflow.data.formats import open_labels
    from nisbflow.evaluate.report import check_plot_path
    from nisbflow.file_outputs import METRICS, PLOT, check_file_output
    from nisbflow.paths import locate

    inputs = {"segmentation": locate(segmentation).file, "skeleton": skeleton, "ground truth": gt and locate(gt).file}
    if plot:
        check_plot_path(plot)
    for path, option, kind in ((json_path, "--json", METRICS), (plot, "--plot", PLOT)):
        if path:
            check_file_output(path, kind, inputs=inputs, overwrite=True, force=force, option=option)
            inputs[option] = path  # --json and --plot must differ too
    from nisbflow.evaluate import EM_ERL_MERGE_THRESHOLD

    volume = open_labels(segmentation, role="segmentation", axes=axes)  # HDF5 / TIFF read lazily, XYZ
    truth = open_labels(gt, role="ground truth") if gt else None  # fails before any scoring
    from nisbflow.errors import VolumeError

    try:
        result = nerl(
            volume,
            skeleton,
            voxel_size=tuple(voxel_size),
            merge_threshold=merge_threshold,
            progress=progress,
            metrics=tuple(metrics),
            em_erl_merge_threshold=em_erl_merge_threshold or EM_ERL_MERGE_THRESHOLD,
        )
        for note in result.notes:
            log(note)
        dense = dense_metrics(truth, volume, progress=progress) if gt else None
    except VolumeError as error:  # name the files the kernels only saw as arrays
        message = str(error)
        for role, path in (("segmentation", segmentation), ("ground truth", gt)):
            if message.startswith(f"{role}: "):
                raise VolumeError(f"{role} {path}: {message[len(role) + 2 :]}") from None
        raise
    if json_path:
        write_json(json_path, result, dense, segmentation=segmentation, skeleton=skeleton)
    if plot:
        plot_run_lengths(plot, result, title=f"{segmentation}: NERL {result.nerl:.3f}")
    return EvaluateReport(result, dense, json_path, plot)


def skeletonize(
    segmentation: str,
    output: str,
    *,
    voxel_size=(9.0, 9.0, 20.0),
    dust_threshold: int = 1000,
    parallel: int = 1,
    overwrite: bool = False,
    force: bool = False,
    axes: str | None = None,
):
    """``nisbflow skeletonize``: NISB-format skeletons (kimimaro's TEASAR) of a dense segmentation ``(X, Y, Z)``
    (``voxel_size`` in nm), written to ``output`` (.pkl, .json or .npz) under a temporary name and renamed when
    complete; returns the skeleton graph's :class:`~nisbflow.data.SkeletonSummary`. The volume is loaded whole.
    ``segmentation`` may be an HDF5 dataset or a TIFF stack in the source's axis order ``axes`` (default ZYX)."""
    from nisbflow.data import save_skeleton, summarize_skeleton
    from nisbflow.data.formats import locate, open_labels
    from nisbflow.data.skeleton import check_skeleton_suffix
    from nisbflow.evaluate.ground_truth import skeletonize as skeletons_of
    from nisbflow.file_outputs import SKELETON, check_file_output
    from nisbflow.staging import staged_output

    check_skeleton_suffix(output)
    overwrite = check_file_output(
        output, SKELETON, inputs={"segmentation": locate(segmentation).file}, overwrite=overwrite, force=force
    )  # before the work, not after it
    volume = open_labels(segmentation, role="segmentation", axes=axes)
    graph = skeletons_of(volume, tuple(voxel_size), dust_threshold=dust_threshold, parallel=parallel)
    with staged_output(output, overwrite=overwrite) as temporary:
        save_skeleton(graph, temporary)
    return summarize_skeleton(graph)


# ---------------------------------------------------------------------------------------------------------------
# test and demo: the whole job back to back


@dataclass
class TestReport:
    """What ``nisbflow test`` did: ``settings`` (the run's :class:`~nisbflow.settings.RunSettings`), the output
    ``folder`` (affinities.zarr, segmentation.zarr, metrics.json) and ``results``: threshold →
    :class:`~nisbflow.evaluate.NerlResult` (one for cc, one per ``decoding.waterz.thresholds`` for waterz)."""

    __test__ = False  # not a pytest test class

    settings: RunSettings
    folder: Path
    results: dict[float, NerlResult]


def test(
    checkpoint,
    *,
    chunks: tuple[int, int, int] | None = None,
    config: str | None = None,
    params: str | None = None,
    overrides=None,
    cluster: ClusterSpec | None = None,
    log=print_line,
) -> TestReport:
    """``nisbflow test``: infer → decode → NERL on the configuration's test seed (``data.test.path``), with the
    checkpoint's settings under ``config`` ← ``params`` (best.yaml) ← ``overrides``; ``chunks``: the inference
    block, X, Y, Z voxels."""
    run = resolve_run(checkpoint, config, params, overrides, "test", ("test",), log)
    with cluster_session(run.config, cluster, log):
        tested = run_test(run, block=chunks)
    return TestReport(run, tested.folder, tested.results)


test.__test__ = False  # type: ignore[attr-defined]  # a library entry named after its command, not a pytest test


def demo(
    out: str | Path = "outputs/demo",
    *,
    shape=(256, 256, 128),
    seed: int = 101,
    checkpoint: str | None = None,
    threshold: float | None = None,
    baseline: bool = True,
    overwrite: bool = False,
    cluster: ClusterSpec | None = None,
    log=print_line,
) -> list[DemoRun]:
    """``nisbflow demo``: :func:`run_demo` on the cluster ``cluster`` describes (default settings' ``system.*``)."""
    from nisbflow.config import load_config

    with cluster_session(load_config(None, []), cluster, log):
        return run_demo(
            out,
            shape=shape,
            seed=seed,
            checkpoint=checkpoint,
            threshold=threshold,
            baseline=baseline,
            overwrite=overwrite,
            log=log,
        )
