"""One library entry per command: ``nisbflow.jobs.infer`` / ``decode`` and the commands give the same outputs and
the same numbers, and a notebook's ``decode_to_zarr`` without thresholds decodes at the threshold the affinities
record, as ``nisbflow decode`` without ``-t`` does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from nisbflow.data.volumes import array_url
from nisbflow.synth import synthesize_seed

NISBFLOW = str(Path(sys.executable).with_name("nisbflow"))
SHIPPED = "nisb-tiny-synthetic"


def read(path) -> np.ndarray:
    return zarr.open_array(array_url(str(path)), mode="r")[...]


def cli(arguments, cwd) -> subprocess.CompletedProcess:
    import os

    result = subprocess.run([NISBFLOW, *arguments], cwd=cwd, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, COLUMNS="200"))
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    synthesize_seed(root / "seed", (96, 96, 64), seed=4, chunks=(48, 48, 32), progress=False)
    return root, str(root / "seed/data.zarr/img")


@pytest.fixture(scope="module")
def affinities(image):
    """The shipped model's affinities through the library entry and through the command."""
    from nisbflow.jobs import ClusterSpec, infer

    root, img = image
    said = []
    report = infer(img, str(root / "lib-aff.zarr"), SHIPPED, chunks=(48, 48, 64), cluster=ClusterSpec("sync"),
                   log=said.append, progress=False)
    result = cli(["infer", img, "cli-aff.zarr", "--checkpoint", SHIPPED, "--chunks", "48,48,64", "--cluster",
                  "sync"], root)
    return root, report, said, result


def test_infer_entry_and_command_write_the_same_affinities_and_report_the_same_grid(affinities):
    root, report, said, result = affinities
    # the same windows and weights; the float32 network may round differently in this test process (torch's CPU
    # kernels depend on its thread count and what earlier tests set) than in the command's, so the float16
    # affinities agree to one float16 step (2⁻¹⁰ in [0.5, 1)) and are almost all identical
    library, command = read(root / "lib-aff.zarr").astype(np.float32), read(root / "cli-aff.zarr").astype(np.float32)
    assert np.abs(library - command).max() <= 2.0 ** -10
    assert np.mean(library == command) > 0.99
    summary = report.summary
    assert (summary.blocks, summary.windows_in_grid) == (4, 4) and summary.windows_computed == 4  # 64³ windows, stride 32
    printed = " ".join(result.stdout.split())
    assert (f"{summary.blocks} blocks (0 already done)" in printed
            and f"{summary.windows_computed} windows for a grid of {summary.windows_in_grid}" in printed), printed
    assert report.settings.checkpoint.name == SHIPPED
    assert said[:3] == [line for line in result.stdout.splitlines()][:3]  # the same settings, said alike


def test_decode_without_thresholds_uses_the_recorded_one_in_the_entry_the_command_and_decode_to_zarr(affinities):
    from nisbflow.decode import decode_to_zarr
    from nisbflow.jobs import ClusterSpec, decode
    from nisbflow.settings import resolve_settings

    root, *_ = affinities
    aff = str(root / "lib-aff.zarr")
    tuned = resolve_settings(SHIPPED).config.decoding.threshold
    recorded = zarr.open_array(array_url(aff), mode="r").attrs["nisbflow_settings"]["decoding"]["threshold"]
    assert recorded == tuned != 0.75  # the model's tuned value, not the default

    said = []
    report = decode(aff, str(root / "lib-seg.zarr"), cluster=ClusterSpec("sync"), log=said.append, progress=False)
    assert report.thresholds.values == (tuned,)
    assert f"decoding threshold {tuned:g} from the attributes of {aff}" in said
    result = cli(["decode", aff, "cli-seg.zarr", "--cluster", "sync"], root)
    found = re.search(r"threshold ([0-9.]+): (\d+) segments", result.stdout)
    assert found and float(found.group(1)) == tuned and int(found.group(2)) == report.counts[tuned]
    assert f"decoding threshold {tuned:g} from the attributes of {aff}" in " ".join(result.stdout.split())

    logged = []
    counts = decode_to_zarr(aff, root / "notebook-seg.zarr", progress=False, log=logged.append).counts
    assert counts == {tuned: report.counts[tuned]}
    assert f"decoding threshold {tuned:g} from the attributes of {aff}" in logged
    segmentation = read(root / "lib-seg.zarr")
    assert segmentation.max() > 1
    assert np.array_equal(segmentation, read(root / "cli-seg.zarr"))
    assert np.array_equal(segmentation, read(root / "notebook-seg.zarr"))


