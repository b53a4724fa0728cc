"""One library entry per command: what ``nisbflow infer``, ``decode``, ``test`` and ``demo`` do, callable from a
notebook with the same result.

Each entry takes typed options, the settings' sources (``config`` YAML, ``params`` YAML, ``overrides`` as a mapping
of key to value or ``key.path=value`` strings) and a :class:`ClusterSpec`, and runs the same steps in the same
order: resolve the settings → check the inputs → refuse a bad output (:func:`preflight`) → open the cluster → run
the stage → return a typed report. Everything it would print goes through ``log`` (one line per call, plain text);
the command line passes its console and prints the report, a notebook reads the report.

Axes are XYZ throughout, as NISB stores them: images ``(X, Y, Z)`` uint8, affinities ``(C, X, Y, Z)``,
segmentations ``(X, Y, Z)`` uint32/uint64.
"""

from __future__ import annotations

import contextlib
import datetime
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator
from typing import TYPE_CHECKING

from nisbflow.config.tree import Overrides
from nisbflow.errors import ConfigError
from nisbflow.pipelines import DemoRun, run_demo, run_test, tune_and_test

if TYPE_CHECKING:  # report fields' types; the modules load where a command uses them
    from nisbflow.config import Config
    from nisbflow.config.schema import ModelConfig
    from nisbflow.paths import VolumeLocation
    from nisbflow.decode.thresholds import ThresholdChoice
    from nisbflow.evaluate import DenseMetrics, NerlResult
    from nisbflow.infer.blockwise import InferSummary
    from nisbflow.settings import RunSettings
    from nisbflow.tune import TuneResult


def weight_choices() -> tuple[str, ...]:
    """What ``--weights`` takes (``inference.weights``): auto, ema, raw."""
    from nisbflow.config.schema import INFERENCE_WEIGHTS

    return INFERENCE_WEIGHTS


def _print(line: str) -> None:
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
def cluster_session(config: Config, spec: ClusterSpec | None = None, log=_print) -> Iterator:
    """The one place a command opens its Dask cluster (``config.system`` overridden by ``spec``) and says where
    its dashboard is; yields the ``distributed.Client`` (None for ``sync``) and closes what it started. An interrupt
    keeps the logs of a cluster torn down mid-computation from burying the command's one line."""
    from nisbflow.cluster import chosen_cluster, cluster_from_config, dashboard_link
    from nisbflow.tasks import quiet_shutdown_logs

    spec = spec or ClusterSpec()
    with cluster_from_config(config, spec.cluster, n_workers=spec.workers, memory_limit=spec.memory_limit,
                             dashboard_address=spec.dashboard_address) as client:
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


def _say_settings(run, command: str, log) -> None:
    for line in run.describe(command):
        log(line)


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


def decode(affinities: str, output: str, *, thresholds=None, method: str | None = None, scoring: str | None = None,
           chunks: tuple[int, int, int] | None = None, mask: str | None = None, backend: str | None = None,
           gt: str | None = None, overwrite: bool = False, force: bool = False, config: str | None = None,
           params: str | None = None, overrides=None, cluster: ClusterSpec | None = None, log=_print,
           progress: bool = True, thresholds_given_as: str = "(given)", axes: str | None = None,
           layout: str = "ngff") -> DecodeReport:
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
    run = _decode_settings(affinities, config, params, Overrides.of(overrides).then(given))
    _say_settings(run, "decode", log)
    decoding = run.config.decoding
    choice = choose_thresholds(run, thresholds, thresholds_given_as)
    log(choice.describe())
    backend = check_backend(backend or decoding.backend)
    inputs = _decode_inputs(affinities, mask or decoding.affinity_mask_path, gt, output, chunks, axes,
                            overwrite, force, log, progress)
    with cluster_session(run.config, cluster, log):
        if decoding.method == "cc":
            from nisbflow.decode.memory import check_label_memory

            check_label_memory(chunks or inputs.chunks, inputs.itemsize, len(choice.values), log)
        result = decode_to_zarr(inputs.affinities, output, thresholds=list(choice.values), mask=inputs.mask,
                                chunks=chunks, backend=backend, overwrite=overwrite, force=force, run=run, log=log,
                                method=decoding.method, progress=progress, layout=layout,
                                waterz=WaterzOptions.from_config(decoding))
        outputs = {value: output if len(result.counts) == 1 else f"{output}/{threshold_array_name(value)}"
                   for value in result.counts}
        dense = {}
        if inputs.ground_truth is not None:
            from nisbflow.data.volumes import open_volume
            from nisbflow.evaluate import dense_metrics

            for value, where in outputs.items():
                dense[value] = dense_metrics(inputs.ground_truth, open_volume(where, role="segmentation", ndims=(3,)),
                                             progress=progress)
    return DecodeReport(run, choice, dict(result.counts), outputs, result.region_graph, dense)


