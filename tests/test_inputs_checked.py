"""Inputs checked where they are read, each refused in one line naming the file (exit code 2), where they used to
give a number with exit code 0: a skeleton with a NaN position (NERL 0.0000), a float segmentation with fractional
ids (truncated and merged), a --params file cut to its header (decoding at 0.75), a damaged or empty Optuna study
file (a traceback, or a silently new study), a cut or foreign metrics JSON for the viewer; and a training run killed
while it writes a checkpoint leaves no 0-byte file behind and no last.pt naming a checkpoint that does not exist."""

from __future__ import annotations


import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from nisbflow.errors import ConfigError, SkeletonError, VolumeError
from nisbflow_cli.main import app

runner = CliRunner()


def one_line_error(result, *words):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if "━" not in line and line.strip()]  # bars aside
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    text = " ".join(result.output.split())
    for word in words:
        assert word in text, text


@pytest.fixture
def seed(tmp_path, synthetic_seed):
    root, _ = synthetic_seed
    shutil.copytree(root, tmp_path / "seed")
    return tmp_path / "seed"


@pytest.mark.parametrize("key, value", [("nm_position", [float("nan"), 0.0, 0.0]),
                                        ("nm_position", [0.0, float("inf"), 0.0]),
                                        ("index_position", [float("nan"), 1, 1])])
def test_a_skeleton_node_with_a_non_finite_position_is_refused_naming_the_node(seed, key, value):
    from nisbflow.data.skeleton import load_skeleton, save_skeleton
    from nisbflow.evaluate import nerl

    graph = load_skeleton(seed / "skeleton.pkl")
    save_skeleton(graph, seed / "good.npz")
    node = sorted(graph.nodes)[3]
    graph.nodes[node][key] = value
    save_skeleton(graph, seed / "bad.pkl")
    with np.load(seed / "good.npz") as stored:
        arrays = dict(stored)
    row = int(np.flatnonzero(arrays["nodes"] == node)[0])
    arrays[key] = arrays[key].astype(np.float64)
    arrays[key][row] = value
    np.savez(seed / "bad.npz", **arrays)
    for suffix in (".pkl", ".npz"):
        path = seed / f"bad{suffix}"
        result = runner.invoke(app, ["evaluate", str(seed / "data.zarr/seg"), "-s", str(path)])
        one_line_error(result, f"node {node!r}", key, "finite")
    with pytest.raises(SkeletonError, match=f"node {node!r} has {key}"):
        nerl(zarr.open_array(str(seed / "data.zarr/seg"))[...], graph)


def test_a_float_segmentation_must_hold_whole_ids(seed, tmp_path):
    from nisbflow.evaluate import nerl

    labels = zarr.open_array(str(seed / "data.zarr/seg"))[...]
    whole = labels.astype(np.float32)
    zarr.create_array(str(tmp_path / "whole.zarr"), shape=whole.shape, chunks=(32, 32, 32),
                      dtype="float32")[...] = whole
    same = runner.invoke(app, ["evaluate", str(tmp_path / "whole.zarr"), "-s", str(seed / "skeleton.pkl"),
                               "--json", str(tmp_path / "m.json")])
    assert same.exit_code == 0, same.output
    import json

    assert json.loads((tmp_path / "m.json").read_text())["nerl"] == nerl(labels, str(seed / "skeleton.pkl")).nerl == 1.0
    fractional = whole.copy()
    fractional[labels == labels.max()] = 1.5  # one neuron gets id 1.5: truncated, it would merge with neuron 1
    zarr.create_array(str(tmp_path / "frac.zarr"), shape=whole.shape, chunks=(32, 32, 32),
                      dtype="float32")[...] = fractional
    result = runner.invoke(app, ["evaluate", str(tmp_path / "frac.zarr"), "-s", str(seed / "skeleton.pkl")])
    one_line_error(result, f"segmentation {tmp_path / 'frac.zarr'}", "not whole numbers", "1.5")
    with pytest.raises(VolumeError, match="not whole numbers"):
        nerl(fractional, str(seed / "skeleton.pkl"))
    # the dense metrics read every voxel, so a fractional id anywhere is refused there
    from nisbflow.evaluate import dense_metrics

    with pytest.raises(VolumeError, match="not whole numbers"):
        dense_metrics(labels, fractional)


def test_a_params_file_must_carry_its_parameters(tmp_path):
    from nisbflow.settings import resolve_settings

    header_only = tmp_path / "cut.yaml"
    header_only.write_text("# nisbflow tune: best nerl 0.9 on val\n_tuned_:\n  checkpoint: x\n  method: cc\n")
    with pytest.raises(ConfigError, match="sets no parameter .*was it cut"):
        resolve_settings("nisb-tiny-synthetic", params=header_only)
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="sets no parameter"):
        resolve_settings("nisb-tiny-synthetic", params=tmp_path / "empty.yaml")
    without = tmp_path / "without.yaml"
    without.write_text("_tuned_:\n  method: cc\ninference:\n  sw_batch_size: 2\n")
    with pytest.raises(ConfigError, match="lacks decoding.threshold"):
        resolve_settings("nisb-tiny-synthetic", params=without)
    good = tmp_path / "best.yaml"
    good.write_text("_tuned_:\n  method: cc\ndecoding:\n  threshold: 0.55\n")
    assert resolve_settings("nisb-tiny-synthetic", params=good).config.decoding.threshold == 0.55
    plain = tmp_path / "plain.yaml"
    plain.write_text("decoding:\n  threshold: 0.6\n")  # a fragment written by hand: no _tuned_ record needed
    assert resolve_settings("nisb-tiny-synthetic", params=plain).config.decoding.threshold == 0.6


