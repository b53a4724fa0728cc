"""Reports of evaluation results written to files: JSON, and a plot of per-skeleton run lengths (the Rich table
the command line prints is :func:`nisbflow_cli.tables.metrics_table`)."""

from __future__ import annotations

import json
from pathlib import Path

from nisbflow.evaluate import NerlResult
from nisbflow.evaluate.kernel import DenseMetrics

COLOURS = {"correct": "tab:green", "split": "tab:orange", "merged": "tab:red"}
LABELS = {"correct": "no error", "split": "split or omitted edges", "merged": "merged"}


def write_json(path: str | Path, result: NerlResult, dense: DenseMetrics | None = None, **extra) -> None:
    """Every metric of ``result`` (and ``dense``) as one JSON object, marked as nisbflow's metrics
    (:data:`nisbflow.provenance.MARK`), replacing ``path`` whole."""
    from nisbflow.provenance import MARK, METRICS

    data = {MARK: METRICS, **result.to_dict()}
    if dense is not None:
        data.update(
            adapted_rand_error=dense.adapted_rand_error,
            rand_precision=dense.rand_precision,
            rand_recall=dense.rand_recall,
            dense_voi_split=dense.voi_split,
            dense_voi_merge=dense.voi_merge,
        )
    data.update(extra)
    from nisbflow.staging import write_file

    write_file(path, json.dumps(data, indent=2))


def plot_run_lengths(path: str | Path, result: NerlResult, title: str = "") -> None:
    """Bar per skeleton, sorted by its length: its ground-truth length (grey) and its run length in this
    segmentation, coloured by what went wrong (correct, split or omitted, merged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skeletons = sorted(result.skeleton_length, key=lambda s: result.skeleton_length[s], reverse=True)
    x = range(len(skeletons))
    figure, axes = plt.subplots(figsize=(10, 4))
    axes.bar(x, [result.skeleton_length[s] / 1000 for s in skeletons], color="0.85", width=1.0, label="skeleton length")
    for kind, colour in COLOURS.items():
        chosen = [(i, s) for i, s in enumerate(skeletons) if result.error_type.get(s) == kind]
        if not chosen:
            continue
        axes.bar(
            [i for i, _ in chosen],
            [result.per_skeleton_erl[s] / 1000 for _, s in chosen],
            color=colour,
            width=1.0,
            label=f"run length: {LABELS[kind]}",
        )
        if kind == "merged":  # a merged skeleton's run is often 0: mark it where its grey bar ends, so it shows
            axes.scatter(
                [i for i, _ in chosen],
                [result.skeleton_length[s] / 1000 for _, s in chosen],
                color=colour,
                marker="v",
                s=12,
                zorder=3,
                label="merged skeleton",
            )
    axes.set_xlabel("skeleton (sorted by length)")
    axes.set_ylabel("µm")
    axes.set_title(title or f"NERL {result.nerl:.3f}")
    axes.legend()
    figure.tight_layout()
    save_figure(figure, path, dpi=120)
    plt.close(figure)


PLOT_SUFFIXES = (".png",)
"""What ``--plot`` writes: PNG, which records that nisbflow wrote it (a text chunk)."""


def check_plot_path(path: str | Path, option: str = "--plot") -> None:
    """Refuse a plot path whose suffix is not PNG, before any work."""
    from nisbflow.errors import ConfigError

    if Path(str(path)).suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError(f"{option} {path}: plots are written as PNG; name a .png file")


def save_figure(figure, path: str | Path, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG marked as nisbflow's plot (:data:`nisbflow.provenance.MARK`), through
    :func:`nisbflow.staging.staged_output`: a full disk leaves the old file (or none), never a 0-byte one, and the
    error names the file."""
    from nisbflow.provenance import MARK, PLOT
    from nisbflow.staging import staged_output

    with staged_output(path, overwrite=True) as temporary:
        figure.savefig(temporary, dpi=dpi, format="png", metadata={MARK: PLOT})
