"""Pipelines that compose stages: infer → decode → NERL on a test seed (:func:`run_test`), the demo on built-in
data (:func:`run_demo`), and tuning followed by a test at the tuned setting (:func:`tune_and_test`).

Each runs on the current Dask client (the command entries in :mod:`nisbflow.jobs` open the cluster session) and
returns one dataclass whatever the decoding method: :class:`TestRun`, a list of :class:`DemoRun`, :class:`TunedTest`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nisbflow.evaluate import NerlResult
    from nisbflow.tune import TuneResult


@dataclass
class TestRun:
    """What :func:`run_test` wrote and scored: the output ``folder`` (affinities.zarr, segmentation.zarr,
    metrics.json) and ``results``, threshold → :class:`~nisbflow.evaluate.NerlResult` in the order decoded (one for
    connected components, one per ``decoding.waterz.thresholds`` for waterz)."""

    __test__ = False  # not a pytest test class

    folder: Path
    results: dict[float, NerlResult]

    @property
    def threshold(self) -> float:
        """The first threshold decoded: the one metrics.json's top-level metrics are for."""
        return next(iter(self.results))

    @property
    def result(self) -> NerlResult:
        """The metrics at :attr:`threshold`."""
        return self.results[self.threshold]


@dataclass
class TunedTest:
    """What :func:`tune_and_test` did: ``tuning`` on ``data.val`` and ``test`` on ``data.test`` at the best setting."""

    tuning: TuneResult
    test: TestRun


@dataclass
class DemoRun:
    """One model's result in the demo: ``label``, its checkpoint, output folder and
    :class:`~nisbflow.evaluate.NerlResult`."""

    label: str
    checkpoint: str
    folder: Path
    result: NerlResult


def run_test(
    run,
    *,
    block=None,
    progress: bool = True,
    out_dir: str | Path | None = None,
    threshold: float | None = None,
    overwrite: bool = False,
    log=None,
) -> TestRun:
    """Run the pipeline on ``data.test``: infer → decode → NERL, writing ``affinities.zarr``, ``segmentation.zarr``
    and ``metrics.json`` into one folder; returns a :class:`TestRun`. Uses the current Dask client.

    Decodes with ``decoding.method``; agglomeration (``waterz``) decodes every one of ``decoding.waterz.thresholds``
    from one pass, and :attr:`TestRun.results` holds one result per threshold (metrics.json: the first threshold's
    metrics, and all of them under ``by_threshold``).

    ``run``: the run's :class:`~nisbflow.settings.RunSettings` (from :func:`~nisbflow.settings.resolve_settings`),
    or a checkpoint to run with the settings it records. ``threshold`` overrides
    the method's threshold (``decoding.threshold`` or ``decoding.waterz.thresholds``). ``log``: where to print the
    resolved settings (None: not printed).
    """
    from nisbflow.data.volumes import open_segmentation, seed_of
    from nisbflow.decode import decode_to_zarr, threshold_array_name
    from nisbflow.decode.agglomerate_blockwise import WaterzOptions
    from nisbflow.evaluate import nerl
    from nisbflow.evaluate.report import write_json
    from nisbflow.infer.blockwise import DEFAULT_BLOCK, infer_to_zarr
    from nisbflow.settings import run_settings_of

    run = run_settings_of(run)
    config = run.config
    seed, skeleton = seed_of(config, "test")
    if threshold is not None:
        config = config.model_copy(update={"decoding": config.decoding.with_threshold(threshold)})
        key = "decoding.waterz.thresholds" if config.decoding.method == "waterz" else "decoding.threshold"
        run = type(run)(config, run.checkpoint, dict(run.sources, **{key: "tuned on data.val"}), run.notes)
    if log is not None:
        for line in run.describe():
            log(line)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(out_dir) if out_dir else Path(config.save_path) / stamp
    folder.mkdir(parents=True, exist_ok=True)
    affinities = folder / "affinities.zarr"
    infer_to_zarr(
        f"{seed.path}/data.zarr/img",
        affinities,
        run,
        block=block or DEFAULT_BLOCK,
        progress=progress,
        overwrite=overwrite,
    )
    segmentation = folder / "segmentation.zarr"
    thresholds = config.decoding.thresholds()
    decode_to_zarr(
        affinities,
        segmentation,
        thresholds=thresholds,
        mask=config.decoding.affinity_mask_path,
        backend=config.decoding.backend,
        progress=progress,
        run=run,
        overwrite=overwrite,
        method=config.decoding.method,
        waterz=WaterzOptions.from_config(config.decoding),
    )
    results: dict[float, NerlResult] = {}
    for value in thresholds:
        array = segmentation if len(thresholds) == 1 else segmentation / threshold_array_name(value)
        results[value] = nerl(
            open_segmentation(array),
            skeleton,
            voxel_size=config.data.voxel_size,
            merge_threshold=config.evaluation.merge_threshold,
            progress=progress,
            metrics=tuple(config.evaluation.metrics),
            em_erl_merge_threshold=config.evaluation.em_erl_merge_threshold,
        )
    first = results[thresholds[0]]
    extra: dict[str, Any] = {}
    if len(results) > 1:
        extra["by_threshold"] = {f"{t:g}": r.to_dict() for t, r in results.items()}
    write_json(
        folder / "metrics.json",
        first,
        checkpoint=run.handle.name,
        checkpoint_sha256=run.handle.sha256,
        checkpoint_weights=run.handle.weights,
        method=config.decoding.method,
        threshold=thresholds[0],
        test_seed=str(seed.path),
        skeleton=str(skeleton),
        settings=run.record(),
        **extra,
    )
    return TestRun(folder, results)