def _decode_settings(affinities: str, config, params, overrides: Overrides) -> RunSettings:
    """A decode's settings: the affinities' recorded layer is what a zarr output of ``infer`` records (HDF5 and TIFF
    inputs record nothing)."""
    from nisbflow.data.formats import locate
    from nisbflow.data.volumes import open_affinities
    from nisbflow.settings import recorded_settings, resolve_settings

    recorded = {}
    if locate(affinities).kind == "zarr":
        recorded = recorded_settings(dict(open_affinities(affinities, sample=False).attrs))
    return resolve_settings(None, config=config, params=params, overrides=overrides, mode="test", recorded=recorded,
                            recorded_from=f"the attributes of {affinities}")


@dataclass(frozen=True)
class _DecodeInputs:
    """What a decode reads, checked before any cluster starts: the affinities and the mask as zarr (HDF5 and TIFF
    staged), their spatial ``chunks`` and ``itemsize``, and the ground truth opened lazily (or None)."""

    affinities: str
    mask: str | None
    chunks: tuple[int, ...]
    itemsize: int
    ground_truth: object


def _decode_inputs(affinities: str, mask, gt, output: str, chunks, axes, overwrite: bool, force: bool, log,
                   progress: bool) -> _DecodeInputs:
    """The output refused once, on the files the run reads as given (before an HDF5 or TIFF input is staged), then
    the inputs staged (the copies, too, may not overlap the output) and their shapes checked."""
    from nisbflow.blocks import check_block_count
    from nisbflow.data.formats import locate, open_labels, zarr_input
    from nisbflow.data.volumes import open_affinities
    from nisbflow.decode.outputs import open_affinity_mask
    from nisbflow.errors import VolumeError
    from nisbflow.staging import check_not_input

    preflight(output, "segmentation", {"affinities": locate(affinities).file,
                                       "affinity mask": mask and locate(mask).file}, overwrite, force)
    affinities = zarr_input(affinities, role="affinities", near=output, axes=axes, log=log, progress=progress)
    opened = open_affinities(affinities, sample=False)  # its values are sampled once, by decode_to_zarr
    spatial = tuple(opened.shape[1:])
    if mask is not None:
        mask = zarr_input(mask, role="affinity mask", near=output, log=log, progress=progress)
        open_affinity_mask(mask, spatial)
    check_not_input(output, {"affinities": affinities, "affinity mask": mask})
    check_block_count(spatial, chunks or opened.chunks[1:], "--chunks" if chunks else "the affinities' chunks")
    ground_truth = open_labels(gt, role="ground truth") if gt else None  # fails before any decoding
    if ground_truth is not None and tuple(ground_truth.shape) != spatial:
        raise VolumeError(f"ground truth {gt}: shape {tuple(ground_truth.shape)} differs from the affinities' "
                          f"spatial shape {spatial} (X, Y, Z)")
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


def infer(image: str, output: str, checkpoint, *, chunks: tuple[int, int, int] | None = None, split: int = 1,
          whole: bool = False, channels=None, overwrite: bool = False, force: bool = False,
          config: str | None = None, params: str | None = None, overrides=None,
          cluster: ClusterSpec | None = None, log=_print, progress: bool = True, axes: str | None = None,
          layout: str = "ngff") -> InferReport:
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
    run = resolve_settings(checkpoint, config=config, params=params, overrides=Overrides.of(overrides).then(given),
                           mode="test")
    _say_settings(run, "infer", log)
    block = tuple(chunks) if chunks else DEFAULT_BLOCK
    check_layout(layout)
    preflight(output, "affinities", {"image": locate(image).file}, overwrite, force)
    image = zarr_input(image, role="image", near=output, axes=axes, log=log, progress=progress)
    source = open_image(image)
    check_block_count(source.shape[:3], block)
    handle = run.checkpoint
    assert handle is not None  # resolved from --checkpoint above
    check_channels(WindowSettings.from_config(run.config.inference, offsets=handle.model.offsets()),
                   handle.model.out_channels, f"checkpoint {handle.name}")
    if whole:
        summary = infer_whole_to_zarr(image, output, run, overwrite=overwrite, force=force, log=log, layout=layout)
        return InferReport(run, summary, whole=True)
    with cluster_session(run.config, cluster, log):
        summary = infer_to_zarr(image, output, run, block=block, split=split,
                                overwrite=overwrite, force=force, log=log, progress=progress, layout=layout)
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


