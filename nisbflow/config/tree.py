"""Configuration trees: the nested mappings YAML files hold, for nisbflow's files and PyTorch Connectomics' alike.

One place for what both kinds of file need:

- :func:`merge`: a mapping over another, key by key; everything else (lists included) replaced, as OmegaConf merges
  PyTorch Connectomics' files and as nisbflow layers its own;
- dotted keys with list indices (``decoding.steps[0].kwargs.threshold``): :func:`key_parts`, :func:`get`,
  :func:`assign`, :func:`delete`, :func:`leaves`;
- :func:`parse_override`: ``key.path=value`` → ``(key, YAML-typed value)``;
- :func:`read_layers`: a YAML file and the ``_base_`` files it names, in merge order, with one hook a reader uses to
  check or refuse each file.

Nothing here knows a schema: which keys exist is for :mod:`nisbflow.config.load` (nisbflow's) and
:mod:`nisbflow.config.pytc` (PyTorch Connectomics') to say.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

BASE_KEY = "_base_"
_TOKEN = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")

LayerCheck = Callable[[dict, list, Path, bool], None]
"""``check(tree, bases, path, inherited)``: called on each file's own keys (``_base_`` removed) before its bases are
read; it may refuse the file (raise :class:`ConfigError`) or drop keys that are not settings."""


def merge(base: dict, override: dict) -> dict:
    """A copy of ``base`` with ``override`` over it: mappings merge key by key, any other value is replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def key_parts(key: str) -> list[str | int]:
    """``decoding.steps[0].kwargs.threshold`` → ``['decoding', 'steps', 0, 'kwargs', 'threshold']``."""
    parts: list[str | int] = [int(index) if index else name for name, index in _TOKEN.findall(key)]
    if not parts:
        raise ConfigError(f"configuration key {key!r} is empty")
    return parts


def _within(node, index: int) -> bool:
    return isinstance(node, list) and -len(node) <= index < len(node)


def get(tree, key: str, default=None):
    """The value at a dotted ``key`` (list indices allowed), or ``default`` when any part is missing."""
    node = tree
    for part in key_parts(key):
        if isinstance(part, int):
            if not _within(node, part):
                return default
        elif not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def assign(tree: dict, key: str, value) -> None:
    """Set the value at a dotted ``key`` in place, creating the mappings (or lists, before an index) on the way; an
    index past the end of its list is a :class:`ConfigError`."""
    parts = key_parts(key)
    node: Any = tree
    for part, following in zip(parts[:-1], parts[1:]):
        if isinstance(part, int):
            if not _within(node, part):
                raise ConfigError(f"override {key}: index [{part}] is past the end of its list")
        elif not isinstance(node.get(part), list if isinstance(following, int) else dict):
            node[part] = [] if isinstance(following, int) else {}
        node = node[part]
    last = parts[-1]
    if isinstance(last, int) and not _within(node, last):
        raise ConfigError(f"override {key}: index [{last}] is past the end of its list")
    node[last] = value


def delete(tree: dict, key: str) -> None:
    """Remove the value at a dotted ``key`` (without list indices) if it is there."""
    *parents, last = key.split(".")
    node = get(tree, ".".join(parents)) if parents else tree
    if isinstance(node, dict):
        node.pop(last, None)


def leaves(tree: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every value that is not a mapping, depth first in the tree's order."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` → ``(key, YAML-typed value)`` (``null``, ``[9,9,20]``, ``0.5`` …; text that is not YAML
    stays text); keys may index lists (``steps[0]``). Whether the key exists is the reader's to check."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(f"override '{text}' must look like key.path=value, e.g. decoding.threshold=0.8")
    if not key.strip():
        raise ConfigError(f"override '{text}' has no key before '='")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


