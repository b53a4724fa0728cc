"""Resolve a configuration: YAML files with ``_base_`` inheritance, then ``key.path=value`` overrides.

The result is always a validated :class:`~nisbflow.config.schema.Config`; unknown keys fail and name
the closest valid key.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .pytc import is_pytorch_connectomics, load_pytc, pytorch_connectomics_sign
from .schema import Config, valid_keys
from .tree import Overrides, assign, read_layers, read_merged

TUNED_KEY = "_tuned_"
"""What ``nisbflow tune`` tuned a parameters file (``best.yaml``) for: checkpoint, its sha256, decoding method,
study. Not a setting: :func:`load_yaml_tree` drops it, :func:`tuned_record` reads it."""


def _section_keys() -> set[str]:
    sections: set[str] = set()
    for key in valid_keys():
        parts = key.split(".")
        sections.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return sections


def _unknown_key_error(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown configuration key '{key}' in {where}{hint}")


def _check_keys(tree: dict, where: str, prefix: str = "") -> None:
    known = set(valid_keys())
    sections = _section_keys()
    for name, value in tree.items():
        dotted = f"{prefix}{name}"
        if dotted not in known:
            raise _unknown_key_error(dotted, where)
        if dotted in sections:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"'{dotted}' in {where} is a section and needs a mapping, got {value!r}")
            _check_keys(value, where, dotted + ".")


def _refuse_pytorch_connectomics(tree: dict, bases: list, path: Path, inherited: bool) -> None:
    """A PyTorch Connectomics file reached through a nisbflow file's ``_base_`` (or by a reader of nisbflow files
    only) is refused in one line; :func:`load_config` and ``resolve_settings`` read one given as ``--config``."""
    sign = pytorch_connectomics_sign(tree, bases, path)
    if sign:
        where = "named as _base_ of a nisbflow file" if inherited else "given where a nisbflow YAML is read"
        raise ConfigError(
            f"{path} is a PyTorch Connectomics configuration ({sign}) {where}; nisbflow reads such "
            "a file as the --config itself (nisbflow --config FILE --mode train|test|tune), not "
            "mixed with nisbflow's own files"
        )


def _check_layer(tree: dict, bases: list, path: Path, inherited: bool) -> None:
    """What every nisbflow YAML file must pass: not a PyTorch Connectomics file, no key the schema does not have; a
    ``_tuned_`` record is dropped (it is not a setting)."""
    tree.pop(TUNED_KEY, None)
    _refuse_pytorch_connectomics(tree, bases, path, inherited)
    _check_keys(tree, str(path))


def load_yaml_layers(path: str | Path) -> list[tuple[Path, dict]]:
    """One YAML file and the ``_base_`` files it names (a string or a list, relative to the file), as
    ``[(file, its own keys), …]`` in merge order: bases first (depth first, in list order), the named file last.
    A cycle raises :class:`ConfigError` (:func:`nisbflow.config.tree.read_layers`)."""
    return read_layers(path, _check_layer)


def load_yaml_tree(path: str | Path) -> dict:
    """Read one YAML file and the ``_base_`` files it names (:func:`load_yaml_layers`), merged: bases first, in list
    order; the file's own keys win."""
    return read_merged(path, _check_layer)


def tuned_record(path: str | Path) -> dict | None:
    """The ``_tuned_`` record of a parameters file written by ``nisbflow tune`` (None when it has none)."""
    try:
        tree = yaml.safe_load(Path(path).expanduser().read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None  # load_yaml_tree reports these
    record = tree.get(TUNED_KEY) if isinstance(tree, dict) else None
    return record if isinstance(record, dict) else None


def override_items(overrides) -> list[tuple[str, Any]]:
    """Overrides as ``(dotted key, value)`` pairs, from ``key.path=value`` strings (values typed as YAML,
    :func:`nisbflow.config.tree.parse_override`) or from a mapping ``{"decoding.threshold": 0.8}`` (values as given:
    data, not text to parse); every key checked against the schema either way."""
    overrides = Overrides.of(overrides)
    items = list(overrides.items)
    where = "the overrides" if overrides.texts is None else "the command-line overrides"
    known = set(valid_keys())
    for key, _ in items:
        if key not in known:
            raise _unknown_key_error(key, where)
    return items


def apply_overrides(tree: dict, overrides) -> dict:
    """Return a copy of ``tree`` with each override set (``key.path=value`` strings or a mapping of key to value,
    :func:`override_items`)."""
    tree = copy.deepcopy(tree)
    for key, value in override_items(overrides):
        assign(tree, key, value)
    return tree


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(configuration)"
        given = item.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"  # a whole section says nothing useful
        lines.append(f"  {key}: {item['msg']}{shown}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_config(path: str | Path | None = None, overrides=(), mode: str = "train") -> Config:
    """Resolve a configuration: schema defaults ← YAML file (with bases) ← ``key=value`` overrides.

    A PyTorch Connectomics file is read for ``mode`` (train, test, tune, tune-test) onto nisbflow's keys
    (:func:`nisbflow.config.pytc.load_pytc`); its refused keys raise one :class:`ConfigError`.

    >>> load_config(overrides=["decoding.threshold=0.8"]).decoding.threshold
    0.8
    """
    overrides = Overrides.of(overrides)
    if path is not None and is_pytorch_connectomics(path):
        pytc = load_pytc(path, mode, overrides.texts or ())
        pytc.check()
        return validate_tree(apply_overrides(pytc.tree, pytc.nisbflow_overrides))
    tree = load_yaml_tree(path) if path is not None else {}
    return validate_tree(apply_overrides(tree, overrides))


def validate_tree(tree: dict) -> Config:
    """A configuration tree (every key set somewhere) → a validated :class:`Config`, or one clear
    :class:`ConfigError` naming each bad key."""
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error)) from None


def config_to_yaml(config: Config) -> str:
    """The resolved configuration as YAML, in schema order, loadable again by :func:`load_config`.

    A ``tune.storage`` that is the default derived from ``save_path`` is written as ``null``, so the file keeps
    following ``save_path`` when that is overridden.
    """
    tree = without_derived_paths(config.model_dump(mode="json"))
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=None)


def without_derived_paths(tree: dict) -> dict:
    """A resolved configuration tree with ``tune.storage`` and ``tune.study_name`` back to ``null`` where they are
    the defaults derived from ``save_path`` and ``experiment_name``, so that a later override of either moves the
    study along with every other output."""
    tree = copy.deepcopy(tree)
    tune = tree.get("tune") or {}
    if tune.get("storage") == f"sqlite:///{tree.get('save_path')}/tune.sqlite3":
        tune["storage"] = None
    method = (tree.get("decoding") or {}).get("method", "cc")
    if tune.get("study_name") == f"{tree.get('experiment_name')}_{method}_tuning":
        tune["study_name"] = None
    return tree