def evaluate(segmentation: str, skeleton: str, *, voxel_size=(9.0, 9.0, 20.0), merge_threshold: int = 1,
             gt: str | None = None, json_path: str | None = None, plot: str | None = None,
             progress: bool = True, metrics=("nerl",), em_erl_merge_threshold: int | None = None,
             axes: str | None = None, force: bool = False, log=_print) -> EvaluateReport:
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
        result = nerl(volume, skeleton, voxel_size=tuple(voxel_size), merge_threshold=merge_threshold,
                      progress=progress, metrics=tuple(metrics),
                      em_erl_merge_threshold=em_erl_merge_threshold or EM_ERL_MERGE_THRESHOLD)
        for note in result.notes:
            log(note)
        dense = dense_metrics(truth, volume, progress=progress) if gt else None
    except VolumeError as error:  # name the files the kernels only saw as arrays
        message = str(error)
        for role, path in (("segmentation", segmentation), ("ground truth", gt)):
            if message.startswith(f"{role}: "):
                raise VolumeError(f"{role} {path}: {message[len(role) + 2:]}") from None
        raise
    if json_path:
        write_json(json_path, result, dense, segmentation=segmentation, skeleton=skeleton)
    if plot:
        plot_run_lengths(plot, result, title=f"{segmentation}: NERL {result.nerl:.3f}")
    return EvaluateReport(result, dense, json_path, plot)


def skeletonize(segmentation: str, output: str, *, voxel_size=(9.0, 9.0, 20.0), dust_threshold: int = 1000,
                parallel: int = 1, overwrite: bool = False, force: bool = False, axes: str | None = None):
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
    overwrite = check_file_output(output, SKELETON, inputs={"segmentation": locate(segmentation).file},
                                  overwrite=overwrite, force=force)  # before the work, not after it
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


def _resolved(checkpoint, config, params, overrides, command: str, splits: tuple[str, ...], log):
    """A model command's settings, said through ``log``, with its seeds checked before any cluster starts."""
    from nisbflow.data.volumes import seed_of
    from nisbflow.settings import resolve_settings

    run = resolve_settings(checkpoint, config=config, params=params, overrides=overrides or (), mode=command)
    _say_settings(run, command, log)
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
            raise ConfigError(f"decoding.affinity_mask_path {mask}: {locate(mask).file} does not exist (set the "
                              "mask of the seed you decode, or decoding.affinity_mask_path=null)")
        Path(run.config.save_path).mkdir(parents=True, exist_ok=True)
        mask = zarr_input(mask, role="affinity mask", near=Path(run.config.save_path) / "mask.zarr", log=log)
        run.config.decoding.affinity_mask_path = mask
    open_affinity_mask(mask, seed.shape)


def test(checkpoint, *, chunks: tuple[int, int, int] | None = None, config: str | None = None,
         params: str | None = None, overrides=None, cluster: ClusterSpec | None = None, log=_print) -> TestReport:
    """``nisbflow test``: infer → decode → NERL on the configuration's test seed (``data.test.path``), with the
    checkpoint's settings under ``config`` ← ``params`` (best.yaml) ← ``overrides``; ``chunks``: the inference
    block, X, Y, Z voxels."""
    run = _resolved(checkpoint, config, params, overrides, "test", ("test",), log)
    with cluster_session(run.config, cluster, log):
        tested = run_test(run, block=chunks)
    return TestReport(run, tested.folder, tested.results)


test.__test__ = False  # type: ignore[attr-defined]  # a library entry named after its command, not a pytest test


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


