"""``decode_to_zarr``: a zarr array of affinities to a zarr segmentation, by the decoding method asked for
(connected components, :func:`~nisbflow.decode.cc_blockwise.cc_to_zarr`, or watershed and agglomeration,
:func:`~nisbflow.decode.agglomerate_blockwise.agglomerate_to_zarr`), with the threshold chosen as ``nisbflow decode``
chooses it."""

from __future__ import annotations

from pathlib import Path

from nisbflow.decode.outputs import DecodeResult
from nisbflow.errors import ConfigError


def decode_to_zarr(
    affinities: str | Path,
    output: str | Path,
    *,
    thresholds=None,
    mask: str | Path | None = None,
    chunks: tuple[int, int, int] | None = None,
    backend: str = "numba",
    overwrite: bool = False,
    force: bool = False,
    progress: bool = True,
    run=None,
    log=None,
    method: str = "cc",
    waterz=None,
    layout: str = "ngff",
) -> DecodeResult:
    """Decode a zarr array of affinities into a zarr segmentation, block by block, reading affinities once.

    ``method``: ``"cc"`` (connected components, BANIS; the rest of this docstring) or ``"waterz"`` (watershed and
    agglomeration: :func:`~nisbflow.decode.agglomerate_blockwise.agglomerate_to_zarr` with ``waterz``, a
    :class:`~nisbflow.decode.agglomerate_blockwise.WaterzOptions`; ``backend`` does not apply).

    ``affinities``: path or URL of a ``(C, X, Y, Z)`` float16/float32 zarr array (C = 3 or 6, channels 0..2 the
    short-range x, y, z edges; checked by :func:`~nisbflow.decode.kernel.open_affinities`). ``output``: one
    threshold writes an ``(X, Y, Z)`` array there; several write a group with one array per threshold
    (:func:`~nisbflow.decode.outputs.threshold_array_name`). ``chunks`` (voxels, X, Y, Z) sets both the block size and
    the output chunks
    (default: the affinities' spatial chunks). Runs on the current Dask client if one is set up. ``run``: the run's
    :class:`~nisbflow.settings.RunSettings` (:func:`~nisbflow.settings.resolve_settings`), recorded in the output's
    attributes, or None. Returns a :class:`~nisbflow.decode.outputs.DecodeResult` (``counts``: threshold → number of
    segments; ``region_graph`` for waterz). A sample of the values is checked for logits
    and NaN first (said through ``log``). ``layout``: each segmentation an OME-NGFF image group (``ngff``) or the
    array itself (``plain``: ``zarr.open(output)[:]``, as BANIS's ``metrics.py`` reads it).

    ``thresholds`` None chooses them as ``nisbflow decode`` without ``-t`` does
    (:func:`~nisbflow.decode.thresholds.choose_thresholds`): ``run``'s when given, else the
    threshold the affinities record (the model's tuned value), else 0.75; for waterz ``decoding.waterz.thresholds``.

    The output is a :class:`~nisbflow.staging.StagedRun` (staged, locked, published when complete; ``overwrite``
    replaces a segmentation nisbflow wrote, ``force`` anything else; an output overlapping an input is refused).
    Both passes resume: a re-run after an interruption keeps the label pass's finished blocks (their local ids and
    faces are in the staging folder's scratch) and the relabel pass's written blocks when the affinities, mask,
    thresholds and chunks are unchanged; the result is identical to an uninterrupted run.
    """
    from nisbflow.decode.outputs import decoding_run
    from nisbflow.decode.thresholds import recorded_thresholds
    from nisbflow.staging import default_log

    if method not in ("cc", "waterz"):
        raise ConfigError(f"decoding.method / --method must be cc or waterz, got {method!r}")
    run = decoding_run(run)
    if thresholds is None:
        thresholds = recorded_thresholds(affinities, run, method, log or default_log)
    if method == "waterz":
        from nisbflow.decode.agglomerate_blockwise import WaterzOptions, agglomerate_to_zarr

        return agglomerate_to_zarr(
            affinities,
            output,
            thresholds=thresholds,
            mask=mask,
            chunks=chunks,
            options=waterz or WaterzOptions(),
            overwrite=overwrite,
            force=force,
            progress=progress,
            run=run,
            log=log,
            layout=layout,
        )
    from nisbflow.decode.cc_blockwise import cc_to_zarr

    return cc_to_zarr(
        affinities,
        output,
        thresholds=thresholds,
        mask=mask,
        chunks=chunks,
        backend=backend,
        overwrite=overwrite,
        force=force,
        progress=progress,
        run=run,
        log=log,
        layout=layout,
    )
