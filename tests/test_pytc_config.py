"""PyTorch Connectomics configurations read as they are (tests/fixtures/pytc, written in PyTC's format from its
documentation and files): stage precedence, profiles, templates, the mapping of every key, refusals, and the NISB
tutorial's command lines on a synthetic NISB layout."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from typer.testing import CliRunner

from nisbflow.config import load_config
from nisbflow.config.pytc import load_pytc, resolve_pytc
from nisbflow.errors import ConfigError
from nisbflow_cli.main import app

FIXTURES = Path(__file__).parent / "fixtures" / "pytc"
RUN = FIXTURES / "run.yaml"


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_the_recipe_and_dataset_resolve_per_mode_as_pytc_merges_them():
    train = load_config(RUN, mode="train")
    assert train.data.train.path == "/data/nisb/train/seed*"  # path joined with image, data.zarr/img cut
    assert train.data.val.path == "/data/nisb/val/seed100" and train.data.val.skeleton is None
    assert train.data.patch_size == (32, 32, 32) and train.data.target_context == 10
    assert train.data.dataloader.batch_size == 2 and train.data.voxel_size == (9.0, 9.0, 20.0)
    assert train.optimization.max_steps == 2 and train.optimization.n_steps_per_epoch == 1
    assert train.optimization.checkpoint.every_n_train_steps == 2 and train.optimization.checkpoint.save_top_k == 1
    assert train.optimization.precision == "32" and train.system.num_gpus == -1 and train.system.num_workers == 0
    assert (train.model.size, train.model.kernel_size, train.model.out_channels) == ("S", 3, 6)
    assert train.experiment_name == "fixture_run" and train.save_path == "outputs/run"  # PyTC's outputs/<stem>
    # inference, decoding, evaluation in train mode come from test: (what the checkpoint will record)
    assert train.inference.window_size == (32, 32, 32) and train.inference.sw_batch_size == 4
    assert train.decoding.threshold == 0.6  # from the decoding template
    assert train.evaluation.metrics == ["nerl", "em_erl"]

    test = load_config(RUN, mode="test")
    assert test.system.num_gpus == 1  # test: over default:
    assert test.data.test.path == "/data/nisb/test/seed101"  # the trailing slash is PyTC's join
    assert test.data.test.skeleton == "/data/nisb/test/seed101/skeleton.pkl"
    assert test.decoding.affinity_mask_path == "/data/nisb/test/seed101/mask.zarr"
    assert test.data.train.path is None  # train: is not test mode's

    tune = load_config(RUN, mode="tune")
    assert tune.data.val.path == "/data/nisb/val/seed100" and tune.data.val.skeleton.endswith("seed100/skeleton.pkl")
    assert (tune.tune.sampler, tune.tune.n_trials, tune.tune.study_name) == ("grid", 3, "fixture_cc_tuning")
    assert (tune.tune.threshold.low, tune.tune.threshold.high, tune.tune.threshold.step) == (0.5, 0.7, 0.1)
    assert tune.tune.metric == "em_erl" and tune.tune.direction == "maximize"
    assert tune.decoding.affinity_mask_path is None  # test:'s mask is not tune mode's
    both = load_config(RUN, mode="tune-test")
    assert both.data.val.path == tune.data.val.path and both.data.test.path == test.data.test.path


def test_precedence_is_top_level_then_default_then_mode_then_overrides(tmp_path):
    """The rule of PyTC's stage resolver, written out: schema < top level < default: < mode section; a top-level
    override wins over everything, a section-prefixed one lands in its section."""
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({
        "data": {"dataloader": {"batch_size": 1}},
        "default": {"data": {"dataloader": {"batch_size": 2}}, "inference": {"window": {"sw_batch_size": 5}}},
        "train": {"data": {"dataloader": {"batch_size": 3}}},
        "test": {"inference": {"window": {"sw_batch_size": 6}}},
    }))
    path = tmp_path / "p.yaml"
    cases = {
        ("train", ()): (3, 6), ("test", ()): (2, 6), ("tune", ()): (2, 5),
        ("train", ("data.dataloader.batch_size=9",)): (9, 6), ("test", ("data.dataloader.batch_size=9",)): (9, 6),
        ("test", ("default.data.dataloader.batch_size=7",)): (7, 6),
        ("train", ("default.data.dataloader.batch_size=7",)): (3, 6),
        ("tune", ("tune.inference.window.sw_batch_size=8",)): (2, 8),
        ("test", ("inference.window.sw_batch_size=4",)): (2, 4),
    }
    for (mode, overrides), (batch, sw_batch) in cases.items():
        config = load_config(path, list(overrides), mode=mode)
        assert (config.data.dataloader.batch_size, config.inference.sw_batch_size) == (batch, sw_batch), (mode,
                                                                                                         overrides)


def test_profiles_templates_and_their_errors(tmp_path):
    resolved, notes = resolve_pytc(RUN, "train")
    assert "default.data.augmentation.profile: banis_like (from augmentation_profiles)" in notes
    assert resolved["data"]["dataloader"]["use_lazy_zarr"] is True  # from the streamed profile
    assert resolved["decoding"]["steps"] == [{"name": "decode_affinity_cc",
                                              "kwargs": {"threshold": 0.6, "backend": "numba", "edge_offset": 0}}]
    assert not any(key.endswith("_profiles") or key == "decoding_templates" for key in resolved)
    base = f"_base_: {FIXTURES / 'profiles' / 'all.yaml'}\n"
    (tmp_path / "own.yaml").write_text(base + "default:\n  data:\n    dataloader: {profile: streamed, "
                                       "use_lazy_zarr: false}\n  decoding:\n    steps: [{template: components, "
                                       "kwargs: {threshold: 0.9}}]\n")
    resolved, _ = resolve_pytc(tmp_path / "own.yaml", "test")
    assert resolved["data"]["dataloader"]["use_lazy_zarr"] is False  # the file's key wins over the profile's
    assert resolved["decoding"]["steps"][0]["kwargs"] == {"threshold": 0.9, "backend": "numba", "edge_offset": 0}
    assert load_config(tmp_path / "own.yaml", mode="test").decoding.threshold == 0.9
    (tmp_path / "unknown.yaml").write_text(base + "default:\n  data:\n    augmentation: {profile: aug_nope}\n")
    with pytest.raises(ConfigError, match="unknown profile 'aug_nope'; augmentation_profiles has banis_like, "
                                          "elastic_only"):
        load_config(tmp_path / "unknown.yaml")
    (tmp_path / "misplaced.yaml").write_text(base + "default: {}\ndata:\n  augmentation: {profile: banis_like}\n")
    with pytest.raises(ConfigError, match="profile selector data.augmentation.profile stands where PyTorch "
                                          "Connectomics reads none"):
        load_config(tmp_path / "misplaced.yaml")
    (tmp_path / "elastic.yaml").write_text(base + "default:\n  data:\n    augmentation: {profile: elastic_only}\n")
    with pytest.raises(ConfigError, match="data.augmentation.elastic.enabled = True is refused: nisbflow's training "
                                          "does not apply elastic"):
        load_config(tmp_path / "elastic.yaml")
    assert load_config(tmp_path / "elastic.yaml", mode="test").inference.window_size == (128, 128, 128)


@pytest.mark.parametrize("mode", ["train", "test", "tune"])
def test_every_key_of_the_file_is_accounted_for(mode):
    """No PyTC key passes silently: each leaf of the resolved file has one mapping (set, matches, ignored)."""
    pytc = load_pytc(RUN, mode)
    resolved, _ = resolve_pytc(RUN, mode)
    mapped = [m.key for m in pytc.translation.mappings]
    for leaf in _leaves(resolved):
        assert any(key == leaf or key.startswith(leaf + ".") or key.startswith(leaf + "[") or
                   leaf.startswith(key + ".") for key in mapped), f"{leaf} has no mapping"
    verdicts = {m.key: m.verdict for m in pytc.translation.mappings}
    assert verdicts["description"] == "ignored" and verdicts["model.mednext.size"] == "set"
    assert verdicts["inference.window.sw_device"] == "ignored"
    assert verdicts["data.augmentation.slice_shift.shift_magnitude"] == "matches"
    assert not pytc.translation.refusals()


def test_refused_keys_name_the_reason_in_one_line():
    with pytest.raises(ConfigError) as caught:
        load_config(FIXTURES / "refused.yaml", mode="train")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{FIXTURES / 'refused.yaml'} (PyTorch Connectomics, --mode train): model.loss.losses")
    assert "not ['PerChannelBCEWithLogitsLoss', 'DiceLoss']" in message
    assert "also refused: optimization.ema.device, inference.test_time_augmentation.transforms (" in message
    with pytest.raises(ConfigError, match=r"--mode test\): inference.test_time_augmentation.transforms = "
                                          r"\[\{'name': 'elastic'\}\] is refused: nisbflow's views are flips and "
                                          r"quarter turns \("):
        load_config(FIXTURES / "refused.yaml", mode="test")  # training's loss and EMA do not matter to a test
    with pytest.raises(ConfigError, match="model.mednext.stem_width = 3 is refused: nisbflow has no such setting"):
        load_config(RUN, ["model.mednext.stem_width=3"])
    with pytest.raises(ConfigError, match="inference.snap_to_edge.*a grid that pads past the edge is not"):
        load_config(RUN, ["inference.window.snap_to_edge=false"], mode="test")
    with pytest.raises(ConfigError, match=re.escape("data.dataloader.target_context = [1, 0, 0, 10, 10, 10] is "
                                                    "refused")):
        load_config(RUN, ["data.dataloader.target_context=[1,0,0,10,10,10]"])


def test_the_tutorial_overrides_reach_their_settings():
    config = load_config(RUN, ["system.num_gpus=4", "data.dataloader.batch_size=1", "model.mednext.size=L",
                               "train.data.train.path=/x/train", "inference.window.sw_batch_size=2",
                               "decoding.threshold=0.81"], mode="train")
    assert (config.system.num_gpus, config.data.dataloader.batch_size, config.model.size) == (4, 1, "L")
    assert config.data.train.path == "/x/train/seed*" and config.inference.sw_batch_size == 2
    assert config.decoding.threshold == 0.81  # nisbflow's own key, applied after the file
    test = load_config(RUN, ["decoding.affinity_mask_path=null", "test.data.test.path=/y/seed7",
                             "decoding.steps[0].kwargs.threshold=0.74"], mode="test")
    assert test.decoding.affinity_mask_path is None and test.data.test.path == "/y/seed7"
    assert test.decoding.threshold == 0.74
    tune = load_config(RUN, ["tune.data.val.path=/z/seed3", "tune.n_trials=5"], mode="tune")
    assert tune.data.val.path == "/z/seed3" and tune.tune.n_trials == 5


def test_the_older_flat_form():
    config = load_config(FIXTURES / "flat.yaml")
    assert (config.model.size, config.model.kernel_size) == ("B", 5)
    assert config.data.patch_size == (64, 64, 32) and config.data.dataloader.batch_size == 3
    assert config.data.train.path == "/data/flat/train/seed*" and config.data.voxel_size == (8.0, 8.0, 30.0)
    assert config.data.erosion == 1 and config.optimization.max_steps == 300
    assert config.optimization.precision == "bf16-mixed"
    assert config.inference.window_size == (64, 64, 32) and config.inference.overlap == 0.25
    assert config.decoding.threshold == 0.82 and config.experiment_name == "fixture_flat"


def test_config_show_prints_the_mapping_then_the_configuration(tmp_path):
    result = CliRunner().invoke(app, ["config", "show", "--config", str(RUN), "--mode", "tune",
                                      "tune.data.val.path=/v/seed100"])
    assert result.exit_code == 0, result.output
    comments = [line for line in result.output.splitlines() if line.startswith("#")]
    assert comments[0].startswith(f"# {RUN}: PyTorch Connectomics configuration, --mode tune")
    assert "#   model.mednext.size = 'S' -> model.size (MIC-DKFZ's MedNeXt S/B/M/L)" in comments
    assert "#   tune.optimization.single_objective.metric = 'nerl' -> tune.metric = 'em_erl' (PyTC's nerl is " \
           "em_erl's NERL at evaluation.nerl_merge_threshold)" in comments
    assert any(line.startswith("#   inference.window.sw_device = 'cuda': where tensors live") for line in comments)
    shown = yaml.safe_load(result.output)
    expected = load_config(RUN, ["tune.data.val.path=/v/seed100"], mode="tune").model_dump(mode="json")
    assert shown["data"]["val"]["path"] == "/v/seed100" == expected["data"]["val"]["path"]
    assert shown["tune"]["threshold"] == expected["tune"]["threshold"] == {"low": 0.5, "high": 0.7, "step": 0.1}
    refused = CliRunner().invoke(app, ["config", "show", "--config", str(FIXTURES / "refused.yaml")])
    assert refused.exit_code == 2
    assert "# refused:" in refused.output and "#   optimization.ema.device = 'mps': nisbflow keeps the average on " \
        "the weights' device" in refused.output
    assert "error: " in refused.output and "model.loss.losses" in refused.output.split("error: ")[1]


@pytest.fixture(scope="module")
def nisb(tmp_path_factory):
    """A synthetic NISB layout (train/seed0, val/seed100, test/seed101), small."""
    root = tmp_path_factory.mktemp("nisb")
    result = CliRunner().invoke(app, ["synth", str(root / "data"), "--layout", "nisb", "--shape", "64,64,48",
                                      "--train-seeds", "1", "--chunks", "32,32,32"])
    assert result.exit_code == 0, result.output
    return root


def test_the_tutorials_training_command_line(nisb):
    """python scripts/main.py --config … system.num_gpus=… data.dataloader.batch_size=… as nisbflow --config …;
    then --checkpoint <run>/checkpoints/last.pt resumes it."""
    data, out = nisb / "data", nisb / "train-out"
    paths = [f"train.data.train.path={data}/train", f"train.data.val.path={data}/val", f"save_path={out}"]
    result = CliRunner().invoke(app, ["--config", str(RUN), *paths, "system.num_gpus=0",
                                      "data.dataloader.batch_size=1"])
    assert result.exit_code == 0, result.output
    assert "read as PyTorch Connectomics' --mode train" in " ".join(result.output.split())
    (run,) = [p for p in out.iterdir() if (p / "checkpoints" / "last.pt").exists()]
    import torch

    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    recorded = state["metadata"]["config"]
    assert state["metadata"]["step"] == 2 and recorded["data"]["dataloader"]["batch_size"] == 1
    assert recorded["data"]["train"]["path"] == f"{data}/train/seed*" and recorded["model"]["size"] == "S"
    assert recorded["decoding"]["threshold"] == 0.6 and recorded["inference"]["window_size"] == [32, 32, 32]
    resumed = CliRunner().invoke(app, ["--mode", "train", "--config", str(RUN), "--checkpoint",
                                       str(run / "checkpoints" / "last.pt"), *paths, "system.num_gpus=0",
                                       "data.dataloader.batch_size=1", "train.optimization.max_steps=3",
                                       "train.optimization.scheduler.params.t_max=3"])
    assert resumed.exit_code == 0, resumed.output
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["metadata"]["step"] == 3
    wrong = CliRunner().invoke(app, ["--config", str(RUN), "--checkpoint", str(run / "checkpoints" / "step-2.pt")])
    assert wrong.exit_code == 2 and "resumes a nisbflow run from its <run>/checkpoints/last.pt" in " ".join(
        wrong.output.replace("│", " ").split())


def test_the_tutorials_test_and_tune_command_lines_equal_nisbflows_own(nisb, tmp_path):
    """--mode test / --mode tune with the tutorial's overrides give what nisbflow test / tune give with the same
    settings in nisbflow's keys."""
    data, model = nisb / "data", "nisb-tiny-synthetic"
    test_seed, val_seed = data / "test" / "seed101", data / "val" / "seed100"
    pytc_test = CliRunner().invoke(app, [
        "--config", str(RUN), "--mode", "test", "--checkpoint", model, "--cluster", "sync",
        f"test.data.test.path={test_seed}", f"test.data.test.skeleton={test_seed}/skeleton.pkl",
        "decoding.affinity_mask_path=null", f"save_path={tmp_path}/pytc"])
    assert pytc_test.exit_code == 0, pytc_test.output
    own_test = CliRunner().invoke(app, [
        "test", "--checkpoint", model, "--cluster", "sync", f"data.test.path={test_seed}",
        f"data.test.skeleton={test_seed}/skeleton.pkl", "decoding.threshold=0.6", "inference.window_size=[32,32,32]",
        "inference.sw_batch_size=4", "evaluation.metrics=[nerl,em_erl]", f"save_path={tmp_path}/own"])
    assert own_test.exit_code == 0, own_test.output
    (pytc_folder,) = (tmp_path / "pytc").glob("*/metrics.json")
    (own_folder,) = (tmp_path / "own").glob("*/metrics.json")
    pytc_metrics, own_metrics = json.loads(pytc_folder.read_text()), json.loads(own_folder.read_text())
    assert pytc_metrics["em_erl"] is not None and pytc_metrics["em_erl"]["merge_threshold"] == 50
    for key in ("nerl", "erl", "voi_sum", "em_erl", "n_mergers", "per_skeleton_erl"):
        assert pytc_metrics[key] == own_metrics[key], key
    assert 0.5 < pytc_metrics["nerl"] <= 1 and pytc_metrics["threshold"] == 0.6
    np.testing.assert_array_equal(zarr.open(str(pytc_folder.parent / "segmentation.zarr" / "0"))[:],
                                  zarr.open(str(own_folder.parent / "segmentation.zarr" / "0"))[:])

    pytc_tune = CliRunner().invoke(app, [
        "--config", str(RUN), "--mode", "tune", "--checkpoint", model, "--cluster", "sync",
        f"tune.data.val.path={val_seed}", f"tune.data.val.skeleton={val_seed}/skeleton.pkl",
        f"save_path={tmp_path}/pytc-tune"])
    assert pytc_tune.exit_code == 0, pytc_tune.output
    own_tune = CliRunner().invoke(app, [
        "tune", "--checkpoint", model, "--cluster", "sync", f"data.val.path={val_seed}",
        f"data.val.skeleton={val_seed}/skeleton.pkl", "inference.window_size=[32,32,32]", "tune.sampler=grid",
        "tune.threshold.low=0.5", "tune.threshold.high=0.7", "tune.threshold.step=0.1", "tune.metric=em_erl",
        "tune.n_trials=3", f"save_path={tmp_path}/own-tune"])
    assert own_tune.exit_code == 0, own_tune.output
    pytc_best = yaml.safe_load(next((tmp_path / "pytc-tune" / "tune").glob("*/cc/best.yaml")).read_text())
    own_best = yaml.safe_load(next((tmp_path / "own-tune" / "tune").glob("*/cc/best.yaml")).read_text())
    assert pytc_best["decoding"] == own_best["decoding"]
    curve = [line for line in pytc_tune.output.splitlines() if re.match(r"^│\s+0\.[567] ", line)]
    assert len(curve) == 3 and curve == [line for line in own_tune.output.splitlines()
                                         if re.match(r"^│\s+0\.[567] ", line)]


