"""``nisbflow test``: infer → decode → evaluate on the test seed of a configuration, back to back.

Writes ``affinities.zarr``, ``segmentation.zarr`` and ``metrics.json`` under ``<save_path>/<timestamp>/``.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from nisbflow.errors import ConfigError


def run_test(config, checkpoint: str | Path, *, block=None, progress: bool = True, out_dir: str | Path | None = None,
             threshold: float | None = None) -> tuple[Path, object]:
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
                  block=block or DEFAULT_BLOCK, progress=progress, config=config)
    segmentation = folder / "segmentation.zarr"
    decode_to_zarr(affinities, segmentation, thresholds=[threshold], mask=config.decoding.affinity_mask_path,
                   backend=config.decoding.backend, progress=progress, config=config)
    import zarr

    result = nerl(zarr.open_array(str(segmentation), mode="r"), skeleton, voxel_size=config.data.voxel_size,
                  merge_threshold=config.evaluation.merge_threshold, progress=progress)
    write_json(folder / "metrics.json", result, checkpoint=str(checkpoint), threshold=threshold,
               test_seed=str(seed.path), skeleton=str(skeleton))
    return folder, result
