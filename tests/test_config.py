import pytest
import yaml
from typer.testing import CliRunner

from nisbflow.config import config_to_yaml, load_config
from nisbflow.config.schema import Config
from nisbflow.errors import ConfigError
from nisbflow_cli.main import app


def test_defaults_are_the_banis_reproduction():
    c = Config()
    assert c.system.num_gpus == -1 and c.system.num_workers == -1 and c.system.cluster == "local"
    assert c.data.voxel_size == (9, 9, 20) and c.data.patch_size == (128, 128, 128) and c.data.target_context == 10
    assert c.data.dataloader.batch_size == 4 and c.data.erosion == 0
    assert (c.model.arch, c.model.size, c.model.kernel_size, c.model.out_channels) == ("mednext", "S", 3, 6)
    assert c.model.offsets() == [(1, 0, 0), (0, 1, 0), (0, 0, 1), (10, 0, 0), (0, 10, 0), (0, 0, 10)]
    o = c.optimization
    assert (o.optimizer.name, o.optimizer.lr, o.optimizer.weight_decay, o.optimizer.betas) == ("AdamW", 1e-3, 0.01, (0.9, 0.999))
    assert (o.scheduler.name, o.scheduler.min_lr, o.max_steps, o.precision) == ("cosine", 0.0, 200000, "16-mixed")
    assert (o.checkpoint.monitor, o.checkpoint.save_top_k, o.checkpoint.every_n_train_steps) == ("val_loss_total", 3, 50000)
    i = c.inference
    assert (i.window_size, i.overlap, i.snap_to_edge, i.sw_batch_size, i.output_dtype) == ((128,) * 3, 0.5, True, 8, "float16")
    assert (i.activation, i.select_channel) == ("scale_sigmoid", [0, 1, 2])
    assert (c.decoding.threshold, c.decoding.backend, c.decoding.edge_offset, c.decoding.affinity_mask_path) == (0.75, "numba", 0, None)
    assert c.evaluation.metrics == ["nerl"] and c.evaluation.merge_threshold == 1
    t = c.tune
    assert (t.sampler, t.n_startup_trials, t.n_trials, t.threshold.low, t.threshold.high, t.threshold.step) == ("TPE", 4, 4, 0.4, 0.9, 0.1)
    assert c.save_path == "outputs/nisb_base_banis" and t.storage == "sqlite:///outputs/nisb_base_banis/tune.sqlite3"


def test_shipped_base_config_equals_defaults_but_for_data_paths():
    shipped = load_config("configs/base_banis.yaml").model_dump()
    default = Config().model_dump()
    for split in ("train", "val", "test"):
        shipped["data"].pop(split), default["data"].pop(split)
    assert shipped == default


def test_tiny_config_inherits_base_and_overrides():
    tiny = load_config("configs/tiny.yaml")
    assert tiny.data.patch_size == (64, 64, 64) and tiny.model.init_filters == 4
    assert tiny.decoding.threshold == 0.75  # inherited
    assert tiny.save_path == "outputs/nisb_tiny"


def test_base_lists_relative_paths_and_override_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("decoding: {threshold: 0.6}\ndata: {erosion: 1}\n")
    (tmp_path / "sub" / "b.yaml").write_text("decoding: {threshold: 0.7, backend: cupy}\n")
    (tmp_path / "sub" / "c.yaml").write_text("_base_: [../a.yaml, b.yaml]\ndata: {erosion: 2}\n")
    config = load_config(tmp_path / "sub" / "c.yaml", ["decoding.threshold=0.65"])
    assert config.decoding.threshold == 0.65  # command line wins
    assert config.decoding.backend == "cupy"  # later base wins over earlier
    assert config.data.erosion == 2  # the file wins over its bases


