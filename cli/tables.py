"""Everything the command line prints: the console, plain lines (:func:`say`), and every Rich table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console()


def say(line: str) -> None:
    """A library entry's ``log``: one plain line on the console (no Rich markup read into it)."""
    console.print(line, highlight=False, markup=False)


def metrics_table(result, dense=None, title: str = "evaluation") -> Table:
    """NERL and the other skeleton metrics of a :class:`~nisbflow.evaluate.NerlResult`, with the dense metrics
    (:class:`~nisbflow.evaluate.kernel.DenseMetrics`) when given."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("NERL", f"{result.nerl:.4f}"),
        ("ERL (µm)", f"{result.erl / 1000:.2f}"),
        ("max ERL, ground truth (µm)", f"{result.max_erl / 1000:.2f}"),
        (
            "NERL ignoring mergers ≤5 / ≤20 / ≤100 / all nodes",
            f"{result.nerl_5:.4f} / {result.nerl_20:.4f} / {result.nerl_100:.4f} / {result.nerl_inf:.4f}",
        ),
        (
            "VOI split / merge / sum (bits, nodes)",
            f"{result.voi_split:.4f} / {result.voi_merge:.4f} / {result.voi_sum:.4f}",
        ),
        (
            "mergers between neurons / with background",
            f"{result.n_non0_mergers} / {result.n_mergers - result.n_non0_mergers}",
        ),
        (
            "split edges / omitted edges / merged edges",
            f"{result.n_splits} / {result.n_omitted} / {result.n_merged_edges}",
        ),
        ("skeletons with edges (scored) / nodes", f"{result.n_skeletons} / {result.n_nodes}"),
        ("merge threshold (nodes)", f"{result.merge_threshold:g}"),
    ]
    if getattr(result, "em_erl", None) is not None:
        pytc = result.em_erl
        rows += [
            (f"NERL, PyTorch Connectomics (em_erl, merge threshold {pytc.merge_threshold})", f"{pytc.nerl:.4f}"),
            ("  ERL / max ERL (PyTC's lengths)", f"{pytc.erl:.6g} / {pytc.max_erl:.6g}"),
        ]
    if dense is not None:
        rows += [
            (
                "adapted Rand error (precision, recall)",
                f"{dense.adapted_rand_error:.4f} ({dense.rand_precision:.4f}, {dense.rand_recall:.4f})",
            ),
            ("dense VOI split / merge (bits)", f"{dense.voi_split:.4f} / {dense.voi_merge:.4f}"),
        ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def synth_table(summaries) -> Table:
    """One column per seed, one row per property (fits an 80-column terminal)."""
    table = Table(title="synthetic NISB-like data", title_justify="left")
    table.add_column("")
    for s in summaries:
        table.add_column(s.path.rstrip("/").rsplit("/", 1)[-1], justify="right")
    rows = [
        ("shape (X,Y,Z)", lambda s: "×".join(str(n) for n in s.shape)),
        ("neurons", lambda s: str(s.n_neurons)),
        ("skeletons (with edges)", lambda s: f"{s.n_skeletons} ({s.n_scored_skeletons})"),
        ("skeleton nodes", lambda s: str(s.n_skeleton_nodes)),
        ("path length", lambda s: f"{s.path_length_nm / 1000:.1f} µm"),
        ("background voxels", lambda s: f"{100 * s.background_fraction:.1f} %"),
        ("grey: membrane / cell", lambda s: f"{s.membrane_mean:.0f} / {s.cytoplasm_mean:.0f}"),
    ]
    for name, value in rows:
        table.add_row(name, *(value(s) for s in summaries))
    return table


def dense_table(rows, gt: str) -> Table:
    """Adapted Rand error and VOI of each threshold's segmentation against dense ground truth."""
    table = Table(title=f"dense metrics against {gt}")
    for column in ("threshold", "segments", "adapted Rand error", "VOI split", "VOI merge", "VOI sum"):
        table.add_column(column, justify="right")
    for value, n, dense in rows:
        table.add_row(
            f"{value:g}",
            f"{n:,}",
            f"{dense.adapted_rand_error:.4f}",
            f"{dense.voi_split:.4f}",
            f"{dense.voi_merge:.4f}",
            f"{dense.voi_split + dense.voi_merge:.4f}",
        )
    return table


def curve_table(result) -> Table:
    table = Table(title=f"{result.metric} by decoding threshold (validation seed)")
    table.add_column("threshold", justify="right")
    table.add_column(result.metric, justify="right")
    for threshold, value in result.curve.items():
        mark = " ◀ best" if threshold == result.best_threshold else ""
        table.add_row(f"{threshold:g}", f"{value:.4f}{mark}")
    return table


def models_table(models) -> Table:
    """The shipped models (:func:`nisbflow.jobs.model_list`)."""
    table = Table(title="shipped models")
    for column in ("name", "architecture", "parameters", "file"):
        table.add_column(column)
    for model in models:
        table.add_row(
            model.name, f"MedNeXt-{model.size}, init_filters {model.init_filters}", f"{model.parameters:,}", model.path
        )
    return table


def demo_table(runs, seed: int, shape) -> Table:
    """One row per model of ``nisbflow demo`` (:class:`nisbflow.pipelines.DemoRun`)."""
    table = Table(title=f"demo: synthetic seed {seed}, {'×'.join(map(str, shape))} voxels")
    for column in ("model", "NERL", "ERL (nm)", "mergers", "outputs"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            run.label, f"{run.result.nerl:.3f}", f"{run.result.erl:,.0f}", str(run.result.n_mergers), str(run.folder)
        )
    return table
