"""NERL of the shipped model on held-out synthetic seeds, against ground-truth affinities and an untrained model,
over a range of decoding thresholds (issue 6's figures).

For each held-out seed (never used for training or for choosing the shipped threshold; the training seeds are
0 and 1, the validation seed 100):

(a) ground-truth affinities: the seed's segmentation as 0.9 (same neuron) / 0.1 edges, no noise — decoding them
    reproduces the ground truth, so NERL is 1.0 at every threshold in (0.1, 0.9): the ceiling and a check;
(b) the shipped model (``nisb-tiny-synthetic``) with the settings ``nisbflow.settings.resolve_settings`` gives it
    (its own window geometry; the threshold marked on the curve is its tuned one);
(c) the same architecture with random weights (torch seed 0), same settings.

NERL follows funlib.evaluate's per-edge rules (docs/evaluation.md); figures from before 2026-11-25 used a rule that
zeroed whole merged skeletons.

Inference and decoding run block-wise on a LocalCluster; every threshold is decoded from one read of the
affinities. Writes a markdown table (mean NERL over seeds per threshold), a JSON file and a PNG curve.

    .venv/bin/python benchmarks/shipped_model.py --seeds 101,102,103 \\
        --png docs/figures/shipped_nerl_threshold.png --json outputs/bench-shipped/nerl.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="101,102,103", help="held-out synthetic seeds")
    parser.add_argument("--shape", default="256,256,128")
    parser.add_argument("--thresholds", default="0.3,0.4,0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9")
    parser.add_argument("--checkpoint", default="nisb-tiny-synthetic")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="outputs/bench-shipped")
    parser.add_argument("--png", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from dask.distributed import Client, LocalCluster

    from nisbflow.infer.blockwise import infer_to_zarr
    from nisbflow.model import save_random_checkpoint
    from nisbflow.settings import resolve_settings
    from nisbflow.synth import synthesize_seed
    from nisbflow.synth.affinities import write_noisy_affinities
    from nisbflow.tune import ThresholdScorer

    def nerl_per_threshold(affinities, skeleton) -> dict[float, float]:
        """NERL of each threshold, all decoded from one read of the affinities."""
        scorer = ThresholdScorer(affinities, skeleton, voxel_size=config.data.voxel_size, scratch=out / "scratch")
        return {t: r.nerl for t, r in scorer.score_many(thresholds).items()}

    seeds = [int(s) for s in args.seeds.split(",")]
    shape = tuple(int(s) for s in args.shape.split(","))
    thresholds = [float(t) for t in args.thresholds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = resolve_settings(args.checkpoint)  # the settings every nisbflow command gives this checkpoint
    print("\n".join(run.describe()))
    config = run.config
    untrained = out / "untrained.pt"
    save_random_checkpoint(untrained, run.checkpoint.model, seed=0)
    models = {"shipped": run, "untrained": run.with_checkpoint(str(untrained))}

    table: dict[str, dict[int, dict[float, float]]] = {"ground truth": {}, "shipped": {}, "untrained": {}}
    seconds: dict[str, float] = {}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster):
        for seed in seeds:
            folder = out / f"seed{seed}"
            if not (folder / "skeleton.pkl").exists():
                synthesize_seed(folder, shape, seed, overwrite=True, progress=False)
            skeleton = str(folder / "skeleton.pkl")
            truth = out / f"seed{seed}-truth.zarr"
            write_noisy_affinities(str(folder / "data.zarr" / "seg"), truth, noise=0.0, overwrite=True, progress=False)
            table["ground truth"][seed] = nerl_per_threshold(truth, skeleton)
            for label, model_run in models.items():
                start = time.perf_counter()
                affinities = out / f"seed{seed}-{label}.zarr"
                infer_to_zarr(str(folder / "data.zarr" / "img"), affinities, model_run,
                              overwrite=True, progress=False)
                seconds[f"{label} infer seed{seed}"] = time.perf_counter() - start
                table[label][seed] = nerl_per_threshold(affinities, skeleton)
                print(f"seed {seed} {label}: " + ", ".join(f"{t:g}→{v:.3f}" for t, v in table[label][seed].items()),
                      flush=True)

    means = {label: {t: float(np.mean([per_seed[s][t] for s in seeds])) for t in thresholds}
             for label, per_seed in table.items()}
    header = "| threshold | " + " | ".join(f"{label} (mean of {len(seeds)})" for label in means) + " |"
    print(f"\nNERL on held-out synthetic seeds {args.seeds} ({args.shape}), model {args.checkpoint}, "
          f"shipped threshold {config.decoding.threshold:g}\n")
    print(header)
    print("|" + "---|" * (len(means) + 1))
    for t in thresholds:
        print(f"| {t:g} | " + " | ".join(f"{means[label][t]:.3f}" for label in means) + " |")
    at = config.decoding.threshold
    if at in thresholds:
        per_seed = ", ".join(f"{table['shipped'][s][at]:.3f}" for s in seeds)
        print(f"\nshipped model at its threshold {at:g}: per seed {per_seed}")
    for key, value in seconds.items():
        print(f"{key}: {value:.1f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"seeds": seeds, "shape": shape, "checkpoint": args.checkpoint,
                                               "per_seed": {k: {str(s): {str(t): v for t, v in d.items()}
                                                                for s, d in per.items()} for k, per in table.items()},
                                               "mean": {k: {str(t): v for t, v in d.items()} for k, d in means.items()},
                                               "seconds": seconds}, indent=1))
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        figure, axis = plt.subplots(figsize=(6, 4))
        for label, style in (("ground truth", "k--"), ("shipped", "o-"), ("untrained", "s:")):
            axis.plot(thresholds, [means[label][t] for t in thresholds], style, label=label)
        axis.axvline(at, color="grey", linewidth=0.8)
        axis.set_xlabel("decoding threshold (hard edge: affinity > threshold)")
        axis.set_ylabel(f"NERL (mean of seeds {args.seeds})")
        axis.set_ylim(-0.02, 1.05)
        axis.set_title(f"{args.checkpoint} on held-out synthetic seeds")
        axis.legend()
        figure.tight_layout()
        figure.savefig(args.png, dpi=120)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