def test_base_cycle_is_detected(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_overrides_are_typed():
    config = load_config(overrides=["data.voxel_size=[8,8,30]", "decoding.affinity_mask_path=null",
                                    "system.num_gpus=4", "model.activation_checkpointing=true"])
    assert config.data.voxel_size == (8.0, 8.0, 30.0)
    assert config.decoding.affinity_mask_path is None
    assert config.system.num_gpus == 4 and config.model.activation_checkpointing is True


def test_deep_supervision_is_refused_not_ignored():
    with pytest.raises(ConfigError, match="deep supervision is not implemented"):
        load_config(overrides=["model.deep_supervision=true"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("decoding.treshold=0.8", "did you mean 'decoding.threshold'"),
        ("data.dataloader.bach_size=2", "did you mean 'data.dataloader.batch_size'"),
        ("decoding.threshold=1.5", "decoding.threshold"),
        ("data.voxel_size=[9,9]", "data.voxel_size"),
        ("decoding.edge_offset=1", "decoding.edge_offset"),
        ("model.out_channels=3", "model.out_channels"),
        ("decoding.threshold", "key.path=value"),
    ],
)
def test_bad_overrides_fail_clearly(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(overrides=[override])


def test_unknown_key_in_yaml_names_the_file_and_closest_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inference: {sw_batchsize: 4}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value) and "inference.sw_batch_size" in str(error.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("decoding: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_config_show_round_trips(tmp_path):
    result = CliRunner().invoke(app, ["config", "show", "--config", "configs/tiny.yaml", "decoding.threshold=0.8"])
    assert result.exit_code == 0, result.output
    shown = tmp_path / "shown.yaml"
    shown.write_text(result.output)
    assert yaml.safe_load(result.output)["decoding"]["threshold"] == 0.8
    assert load_config(shown) == load_config("configs/tiny.yaml", ["decoding.threshold=0.8"])
    assert config_to_yaml(load_config(shown)) == result.output


def test_config_show_reports_bad_key_without_traceback():
    result = CliRunner().invoke(app, ["config", "show", "decoding.treshold=0.8"])
    assert result.exit_code == 2
    assert "did you mean 'decoding.threshold'" in result.output and "Traceback" not in result.output


def test_a_pytorch_connectomics_file_is_read_as_the_config_not_inherited(tmp_path):
    """PyTC's NISB tutorial files (sections default/train/test/tune, _base_ into its profile library) once stopped
    at "unknown configuration key 'description'"; now they are read as --config (tests/test_pytc_config.py), and a
    nisbflow file that inherits one is refused in one line instead of mixing the two schemas."""
    import re

    from nisbflow.config import load_config
    from nisbflow.errors import ConfigError

    (tmp_path / "dataset.yaml").write_text("train:\n  data:\n    train: {path: /data/nisb/train}\n"
                                           "tune:\n  n_trials: 21\n")
    config = load_config(str(tmp_path / "dataset.yaml"), [], mode="tune")
    assert config.tune.n_trials == 21 and config.data.train.path is None  # train: is train mode's
    assert load_config(str(tmp_path / "dataset.yaml"), [], mode="train").data.train.path == "/data/nisb/train"
    (tmp_path / "mine.yaml").write_text("_base_: dataset.yaml\ndecoding: {threshold: 0.7}\n")
    with pytest.raises(ConfigError, match=re.escape("decoding.threshold = 0.7 is refused: decoding.threshold is "
                                                    "nisbflow's key, not PyTorch Connectomics'")):
        load_config(str(tmp_path / "mine.yaml"), [])  # a file inheriting a PyTC file is one
    assert load_config(str(tmp_path / "dataset.yaml"), ["decoding.threshold=0.7"]).decoding.threshold == 0.7
    from nisbflow.config import load_yaml_tree
    with pytest.raises(ConfigError, match=re.escape("is a PyTorch Connectomics configuration (its train: "
                                                    "section(s)) given where a nisbflow YAML is read")):
        load_yaml_tree(tmp_path / "dataset.yaml")  # e.g. as --params
    (tmp_path / "recipe.yaml").write_text("_base_:\n- ../connectomics/config/all_profiles.yaml\n"
                                          "description: a recipe\ndefault:\n  system: {num_gpus: -1}\n")
    with pytest.raises(ConfigError, match="configuration file not found: .*all_profiles.yaml \\(named as _base_"):
        load_config(str(tmp_path / "recipe.yaml"), [])