def test_decode_entry_with_thresholds_overrides_as_data_and_dense_metrics_equals_the_command(affinities):
    from nisbflow.jobs import ClusterSpec, decode

    root, *_ = affinities
    aff, gt = str(root / "lib-aff.zarr"), str(root / "seed/data.zarr/seg")
    report = decode(aff, str(root / "lib-two.zarr"), thresholds=[0.5, 0.8], gt=gt, cluster=ClusterSpec("sync"),
                    overrides={"decoding.backend": "numba"}, log=lambda line: None, progress=False)
    assert report.settings.sources["decoding.backend"] == "KEY=VALUE"
    assert set(report.outputs) == {0.5, 0.8} and report.outputs[0.5] == f"{root / 'lib-two.zarr'}/threshold-0.5"
    result = cli(["decode", aff, "cli-two.zarr", "-t", "0.5,0.8", "--gt", gt, "--cluster", "sync",
                  "decoding.backend=numba"], root)
    for value in (0.5, 0.8):
        name = f"threshold-{value:g}"
        assert np.array_equal(read(root / "lib-two.zarr" / name), read(root / "cli-two.zarr" / name))
        assert f"threshold {value:g}: {report.counts[value]} segments" in result.stdout
        row = " ".join(line for line in result.stdout.splitlines()
                       if line.replace("│", " ").split()[:1] == [f"{value:g}"])
        assert f"{report.dense[value].adapted_rand_error:.4f}" in row, result.stdout


def test_evaluate_entry_and_command_report_the_same_metrics_and_write_the_same_json(affinities):
    import json

    from nisbflow.jobs import evaluate

    root, *_ = affinities
    segmentation, skeleton = str(root / "lib-seg.zarr"), str(root / "seed/skeleton.pkl")
    gt = str(root / "seed/data.zarr/seg")
    report = evaluate(segmentation, skeleton, gt=gt, json_path=str(root / "lib.json"), progress=False)
    assert 0.0 < report.result.nerl < 1.0 and report.dense is not None
    result = cli(["evaluate", segmentation, "--skeleton", skeleton, "--gt", gt, "--json", "cli.json"], root)
    assert f"{report.result.nerl:.4f}" in result.stdout
    library, command = (json.loads((root / name).read_text()) for name in ("lib.json", "cli.json"))
    assert library == command and library["nerl"] == pytest.approx(report.result.nerl)


def test_synth_synth_affinities_and_skeleton_convert_entries_equal_their_commands(tmp_path):
    """The same seed, the same noisy affinities and the same converted skeleton, from the entries and the
    commands, with the same printed counts."""
    from nisbflow.data.skeleton import load_skeleton
    from nisbflow.jobs import skeleton_convert, synth, synth_affinities

    [summary] = synth(str(tmp_path / "lib"), shape=(48, 40, 32), seed=7, chunks=(32, 32, 32), presets=["thin"],
                      log=lambda line: None)
    result = cli(["synth", "cli", "--shape", "48,40,32", "--seed", "7", "--chunks", "32,32,32", "--thin-neurites"],
                 tmp_path)
    for name in ("img", "seg"):
        assert np.array_equal(read(tmp_path / f"lib/data.zarr/{name}"), read(tmp_path / f"cli/data.zarr/{name}"))
    [row] = [line for line in result.stdout.splitlines() if line.replace("│", " ").split()[:1] == ["neurons"]]
    assert summary.n_neurons > 1 and row.replace("│", " ").split()[1:] == [str(summary.n_neurons)]

    synth_affinities(str(tmp_path / "lib/data.zarr/seg"), str(tmp_path / "lib-aff.zarr"), noise=0.2, seed=3,
                     log=lambda line: None)
    cli(["synth-affinities", "lib/data.zarr/seg", "cli-aff.zarr", "--noise", "0.2", "--seed", "3"], tmp_path)
    assert np.array_equal(read(tmp_path / "lib-aff.zarr"), read(tmp_path / "cli-aff.zarr"))

    converted = skeleton_convert(str(tmp_path / "lib/skeleton.pkl"), str(tmp_path / "lib.json"))
    result = cli(["skeleton", "convert", "lib/skeleton.pkl", "cli.json"], tmp_path)
    assert f"{converted.n_nodes} nodes, {converted.n_neurons} skeletons" in result.stdout
    library, command = load_skeleton(tmp_path / "lib.json"), load_skeleton(tmp_path / "cli.json")
    assert sorted(library.nodes) == sorted(command.nodes) and sorted(library.edges) == sorted(command.edges)


