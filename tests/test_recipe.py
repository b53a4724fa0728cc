"""BANIS+'s training parts equal PyTorch Connectomics' own code: the per-channel class-balanced loss and the EMA of
the weights, against fixtures its code wrote (tests/fixtures/peers/make_recipe_fixtures.py); training keeps the EMA
in its checkpoints and a resumed run equals an uninterrupted one, EMA included; inference picks the EMA weights
and says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nisbflow.train.ema import WeightAverage
from nisbflow.train.loss import affinity_loss, loss_function, per_channel_loss

FIXTURES = Path(__file__).parent / "fixtures" / "peers"


def _reference_loss(logits, target, mask, auto: bool, cap: float) -> float:
    """PyTC's PerChannelBCEWithLogitsLoss written from its rules as a plain loop over channels and voxels."""
    total = 0.0
    for c in range(logits.shape[1]):
        x, y, keep = logits[:, c].ravel(), target[:, c].ravel(), mask[:, c].ravel() > 0
        positives, negatives = int(((y > 0) & keep).sum()), int(((y <= 0) & keep).sum())
        weight = min(negatives / positives, cap) if auto and positives else 1.0
        values = [weight * yy * np.logaddexp(0, -xx) + (1 - yy) * np.logaddexp(0, xx)
                  for xx, yy, k in zip(x.astype(np.float64), y, keep) if k]
        total += float(np.mean(values)) if values else 0.0
    return total


@pytest.mark.parametrize("case, auto, cap", [("auto_10", True, 10.0), ("auto_2", True, 2.0), ("plain", False, 10.0)])
def test_the_per_channel_loss_equals_pytorch_connectomics(case, auto, cap):
    data = np.load(FIXTURES / "recipe_loss.npz")
    logits, target, mask = (torch.from_numpy(data[k]) for k in ("logits", "target", "mask"))
    ours = per_channel_loss(logits, target, mask, auto_pos_weight=auto, max_pos_weight=cap)
    assert float(ours) == pytest.approx(float(data[f"loss_{case}"]), rel=2e-6)
    assert float(ours) == pytest.approx(_reference_loss(data["logits"], data["target"], data["mask"], auto, cap),
                                        rel=1e-5)


def test_the_loss_is_chosen_by_model_loss_and_differs_from_banis():
    from nisbflow.config.schema import ModelConfig

    data = np.load(FIXTURES / "recipe_loss.npz")
    logits, target, mask = (torch.from_numpy(data[k]) for k in ("logits", "target", "mask"))
    banis = loss_function(ModelConfig())(logits, target, mask)
    plus = loss_function(ModelConfig(loss="PerChannelBCEWithLogitsLoss", max_pos_weight=2.0))(logits, target, mask)
    assert float(banis) == float(affinity_loss(logits, target, mask))
    assert float(plus) == pytest.approx(float(data["loss_auto_2"]), rel=2e-6)
    logits.requires_grad_(True)
    per_channel_loss(logits, target, mask).backward()
    assert torch.count_nonzero(logits.grad[:, 5]) == 0 and torch.count_nonzero(logits.grad[:, 0]) > 0


def _recipe_network():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2), torch.nn.Conv3d(2, 3, 1))
    network.register_parameter("frozen", torch.nn.Parameter(torch.randn(3), requires_grad=False))
    return network


def _load(network, data, prefix: str) -> None:
    network.load_state_dict({k[len(prefix) + 1:]: torch.from_numpy(data[k]) for k in data.files
                             if k.startswith(prefix + "/")})


def test_the_weight_average_equals_pytorch_connectomics_step_by_step_and_across_a_resume():
    data = np.load(FIXTURES / "recipe_ema.npz")
    decay, warmup = float(data["setting/decay"]), int(data["setting/warmup_steps"])
    steps, saved_at = int(data["setting/steps"]), int(data["setting/saved_at"])
    network = _recipe_network()
    _load(network, data, "initial")
    average = WeightAverage(network, decay, warmup)
    saved = None
    for step in range(1, steps + 1):
        _load(network, data, f"weights_{step}")
        average.update()
        for name, tensor in average.state_dict().items():
            np.testing.assert_array_equal(tensor.numpy(), data[f"ema_{step}/{name}"], err_msg=f"step {step} {name}")
        if step == saved_at:
            saved = (average.state_dict(), average.updates)
    # the frozen parameter keeps its first value; buffers (BatchNorm's statistics) are copied, not averaged
    np.testing.assert_array_equal(average.state["frozen"].numpy(), data["initial/frozen"])
    np.testing.assert_array_equal(average.state["1.running_mean"].numpy(), data[f"weights_{steps}/1.running_mean"])
    resumed = WeightAverage(network, decay, warmup, state=saved[0], updates=saved[1])
    for step in range(saved_at + 1, steps + 1):
        _load(network, data, f"weights_{step}")
        resumed.update()
    assert resumed.updates == int(data["updates"]) == steps
    for name, tensor in resumed.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), data[f"resumed/{name}"])


