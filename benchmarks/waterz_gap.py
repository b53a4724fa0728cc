"""The block-wise waterz gap, measured over seeds, chunkings, scorings and thresholds: how far ``decode --method
waterz`` on blocks (each block's watershed sees its read region, ``context`` voxels beyond its write region) is from
whole-volume waterz on the same affinities.

Data: synthetic seeds (``--shape``, ``--seeds``) with noisy float16 affinities of their ground truth (``--noise``).
For each seed and scoring, whole-volume waterz (:func:`nisbflow.decode.agglomerate.decode_affinity_waterz`) at
``--thresholds``; then block-wise decoding (:func:`nisbflow.decode.decode_to_zarr`, ``--context``) for each of
``--chunkings``. The gap per threshold: the adapted Rand error and VOI (split + merge, bits) between the two
partitions, and the fraction of voxels whose block-wise segment is not the one its whole-volume segment mostly maps
to (voxels in disagreeing segments).

    BENCH_TMP=/tmp/bench .venv/bin/python benchmarks/waterz_gap.py

Prints Markdown for docs/BENCHMARKS.md and writes the numbers to $BENCH_TMP/waterz-gap.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def parse(text: str, kind=int) -> tuple:
    return tuple(kind(v) for v in text.split(","))


def disagreeing_voxels(reference: np.ndarray, other: np.ndarray) -> float:
    """Fraction of voxels outside the largest overlap of their ``reference`` segment with an ``other`` segment (0
    when every whole-volume segment maps onto one block-wise segment and back)."""
    from nisbflow.evaluate.kernel import contingency

    true, test, counts = contingency(reference, other)
    order = np.lexsort((-counts, true))
    first = np.unique(true[order], return_index=True)[1]
    kept_forward = counts[order][first].sum()
    order = np.lexsort((-counts, test))
    first = np.unique(test[order], return_index=True)[1]
    kept_backward = counts[order][first].sum()
    return float(1 - min(kept_forward, kept_backward) / counts.sum())


def gap(reference: np.ndarray, other: np.ndarray) -> dict:
    from nisbflow.evaluate.kernel import contingency, dense_metrics_from_contingency

    metrics = dense_metrics_from_contingency(*contingency(reference, other))
    return dict(are=float(metrics.adapted_rand_error), voi=float(metrics.voi_split + metrics.voi_merge),
                voxels=disagreeing_voxels(reference, other))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="128,128,96")
    parser.add_argument("--seeds", default="11,12,13")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--scorings", default="aff85_his256,mean_aff")
    parser.add_argument("--thresholds", default="0.1,0.3,0.5")
    parser.add_argument("--chunkings", default="64,64,48;48,40,36;96,96,96")
    parser.add_argument("--context", type=int, default=8)
    arguments = parser.parse_args()

    import dask
    import zarr

    from nisbflow.data.volumes import array_url
    from nisbflow.decode import decode_to_zarr
    from nisbflow.decode.agglomerate import decode_affinity_waterz
    from nisbflow.decode.agglomerate_blockwise import WaterzOptions
    from nisbflow.synth import synthesize_seed
    from nisbflow.synth.affinities import write_noisy_affinities

    shape = parse(arguments.shape)
    thresholds = parse(arguments.thresholds, float)
    chunkings = [parse(c) for c in arguments.chunkings.split(";")]
    cache = Path(os.environ.get("BENCH_TMP") or tempfile.mkdtemp(prefix="waterz-gap-"))
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in parse(arguments.seeds):
        folder = cache / f"gap-seed{seed}-{'x'.join(map(str, shape))}"
        if not (folder / "skeleton.pkl").exists():
            synthesize_seed(str(folder), shape, seed=seed, progress=False, overwrite=True)
        affinities = cache / f"gap-affinities-seed{seed}-{'x'.join(map(str, shape))}-noise{arguments.noise:g}.zarr"
        if not affinities.exists():
            write_noisy_affinities(folder / "data.zarr" / "seg", affinities, noise=arguments.noise, seed=seed,
                                   progress=False)
        values = zarr.open_array(array_url(str(affinities)), mode="r")[:3]
        for scoring in arguments.scorings.split(","):
            start = time.perf_counter()
            whole = decode_affinity_waterz(values, list(thresholds), scoring=scoring)
            whole_seconds = time.perf_counter() - start
            for chunks in chunkings:
                out = cache / "gap-out.zarr"
                start = time.perf_counter()
                with dask.config.set(scheduler="threads", num_workers=2):
                    decode_to_zarr(str(affinities), str(out), thresholds=thresholds, chunks=chunks, progress=False,
                                   overwrite=True, method="waterz",
                                   waterz=WaterzOptions(scoring=scoring, context=arguments.context),
                                   log=lambda line: None)
                blockwise_seconds = time.perf_counter() - start
                for threshold, reference in zip(thresholds, whole):
                    path = out / f"threshold-{threshold:g}" if len(thresholds) > 1 else out
                    blocks = zarr.open_array(array_url(str(path)), mode="r")[...]
                    row = dict(seed=seed, scoring=scoring, chunks=list(chunks), threshold=threshold,
                               whole_segments=int(reference.max()), blockwise_segments=int(blocks.max()),
                               whole_seconds=whole_seconds, blockwise_seconds=blockwise_seconds,
                               **gap(reference, blocks))
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    (cache / "waterz-gap.json").write_text(json.dumps(dict(arguments=vars(arguments), rows=rows), indent=1))
    print_markdown(rows, arguments)


def print_markdown(rows: list, arguments) -> None:
    print(f"\nshape {arguments.shape}, noise {arguments.noise:g}, context {arguments.context}, seeds "
          f"{arguments.seeds}; gap = block-wise against whole-volume waterz\n")
    print("| scoring | threshold | chunks | adapted Rand error (min – max over seeds) | VOI, bits | voxels in "
          "disagreeing segments |")
    print("|---|---|---|---|---|---|")
    keys = sorted({(r["scoring"], r["threshold"], tuple(r["chunks"])) for r in rows})
    for scoring, threshold, chunks in keys:
        chosen = [r for r in rows if (r["scoring"], r["threshold"], tuple(r["chunks"])) == (scoring, threshold, chunks)]

        def span(key, form):
            low, high = min(r[key] for r in chosen), max(r[key] for r in chosen)
            return f"{low:{form}} – {high:{form}}"

        print(f"| {scoring} | {threshold:g} | {','.join(map(str, chunks))} | {span('are', '.2e')} | "
              f"{span('voi', '.3f')} | {span('voxels', '.2%')} |")
    for scoring in sorted({r["scoring"] for r in rows}):
        chosen = [r for r in rows if r["scoring"] == scoring]
        print(f"\n{scoring}: adapted Rand error {min(r['are'] for r in chosen):.2e} – "
              f"{max(r['are'] for r in chosen):.2e} over {len(chosen)} cases; median "
              f"{float(np.median([r['are'] for r in chosen])):.2e}")


if __name__ == "__main__":
    main()