def test_model_and_config_entries_equal_their_commands(tmp_path, one_step_run):
    """model init writes the same weights for the same seed; model list and config show print what the entries
    return; model export's YAML is the one the entry writes."""
    import torch

    from nisbflow.jobs import model_export, model_init, model_list, show_config

    report = model_init(str(tmp_path / "lib.pt"), arch="tiny", seed=5)
    result = cli(["model", "init", "cli.pt", "--arch", "tiny", "--seed", "5"], tmp_path)
    assert f"{report.parameters:,} parameters" in result.stdout
    library, command = (torch.load(tmp_path / name, weights_only=True)["state_dict"] for name in ("lib.pt", "cli.pt"))
    assert library.keys() == command.keys() and all(torch.equal(library[k], command[k]) for k in library)

    [shipped] = model_list()
    result = cli(["model", "list"], tmp_path)
    assert shipped.name == SHIPPED and f"{shipped.parameters:,}" in result.stdout

    overrides = ["decoding.threshold=0.6"]
    assert show_config(None, overrides) == cli(["config", "show", *overrides], tmp_path).stdout

    from nisbflow.model import CheckpointError

    with pytest.raises(CheckpointError, match="records no training configuration"):  # a random init records none
        model_export(str(tmp_path / "lib.pt"), str(tmp_path / "none.pt"), config_yaml=str(tmp_path / "none.yaml"))
    assert not (tmp_path / "none.pt").exists() and not (tmp_path / "none.yaml").exists()  # refused before writing

    run, _ = one_step_run
    last = str(run / "checkpoints" / "last.pt")
    exported = model_export(last, str(tmp_path / "lib-small.pt"), config_yaml=str(tmp_path / "lib.yaml"),
                            overrides=["decoding.threshold=0.7"])
    cli(["model", "export", last, "cli-small.pt", "--config-yaml", "cli.yaml", "decoding.threshold=0.7"], tmp_path)
    yaml_of = {name: (tmp_path / name).read_text().split("\n", 1)[1] for name in ("lib.yaml", "cli.yaml")}
    assert yaml_of["lib.yaml"] == yaml_of["cli.yaml"] and "threshold: 0.7" in yaml_of["lib.yaml"]
    assert exported.metadata["config"]["decoding"]["threshold"] == 0.7


def test_test_entry_and_command_score_the_same_nerl(image, tmp_path):
    """``nisbflow.jobs.test`` and ``nisbflow test``: infer → decode → NERL on the same test seed give the same
    segmentation (the shipped model's tuned threshold) and the same metrics.json."""
    import json

    from nisbflow.jobs import ClusterSpec, test

    root, _ = image
    overrides = [f"data.test.path={root / 'seed'}", f"data.test.skeleton={root / 'seed' / 'skeleton.pkl'}",
                 "evaluation.metrics=[nerl,em_erl]"]  # both NERLs: BANIS's and PyTorch Connectomics'
    report = test(SHIPPED, chunks=(48, 48, 64), overrides=overrides + [f"save_path={tmp_path / 'lib'}"],
                  cluster=ClusterSpec("sync"), log=lambda line: None)
    result = cli(["test", "--checkpoint", SHIPPED, "--chunks", "48,48,64", "--cluster", "sync", *overrides,
                  f"save_path={tmp_path / 'cli'}"], tmp_path)
    [folder] = list((tmp_path / "cli").iterdir())
    [(threshold, nerl)] = report.results.items()
    assert threshold == report.settings.config.decoding.threshold != 0.75  # the model's tuned value
    library, command = (json.loads((f / "metrics.json").read_text()) for f in (report.folder, folder))
    assert library["nerl"] == pytest.approx(nerl.nerl) and f"{command['nerl']:.4f}" in result.stdout
    # the affinities of the two processes may differ by one float16 step in a few voxels (see the infer test), so
    # an edge at the threshold could differ: the partitions and metrics agree, everything else is equal
    segmentation, other = read(report.folder / "segmentation.zarr"), read(folder / "segmentation.zarr")
    assert np.mean(segmentation == other) > 0.999
    assert library["nerl"] == pytest.approx(command["nerl"], abs=0.01)
    assert library["threshold"] == command["threshold"] == threshold and library.keys() == command.keys()
    from nisbflow.evaluate import nerl as score

    pytc = score(segmentation, root / "seed" / "skeleton.pkl", metrics=("em_erl",)).em_erl
    assert library["em_erl"]["merge_threshold"] == 50 and library["em_erl"]["nerl"] == pytest.approx(pytc.nerl)
    assert command["em_erl"]["nerl"] == pytest.approx(pytc.nerl, abs=0.01)
    assert "NERL, PyTorch Connectomics (em_erl," in " ".join(result.stdout.split())