def test_the_average_is_swapped_in_and_the_weights_put_back():
    network = _recipe_network()
    average = WeightAverage(network, 0.5)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    with torch.no_grad():
        network[0].weight.add_(1.0)
    average.update()
    trained = {k: v.clone() for k, v in network.state_dict().items()}
    with average.swapped_into(network):
        torch.testing.assert_close(network[0].weight, before["0.weight"] + 0.5)
    assert all(torch.equal(network.state_dict()[k], trained[k]) for k in trained)
    with pytest.raises(ValueError, match="do not fit the network"):
        WeightAverage(network, 0.5, state={"frozen": torch.zeros(3)})


# --- training and inference with the recipe --------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from nisbflow.synth import synthesize_seed

    root = tmp_path_factory.mktemp("recipe-data")
    for name, seed in (("train/seed0", 40), ("val/seed100", 41)):
        synthesize_seed(str(root / name), (48, 48, 48), seed=seed, chunks=(48, 48, 48), progress=False)
    return root


def recipe_config(data, run, **more):
    from nisbflow.config import load_config

    overrides = [f"data.train.path={data / 'train'}", f"data.val.path={data / 'val' / 'seed100'}",
                 "data.patch_size=[32,32,32]", "optimization.max_steps=4", "optimization.val_check_interval=2",
                 "optimization.val_steps_per_epoch=1", "optimization.checkpoint.every_n_train_steps=2",
                 "optimization.ema.enabled=true", "optimization.ema.decay=0.5", "optimization.ema.warmup_steps=1",
                 "model.loss=PerChannelBCEWithLogitsLoss", f"save_path={run}"] + [f"{k}={v}" for k, v in more.items()]
    return load_config("configs/tiny.yaml", overrides)


class _Killed(Exception):
    pass


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """An uninterrupted 4-step BANIS+ run, and the same run killed after writing its step-2 checkpoints and run
    again (it resumes from last.pt)."""
    from nisbflow.train import loop

    root = tmp_path_factory.mktemp("recipe-runs")
    whole, _ = loop.train(recipe_config(data, root), run_dir=root / "whole", workers=0, progress=False)
    original = loop._save

    def save_then_die(*args, **kwargs):
        best = original(*args, **kwargs)
        if args[4] == 2:  # the step
            raise _Killed()
        return best

    loop._save = save_then_die
    try:
        with pytest.raises(_Killed):
            loop.train(recipe_config(data, root), run_dir=root / "parts", workers=0, progress=False)
    finally:
        loop._save = original
    parts, _ = loop.train(recipe_config(data, root), run_dir=root / "parts", workers=0, progress=False)
    return whole, parts


def test_training_keeps_the_ema_in_its_checkpoints_and_a_resumed_run_equals_an_uninterrupted_one(trained):
    whole, parts = (torch.load(run / "checkpoints" / "last.pt", weights_only=True) for run in trained)
    assert whole["metadata"]["ema"] == {"updates": 4, "decay": 0.5, "warmup_steps": 1}
    assert parts["metadata"]["ema"] == whole["metadata"]["ema"]
    for key in ("state_dict", "ema_state_dict"):
        assert whole[key].keys() == parts[key].keys()
        assert all(torch.equal(whole[key][k], parts[key][k]) for k in whole[key]), key
    assert not all(torch.equal(whole["state_dict"][k], whole["ema_state_dict"][k]) for k in whole["state_dict"])
    step2 = torch.load(trained[0] / "checkpoints" / "step-2.pt", weights_only=True)
    # after step 2 (decay 0.5, one warm-up update): ema = 0.5 · weights(step 1) + 0.5 · weights(step 2)
    assert step2["metadata"]["ema"]["updates"] == 2


