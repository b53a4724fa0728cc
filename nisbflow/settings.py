"""The one place that resolves what a run uses, for every command, notebook and library entry point.

Layers, each over the one before (a later layer wins, key by key):

1. the schema's defaults (the BANIS reproduction, :mod:`nisbflow.config.schema`);
2. what the checkpoint records: ``model.*`` (from its weights), ``inference.*`` and ``decoding.threshold`` (a shipped
   model's YAML, or the configuration its training run recorded) — or, for ``decode``, the threshold recorded in
   the affinities' attributes by the ``infer`` run that wrote them;
3. ``--config FILE`` (with its ``_base_`` files);
4. ``--params FILE`` (``best.yaml`` from ``nisbflow tune``);
5. ``KEY=VALUE`` overrides.

``model.*`` always stays the checkpoint's: its weights define the network, so a configuration file that names
another architecture is noted, not followed. :func:`resolve_settings` returns a :class:`RunSettings`: the validated
configuration, the :class:`~nisbflow.model.Checkpoint` handle (read once), and where each printed setting came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nisbflow.config import Config, apply_overrides, deep_merge, load_yaml_tree, validate_tree
from nisbflow.model.checkpoint import Checkpoint

SHOWN_KEYS = ("inference.window_size", "inference.overlap", "inference.sw_batch_size", "inference.activation",
              "inference.select_channel", "inference.output_dtype", "decoding.threshold")
"""The settings a run prints at its start and records in its outputs' attributes, with their sources."""

ORDER = "defaults ← checkpoint ← --config ← --params ← KEY=VALUE"


@dataclass
class RunSettings:
    """The resolved configuration of one run, the checkpoint it runs (None for runs without a model), where each
    of :data:`SHOWN_KEYS` came from (``sources``: key → layer label), and notes on values the checkpoint kept."""

    config: Config
    checkpoint: Checkpoint | None = None
    sources: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def value(self, key: str):
        node = self.config
        for part in key.split("."):
            node = getattr(node, part)
        return list(node) if isinstance(node, tuple) else node

    def describe(self) -> list[str]:
        """Lines to print at the start of a run: each shown setting, its value and where it came from."""
        head = "resolved settings"
        if self.checkpoint is not None:
            head += f" for checkpoint {self.checkpoint.name} (sha256 {self.checkpoint.sha256})"
        lines = [f"{head}; {ORDER}:"]
        width = max(len(k) for k in SHOWN_KEYS)
        for key in SHOWN_KEYS:
            lines.append(f"  {key:<{width}}  {self.value(key)!s:<16} {self.sources.get(key, 'default')}")
        lines += [f"  note: {note}" for note in self.notes]
        return lines

    def record(self) -> dict:
        """What an output's attributes record (``nisbflow_settings``): the shown settings, their sources and the
        checkpoint's name and hash. ``decode`` reads ``decoding.threshold`` back from it."""
        return {
            "inference": self.config.inference.model_dump(mode="json"),
            "decoding": ({"method": "waterz", "waterz": self.config.decoding.waterz.model_dump(mode="json")}
                         if self.config.decoding.method == "waterz" else {"threshold": self.config.decoding.threshold}),
            "checkpoint": None if self.checkpoint is None else self.checkpoint.name,
            "checkpoint_sha256": None if self.checkpoint is None else self.checkpoint.sha256,
            "sources": {key: self.sources.get(key, "default") for key in SHOWN_KEYS},
        }


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _get(tree: dict, key: str):
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def recorded_settings(attributes) -> dict:
    """The settings layer an ``infer`` output records for later stages (its ``decoding.threshold``), as a tree."""
    recorded = dict(attributes or {}).get("nisbflow_settings") or {}
    threshold = (recorded.get("decoding") or {}).get("threshold")
    return {} if threshold is None else {"decoding": {"threshold": threshold}}


def resolve_settings(checkpoint=None, *, config: str | Path | None = None, params: str | Path | None = None,
                     overrides=(), recorded: dict | None = None, recorded_from: str = "recorded") -> RunSettings:
    """Resolve a run's settings by the layers of the module docstring.

    ``checkpoint``: a path, a shipped model's name or a :class:`Checkpoint` (opened once here; None for runs
    without a model). ``config``: a YAML file; ``params``: a parameters YAML; ``overrides``: ``key.path=value``
    strings. ``recorded`` / ``recorded_from``: a settings tree recorded by an earlier stage (see
    :func:`recorded_settings`) and its label, layered where a checkpoint's would be.

    >>> resolve_settings("nisb-tiny-synthetic").config.inference.window_size
    (64, 64, 64)
    """
    handle = Checkpoint.open(checkpoint) if checkpoint is not None else None
    layers: list[tuple[str, dict]] = []
    if handle is not None:
        layers.append((f"checkpoint {handle.name}", handle.settings_tree()))
    if recorded:
        layers.append((recorded_from, recorded))
    if config is not None:
        layers.append((f"--config {config}", load_yaml_tree(config)))
    if params is not None:
        layers.append((f"--params {params}", load_yaml_tree(params)))  # a configuration fragment, keys checked
    overrides = list(overrides or [])
    if overrides:
        layers.append(("KEY=VALUE", apply_overrides({}, overrides)))

    tree: dict = {}
    sources: dict[str, str] = {}
    for label, layer in layers:
        tree = deep_merge(tree, layer)
        for key, _ in _leaves(layer):
            sources[key] = label
    notes = []
    if handle is not None:  # the weights define the network
        for key, value in _leaves(handle.settings_tree()["model"], "model."):
            if _get(tree, key) != value:
                notes.append(f"{key} stays {value!r} from the checkpoint ({sources.get(key)} said "
                             f"{_get(tree, key)!r}): its weights define the network")
                _set(tree, key, value)
    resolved = validate_tree(tree)
    return RunSettings(resolved, handle, {key: sources[key] for key in SHOWN_KEYS if key in sources}, notes)


def as_run_settings(config=None, checkpoint=None) -> RunSettings:
    """The settings of a library call that takes a checkpoint: a :class:`RunSettings` as given (its handle
    swapped for ``checkpoint`` when that names another file); a resolved :class:`Config` used as it is; None →
    the checkpoint's own settings (:func:`resolve_settings`)."""
    if config is None:
        return resolve_settings(checkpoint)
    if isinstance(config, RunSettings):
        handle = config.checkpoint
        same = checkpoint is None or checkpoint is handle or (
            handle is not None and str(checkpoint) in (handle.source, handle.path))
        if same:
            return config
        return RunSettings(config.config, Checkpoint.open(checkpoint), dict(config.sources), list(config.notes))
    return RunSettings(config, None if checkpoint is None else Checkpoint.open(checkpoint))
