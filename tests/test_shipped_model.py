"""The model shipped inside the package, checkpoint export, and ``nisbflow demo`` end to end."""

import pytest
import torch
from typer.testing import CliRunner

from nisbflow.config import Config, apply_overrides
from nisbflow.model import SHIPPED_DIR, SHIPPED_MODELS, Checkpoint, CheckpointError, load_checkpoint, \
    resolve_checkpoint
from nisbflow_cli.main import app


def recorded_config(checkpoint, overrides=()):
    """The whole configuration a checkpoint records (:attr:`Checkpoint.recorded`) with ``overrides``, validated;
    None when it records none."""
    handle = Checkpoint.open(checkpoint)
    return None if handle.recorded is None else Config.model_validate(apply_overrides(handle.recorded, overrides))


def test_the_shipped_model_is_small_loads_by_name_and_carries_its_configuration():
    path = resolve_checkpoint("nisb-tiny-synthetic")
    assert path == SHIPPED_DIR / f"{SHIPPED_MODELS['nisb-tiny-synthetic']}.pt" and path.exists()
    assert path.stat().st_size < 5 * 2**20
    model, config = load_checkpoint("nisb-tiny-synthetic")
    settings = recorded_config("nisb-tiny-synthetic")
    assert config == settings.model  # the YAML it ships with is the one it was trained with
    payload = torch.load(path, weights_only=True)
    assert "optimizer" not in payload and "nisbflow train --config configs/tiny.yaml" in payload["metadata"]["command"]
    assert payload["metadata"]["step"] == settings.optimization.max_steps
    moved = recorded_config("nisb-tiny-synthetic", ["save_path=/elsewhere"])
    assert moved.tune.storage == "sqlite:////elsewhere/tune.sqlite3"  # the study follows save_path
    with pytest.raises(CheckpointError, match="shipped model name: nisb-tiny-synthetic"):
        Checkpoint.open("nisb-huge")


def test_export_drops_training_state_and_keeps_weights(tmp_path, one_step_run):
    run, trained = one_step_run
    last = run / "checkpoints" / "last.pt"
    result = CliRunner().invoke(app, ["model", "export", str(last), str(tmp_path / "small.pt"),
                                      "--command", "nisbflow train --config configs/tiny.yaml"])
    assert result.exit_code == 0, result.output
    small = torch.load(tmp_path / "small.pt", weights_only=True)
    assert "optimizer" not in small and small["metadata"]["step"] == 1
    assert small["metadata"]["command"] == "nisbflow train --config configs/tiny.yaml"
    assert (tmp_path / "small.pt").stat().st_size < last.stat().st_size / 2
    model, _ = load_checkpoint(tmp_path / "small.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.state_dict().items())
    again = CliRunner().invoke(app, ["model", "export", str(last), str(tmp_path / "small.pt")])
    assert again.exit_code == 2 and "already exists" in " ".join(again.output.split())
    from nisbflow.config import load_config
    from nisbflow.model import ARCHITECTURES, save_random_checkpoint

    assert list(recorded_config(last).data.patch_size) == [32, 32, 32]  # the demo runs a model as trained
    shipped_yaml = SHIPPED_DIR / f"{SHIPPED_MODELS['nisb-tiny-synthetic']}.yaml"
    assert recorded_config("nisb-tiny-synthetic").decoding.threshold == load_config(shipped_yaml).decoding.threshold
    save_random_checkpoint(tmp_path / "random.pt", ARCHITECTURES["tiny"], seed=1)
    assert recorded_config(tmp_path / "random.pt") is None
    exported = CliRunner().invoke(app, ["model", "export", str(last), str(tmp_path / "again.pt"), "--config-yaml",
                                        str(tmp_path / "again.yaml"), f"save_path={tmp_path / 'moved'}"])
    assert exported.exit_code == 0, exported.output
    assert load_config(tmp_path / "again.yaml").tune.storage == f"sqlite:///{tmp_path / 'moved'}/tune.sqlite3"
    listed = CliRunner().invoke(app, ["model", "list"])
    assert listed.exit_code == 0 and "nisb-tiny-synthetic" in listed.output


def test_demo_runs_the_whole_job_and_the_shipped_model_beats_an_untrained_one(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", str(out), "--shape", "128,128,64", "--cluster", "sync"])
    assert result.exit_code == 0, result.output
    for label in ("trained", "untrained"):
        assert (out / label / "segmentation.zarr").exists() and (out / label / "metrics.json").exists()
    import json

    trained = json.loads((out / "trained" / "metrics.json").read_text())["nerl"]
    untrained = json.loads((out / "untrained" / "metrics.json").read_text())["nerl"]
    assert trained > untrained + 0.2, (trained, untrained)
    again = CliRunner().invoke(app, ["demo", str(out), "--shape", "128,128,64", "--cluster", "sync"])
    assert again.exit_code == 2 and "--overwrite" in " ".join(again.output.split())
