"""Training loop: a 2-process gloo DDP run ends with identical weights, checkpoints load for inference, resume."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from nisbflow.config import load_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from nisbflow.synth import synthesize_seed

    root = tmp_path_factory.mktemp("train-data")
    for name, seed in (("train/seed0", 30), ("train/seed1", 31), ("val/seed100", 32)):
        synthesize_seed(str(root / name), (48, 48, 48), seed=seed, chunks=(48, 48, 48), progress=False)
    return root


def tiny_config(data, run, **more):
    overrides = [f"data.train.path={data / 'train'}", f"data.val.path={data / 'val' / 'seed100'}",
                 "data.patch_size=[32,32,32]", "optimization.max_steps=3", "optimization.val_check_interval=2",
                 "optimization.val_steps_per_epoch=1", "optimization.checkpoint.every_n_train_steps=2",
                 f"save_path={run}"] + [f"{k}={v}" for k, v in more.items()]
    return load_config("configs/tiny.yaml", overrides)


def _rank(rank, world, port, data, run, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    from nisbflow.train.loop import train

    torch.set_num_threads(1)
    folder, model = train(tiny_config(data, run), run_dir=run / "ddp", workers=0)
    torch.save(model.state_dict(), results / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_ends_with_identical_weights(data, tmp_path):
    mp.spawn(_rank, args=(2, free_port(), data, tmp_path, tmp_path), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    checkpoints = sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir())
    assert "last.pt" in checkpoints and "step-2.pt" in checkpoints
    assert [name for name in checkpoints if name.startswith("best-")]  # top-k by validation loss
    assert any((tmp_path / "ddp" / "tensorboard").iterdir())
    # the checkpoint loads for inference and holds the trained weights
    from nisbflow.model import load_checkpoint

    model, config = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert config.init_filters == 4
    assert all(torch.equal(model.state_dict()[k], first[k]) for k in first)


def test_training_resumes_from_last_checkpoint(data, tmp_path):
    from nisbflow.train.loop import train

    run, model = train(tiny_config(data, tmp_path, **{"optimization.max_steps": 2}), run_dir=tmp_path / "r", workers=0)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["metadata"]["step"] == 2
    run, resumed = train(tiny_config(data, tmp_path, **{"optimization.max_steps": 4}), run_dir=run, workers=0)
    again = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert again["metadata"]["step"] == 4
    assert not all(torch.equal(state["state_dict"][k], again["state_dict"][k]) for k in state["state_dict"])


def test_bad_training_configuration(data, tmp_path):
    from nisbflow.errors import ConfigError
    from nisbflow.train.loop import train

    with pytest.raises(ConfigError, match="no NISB seeds"):
        train(tiny_config(data, tmp_path, **{"data.train.path": tmp_path / "nothing"}), run_dir=tmp_path / "x")
    with pytest.raises(Exception, match="optimization.max_steps"):
        tiny_config(data, tmp_path, **{"optimization.max_steps": 0})


def test_cli_train(data, tmp_path):
    from typer.testing import CliRunner

    from nisbflow_cli.main import app

    overrides = [f"data.train.path={data / 'train'}", "data.patch_size=[32,32,32]", "optimization.max_steps=2",
                 "optimization.val_steps_per_epoch=0", "system.num_workers=0", f"save_path={tmp_path}"]
    result = CliRunner().invoke(app, ["train", "--config", "configs/tiny.yaml", "--run-dir", str(tmp_path / "run"),
                                      *overrides])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists() and "trained 2 steps" in result.output
    bad = CliRunner().invoke(app, ["train", "--config", "configs/tiny.yaml", "optimization.lr=0.1"])
    assert bad.exit_code == 2 and "unknown configuration key 'optimization.lr'" in bad.output


def test_checkpoints_are_written_at_validations_and_every_n_steps_not_every_step(data, tmp_path, monkeypatch):
    from nisbflow.train import loop

    written = []
    original = loop.write_checkpoint
    monkeypatch.setattr(loop, "write_checkpoint", lambda path, state: written.append(
        (path.name, state["metadata"]["step"])) or original(path, state))
    loop.train(tiny_config(data, tmp_path, **{"optimization.max_steps": 5, "optimization.val_check_interval": 4,
                                              "optimization.checkpoint.every_n_train_steps": 3}),
               run_dir=tmp_path / "r", workers=0)
    steps_with_last = [step for name, step in written if name == "last.pt"]
    assert steps_with_last == [3, 4, 5]  # every_n (3), validation (4), the final step (5); not 1 or 2
    assert ("step-3.pt", 3) in written and not any(name == "step-4.pt" for name, _ in written)


def _learning_rates(run) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("learning_rate")}


def test_a_run_resumed_after_an_interruption_equals_an_uninterrupted_one(data, tmp_path, monkeypatch):
    """Interrupted after the checkpoint at step 2 of 4 and resumed: the same weights, optimiser state and losses as
    a run never interrupted (the data of each step and the RNG state are restored; once the resumed run drew other
    crops, seeded by 1 + step)."""
    from nisbflow.train import loop

    config = tiny_config(data, tmp_path, **{"optimization.max_steps": 4})
    _, straight = loop.train(config, run_dir=tmp_path / "straight", workers=0)
    original = loop._save

    def save_then_stop(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after last.pt was written at step 2
    monkeypatch.setattr(loop, "_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        loop.train(config, run_dir=tmp_path / "resumed", workers=0)
    monkeypatch.undo()
    assert torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)["metadata"]["step"] == 2
    _, resumed = loop.train(config, run_dir=tmp_path / "resumed", workers=0)
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    last = [torch.load(tmp_path / f"{run}/checkpoints/last.pt", weights_only=True) for run in ("straight", "resumed")]
    assert last[0]["metadata"]["val_loss"] == last[1]["metadata"]["val_loss"]
    assert str(last[0]["optimizer"]["state"]) == str(last[1]["optimizer"]["state"])


def test_resuming_with_a_larger_max_steps_continues_the_schedule_of_the_new_length(data, tmp_path, capsys):
    """A 3-step run resumed to 8 steps: steps 4..8 use the learning rates of an uninterrupted 8-step run (once the
    old 3-step cosine kept cycling 1e-3 → 0 → 1e-3), and the resume says so."""
    from nisbflow.train import loop

    short = tiny_config(data, tmp_path, **{"optimization.max_steps": 3})
    long = tiny_config(data, tmp_path, **{"optimization.max_steps": 8})
    loop.train(short, run_dir=tmp_path / "resumed", workers=0)
    loop.train(long, run_dir=tmp_path / "resumed", workers=0)
    assert "with optimization.max_steps 8 (it was trained for 3)" in capsys.readouterr().out
    loop.train(long, run_dir=tmp_path / "straight", workers=0)
    resumed, straight = _learning_rates(tmp_path / "resumed"), _learning_rates(tmp_path / "straight")
    assert sorted(straight) == list(range(1, 9))
    for step in range(4, 9):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6), step
    assert straight[1] == pytest.approx(1e-3) and straight[8] < straight[5] < straight[2]  # one decay, no cycle
    assert resumed[3] == pytest.approx(loop.learning_rate(2, short.optimization))


def test_the_epoch_loss_is_the_mean_of_each_n_steps_per_epoch(data, tmp_path):
    """optimization.n_steps_per_epoch was accepted and read by nothing; it now sets the epochs whose mean training
    loss TensorBoard shows as train_loss_total_epoch (the name PyTorch Connectomics' tutorial watches)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nisbflow.train import loop

    run = tmp_path / "r"
    loop.train(tiny_config(data, tmp_path, **{"optimization.max_steps": 5, "optimization.n_steps_per_epoch": 2}),
               run_dir=run, workers=0)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    losses = {e.step: e.value for e in events.Scalars("train_loss")}
    epochs = {e.step: e.value for e in events.Scalars(loop.EPOCH_LOSS)}
    assert sorted(epochs) == [2, 4]  # step 5 closes no epoch
    for end, mean in epochs.items():
        assert mean == pytest.approx((losses[end - 1] + losses[end]) / 2, rel=1e-6)
