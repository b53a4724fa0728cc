"""The whole job back to back: ``nisbflow test`` (infer → decode → evaluate on a configuration's test seed) and
``nisbflow demo`` (synthesize a seed, then the same with the shipped model beside an untrained one).

Each run writes ``affinities.zarr``, ``segmentation.zarr`` and ``metrics.json`` into one folder.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from nisbflow.data.volumes import open_segmentation
from nisbflow.errors import ConfigError


def run_test(config, checkpoint, *, block=None, progress: bool = True, out_dir: str | Path | None = None,
             threshold: float | None = None, overwrite: bool = False, log=None) -> tuple[Path, object]:
    """Run the pipeline on ``data.test``; returns ``(output folder, NerlResult)``. Uses the current Dask client.

    Decodes with ``decoding.method``; agglomeration (``waterz``) decodes every one of ``decoding.waterz.thresholds``
    from one pass, and with several the result is ``{threshold: NerlResult}`` (metrics.json: the first threshold's
    metrics, and all of them under ``by_threshold``).

    ``config``: the run's :class:`~nisbflow.settings.RunSettings` (from :func:`~nisbflow.settings.resolve_settings`),
    a resolved :class:`~nisbflow.config.Config`, or None for the checkpoint's own settings. ``threshold`` overrides
    the method's threshold (``decoding.threshold`` or ``decoding.waterz.thresholds``). ``log``: where to print the
    resolved settings (None: not printed).
    """
    from nisbflow.data import open_seed
    from nisbflow.decode import decode_to_zarr, threshold_array_name
    from nisbflow.decode.agglomerate_blockwise import WaterzOptions
    from nisbflow.evaluate import nerl
    from nisbflow.evaluate.report import write_json
    from nisbflow.infer.blockwise import DEFAULT_BLOCK, infer_to_zarr
    from nisbflow.settings import as_run_settings

    run = as_run_settings(config, checkpoint)
    config = run.config
    if not config.data.test.path:
        raise ConfigError("data.test.path is not set: give the test seed folder (holding data.zarr)")
    seed = open_seed(config.data.test.path)
    skeleton = config.data.test.skeleton or seed.skeleton_path
    if not skeleton:
        raise ConfigError(f"no skeleton for {config.data.test.path}: set data.test.skeleton")
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
    infer_to_zarr(f"{seed.path}/data.zarr/img", affinities, run.checkpoint, config=run, block=block or DEFAULT_BLOCK,
                  progress=progress, overwrite=overwrite)
    segmentation = folder / "segmentation.zarr"
    thresholds = config.decoding.thresholds()
    decode_to_zarr(affinities, segmentation, thresholds=thresholds, mask=config.decoding.affinity_mask_path,
                   backend=config.decoding.backend, progress=progress, config=run, overwrite=overwrite,
                   method=config.decoding.method, waterz=WaterzOptions.from_config(config.decoding))
    results = {}
    for value in thresholds:
        array = segmentation if len(thresholds) == 1 else segmentation / threshold_array_name(value)
        results[value] = nerl(open_segmentation(array), skeleton,
                              voxel_size=config.data.voxel_size, merge_threshold=config.evaluation.merge_threshold,
                              progress=progress)
    first = results[thresholds[0]]
    extra = {"by_threshold": {f"{t:g}": r.to_dict() for t, r in results.items()}} if len(results) > 1 else {}
    write_json(folder / "metrics.json", first, checkpoint=run.checkpoint.name,
               checkpoint_sha256=run.checkpoint.sha256, method=config.decoding.method, threshold=thresholds[0],
               test_seed=str(seed.path), skeleton=str(skeleton), settings=run.record(), **extra)
    return (folder, first) if len(results) == 1 else (folder, results)


@dataclass
class DemoRun:
    """One model's result in the demo: ``label``, its checkpoint, output folder and :class:`NerlResult`."""

    label: str
    checkpoint: str
    folder: Path
    result: object


def run_demo(out_dir: str | Path, *, shape=(256, 256, 128), seed: int = 101, checkpoint: str | None = None,
             threshold: float | None = None, baseline: bool = True, block=None, overwrite: bool = False,
             progress: bool = True, log=print) -> list[DemoRun]:
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
    from nisbflow.settings import as_run_settings, resolve_settings
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
    overrides = [f"data.test.path={seed_dir}", f"data.test.skeleton={seed_dir / 'skeleton.pkl'}"]
    if threshold is not None:
        overrides.append(f"decoding.threshold={threshold}")
    trained = resolve_settings(checkpoint, overrides=overrides)
    for line in trained.describe():
        log(line)
    runs = [("trained", trained)]
    if baseline:
        untrained = out_dir / "untrained.pt"
        out_dir.mkdir(parents=True, exist_ok=True)
        save_random_checkpoint(untrained, trained.checkpoint.model, seed=0)
        runs.append(("untrained", as_run_settings(trained, str(untrained))))
    results = []
    for label, run in runs:
        log(f"{label} model ({run.checkpoint.name}): infer → decode (threshold {run.config.decoding.threshold:g}) "
            "→ NERL")
        folder, result = run_test(run, run.checkpoint, block=block, progress=progress, out_dir=out_dir / label,
                                  overwrite=True)
        results.append(DemoRun(label, run.checkpoint.name, folder, result))
    return results