def tune(checkpoint, *, out: str | None = None, chunks: tuple[int, int, int] | None = None,
         config: str | None = None, params: str | None = None, overrides=None, cluster: ClusterSpec | None = None,
         log=_print):
    """``nisbflow tune``: the decoding threshold tuned on the validation seed (``data.val.path``); returns the
    :class:`~nisbflow.tune.TuneResult` (best threshold, curve, best.yaml and threshold_curve.png written)."""
    from nisbflow.tune import tune as tune_study

    run = _resolved(checkpoint, config, params, overrides, "tune", ("val",), log)
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


def tune_test(checkpoint, *, out: str | None = None, chunks: tuple[int, int, int] | None = None,
              config: str | None = None, params: str | None = None, overrides=None,
              cluster: ClusterSpec | None = None, log=_print) -> TuneTestReport:
    """``nisbflow tune-test``: :func:`tune` on ``data.val``, then :func:`test` on ``data.test`` at the best
    threshold."""

    run = _resolved(checkpoint, config, params, overrides, "tune-test", ("val", "test"), log)
    with cluster_session(run.config, cluster, log):
        tuned = tune_and_test(run, out_dir=out, block=chunks, log=log)
    return TuneTestReport(run, tuned.tuning, tuned.test.folder, tuned.test.result)


def demo(out: str | Path = "outputs/demo", *, shape=(256, 256, 128), seed: int = 101, checkpoint: str | None = None,
         threshold: float | None = None, baseline: bool = True, overwrite: bool = False,
         cluster: ClusterSpec | None = None, log=_print) -> list[DemoRun]:
    """``nisbflow demo``: :func:`run_demo` on the cluster ``cluster`` describes (default settings' ``system.*``)."""
    from nisbflow.config import load_config

    with cluster_session(load_config(None, []), cluster, log):
        return run_demo(out, shape=shape, seed=seed, checkpoint=checkpoint, threshold=threshold, baseline=baseline,
                        overwrite=overwrite, log=log)


# ---------------------------------------------------------------------------------------------------------------
# data: synth, skeleton convert; configuration; models; training


class ConfigRefused(ConfigError):
    """A PyTorch Connectomics file with refused keys; ``listing`` is the whole mapping ``config show`` prints
    before the one-line error."""

    def __init__(self, message: str, listing: str):
        super().__init__(message)
        self.listing = listing


def show_config(config: str | None = None, overrides=None, cluster: str | None = None, mode: str = "train") -> str:
    """``nisbflow config show``: the resolved configuration (defaults ← ``config`` ← ``overrides``) as YAML. A PyTorch
    Connectomics file is read for ``mode`` and the YAML starts with the mapping of each of its keys (set, matches,
    ignored, refused) as comments; refused keys raise :class:`ConfigRefused`. When the command would run on SLURM
    (``cluster`` or ``system.cluster`` is ``slurm``), YAML comments follow with each worker job setting, where it
    came from (``system.slurm``, dask-jobqueue's configuration, nisbflow's fallback) and the job script
    dask-jobqueue submits (:mod:`nisbflow.slurm`)."""
    from nisbflow.cluster import chosen_cluster
    from nisbflow.config import config_to_yaml, load_config
    from nisbflow.config.pytc import is_pytorch_connectomics, load_pytc

    header = ""
    if config is not None and is_pytorch_connectomics(config):
        pytc = load_pytc(config, mode, Overrides.of(overrides).texts or ())
        header = "".join(f"# {line}\n" for line in pytc.describe())
        try:
            pytc.check()
        except ConfigError as error:
            raise ConfigRefused(str(error), header) from None
    resolved = load_config(config, overrides or [], mode=mode)
    text = header + config_to_yaml(resolved)
    if chosen_cluster(cluster, resolved) != "slurm":
        return text
    from nisbflow.slurm import render_job_script, resolve_slurm_job

    system = resolved.system
    job = resolve_slurm_job(system.slurm, system.tasks_per_gpu)
    lines = ["", "# --cluster slurm: each worker job (system.slurm over dask-jobqueue's configuration)"]
    lines += [f"#   {line}" for line in job.describe()]
    lines += ["# its job script:"] + [f"#   {line}" if line else "#" for line in
                                      render_job_script(system.slurm, system.tasks_per_gpu).rstrip().splitlines()]
    return text + "\n".join(lines) + "\n"


SYNTH_LAYOUTS = ("seed", "nisb")


