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


def test_overrides_take_one_shape_whether_given_as_text_or_as_a_mapping():
    texts = tree.Overrides.of(["decoding.threshold=0.8", "data.voxel_size=[9, 9, 20]"])
    assert texts.items == (("decoding.threshold", 0.8), ("data.voxel_size", [9, 9, 20]))
    assert texts.texts == ("decoding.threshold=0.8", "data.voxel_size=[9, 9, 20]")
    mapping = tree.Overrides.of({"decoding.threshold": "0.8"})  # values as data: the string stays a string
    assert mapping.items == (("decoding.threshold", "0.8"),) and mapping.texts is None
    assert tree.Overrides.of(texts) is texts
    assert not tree.Overrides.of(None) and not tree.Overrides.of([]) and tree.Overrides.of(None).texts == ()
    # given values after the overrides, as texts when the overrides were texts (they reach a PyTC file that way)
    assert texts.then({"decoding.method": "waterz"}).texts[-1] == "decoding.method=waterz"
    assert texts.then({"decoding.method": "waterz"}).items[-1] == ("decoding.method", "waterz")
    assert mapping.then({"decoding.threshold": 0.5}).items == (("decoding.threshold", "0.8"),
                                                                ("decoding.threshold", 0.5))
    assert texts.then({}) is texts
    # as command-line arguments they read back to the same values
    assert mapping.arguments() == ['decoding.threshold="0.8"']
    for overrides in (texts, mapping, tree.Overrides.of({"a.b": [1, 2], "c": None})):
        assert tree.Overrides.of(overrides.arguments()).items == overrides.items
    with pytest.raises(ConfigError, match="not the one string 'decoding.threshold=0.8'"):
        tree.Overrides.of("decoding.threshold=0.8")


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