def test_a_banis_plus_recipe_maps_every_key_in_every_mode():
    """A recipe in the form of PyTC's banis+.yaml: the loss, the EMA and erosion are nisbflow settings; nothing is
    refused in any mode; a shortened run's t_max and model sizes follow max_steps and the patch."""
    plus = FIXTURES / "run_plus.yaml"
    for mode in ("train", "test", "tune", "tune-test"):
        pytc = load_pytc(plus, mode)
        assert not pytc.translation.refusals(), (mode, [m.line() for m in pytc.translation.refusals()])
    train = load_config(plus, mode="train")
    assert (train.model.loss, train.model.auto_pos_weight, train.model.max_pos_weight) == (
        "PerChannelBCEWithLogitsLoss", True, 10.0)
    assert train.optimization.ema.model_dump() == {"enabled": True, "decay": 0.999, "warmup_steps": 1,
                                                   "validate_with_ema": True}
    assert (train.data.erosion, train.data.dataloader.batch_size) == (2, 2)
    shortened = load_config(plus, ["optimization.max_steps=5", "data.dataloader.patch_size=[48,48,48]"])
    assert shortened.optimization.max_steps == 5 and shortened.data.patch_size == (48, 48, 48)
    lines = load_pytc(plus, "train", ["optimization.max_steps=5"]).describe()
    assert any("optimization.scheduler.params.t_max = 2: follows optimization.max_steps=5 given as KEY=VALUE" in line
               for line in lines)
    with pytest.raises(ConfigError, match=r"t_max = 7 is refused: nisbflow's cosine schedule spans "
                                          r"optimization.max_steps \(5\), not 7 steps"):
        load_config(plus, ["optimization.max_steps=5", "optimization.scheduler.params.t_max=7"])