def test_validation_with_the_ema_ranks_the_best_checkpoints(data, trained, tmp_path):
    from nisbflow.train.loop import train

    with_ema = torch.load(trained[0] / "checkpoints" / "last.pt", weights_only=True)["metadata"]["val_loss"]
    run, _ = train(recipe_config(data, tmp_path, **{"optimization.ema.validate_with_ema": "false"}),
                   run_dir=tmp_path / "raw", workers=0, progress=False)
    raw = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert raw["metadata"]["val_loss"] != with_ema
    assert all(torch.equal(raw["state_dict"][k], torch.load(trained[0] / "checkpoints" / "last.pt",
                                                            weights_only=True)["state_dict"][k])
               for k in raw["state_dict"])


def test_inference_uses_the_ema_weights_says_so_and_raw_on_request(trained, tmp_path):
    from nisbflow.errors import NisbflowError
    from nisbflow.model import Checkpoint
    from nisbflow.settings import resolve_settings

    last = trained[0] / "checkpoints" / "last.pt"
    payload = torch.load(last, weights_only=True)
    ema = resolve_settings(str(last))
    assert ema.checkpoint.weights == "ema"
    assert any("the EMA weights (ema_state_dict, 4 updates, decay 0.5)" in note for note in ema.notes)
    network = ema.checkpoint.network("cpu")
    assert all(torch.equal(network.state_dict()[k], payload["ema_state_dict"][k]) for k in payload["state_dict"])
    raw = resolve_settings(str(last), overrides=["inference.weights=raw"])
    assert raw.checkpoint.weights == "raw" and raw.checkpoint.sha256 == ema.checkpoint.sha256
    assert raw.checkpoint.identity() != ema.checkpoint.identity()
    loaded = raw.checkpoint.network("cpu")
    assert all(torch.equal(loaded.state_dict()[k], payload["state_dict"][k]) for k in payload["state_dict"])
    plain = trained[0] / "plain.pt"
    torch.save({k: v for k, v in payload.items() if k != "ema_state_dict"}, plain)
    assert Checkpoint.open(str(plain)).weights is None
    with pytest.raises(NisbflowError, match="keeps no EMA weights"):
        resolve_settings(str(plain), overrides=["inference.weights=ema"])


def test_model_export_keeps_both_weight_sets(trained, tmp_path):
    from nisbflow.model import Checkpoint, export_checkpoint

    last = trained[0] / "checkpoints" / "last.pt"
    export_checkpoint(last, tmp_path / "shipped.pt")
    exported = torch.load(tmp_path / "shipped.pt", weights_only=True)
    payload = torch.load(last, weights_only=True)
    assert "optimizer" not in exported
    for key in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(exported[key][k], payload[key][k]) for k in payload[key])
    assert Checkpoint.open(str(tmp_path / "shipped.pt")).weights == "ema"


def test_the_cli_weights_option_reaches_inference_and_its_output_records_it(data, trained, tmp_path):
    import zarr
    from typer.testing import CliRunner

    from nisbflow_cli.main import app

    last = trained[0] / "checkpoints" / "last.pt"
    image = str(data / "val" / "seed100" / "data.zarr" / "img")
    for weights in ("raw", None):
        output = tmp_path / f"{weights or 'auto'}.zarr"
        result = CliRunner().invoke(app, ["infer", image, str(output), "--checkpoint", str(last), "--cluster", "sync",
                                          "inference.window_size=[32,32,32]",
                                          *(["--weights", weights] if weights else [])])
        assert result.exit_code == 0, result.output
        expected = weights or "ema"
        assert f"its {expected} weights" in result.output
        assert zarr.open_group(str(output), mode="r")["0"].attrs["checkpoint_weights"] == expected
    raw, ema = (zarr.open_group(str(tmp_path / f"{n}.zarr"), mode="r")["0"][:] for n in ("raw", "auto"))
    assert not np.array_equal(raw, ema)
    bad = CliRunner().invoke(app, ["infer", image, str(tmp_path / "x.zarr"), "--checkpoint", str(last),
                                   "--weights", "best"])
    assert bad.exit_code == 2 and "--weights takes auto, ema or raw" in bad.output


