"""The entries of the data commands: ``synth``, ``synth-affinities``, ``skeleton convert`` and ``convert``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from nisbflow.errors import ConfigError
from nisbflow.jobs.common import print_line, preflight

if TYPE_CHECKING:  # report fields' types; the modules load where a command uses them
    from nisbflow.paths import VolumeLocation


SYNTH_LAYOUTS = ("seed", "nisb")


def synth(
    out: str,
    *,
    shape=(256, 256, 128),
    seed: int = 0,
    layout: str = "seed",
    train_seeds: int = 2,
    chunks=(128, 128, 128),
    presets=(),
    zarr_format: int = 2,
    workers: int | None = None,
    preview: str | None = None,
    overwrite: bool = False,
    force: bool = False,
    log=print_line,
) -> list:
    """``nisbflow synth``: synthetic NISB-like data (``data.zarr`` with ``img (X, Y, Z, 1) uint8`` and ``seg (X, Y,
    Z) uint32``, and ``skeleton.pkl``) in one seed folder (``layout="seed"``) or a NISB tree (``"nisb"``:
    ``train/seed0..K-1``, ``val/seed100``, ``test/seed101``; the preview shows the test seed). ``presets``: any of
    ``thin``, ``slice_defects``, ``low_contrast``. Returns the :class:`~nisbflow.synth.SeedSummary` of each seed."""
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
    options = dict(
        presets=list(presets),
        chunks=tuple(chunks),
        zarr_format=zarr_format,
        overwrite=overwrite,
        force=force,
        num_workers=workers,
        log=log,
    )
    if layout == "seed":
        return [synthesize_seed(out, tuple(shape), seed, preview=preview, **options)]
    summaries = synthesize_layout(out, tuple(shape), train_seeds=train_seeds, **options)
    if preview:
        from nisbflow.synth.volume import write_preview

        write_preview(f"{str(out).rstrip('/')}/test/seed101/data.zarr", preview, title=f"{out} test/seed101")
    return summaries


def synth_affinities(
    segmentation: str,
    output: str,
    *,
    noise: float = 0.15,
    seed: int = 0,
    chunks=None,
    overwrite: bool = False,
    force: bool = False,
    log=print_line,
    axes: str | None = None,
) -> str:
    """``nisbflow synth-affinities``: stand-in predictions, noisy short-range affinities ``(3, X, Y, Z) float16``
    of a ground-truth segmentation (:func:`nisbflow.synth.affinities.write_noisy_affinities`); returns the output.
    ``segmentation`` may be an HDF5 dataset or TIFF stack (``axes``, default ZYX), staged as zarr beside the output
    (:func:`~nisbflow.data.formats.zarr_input`)."""
    from nisbflow.data.formats import locate, zarr_input
    from nisbflow.synth.affinities import write_noisy_affinities

    preflight(output, "affinities", {"segmentation": locate(segmentation).file}, overwrite, force)
    segmentation = zarr_input(segmentation, role="segmentation", near=output, axes=axes, log=log)

    return write_noisy_affinities(
        segmentation, output, noise=noise, seed=seed, chunks=chunks, overwrite=overwrite, force=force, log=log
    )


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


def convert(
    source: str,
    output: str,
    *,
    axes: str | None = None,
    layout: str = "ngff",
    chunks=None,
    voxel_size=None,
    overwrite: bool = False,
    force: bool = False,
    progress: bool = True,
) -> ConvertReport:
    """``nisbflow convert``: a volume between zarr (OME-NGFF or ``layout="plain"``), HDF5 (``file.h5:/dataset``,
    PyTorch Connectomics' ZYX layout) and TIFF stacks, block by block (:mod:`nisbflow.data.formats`). ``axes``: the
    source's axis order (default by format: ``zyx`` / ``czyx`` for HDF5 and TIFF, the recorded one for zarr);
    ``voxel_size`` (nm, X, Y, Z) recorded on a zarr output (default: the source's, else NISB's 9 × 9 × 20)."""
    from nisbflow.data.formats import open_lazy, stored_axes, write_volume

    volume = open_lazy(source, axes)
    recorded = {k: v for k, v in volume.attrs.items() if k in ("voxel_size", "description", "nisbflow_output")}
    if voxel_size is not None:
        recorded["voxel_size"] = [float(v) for v in voxel_size]
    location = write_volume(
        volume,
        output,
        layout=layout,
        chunks=chunks,
        overwrite=overwrite,
        force=force,
        attributes=recorded,
        source=source,
        progress=progress,
    )
    written = stored_axes(location.kind, volume.axes)
    shape = tuple(volume.data.shape[volume.axes.index(a)] for a in written)
    return ConvertReport(location, shape, written, volume.source_axes, str(volume.data.dtype))