def synth(out: str, *, shape=(256, 256, 128), seed: int = 0, layout: str = "seed", train_seeds: int = 2,
          chunks=(128, 128, 128), presets=(), zarr_format: int = 2, workers: int | None = None,
          preview: str | None = None, overwrite: bool = False, force: bool = False, log=_print) -> list:
    """``nisbflow synth``: synthetic NISB-like data (``data.zarr`` with ``img (X, Y, Z, 1) uint8`` and ``seg (X, Y,
    Z) uint32``, and ``skeleton.pkl``) in one seed folder (``layout="seed"``) or a NISB tree (``"nisb"``:
    ``train/seed0..K-1``, ``val/seed100``, ``test/seed101``; the preview shows the test seed). ``presets``: any of
    ``thin``, ``slice_defects``, ``low_contrast``. Returns the :class:`~nisbflow.synth.SeedSummary` of each seed."""
    from nisbflow.errors import ConfigError
    from nisbflow.synth import synthesize_layout, synthesize_seed

    if zarr_format not in (2, 3):
        raise ConfigError(f"--zarr-format must be 2 or 3, got {zarr_format}")
    if layout not in SYNTH_LAYOUTS:
        raise ConfigError(f"--layout must be 'seed' or 'nisb', got '{layout}'")
    if preview:
        from nisbflow.evaluate.report import check_plot_path
        from nisbflow.file_outputs import PLOT, check_file_output

        check_plot_path(preview, "--preview")
        check_file_output(preview, PLOT, overwrite=True, force=force, option="--preview")
    options = dict(presets=list(presets), chunks=tuple(chunks), zarr_format=zarr_format, overwrite=overwrite,
                   force=force, num_workers=workers, log=log)
    if layout == "seed":
        return [synthesize_seed(out, tuple(shape), seed, preview=preview, **options)]
    summaries = synthesize_layout(out, tuple(shape), train_seeds=train_seeds, **options)
    if preview:
        from nisbflow.synth.volume import write_preview

        write_preview(f"{str(out).rstrip('/')}/test/seed101/data.zarr", preview, title=f"{out} test/seed101")
    return summaries


def synth_affinities(segmentation: str, output: str, *, noise: float = 0.15, seed: int = 0, chunks=None,
                     overwrite: bool = False, force: bool = False, log=_print, axes: str | None = None) -> str:
    """``nisbflow synth-affinities``: stand-in predictions, noisy short-range affinities ``(3, X, Y, Z) float16``
    of a ground-truth segmentation (:func:`nisbflow.synth.affinities.write_noisy_affinities`); returns the output.
    ``segmentation`` may be an HDF5 dataset or TIFF stack (``axes``, default ZYX), staged as zarr beside the output
    (:func:`~nisbflow.data.formats.zarr_input`)."""
    from nisbflow.data.formats import locate, zarr_input
    from nisbflow.synth.affinities import write_noisy_affinities

    preflight(output, "affinities", {"segmentation": locate(segmentation).file}, overwrite, force)
    segmentation = zarr_input(segmentation, role="segmentation", near=output, axes=axes, log=log)

    return write_noisy_affinities(segmentation, output, noise=noise, seed=seed, chunks=chunks, overwrite=overwrite,
                                  force=force, log=log)


def skeleton_convert(source: str, destination: str, *, overwrite: bool = False, force: bool = False):
    """``nisbflow skeleton convert``: a skeleton in another format (``.json`` node-link or ``.npz``, by the
    destination's suffix; pickles read with a restricted unpickler), written whole; an existing ``destination`` only
    with ``overwrite`` (a skeleton nisbflow wrote; anything else with ``force``). Returns its
    :class:`~nisbflow.data.skeleton.SkeletonSummary`."""
    from nisbflow.data.skeleton import check_skeleton_suffix, convert_skeleton, summarize_skeleton
    from nisbflow.file_outputs import SKELETON, check_file_output

    check_skeleton_suffix(destination)
    check_file_output(destination, SKELETON, inputs={"skeleton": source}, overwrite=overwrite, force=force)
    return summarize_skeleton(convert_skeleton(source, destination))


@dataclass
class ConvertReport:
    """``nisbflow convert``: what was written (``output``: its :class:`~nisbflow.data.formats.VolumeLocation`), its
    shape and axis order as stored (XYZ for zarr, ZYX for HDF5 and TIFF), and the source's axis order."""

    output: VolumeLocation
    shape: tuple
    axes: str
    source_axes: str
    dtype: str