def test_the_banis_plus_workflow_trains_tunes_and_tests_with_the_tuned_threshold(nisb, tmp_path):
    """--mode train keeps the EMA; --mode tune tunes the EMA weights; --mode test then decodes at the tuned
    threshold and says so (PyTC's tune then test), and the run folder records the resolved configuration."""
    import torch

    data, out = nisb / "data", tmp_path / "plus"
    plus = str(FIXTURES / "run_plus.yaml")
    trained = CliRunner().invoke(app, ["--config", plus, f"train.data.train.path={data}/train",
                                       f"train.data.val.path={data}/val", f"save_path={out}", "system.num_gpus=0"])
    assert trained.exit_code == 0, trained.output
    (run,) = [p for p in out.iterdir() if (p / "checkpoints" / "last.pt").exists()]
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert state["metadata"]["ema"]["updates"] == 2 and state["metadata"]["config"]["model"]["loss"] == \
        "PerChannelBCEWithLogitsLoss"
    val, test = data / "val" / "seed100", data / "test" / "seed101"
    tuned = CliRunner().invoke(app, ["--config", plus, "--mode", "tune", "--checkpoint", str(last), "--cluster", "sync",
                                     f"tune.data.val.path={val}", f"tune.data.val.skeleton={val}/skeleton.pkl",
                                     f"save_path={out}"])
    assert tuned.exit_code == 0, tuned.output
    assert "theEMAweights(ema_state_dict,2updates" in "".join(tuned.output.split())
    (best,) = (out / "tune").glob("*/cc/best.yaml")
    threshold = yaml.safe_load(best.read_text())["decoding"]["threshold"]
    tested = CliRunner().invoke(app, ["--config", plus, "--mode", "test", "--checkpoint", str(last), "--cluster",
                                      "sync", f"test.data.test.path={test}",
                                      f"test.data.test.skeleton={test}/skeleton.pkl", f"save_path={out}/test"])
    # the fixture's dataset names a mask that is not there: refused before any inference, naming it
    assert tested.exit_code == 2 and "infer: windows" not in tested.output
    assert "affinity mask array not found: /data/nisb/test/seed101/mask.zarr" in " ".join(tested.output.split())
    tested = CliRunner().invoke(app, ["--config", plus, "--mode", "test", "--checkpoint", str(last), "--cluster",
                                      "sync", f"test.data.test.path={test}", "decoding.affinity_mask_path=null",
                                      f"test.data.test.skeleton={test}/skeleton.pkl", f"save_path={out}"])
    assert tested.exit_code == 0, tested.output
    assert f"--modetest:decodingwith{best}" in "".join(tested.output.split())
    (metrics,) = out.glob("*/metrics.json")
    assert json.loads(metrics.read_text())["threshold"] == threshold
    both = CliRunner().invoke(app, ["--config", plus, "--mode", "tune-test", "--checkpoint", str(last), "--cluster",
                                    "sync", f"tune.data.val.path={val}", f"tune.data.val.skeleton={val}/skeleton.pkl",
                                    f"test.data.test.path={test}", f"test.data.test.skeleton={test}/skeleton.pkl",
                                    "decoding.affinity_mask_path=null", f"save_path={out}"])
    assert both.exit_code == 0, both.output
    tune_tested = json.loads((best.parent / "test" / "metrics.json").read_text())
    tested = json.loads(metrics.read_text())
    assert (tune_tested["threshold"], tune_tested["nerl"], tune_tested["checkpoint_weights"]) == (
        tested["threshold"], tested["nerl"], "ema")


