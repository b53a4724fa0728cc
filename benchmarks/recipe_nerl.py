"""NERL of the BANIS base recipe against BANIS+ with equal training steps on the CPU, on NISB's hard synthetic
setting (issue 37's goal: an honest figure either way).

Data: ``nisbflow synth --layout nisb --thin-neurites --slice-defects --low-contrast`` (``--train-seeds`` training
seeds, validation seed 100, test seed 101, ``--shape``).

Recipes, both on ``configs/tiny.yaml``'s small MedNeXt (width 4) with the same crops, batch, steps and schedule:

- **base**: BANIS's ``WeightedBCEWithLogitsLoss``, no EMA, no erosion;
- **BANIS+**: ``PerChannelBCEWithLogitsLoss`` (auto_pos_weight, cap 10), an EMA of the weights (``--ema-decay``,
  warm-up a tenth of the steps; BANIS+'s 0.999 / 500 are for 200k steps) validated and predicted with, label
  erosion 2;
- **BANIS+ with TTA**: the same checkpoint, every window predicted in the 8 flips and ensembled (mean).

Each is tuned on the validation seed with BANIS's 13 thresholds (``tune.sampler=banis``) and tested on the test seed
at its tuned threshold (``nisbflow test --params best.yaml``), through the command line as a user runs it.

    .venv/bin/python benchmarks/recipe_nerl.py --steps 400 --shape 96,96,96 --out outputs/bench-recipe

Prints a Markdown table for docs/BENCHMARKS.md and writes ``<out>/recipe_nerl.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

NISBFLOW = str(Path(sys.executable).with_name("nisbflow"))


def run(*argv: str) -> str:
    result = subprocess.run([NISBFLOW, *argv], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"nisbflow {' '.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--shape", default="96,96,96")
    parser.add_argument("--train-seeds", type=int, default=2)
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--out", default="outputs/bench-recipe")
    args = parser.parse_args()
    out = Path(args.out).absolute()
    data = out / "data"
    if not (data / "test" / "seed101").exists():
        run("synth", str(data), "--layout", "nisb", "--shape", args.shape, "--train-seeds", str(args.train_seeds),
            "--thin-neurites", "--slice-defects", "--low-contrast")
    val, test = data / "val" / "seed100", data / "test" / "seed101"
    common = [f"data.train.path={data / 'train'}", f"data.val.path={val}", f"data.val.skeleton={val}/skeleton.pkl",
              f"data.test.path={test}", f"data.test.skeleton={test}/skeleton.pkl",
              f"data.patch_size=[{args.patch},{args.patch},{args.patch}]", f"optimization.max_steps={args.steps}",
              f"optimization.val_check_interval={max(1, args.steps // 4)}",
              f"optimization.n_steps_per_epoch={max(1, args.steps // 4)}", "optimization.val_steps_per_epoch=2",
              f"optimization.checkpoint.every_n_train_steps={args.steps}", "system.num_workers=0"]
    plus = ["model.loss=PerChannelBCEWithLogitsLoss", "optimization.ema.enabled=true",
            f"optimization.ema.decay={args.ema_decay}", f"optimization.ema.warmup_steps={max(1, args.steps // 10)}",
            "data.erosion=2"]
    tta = ["inference.test_time_augmentation.enabled=true", "inference.test_time_augmentation.flip_axes=all",
           "inference.test_time_augmentation.ensemble_mode=mean"]
    recipes = {"base": ([], []), "BANIS+": (plus, []), "BANIS+ with TTA (8 flips)": (plus, tta)}
    rows, trained = [], {}
    for name, (training, inference) in recipes.items():
        key = tuple(training)
        start = time.perf_counter()
        if key not in trained:
            run_dir = out / ("plus" if training else "base") / "run"
            if not (run_dir / "checkpoints" / "last.pt").exists():
                run("train", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir), *common, *training,
                    f"save_path={out / 'runs'}")
            trained[key] = run_dir / "checkpoints" / "last.pt"
        checkpoint = str(trained[key])
        train_seconds = time.perf_counter() - start
        save = out / name.split()[0].replace("+", "plus") / ("tta" if inference else "plain")
        run("tune", "--checkpoint", checkpoint, "--cluster", "sync", *common, *inference, "tune.sampler=banis",
            f"save_path={save}")
        (best,) = (save / "tune").glob("*/cc/best.yaml")
        run("test", "--checkpoint", checkpoint, "--cluster", "sync", "--params", str(best), *common, *inference,
            f"save_path={save}")
        (metrics_path,) = save.glob("*/metrics.json")
        metrics = json.loads(metrics_path.read_text())
        rows.append({"recipe": name, "threshold": metrics["threshold"], "nerl": metrics["nerl"],
                     "erl": metrics["erl"], "mergers": metrics.get("n_mergers"), "voi_sum": metrics.get("voi_sum"),
                     "train_seconds": train_seconds})
    (out / "recipe_nerl.json").write_text(json.dumps(rows, indent=2))
    print(f"{args.steps} steps, {args.patch}³ crops, {args.train_seeds} training seeds of {args.shape} "
          "(--thin-neurites --slice-defects --low-contrast); tuned on seed 100, tested on seed 101\n")
    print("| recipe | tuned threshold | NERL (test) | mergers | VOI sum |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['recipe']} | {row['threshold']:g} | {row['nerl']:.4f} | {row['mergers']} | "
              f"{row['voi_sum']:.3f} |" if row["voi_sum"] is not None else
              f"| {row['recipe']} | {row['threshold']:g} | {row['nerl']:.4f} | {row['mergers']} | – |")


if __name__ == "__main__":
    main()