def convert(source: str, output: str, *, axes: str | None = None, layout: str = "ngff", chunks=None,
            voxel_size=None, overwrite: bool = False, force: bool = False, progress: bool = True) -> ConvertReport:
    """``nisbflow convert``: a volume between zarr (OME-NGFF or ``layout="plain"``), HDF5 (``file.h5:/dataset``,
    PyTorch Connectomics' ZYX layout) and TIFF stacks, block by block (:mod:`nisbflow.data.formats`). ``axes``: the
    source's axis order (default by format: ``zyx`` / ``czyx`` for HDF5 and TIFF, the recorded one for zarr);
    ``voxel_size`` (nm, X, Y, Z) recorded on a zarr output (default: the source's, else NISB's 9 × 9 × 20)."""
    from nisbflow.data.formats import open_lazy, stored_axes, write_volume

    volume = open_lazy(source, axes)
    recorded = {k: v for k, v in volume.attrs.items() if k in ("voxel_size", "description", "nisbflow_output")}
    if voxel_size is not None:
        recorded["voxel_size"] = [float(v) for v in voxel_size]
    location = write_volume(volume, output, layout=layout, chunks=chunks, overwrite=overwrite, force=force,
                            attributes=recorded, source=source, progress=progress)
    written = stored_axes(location.kind, volume.axes)
    shape = tuple(volume.data.shape[volume.axes.index(a)] for a in written)
    return ConvertReport(location, shape, written, volume.source_axes, str(volume.data.dtype))


@dataclass
class ModelInitReport:
    """``nisbflow model init``: the file written, its architecture, parameter count and seed."""

    output: str
    arch: str
    parameters: int
    seed: int


