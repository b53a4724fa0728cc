"""The whole job back to back: ``nisbflow test`` (infer → decode → evaluate on a configuration's test seed) and
``nisbflow demo`` (synthesize a seed, then the same with the shipped model beside an untrained one).

Each run writes ``affinities.zarr``, ``segmentation.zarr`` and ``metrics.json`` into one folder.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from nisbflow.errors import ConfigError


def run_test(config, checkpoint: str | Path, *, block=None, progress: bool = True, out_dir: str | Path | None = None,
             threshold: float | None = None, overwrite: bool = False) -> tuple[Path, object]:
    """Run the pipeline on ``data.test``; returns ``(output folder, NerlResult)``. Uses the current Dask client."""
    from nisbflow.data import open_seed
    from nisbflow.decode import decode_to_zarr
    from nisbflow.evaluate import nerl
    from nisbflow.evaluate.report import write_json
    from nisbflow.infer.blockwise import DEFAULT_BLOCK, WindowSettings, infer_to_zarr

    if not config.data.test.path:
        raise ConfigError("data.test.path is not set: give the test seed folder (holding data.zarr)")
    seed = open_seed(config.data.test.path)
    skeleton = config.data.test.skeleton or seed.skeleton_path
    if not skeleton:
        raise ConfigError(f"no skeleton for {config.data.test.path}: set data.test.skeleton")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(out_dir) if out_dir else Path(config.save_path) / stamp
    folder.mkdir(parents=True, exist_ok=True)
    threshold = config.decoding.threshold if threshold is None else threshold
    settings = WindowSettings.from_config(config.inference, config.inference.select_channel)
    affinities = folder / "affinities.zarr"
    infer_to_zarr(f"{seed.path}/data.zarr/img", affinities, checkpoint, settings=settings,
                  block=block or DEFAULT_BLOCK, progress=progress, config=config, overwrite=overwrite)
    segmentation = folder / "segmentation.zarr"
    decode_to_zarr(affinities, segmentation, thresholds=[threshold], mask=config.decoding.affinity_mask_path,
                   backend=config.decoding.backend, progress=progress, config=config,
                   overwrite=overwrite)
    import zarr

    result = nerl(zarr.open_array(str(segmentation), mode="r"), skeleton, voxel_size=config.data.voxel_size,
                  merge_threshold=config.evaluation.merge_threshold, progress=progress)
    write_json(folder / "metrics.json", result, checkpoint=str(checkpoint), threshold=threshold,
               test_seed=str(seed.path), skeleton=str(skeleton))
    return folder, result


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

    ``checkpoint`` defaults to the shipped model (:data:`nisbflow.model.DEFAULT_SHIPPED`). A model runs with the
    inference and decoding settings it records (:func:`nisbflow.model.checkpoint_config`; the shipped model's YAML
    holds its tuned threshold), or the shipped model's where it records none. With ``baseline`` the same architecture with random
    weights (torch seed 0) runs too, so the printout shows what training bought. Uses the current Dask client.
    Writes ``out_dir/seed<seed>/`` (the synthetic seed) and ``out_dir/<label>/`` per model.
    """
    from nisbflow.errors import OutputExistsError
    from nisbflow.model import DEFAULT_SHIPPED, checkpoint_config, load_checkpoint, save_random_checkpoint, \
        shipped_config
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
    config = checkpoint_config(checkpoint, overrides) or shipped_config(DEFAULT_SHIPPED, overrides)
    _, model_config = load_checkpoint(checkpoint)
    runs = [("trained", str(checkpoint))]
    if baseline:
        save_random_checkpoint(out_dir / "untrained.pt", model_config, seed=0)
        runs.append(("untrained", str(out_dir / "untrained.pt")))
    results = []
    for label, path in runs:
        log(f"{label} model ({path}): infer → decode (threshold {threshold or config.decoding.threshold:g}) → NERL")
        folder, result = run_test(config, path, block=block, progress=progress, out_dir=out_dir / label,
                                  threshold=threshold, overwrite=True)
        results.append(DemoRun(label, path, folder, result))
    return results