def test_the_tutorials_slips_are_named_in_one_line(nisb, tmp_path):
    """last.ckpt where nisbflow wrote last.pt names the file that exists; more GPUs than the machine has are
    refused; the run folder holds the resolved configuration, loadable again."""
    data, out = nisb / "data", tmp_path / "slips"
    paths = [f"train.data.train.path={data}/train", f"train.data.val.path={data}/val", f"save_path={out}"]
    result = CliRunner().invoke(app, ["--config", str(RUN), *paths, "system.num_gpus=0", "data.dataloader.batch_size=1"])
    assert result.exit_code == 0, result.output
    (run,) = [p for p in out.iterdir() if (p / "checkpoints" / "last.pt").exists()]
    assert load_config(run / "config.yaml").data.dataloader.batch_size == 1
    assert load_config(run / "config.yaml") == load_config(RUN, [*paths, "system.num_gpus=0",
                                                                 "data.dataloader.batch_size=1"])
    ckpt = run / "checkpoints" / "last.ckpt"
    for argv in (["--mode", "train", "--config", str(RUN), "--checkpoint", str(ckpt), *paths],
                 ["--mode", "test", "--config", str(RUN), "--checkpoint", str(ckpt)]):
        wrong = CliRunner().invoke(app, argv)
        text = "".join(wrong.output.replace("│", "").split())
        assert wrong.exit_code == 2 and f"{ckpt}doesnotexist,but{run / 'checkpoints' / 'last.pt'}does" in text
    import torch

    if torch.cuda.device_count() == 0:
        many = CliRunner().invoke(app, ["--config", str(RUN), *paths, "system.num_gpus=4"])
        assert many.exit_code == 2 and "system.num_gpus=4, but this machine has 0 GPU(s)" in " ".join(
            many.output.split())