@dataclass(frozen=True)
class Overrides:
    """``KEY=VALUE`` settings given last, in the one shape every reader takes (:meth:`of` normalises on entry).

    ``items``: ``(dotted key, value)`` in the order given (a later one wins). ``texts``: the ``key=value`` strings
    they were parsed from (:func:`parse_override`, values typed as YAML: a command line), or None when they came as a
    mapping (``{"decoding.threshold": 0.8}``: values as data, not text to parse). Only texts reach a PyTorch
    Connectomics file, whose own keys it applies as PyTC does."""

    items: tuple[tuple[str, Any], ...] = ()
    texts: tuple[str, ...] | None = ()

    @classmethod
    def of(cls, overrides=None) -> Overrides:
        """Overrides from ``key=value`` strings, a mapping of key to value, None (none) or :class:`Overrides`."""
        if isinstance(overrides, Overrides):
            return overrides
        if overrides is None:
            return cls()
        if isinstance(overrides, Mapping):
            return cls(tuple(overrides.items()), None)
        if isinstance(overrides, str):
            raise ConfigError(
                f"overrides must be a list of key.path=value strings or a mapping, not the one string {overrides!r}"
            )
        texts = tuple(overrides)
        return cls(tuple(parse_override(text) for text in texts), texts)

    def __bool__(self) -> bool:
        return bool(self.items)

    def then(self, given: Mapping) -> Overrides:
        """These overrides with ``given`` (key → value, as data) after them; texts stay texts."""
        if not given:
            return self
        texts = None if self.texts is None else self.texts + tuple(f"{key}={value}" for key, value in given.items())
        return Overrides(self.items + tuple(given.items()), texts)

    def arguments(self) -> list[str]:
        """As ``key=value`` command-line arguments (a mapping's values written as JSON, which YAML reads back)."""
        if self.texts is not None:
            return list(self.texts)
        import json

        return [f"{key}={json.dumps(value)}" for key, value in self.items]


def read_yaml_mapping(path: Path) -> dict:
    """One YAML file that must hold a mapping (an empty file is ``{}``); anything else is one :class:`ConfigError`."""
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise ConfigError(f"{path} cannot be read: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping of configuration keys, got {type(tree).__name__}")
    return tree


def peek(path: str | Path) -> tuple[dict, list[str]] | None:
    """A YAML file's keys and the ``_base_`` paths it names, or None where it cannot be read as a mapping (for a
    look at a file before choosing its reader; the reader reports what is wrong with it)."""
    try:
        tree = read_yaml_mapping(Path(path).expanduser())
    except ConfigError:
        return None
    bases = tree.get(BASE_KEY) or []
    if isinstance(bases, str):
        bases = [bases]
    return tree, [b for b in bases if isinstance(b, str)] if isinstance(bases, list) else []


def read_layers(
    path: str | Path, check: LayerCheck | None = None, _stack: tuple[Path, ...] = ()
) -> list[tuple[Path, dict]]:
    """One YAML file and the ``_base_`` files it names (a path or a list, relative to the file), as ``[(file, its own
    keys), …]`` in merge order: bases first (depth first, in list order), the named file last. A missing file, a
    cycle or a malformed ``_base_`` is a :class:`ConfigError`; ``check`` sees each file first (:data:`LayerCheck`)."""
    path = Path(path).expanduser().resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"configuration files include each other in a cycle: {chain}")
    if not path.is_file():
        where = f" (named as _base_ in {_stack[-1]})" if _stack else ""
        raise ConfigError(f"configuration file not found: {path}{where}")
    tree = read_yaml_mapping(path)
    bases = tree.pop(BASE_KEY, None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{BASE_KEY} in {path} must be a path or a list of paths, got {bases!r}")
    if check is not None:
        check(tree, bases, path, bool(_stack))
    layers: list[tuple[Path, dict]] = []
    for base in bases:
        layers += read_layers(path.parent / base, check, (*_stack, path))
    return layers + [(path, tree)]


def read_merged(path: str | Path, check: LayerCheck | None = None) -> dict:
    """:func:`read_layers` merged: bases first, in list order; the file's own keys win."""
    merged: dict = {}
    for _, tree in read_layers(path, check):
        merged = merge(merged, tree)
    return merged