def test_skeletonize_and_tune_entries_equal_their_commands(image, tmp_path):
    """skeletonize: the same skeleton file from the entry and the command; tune (a one-point grid on the
    validation seed): the same curve, best threshold and best.yaml parameters."""
    import yaml

    from nisbflow.data.skeleton import load_skeleton
    from nisbflow.jobs import ClusterSpec, skeletonize, tune

    root, _ = image
    seg = str(root / "seed/data.zarr/seg")
    summary = skeletonize(seg, str(tmp_path / "lib.json"), dust_threshold=200)
    result = cli(["skeletonize", seg, "cli.json", "--dust-threshold", "200"], tmp_path)
    assert summary.n_neurons > 1 and f"{summary.n_neurons} skeletons" in result.stdout
    library, command = load_skeleton(tmp_path / "lib.json"), load_skeleton(tmp_path / "cli.json")
    assert sorted(library.edges) == sorted(command.edges)
    assert {n: list(np.asarray(library.nodes[n]["index_position"]).tolist()) for n in library.nodes} == \
        {n: list(np.asarray(command.nodes[n]["index_position"]).tolist()) for n in command.nodes}

    overrides = [f"data.val.path={root / 'seed'}", f"data.val.skeleton={root / 'seed' / 'skeleton.pkl'}",
                 "tune.sampler=grid", "tune.threshold.low=0.6", "tune.threshold.high=0.6", "tune.study_name=jobs"]
    tuned = tune(SHIPPED, out=str(tmp_path / "lib-tune"), chunks=(48, 48, 64), overrides=overrides,
                 cluster=ClusterSpec("sync"), log=lambda line: None)
    result = cli(["tune", "--checkpoint", SHIPPED, "--out", "cli-tune", "--chunks", "48,48,64", "--cluster", "sync",
                  *overrides], tmp_path)
    assert list(tuned.curve) == [0.6] and tuned.best_threshold == 0.6
    assert f"best threshold 0.6: nerl {tuned.best_value:.4f}" in " ".join(result.stdout.split())
    best = {name: yaml.safe_load((tmp_path / name / "nisb-tiny-synthetic-3667c046" / "cc" / "best.yaml").read_text())
            for name in ("lib-tune", "cli-tune")}
    assert best["lib-tune"]["decoding"] == best["cli-tune"]["decoding"] == {"threshold": 0.6}


@pytest.mark.slow
def test_demo_tune_test_and_train_entries_equal_their_commands(image, tmp_path):
    """The three longest commands (make test-slow): demo on a small seed, tune-test with a one-point grid, and one
    training step: the same NERLs, the same tuned threshold, the same trained step."""
    import torch

    from nisbflow.jobs import ClusterSpec, demo, train, tune_test

    [run] = demo(str(tmp_path / "lib-demo"), shape=(96, 96, 64), baseline=False, cluster=ClusterSpec("sync"),
                 log=lambda line: None)
    result = cli(["demo", "cli-demo", "--shape", "96,96,64", "--no-baseline", "--cluster", "sync"], tmp_path)
    assert f"{run.result.nerl:.3f}" in result.stdout and run.label == "trained"

    root, _ = image
    overrides = [f"data.val.path={root / 'seed'}", f"data.val.skeleton={root / 'seed' / 'skeleton.pkl'}",
                 f"data.test.path={root / 'seed'}", f"data.test.skeleton={root / 'seed' / 'skeleton.pkl'}",
                 "tune.sampler=grid", "tune.threshold.low=0.6", "tune.threshold.high=0.6", "tune.study_name=jobs"]
    report = tune_test(SHIPPED, out=str(tmp_path / "lib-tt"), chunks=(48, 48, 64), overrides=overrides,
                       cluster=ClusterSpec("sync"), log=lambda line: None)
    result = cli(["tune-test", "--checkpoint", SHIPPED, "--out", "cli-tt", "--chunks", "48,48,64", "--cluster",
                  "sync", *overrides], tmp_path)
    assert report.tuning.best_threshold == 0.6 and "threshold 0.6" in result.stdout
    assert f"{report.test.nerl:.4f}" in result.stdout

    from nisbflow.synth import synthesize_seed

    for name, seed in (("train/seed0", 40), ("val/seed100", 41)):
        synthesize_seed(str(tmp_path / name), (48, 48, 48), seed=seed, chunks=(48, 48, 48), progress=False)
    settings = [f"data.train.path={tmp_path / 'train'}", f"data.val.path={tmp_path / 'val' / 'seed100'}",
                "data.patch_size=[32,32,32]", "optimization.max_steps=1", f"save_path={tmp_path}",
                "system.num_gpus=0"]
    trained = train(config="configs/tiny.yaml", run_dir=str(tmp_path / "lib-run"), overrides=settings,
                    log=lambda line: None)
    result = cli(["train", "--config", str(Path.cwd() / "configs/tiny.yaml"), "--run-dir", "cli-run", *settings],
                 tmp_path)
    assert trained.steps == 1 and "trained 1 steps" in result.stdout
    library, command = (torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)
                        for name in ("lib-run", "cli-run"))
    assert library["metadata"]["step"] == command["metadata"]["step"] == 1
    assert library["state_dict"].keys() == command["state_dict"].keys()
