"""One settings resolver: defaults ← checkpoint ← --config ← --params ← KEY=VALUE, the checkpoint handle, settings
validated when the configuration is built, and one checkpoint giving the same outputs through every command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
import zarr
from typer.testing import CliRunner

from nisbflow.data.volumes import array_url
from nisbflow.model import Checkpoint
from nisbflow.config import load_config, load_yaml_tree
from nisbflow.errors import ConfigError
from nisbflow.model import SHIPPED_DIR, ARCHITECTURES, Checkpoint, save_random_checkpoint
from nisbflow.settings import resolve_settings
from nisbflow_cli.main import app

SHIPPED_YAML = SHIPPED_DIR / "nisb_tiny_synthetic.yaml"


def shipped_recorded() -> dict:
    return load_yaml_tree(SHIPPED_YAML)


def one_line(output: str) -> str:
    return " ".join(output.split())


def test_a_shipped_checkpoint_brings_its_window_geometry_and_threshold():
    recorded = shipped_recorded()
    run = resolve_settings("nisb-tiny-synthetic")
    assert list(run.config.inference.window_size) == recorded["inference"]["window_size"] == [64, 64, 64]
    assert run.config.decoding.threshold == recorded["decoding"]["threshold"]
    assert run.config.model.init_filters == 4
    assert run.sources["inference.window_size"] == run.sources["decoding.threshold"] == "checkpoint nisb-tiny-synthetic"
    assert "inference.sw_batch_size" in run.sources
    # the same file named by path resolves the same settings (its YAML), not the training run's 0.75
    by_path = resolve_settings(str(SHIPPED_DIR / "nisb_tiny_synthetic.pt"))
    assert by_path.config.inference == run.config.inference
    assert by_path.config.decoding.threshold == run.config.decoding.threshold
    assert by_path.checkpoint.sha256 == run.checkpoint.sha256
    # and the .pt's own recorded configuration agrees with the YAML it ships with
    payload = torch.load(SHIPPED_DIR / "nisb_tiny_synthetic.pt", weights_only=True)
    assert payload["metadata"]["config"]["decoding"]["threshold"] == recorded["decoding"]["threshold"]
    assert payload["metadata"]["config"]["inference"] == recorded["inference"]


def test_layers_override_in_order_and_say_where_each_value_came_from(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("inference: {window_size: [32, 32, 32], sw_batch_size: 3}\ndecoding: {threshold: 0.5}\n")
    params = tmp_path / "best.yaml"
    params.write_text("decoding: {threshold: 0.55}\n")
    run = resolve_settings("nisb-tiny-synthetic", config=config)
    assert list(run.config.inference.window_size) == [32, 32, 32] and run.config.decoding.threshold == 0.5
    assert run.config.inference.overlap == 0.5  # not in the file: still the checkpoint's
    assert run.sources["inference.window_size"] == f"--config {config}"
    assert run.sources["inference.overlap"] == "checkpoint nisb-tiny-synthetic"
    run = resolve_settings("nisb-tiny-synthetic", config=config, params=params)
    assert run.config.decoding.threshold == 0.55 and run.sources["decoding.threshold"] == f"--params {params}"
    run = resolve_settings("nisb-tiny-synthetic", config=config, params=params, overrides=["decoding.threshold=0.6"])
    assert run.config.decoding.threshold == 0.6 and run.sources["decoding.threshold"] == "KEY=VALUE"
    text = "\n".join(run.describe())
    assert "decoding.threshold" in text and "0.6" in text and "KEY=VALUE" in text and run.checkpoint.short_sha256 in text
    # without a checkpoint: the defaults, and a default source
    plain = resolve_settings()
    assert plain.config.decoding.threshold == 0.75 and "decoding.threshold" not in plain.sources
    assert list(plain.config.inference.window_size) == [128, 128, 128]


def test_the_checkpoint_keeps_its_network_and_a_config_naming_another_is_noted():
    run = resolve_settings("nisb-tiny-synthetic", config="configs/base_banis.yaml", overrides=["model.init_filters=32"])
    assert run.config.model.init_filters == 4  # the weights win
    assert any("model.init_filters stays 4" in note and "32" in note for note in run.notes)
    assert any("note: model.init_filters" in line for line in run.describe())
    assert run.config.decoding.threshold == 0.75  # an explicit setting of the file does win
    assert run.sources["decoding.threshold"] == "--config configs/base_banis.yaml"


def test_inherited_defaults_never_replace_what_the_checkpoint_records_and_each_value_names_its_file(tmp_path):
    """configs/tiny.yaml's decoding.threshold 0.75 comes from its _base_ and used to replace the shipped model's
    tuned 0.7, printed as coming from tiny.yaml. Now an inherited value sits under the checkpoint, names the file
    that set it, and a value the named file sets itself wins with a note."""
    run = resolve_settings("nisb-tiny-synthetic", config="configs/tiny.yaml", overrides=["decoding.method=waterz"])
    assert run.config.decoding.threshold == 0.7 and run.sources["decoding.threshold"] == "checkpoint nisb-tiny-synthetic"
    assert run.sources["decoding.backend"] == "_base_ configs/base_banis.yaml (via --config configs/tiny.yaml)"
    assert run.sources["data.patch_size"] == "--config configs/tiny.yaml"
    assert run.config.decoding.method == "waterz" and run.sources["decoding.method"] == "KEY=VALUE"
    printed = "\n".join(run.describe("decode"))
    assert "decoding.method              waterz           KEY=VALUE" in printed
    assert "decoding.waterz.scoring" in printed and "decoding.threshold           0.7 " in printed
    assert not run.notes  # tiny.yaml's own inference keys agree with the checkpoint's
    # three levels: a base of a base, the named file over the checkpoint with a note
    (tmp_path / "lab.yaml").write_text("decoding: {threshold: 0.8, backend: numba}\ninference: {sw_batch_size: 5}\n")
    (tmp_path / "project.yaml").write_text("_base_: lab.yaml\nexperiment_name: mouse\n")
    (tmp_path / "run.yaml").write_text("_base_: project.yaml\ninference: {overlap: 0.25}\n")
    run = resolve_settings("nisb-tiny-synthetic", config=tmp_path / "run.yaml")
    assert run.config.decoding.threshold == 0.7 and run.config.inference.sw_batch_size == 2  # the checkpoint's
    assert run.config.experiment_name == "mouse"
    assert run.sources["experiment_name"] == f"_base_ {tmp_path / 'project.yaml'} (via --config {tmp_path / 'run.yaml'})"
    assert run.config.inference.overlap == 0.25 and run.sources["inference.overlap"] == f"--config {tmp_path / 'run.yaml'}"
    assert run.notes == [f"inference.overlap 0.25 from --config {tmp_path / 'run.yaml'} replaces 0.5 recorded by "
                         "checkpoint nisb-tiny-synthetic"]
    # without a checkpoint the base's values apply, named by their file
    plain = resolve_settings(None, config=tmp_path / "run.yaml")
    assert plain.config.decoding.threshold == 0.8
    assert plain.sources["decoding.threshold"] == f"_base_ {tmp_path / 'lab.yaml'} (via --config {tmp_path / 'run.yaml'})"


def test_every_command_prints_the_settings_it_uses(tmp_path):
    run = resolve_settings("nisb-tiny-synthetic")
    for command, present, absent in (("train", "optimization.max_steps", "tune.sampler"),
                                     ("tune", "tune.sampler", "optimization.max_steps"),
                                     ("decode", "decoding.waterz.context", "inference.window_size"),
                                     ("infer", "inference.compile", "tune.sampler"),
                                     ("test", "evaluation.merge_threshold", "tune.sampler")):
        printed = "\n".join(run.describe(command))
        assert present in printed and absent not in printed, command
    values = np.full((3, 16, 16, 8), 0.9, dtype=np.float16)
    zarr.create_array(str(tmp_path / "aff.zarr"), data=values, chunks=(3, 8, 8, 8))
    result = CliRunner().invoke(app, ["decode", str(tmp_path / "aff.zarr"), str(tmp_path / "seg.zarr"), "--method",
                                      "waterz", "-t", "0.3", "--cluster", "sync"])
    assert result.exit_code == 0, result.output
    assert "decoding.method              waterz           KEY=VALUE" in result.output  # once left out
    assert "decoding.waterz.scoring      aff85_his256     default" in result.output


def test_checkpoints_without_a_recorded_configuration_and_training_checkpoints(tmp_path):
    save_random_checkpoint(tmp_path / "random.pt", ARCHITECTURES["tiny"], seed=1)
    run = resolve_settings(tmp_path / "random.pt")
    assert run.checkpoint.recorded is None and run.config.model.init_filters == 4
    assert list(run.config.inference.window_size) == [128, 128, 128] and run.config.decoding.threshold == 0.75
    # a training checkpoint records its whole configuration; its inference section comes along
    payload = torch.load(tmp_path / "random.pt", weights_only=True)
    trained = load_config("configs/tiny.yaml", ["decoding.threshold=0.42"]).model_dump(mode="json")
    payload["metadata"]["config"] = trained
    torch.save(payload, tmp_path / "trained.pt")
    run = resolve_settings(tmp_path / "trained.pt")
    assert list(run.config.inference.window_size) == [64, 64, 64] and run.config.decoding.threshold == 0.42
    # only model.*, inference.* and decoding.threshold come from a checkpoint, never its paths or data
    assert run.config.experiment_name == "nisb_base_banis" and run.config.save_path == "outputs/nisb_base_banis"
    assert run.config.data.train.path is None


def test_the_handle_reads_the_file_once_and_hashes_it_once(tmp_path, monkeypatch):
    import nisbflow.model.reader as reader_module

    reads = []
    original = reader_module.load_payload
    monkeypatch.setattr(reader_module, "load_payload", lambda path, *a: reads.append(str(path)) or original(path, *a))
    handle = Checkpoint.open("nisb-tiny-synthetic")
    assert len(reads) == 1 and len(handle.sha256) == 64
    assert Checkpoint.open(handle) is handle and len(reads) == 1
    run = resolve_settings(handle, overrides=["decoding.threshold=0.5"])
    assert run.checkpoint is handle and len(reads) == 1
    import pickle

    assert pickle.loads(pickle.dumps(handle)) == handle  # small and picklable: what workers receive


@pytest.mark.parametrize("override, key, message", [
    ("inference.window_size=[48,48,40]", "inference.window_size", "multiples of 16"),
    ("inference.window_size=[0,64,64]", "inference.window_size", "multiples of 16"),
    ("inference.select_channel=[0,1,9]", "inference.select_channel", "6-channel model output"),
    ("inference.select_channel=[0,0,1]", "inference.select_channel", "distinct"),
    ("inference.select_channel=[]", "inference.select_channel", "non-empty"),
    ("decoding.threshold=true", "decoding.threshold", "not a boolean"),
    ("decoding.threshold=1.5", "decoding.threshold", "less than or equal to 1"),
])
def test_inference_and_decoding_settings_are_validated_with_the_key_named(override, key, message):
    with pytest.raises(ConfigError) as error:
        resolve_settings("nisb-tiny-synthetic", overrides=[override])
    assert key in str(error.value) and message in str(error.value)


def test_stride_must_lie_in_the_window():
    with pytest.raises(ConfigError, match="stride"):
        load_config(None, ["inference.window_size=[16,16,16]", "inference.overlap=0.99"])


def test_bad_channels_and_windows_fail_in_one_line_before_any_output(tmp_path, synthetic_seed):
    root, _ = synthetic_seed
    image = f"{root}/data.zarr/img"
    runner = CliRunner()
    for extra in (["--channels", "0,1,9"], ["inference.window_size=[48,48,40]"]):
        result = runner.invoke(app, ["infer", image, str(tmp_path / "aff.zarr"), "--checkpoint",
                                     "nisb-tiny-synthetic", "--cluster", "sync", *extra])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and "error:" in result.output
        assert not any(tmp_path.iterdir())  # neither output nor a partial left behind


def test_decode_uses_the_threshold_the_affinities_record_and_says_so(tmp_path, synthetic_seed):
    root, _ = synthetic_seed
    runner = CliRunner()
    affinities = tmp_path / "aff.zarr"
    result = runner.invoke(app, ["infer", f"{root}/data.zarr/img", str(affinities), "--checkpoint",
                                 "nisb-tiny-synthetic", "--cluster", "sync", "decoding.threshold=0.6"])
    assert result.exit_code == 0, result.output
    recorded = zarr.open_array(array_url(str(affinities)), mode="r").attrs["nisbflow_settings"]
    assert recorded["decoding"]["threshold"] == 0.6 and recorded["checkpoint"] == "nisb-tiny-synthetic"
    assert recorded["inference"]["window"] == [64, 64, 64] and recorded["inference"]["channels"] == [0, 1, 2]
    assert recorded["sources"]["decoding.threshold"] == "KEY=VALUE"
    decoded = runner.invoke(app, ["decode", str(affinities), str(tmp_path / "seg.zarr"), "--cluster", "sync"])
    assert decoded.exit_code == 0, decoded.output
    assert f"decoding threshold 0.6 from the attributes of {affinities}" in one_line(decoded.output)
    assert zarr.open_array(array_url(str(tmp_path / "seg.zarr")), mode="r").attrs["threshold"] == 0.6
    explicit = runner.invoke(app, ["decode", str(affinities), str(tmp_path / "seg2.zarr"), "--cluster", "sync",
                                   "decoding.threshold=0.7"])
    assert explicit.exit_code == 0 and "decoding threshold 0.7 from KEY=VALUE" in one_line(explicit.output)
    assert zarr.open_array(array_url(str(tmp_path / "seg2.zarr")), mode="r").attrs["threshold"] == 0.7
    # affinities without a record (not written by infer) decode at the default, which is said too
    plain = tmp_path / "plain.zarr"
    zarr.create_array(str(plain), shape=(3, 8, 8, 8), dtype="float32", fill_value=0.9)
    bare = runner.invoke(app, ["decode", str(plain), str(tmp_path / "seg3.zarr"), "--cluster", "sync"])
    assert bare.exit_code == 0 and "decoding threshold 0.75 from the default" in one_line(bare.output)


def test_decode_refuses_affinities_whose_first_channels_are_not_short_range(tmp_path):
    array = zarr.create_array(str(tmp_path / "long.zarr"), shape=(3, 8, 8, 8), dtype="float32", fill_value=0.9)
    array.attrs["offsets"] = ["10-0-0", "0-10-0", "0-0-10"]
    result = CliRunner().invoke(app, ["decode", str(tmp_path / "long.zarr"), str(tmp_path / "seg.zarr"),
                                      "--cluster", "sync"])
    assert result.exit_code == 2 and "short-range" in one_line(result.output)


def test_one_checkpoint_gives_the_same_outputs_through_infer_decode_test_tune_and_demo(tmp_path):
    """The Done-when of the settings work: the shipped model on one seed, through every command, with no settings
    given anywhere, writes identical affinities and segmentations."""
    runner = CliRunner()
    out = tmp_path / "demo"
    demo = runner.invoke(app, ["demo", str(out), "--shape", "96,96,64", "--cluster", "sync", "--no-baseline"])
    assert demo.exit_code == 0, demo.output
    seed = out / "seed101"
    demo_affinities = zarr.open_array(array_url(str(out / "trained" / "affinities.zarr")), mode="r")[...]
    demo_segmentation = zarr.open_array(array_url(str(out / "trained" / "segmentation.zarr")), mode="r")[...]
    threshold = shipped_recorded()["decoding"]["threshold"]
    assert demo_affinities.shape == (3, 96, 96, 64)

    inferred = runner.invoke(app, ["infer", f"{seed}/data.zarr/img", str(tmp_path / "aff.zarr"), "--checkpoint",
                                   "nisb-tiny-synthetic", "--cluster", "sync"])
    assert inferred.exit_code == 0, inferred.output
    assert "inference.window_size" in inferred.output and "checkpoint nisb-tiny-synthetic" in inferred.output
    decoded = runner.invoke(app, ["decode", str(tmp_path / "aff.zarr"), str(tmp_path / "seg.zarr"),
                                  "--cluster", "sync"])
    assert decoded.exit_code == 0, decoded.output
    np.testing.assert_array_equal(zarr.open_array(array_url(str(tmp_path / "aff.zarr")), mode="r")[...], demo_affinities)
    np.testing.assert_array_equal(zarr.open_array(array_url(str(tmp_path / "seg.zarr")), mode="r")[...], demo_segmentation)

    data = [f"data.test.path={seed}", f"data.val.path={seed}", f"save_path={tmp_path / 'runs'}"]
    tested = runner.invoke(app, ["test", "--checkpoint", "nisb-tiny-synthetic", "--cluster", "sync", *data])
    assert tested.exit_code == 0, tested.output
    (folder,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    np.testing.assert_array_equal(zarr.open_array(array_url(str(folder / "affinities.zarr")), mode="r")[...], demo_affinities)
    np.testing.assert_array_equal(zarr.open_array(array_url(str(folder / "segmentation.zarr")), mode="r")[...],
                                  demo_segmentation)
    metrics = json.loads((folder / "metrics.json").read_text())
    demo_metrics = json.loads((out / "trained" / "metrics.json").read_text())
    assert metrics["threshold"] == demo_metrics["threshold"] == threshold
    assert metrics["nerl"] == demo_metrics["nerl"]

    tuned = runner.invoke(app, ["tune", "--checkpoint", "nisb-tiny-synthetic", "--cluster", "sync", *data,
                                "tune.sampler=grid", f"tune.threshold.low={threshold}",
                                f"tune.threshold.high={threshold}"])
    assert tuned.exit_code == 0, tuned.output
    shipped = tmp_path / "runs" / "tune" / "nisb-tiny-synthetic-3667c046"
    cached = zarr.open_array(array_url(str(shipped / "val-affinities.zarr")), mode="r")[...]
    np.testing.assert_array_equal(cached, demo_affinities)
    study = shipped / "cc"
    best = yaml.safe_load((study / "best.yaml").read_text())
    assert best.pop("_tuned_")["checkpoint_sha256"] == Checkpoint.open("nisb-tiny-synthetic").sha256
    assert best == {"decoding": {"threshold": threshold}}
    assert f"{threshold:g}" in tuned.output and f"{metrics['nerl']:.4f}" in tuned.output