def test_overrides_of_pytc_keys_are_said_as_overrides_and_a_missing_backend_fails_before_inference(nisb):
    from nisbflow.settings import resolve_settings

    run = resolve_settings("nisb-tiny-synthetic", config=RUN, mode="test",
                           overrides=["inference.window.sw_batch_size=5", "test.data.test.path=/t"])
    assert run.config.inference.sw_batch_size == 5
    assert run.sources["inference.sw_batch_size"] == "KEY=VALUE inference.window.sw_batch_size"
    assert run.sources["data.test.path"] == "KEY=VALUE data.test.path"
    assert run.sources["inference.window_size"].startswith(f"--config {RUN}")
    assert any(note.startswith("inference.sw_batch_size 5 from KEY=VALUE inference.window.sw_batch_size")
               for note in run.notes)
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        test_seed = nisb / "data" / "test" / "seed101"
        result = CliRunner().invoke(app, ["--config", str(RUN), "--mode", "test", "--checkpoint", "nisb-tiny-synthetic",
                                          f"test.data.test.path={test_seed}", "decoding.backend=cupy",
                                          "decoding.affinity_mask_path=null"])
        assert result.exit_code == 2 and "infer: windows" not in result.output
        assert "--backend cupy needs cupy and a CUDA GPU" in result.output