@pytest.fixture
def study_file(tmp_path):
    """A real Optuna sqlite study with 30 trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = tmp_path / "study.db"
    study = optuna.create_study(storage=f"sqlite:///{path}", study_name="nisbflow")
    distribution = optuna.distributions.FloatDistribution(0, 1)
    for i in range(30):
        study.add_trial(optuna.trial.create_trial(params={"threshold": i / 30}, distributions={
            "threshold": distribution}, value=float(i)))
    return path


@pytest.mark.parametrize("damage, message", [
    ("empty", r"is empty \(0 bytes\)"),
    ("cut", "database disk image is malformed"),
    ("zeroed", "database disk image is malformed"),
    ("foreign", "is not a sqlite database"),
])
def test_a_damaged_or_empty_study_file_is_named_in_one_line(study_file, damage, message):
    from nisbflow.config.schema import TuneConfig
    from nisbflow.tune import open_study

    data = study_file.read_bytes()
    damaged = {"empty": b"", "cut": data[:len(data) // 2], "foreign": b"not a database at all" * 100,
               "zeroed": data[:4096] + b"\0" * 4096 + data[8192:]}[damage]
    study_file.write_bytes(damaged)
    config = TuneConfig(storage=f"sqlite:///{study_file}", study_name="nisbflow")
    with pytest.raises(ConfigError, match=message) as raised:
        open_study(config, [0.5])
    assert str(study_file) in str(raised.value) and "\n" not in str(raised.value)
    assert study_file.read_bytes() == damaged  # nothing written over it


@pytest.mark.parametrize("content, message", [('{"nerl": 0.5, "error_t', "is not valid JSON"),
                                              ("[1, 2]", "holds a JSON list"),
                                              ('{"nerl": 0.5}', "no 'error_type' map")])
def test_view_refuses_a_cut_or_foreign_metrics_file(seed, tmp_path, content, message):
    (tmp_path / "m.json").write_text(content)
    result = runner.invoke(app, ["view", "--seg", str(seed / "data.zarr/seg"), "--skeleton",
                                 str(seed / "skeleton.pkl"), "--metrics", str(tmp_path / "m.json")])
    one_line_error(result, f"--metrics {tmp_path / 'm.json'}", message)


def test_checkpoints_are_written_best_first_and_last_pt_last(tmp_path, monkeypatch):
    import nisbflow.train.loop as loop
    from nisbflow.config import load_config
    from nisbflow.model import build

    config = load_config("configs/tiny.yaml", ["optimization.checkpoint.save_top_k=1",
                                               "optimization.checkpoint.every_n_train_steps=2"])
    model = build(config.model)
    import torch

    optimizer = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    events = []
    real = loop.write_checkpoint
    monkeypatch.setattr(loop, "write_checkpoint", lambda path, state: (events.append(("write", Path(path).name)),
                                                                        real(path, state)))
    real_unlink = Path.unlink
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: (events.append(("unlink", self.name)),
                                                                        real_unlink(self, missing_ok=missing_ok)))
    best = loop._save(model, config, optimizer, scaler, 2, 0.5, [], tmp_path)
    best = loop._save(model, config, optimizer, scaler, 3, 0.4, best, tmp_path)
    assert events == [("write", "best-step-2.pt"), ("write", "step-2.pt"), ("write", "last.pt"),
                      ("write", "best-step-3.pt"), ("write", "last.pt"), ("unlink", "best-step-2.pt")]
    assert best == [[0.4, 3]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-step-3.pt", "last.pt", "step-2.pt"]


def test_a_resume_removes_partial_checkpoints_and_forgets_best_checkpoints_never_written(one_step_run, capsys):
    import torch

    import nisbflow.train.loop as loop


    run, model = one_step_run
    folder = run / "checkpoints"
    last = folder / "last.pt"
    state = torch.load(last, weights_only=True)
    state["metadata"]["best"] = [[0.1, 1], [0.2, 99]]  # 99: a kill came before best-step-99.pt was written
    (folder / "best-step-1.pt").write_bytes(last.read_bytes())
    torch.save(state, last)
    (folder / ".last.partial-0a1b2c3d.pt").write_bytes(b"")
    from nisbflow.config import load_config

    config = load_config("configs/tiny.yaml", [])
    fresh = loop.build(config.model)
    optimizer = torch.optim.AdamW(fresh.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step, best, saved_ema = loop._resume(last, fresh, optimizer, scaler, "cpu", False, config.optimization, say=True)
    assert (step, best, saved_ema) == (int(state["metadata"]["step"]), [[0.1, 1]], None)
    assert not list(folder.glob(".*partial*"))
    assert "names 1 best checkpoint(s) that are not in" in capsys.readouterr().out