def test_the_shipped_banis_plus_configuration_states_the_recipe():
    from nisbflow.config import load_config

    plus, base = load_config("configs/banis_plus.yaml"), load_config("configs/base_banis.yaml")
    assert (plus.model.size, plus.model.kernel_size, plus.model.activation_checkpointing) == ("L", 3, True)
    assert (plus.model.loss, plus.model.auto_pos_weight, plus.model.max_pos_weight) == (
        "PerChannelBCEWithLogitsLoss", True, 10.0)
    assert plus.optimization.ema.model_dump() == {"enabled": True, "decay": 0.999, "warmup_steps": 500,
                                                  "validate_with_ema": True}
    assert (plus.data.erosion, plus.data.dataloader.batch_size, plus.optimization.max_steps) == (2, 2, 200000)
    assert plus.inference == base.inference and plus.decoding == base.decoding  # only training differs


def test_the_training_memory_estimate_turns_activation_checkpointing_on_only_where_needed():
    from nisbflow.config import load_config
    from nisbflow.errors import ConfigError
    from nisbflow.model import build
    from nisbflow.train.memory import MEMORY_FRACTION, plan_training_memory, training_peak

    config = load_config("configs/tiny.yaml", ["model.size=L", "data.patch_size=[32,32,32]"])
    plain, checkpointed = training_peak(config), training_peak(config, checkpointing=True)
    assert checkpointed.activations < plain.activations / 2 and checkpointed.state == plain.state
    assert plain.state == 4 * 4 * sum(p.numel() for p in build(config.model).parameters())
    said = []
    assert plan_training_memory(config, int(plain.total / MEMORY_FRACTION) + 1, "the GPU", said.append) is False
    assert len(said) == 1 and said[0].startswith("training: about") and "the GPU has" in said[0]
    between = int((checkpointed.total + plain.total) / 2 / MEMORY_FRACTION)
    said.clear()
    assert plan_training_memory(config, between, "the GPU", said.append) is True
    assert "activation checkpointing turned on" in said[1]
    with pytest.raises(ConfigError, match="lower data.dataloader.batch_size or data.patch_size"):
        plan_training_memory(config, checkpointed.total // 2, "the GPU", said.append)
    with_ema = load_config("configs/tiny.yaml", ["model.size=L", "data.patch_size=[32,32,32]",
                                                 "optimization.ema.enabled=true"])
    assert training_peak(with_ema).state == plain.state * 5 // 4


def test_banis_l_with_kernel_5_trains_with_activation_checkpointing_and_says_its_memory(data, tmp_path, capsys):
    """BANIS-L (MedNeXt-L, kernel 5), small width, one step with activation checkpointing on the CPU: the
    checkpoint holds an L/k5 network and the run said its memory estimate first."""
    from nisbflow.model import load_checkpoint
    from nisbflow.train.loop import train

    config = recipe_config(data, tmp_path, **{"model.size": "L", "model.kernel_size": 5, "model.init_filters": 2,
                                              "model.activation_checkpointing": "true",
                                              "optimization.max_steps": 1, "optimization.val_steps_per_epoch": 0})
    run, _ = train(config, run_dir=tmp_path / "l5", workers=0, progress=False)
    said = capsys.readouterr().out
    assert "training: about" in said and "with activation checkpointing" in said
    _, model = load_checkpoint(run / "checkpoints" / "last.pt", weights="raw")
    assert (model.size, model.kernel_size, model.init_filters) == ("L", 5, 2)


def test_a_threshold_tuned_with_one_weight_set_is_refused_for_the_other(trained, tmp_path):
    import yaml

    from nisbflow.errors import ConfigError
    from nisbflow.settings import resolve_settings
    from nisbflow.tune import checkpoint_folder

    last = str(trained[0] / "checkpoints" / "last.pt")
    ema = resolve_settings(last)
    params = tmp_path / "best.yaml"
    params.write_text(yaml.safe_dump({"_tuned_": {"checkpoint": last, "checkpoint_sha256": ema.checkpoint.sha256,
                                                  "weights": "ema", "method": "cc"},
                                      "decoding": {"threshold": 0.8}}))
    assert resolve_settings(last, params=params).config.decoding.threshold == 0.8
    with pytest.raises(ConfigError, match="tuned with the ema weights .* predicts with its raw weights"):
        resolve_settings(last, params=params, overrides=["inference.weights=raw"])
    raw = resolve_settings(last, overrides=["inference.weights=raw"])
    assert checkpoint_folder(tmp_path, raw).name.endswith("-raw-weights")
    assert checkpoint_folder(tmp_path, ema).name == checkpoint_folder(tmp_path, raw).name.removesuffix("-raw-weights")