def model_init(output: str, *, arch: str = "mednext-s", seed: int = 0, overwrite: bool = False,
               force: bool = False) -> ModelInitReport:
    """``nisbflow model init``: a randomly initialised checkpoint of ``arch`` (``mednext-s`` or ``tiny``) with
    weights from ``torch.manual_seed(seed)``."""
    from nisbflow.errors import ConfigError
    from nisbflow.file_outputs import CHECKPOINT, check_file_output
    from nisbflow.model import ARCHITECTURES, save_random_checkpoint

    if arch not in ARCHITECTURES:
        raise ConfigError(f"--arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    check_file_output(output, CHECKPOINT, overwrite=overwrite, force=force, weights_only=True)
    model = save_random_checkpoint(output, ARCHITECTURES[arch], seed=seed)
    return ModelInitReport(str(output), arch, sum(p.numel() for p in model.parameters()), seed)


@dataclass
class ModelExportReport:
    """``nisbflow model export``: the weights-only file, its size in MiB, the metadata it records, and the
    configuration YAML written beside it (or None)."""

    output: str
    mebibytes: float
    metadata: dict
    config_yaml: str | None = None


def model_export(checkpoint: str, output: str, *, command: str | None = None, config_yaml: str | None = None,
                 overrides=None, overwrite: bool = False, force: bool = False) -> ModelExportReport:
    """``nisbflow model export``: a copy of ``checkpoint`` without its training state, ``overrides`` applied to the
    configuration it records (e.g. a tuned ``decoding.threshold``); with ``config_yaml`` that configuration is also
    written as YAML usable with ``--config``. Both files are checked before either is written."""
    from nisbflow.config import Config, config_to_yaml
    from nisbflow.file_outputs import CHECKPOINT, YAML, check_file_output
    from nisbflow.model import export_checkpoint
    from nisbflow.model.checkpoint import resolve_checkpoint
    from nisbflow.staging import write_file

    inputs = {"checkpoint": str(resolve_checkpoint(checkpoint))}
    check_file_output(output, CHECKPOINT, inputs=inputs, overwrite=overwrite, force=force, weights_only=True)
    if config_yaml:
        check_file_output(config_yaml, YAML, inputs=dict(inputs, output=output), overwrite=overwrite, force=force,
                          option="--config-yaml")
    metadata = export_checkpoint(checkpoint, output, overrides or [], require_config=bool(config_yaml),
                                 **({"command": command} if command else {}))
    if config_yaml:
        write_file(config_yaml, f"# nisbflow model export: the configuration of {output}\n"
                   + config_to_yaml(Config.model_validate(metadata["config"])))
    return ModelExportReport(str(output), Path(output).stat().st_size / 2**20, metadata, config_yaml)


@dataclass
class ModelImportReport:
    """``nisbflow model import``: the file written, its model and what was taken from where."""

    output: str
    model: ModelConfig
    weights: str
    notes: list


def model_import(checkpoint: str, output: str, *, weights: str = "auto", overwrite: bool = False,
                 force: bool = False) -> ModelImportReport:
    """``nisbflow model import``: a BANIS or PyTorch Connectomics checkpoint as a nisbflow ``.pt``
    (:func:`~nisbflow.model.import_checkpoint`); ``weights``: ``auto`` (EMA when present), ``ema`` or ``raw``."""
    from nisbflow.file_outputs import CHECKPOINT, check_file_output
    from nisbflow.model import Checkpoint, import_checkpoint

    check_file_output(output, CHECKPOINT, inputs={"checkpoint": checkpoint}, overwrite=overwrite, force=force,
                      weights_only=True)
    metadata = import_checkpoint(checkpoint, output, weights=weights)
    return ModelImportReport(str(output), Checkpoint.open(output).model, metadata["weights"], metadata["notes"])


@dataclass
class ShippedModel:
    """One model inside the package (``nisbflow model list``)."""

    name: str
    size: str
    init_filters: int
    parameters: int
    path: str


def model_list() -> list[ShippedModel]:
    """``nisbflow model list``: the models shipped inside nisbflow, usable by name as ``--checkpoint``."""
    from nisbflow.model import SHIPPED_DIR, SHIPPED_MODELS, load_checkpoint

    shipped = []
    for name, stem in SHIPPED_MODELS.items():
        model, config = load_checkpoint(name)
        shipped.append(ShippedModel(name, config.size, config.init_filters,
                                    sum(p.numel() for p in model.parameters()), str(SHIPPED_DIR / f"{stem}.pt")))
    return shipped


@dataclass
class TrainReport:
    """``nisbflow train``: the run folder, the steps trained to, and whether this process is rank 0 (the one that
    reports)."""

    run: Path
    steps: int
    rank0: bool = True


def train(*, config: str | None = None, run_dir: str | None = None, overrides=None, log=_print) -> TrainReport:
    """``nisbflow train``: the affinity model trained with PyTorch DDP (:func:`nisbflow.train.loop.train`).

    With ``system.num_gpus`` above 1 (or -1 on a machine with several GPUs) and outside torchrun, this process is
    replaced by ``torchrun --standalone --nproc_per_node=<GPUs> -m nisbflow_cli.main train …`` with the same
    configuration and a fixed ``--run-dir``, one process per GPU (the function does not return then). Rank 0 says
    the settings first."""
    import os
    import sys

    import torch

    from nisbflow.settings import resolve_settings
    from nisbflow.train.loop import train as run_training

    resolved = resolve_settings(None, config=config, overrides=overrides or [], mode="train")
    configuration = resolved.config
    present, wanted = torch.cuda.device_count(), configuration.system.num_gpus
    if wanted > present:  # PyTorch Connectomics (Lightning) fails too when asked for GPUs it cannot find
        raise ConfigError(f"system.num_gpus={wanted}, but this machine has {present} GPU(s) that torch can use "
                          "(torch.cuda.device_count()): set system.num_gpus=0 to train on the CPU, or -1 for every "
                          "GPU there is")
    gpus = present if wanted < 0 else wanted
    if gpus == 0 and configuration.optimization.precision in ("16-mixed", "bf16-mixed"):
        log(f"optimization.precision {configuration.optimization.precision}: mixed precision needs a GPU, and this "
            "run trains on the CPU: in float32 (set optimization.precision=32 to say so)")
    if gpus > 1 and "WORLD_SIZE" not in os.environ:  # pragma: no cover - needs several GPUs
        folder = run_dir or f"{configuration.save_path}/{datetime.datetime.now():%Y%m%d-%H%M%S}"
        arguments = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                     "-m", "nisbflow_cli.main", "train", "--run-dir", folder]
        arguments += (["--config", config] if config else []) + Overrides.of(overrides).arguments()
        os.execv(sys.executable, arguments)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        _say_settings(resolved, "train", log)
    run, _ = run_training(configuration, run_dir=run_dir)
    return TrainReport(Path(run), configuration.optimization.max_steps, rank0)