def run_demo(
    out_dir: str | Path,
    *,
    shape=(256, 256, 128),
    seed: int = 101,
    checkpoint: str | None = None,
    threshold: float | None = None,
    baseline: bool = True,
    block=None,
    overwrite: bool = False,
    progress: bool = True,
    log=print,
) -> list[DemoRun]:
    """The main job on built-in data: synthesize seed ``seed`` → infer → decode → NERL, with the shipped model.

    ``checkpoint`` defaults to the shipped model (:data:`nisbflow.model.DEFAULT_SHIPPED`). It runs with the settings
    :func:`nisbflow.settings.resolve_settings` gives it (the shipped model's YAML holds its window geometry and tuned
    threshold), exactly as ``nisbflow infer`` / ``decode`` / ``test`` would run it. With ``baseline`` the same
    architecture with random weights (torch seed 0) runs too, with the same settings, so the printout shows what
    training bought. Uses the current Dask client. Writes ``out_dir/seed<seed>/`` (the synthetic seed) and
    ``out_dir/<label>/`` per model.
    """
    from nisbflow.errors import OutputExistsError
    from nisbflow.model import DEFAULT_SHIPPED, save_random_checkpoint
    from nisbflow.settings import resolve_settings
    from nisbflow.synth import synthesize_seed

    out_dir = Path(out_dir)
    if (out_dir / "trained").exists() and not overwrite:
        raise OutputExistsError(f"demo output {out_dir / 'trained'} already exists; pass --overwrite to replace it")
    checkpoint = checkpoint or DEFAULT_SHIPPED
    seed_dir = out_dir / f"seed{seed}"
    if overwrite or not (seed_dir / "skeleton.pkl").exists():
        log(f"synthesizing test seed {seed} ({'×'.join(map(str, shape))} voxels) → {seed_dir}")
        synthesize_seed(seed_dir, shape, seed, overwrite=True, progress=progress)
    else:
        log(f"using the existing synthetic seed {seed_dir}")
    overrides: dict[str, object] = {
        "data.test.path": str(seed_dir),
        "data.test.skeleton": str(seed_dir / "skeleton.pkl"),
    }
    if threshold is not None:
        overrides["decoding.threshold"] = threshold
    trained = resolve_settings(checkpoint, overrides=overrides)
    for line in trained.describe():
        log(line)
    runs = [("trained", trained)]
    if baseline:
        untrained = out_dir / "untrained.pt"
        out_dir.mkdir(parents=True, exist_ok=True)
        save_random_checkpoint(untrained, trained.handle.model, seed=0)
        runs.append(("untrained", trained.with_checkpoint(str(untrained))))
    results = []
    for label, run in runs:
        log(f"{label} model ({run.handle.name}): infer → decode (threshold {run.config.decoding.threshold:g}) → NERL")
        tested = run_test(run, block=block, progress=progress, out_dir=out_dir / label, overwrite=True)
        results.append(DemoRun(label, run.handle.name, tested.folder, tested.result))
    return results


def tune_and_test(run, *, out_dir: str | Path | None = None, block=None, progress: bool = True, log=print) -> TunedTest:
    """Tune on ``data.val``, then run infer → decode → evaluate on ``data.test`` with the best threshold. ``run``:
    the run's :class:`~nisbflow.settings.RunSettings` (or a checkpoint, with its own settings)."""
    from nisbflow.settings import run_settings_of
    from nisbflow.tune import tune

    run = run_settings_of(run)
    result = tune(run, out_dir=out_dir, block=block, progress=progress, log=log)
    log(f"best threshold on validation: {result.best_threshold:g} ({result.metric} {result.best_value:.4f})")
    tested = run_test(
        run,
        block=block,
        progress=progress,
        out_dir=result.params_path.parent / "test",
        threshold=result.best_threshold,
        overwrite=True,
    )
    return TunedTest(result, tested)
