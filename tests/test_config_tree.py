"""nisbflow.config.tree: the one module that merges configuration trees, reads dotted keys and overrides, and reads
YAML files with their ``_base_`` files, for nisbflow's files and PyTorch Connectomics' alike."""

import pytest
import yaml

from nisbflow.config import tree
from nisbflow.errors import ConfigError


def test_merge_joins_mappings_key_by_key_and_replaces_everything_else():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged = tree.merge(base, {"a": {"c": [3], "e": None}, "d": {"x": 1}})
    assert merged == {"a": {"b": 1, "c": [3], "e": None}, "d": {"x": 1}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # inputs untouched


def test_dotted_keys_read_and_write_through_mappings_and_list_indices():
    assert tree.key_parts("decoding.steps[0].kwargs.threshold") == ["decoding", "steps", 0, "kwargs", "threshold"]
    config = {"decoding": {"steps": [{"kwargs": {"threshold": 0.5}}, {"name": "b"}]}}
    assert tree.get(config, "decoding.steps[0].kwargs.threshold") == 0.5
    assert tree.get(config, "decoding.steps[-1].name") == "b"
    assert tree.get(config, "decoding.steps[2].name", "absent") == "absent"
    assert tree.get(config, "decoding.missing.key") is None
    tree.assign(config, "decoding.steps[1].kwargs.threshold", 0.7)
    tree.assign(config, "model.size", "L")
    assert config["decoding"]["steps"][1] == {"name": "b", "kwargs": {"threshold": 0.7}}
    assert config["model"] == {"size": "L"}
    with pytest.raises(ConfigError, match=r"index \[5\] is past the end"):
        tree.assign(config, "decoding.steps[5].name", "c")
    tree.delete(config, "model.size")
    assert config["model"] == {}
    assert list(tree.leaves({"a": {"b": 1, "c": {"d": [2]}}, "e": 3})) == [("a.b", 1), ("a.c.d", [2]), ("e", 3)]


def test_an_override_is_a_key_and_a_yaml_typed_value():
    assert tree.parse_override("data.voxel_size=[9, 9, 20]") == ("data.voxel_size", [9, 9, 20])
    assert tree.parse_override(" decoding.threshold = 0.8") == ("decoding.threshold", 0.8)
    assert tree.parse_override("save_path=") == ("save_path", None)
    assert tree.parse_override("name=a: b: c") == ("name", "a: b: c")  # not YAML: the text as given
    for bad in ("no-equals-sign", "=1"):
        with pytest.raises(ConfigError, match="override"):
            tree.parse_override(bad)


def test_layers_come_bases_first_and_a_cycle_or_a_bad_base_is_one_error(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"x": {"y": 1, "z": 1}}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"_base_": "a.yaml", "x": {"z": 2}}))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"_base_": ["b.yaml"], "x": {"y": 3}}))
    seen = []
    layers = tree.read_layers(tmp_path / "c.yaml", lambda t, bases, path, inherited: seen.append((path.name, bases,
                                                                                                  inherited)))
    assert [path.name for path, _ in layers] == ["a.yaml", "b.yaml", "c.yaml"]
    assert seen == [("c.yaml", ["b.yaml"], False), ("b.yaml", ["a.yaml"], True), ("a.yaml", [], True)]
    assert tree.read_merged(tmp_path / "c.yaml") == {"x": {"y": 3, "z": 2}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"_base_": "c.yaml"}))
    with pytest.raises(ConfigError, match="cycle: .*c.yaml -> .*b.yaml -> .*a.yaml -> .*c.yaml"):
        tree.read_layers(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"_base_": 3}))
    with pytest.raises(ConfigError, match="must be a path or a list of paths"):
        tree.read_layers(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        tree.read_layers(tmp_path / "e.yaml")
