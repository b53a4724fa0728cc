"""Configuration: one typed schema (BANIS defaults) set by YAML files and ``key=value`` overrides."""

from .load import (
    apply_overrides,
    config_to_yaml,
    load_config,
    load_yaml_tree,
    valid_keys,
    validate_tree,
    without_derived_paths,
)
from .schema import BANIS_AFFINITY_OFFSETS, Config, parse_offset
from .tree import Overrides
from .tree import merge as deep_merge

__all__ = [
    "BANIS_AFFINITY_OFFSETS",
    "Config",
    "Overrides",
    "apply_overrides",
    "config_to_yaml",
    "deep_merge",
    "load_config",
    "load_yaml_tree",
    "without_derived_paths",
    "parse_offset",
    "valid_keys",
    "validate_tree",
]
