"""The one place that resolves what a run uses, for every command, notebook and library entry point.

Layers, each over the one before (a later layer wins, key by key):

1. the schema's defaults (the BANIS reproduction, :mod:`nisbflow.config.schema`);
2. the files ``--config FILE`` inherits through ``_base_``: shared defaults, each value labelled with the file that
   set it;
3. what the checkpoint records: ``model.*`` (from its weights), ``inference.*`` and ``decoding.threshold`` (a shipped
   model's YAML, or the configuration its training run recorded) — or, for ``decode``, the threshold recorded in
   the affinities' attributes by the ``infer`` run that wrote them. So an inherited default never replaces what
   the checkpoint records;
4. the keys ``--config FILE`` sets itself: they win over the checkpoint, and each that changes a recorded value is
   noted;
5. ``--params FILE`` (``best.yaml`` from ``nisbflow tune``; one tuned for another checkpoint or decoding method is
   refused);
6. ``KEY=VALUE`` overrides.

``model.*`` always stays the checkpoint's: its weights define the network, so a configuration file that names
another architecture is noted, not followed. :func:`resolve_settings` returns a :class:`RunSettings`: the validated
configuration, the :class:`~nisbflow.model.Checkpoint` handle (read once), and where each printed setting came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nisbflow.config import Config, apply_overrides, deep_merge, load_yaml_tree, validate_tree
from nisbflow.config.load import load_yaml_layers, tuned_record
from nisbflow.config.tree import Overrides, assign, leaves
from nisbflow.config.tree import get as tree_get
from nisbflow.config.pytc import is_pytorch_connectomics, load_pytc
from nisbflow.errors import ConfigError
from nisbflow.model.checkpoint import Checkpoint
from nisbflow.model.reader import same_hash

SHOWN_KEYS = (
    "inference.window_size",
    "inference.overlap",
    "inference.sw_batch_size",
    "inference.activation",
    "inference.select_channel",
    "inference.output_dtype",
    "decoding.method",
    "decoding.threshold",
)
"""The settings a run records in its outputs' attributes, with their sources."""

ORDER = "defaults ← --config's _base_ files ← checkpoint ← --config ← --params ← KEY=VALUE"

COMMAND_SECTIONS = {
    "infer": ("inference", "decoding.threshold"),
    "decode": ("decoding",),
    "test": ("data.test", "data.voxel_size", "inference", "decoding", "evaluation"),
    "tune": ("data.val", "data.voxel_size", "inference", "decoding", "evaluation", "tune"),
    "tune-test": ("data.val", "data.test", "data.voxel_size", "inference", "decoding", "evaluation", "tune"),
    "train": ("experiment_name", "save_path", "system", "data", "model", "optimization"),
}
"""What each command prints of its settings before it starts: every key under these prefixes."""


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

    def keys(self, sections=None) -> list[str]:
        """Every dotted setting under ``sections`` (prefixes such as ``inference`` or ``data.val``; None: the
        keys outputs record, :data:`SHOWN_KEYS`), in schema order."""
        if sections is None:
            return list(SHOWN_KEYS)
        every = list(leaves(self.config.model_dump(mode="json")))
        return [key for key, _ in every if any(key == s or key.startswith(s + ".") for s in sections)]

    def describe(self, command: str | None = None) -> list[str]:
        """Lines to print at the start of a run: each setting ``command`` uses (:data:`COMMAND_SECTIONS`; None:
        :data:`SHOWN_KEYS`), its value and where it came from, then the notes."""
        head = "resolved settings"
        if self.checkpoint is not None:
            head += f" for checkpoint {self.checkpoint.name} (sha256 {self.checkpoint.short_sha256}" + (
                f", its {self.checkpoint.weights} weights)" if self.checkpoint.weights else ")"
            )
        lines = [f"{head}; {ORDER}:"]
        keys = self.keys(COMMAND_SECTIONS.get(command) if command else None)
        width = max(len(k) for k in keys)
        for key in keys:
            lines.append(f"  {key:<{width}}  {self.value(key)!s:<16} {self.sources.get(key, 'default')}")
        lines += [f"  note: {note}" for note in self.notes]
        return lines

    @property
    def handle(self) -> Checkpoint:
        """The checkpoint this run predicts with, for stages that run a model (a run without one is a caller's
        error: resolve the settings with a checkpoint)."""
        if self.checkpoint is None:
            raise ConfigError(
                "these run settings name no checkpoint; resolve them with one (resolve_settings(checkpoint))"
            )
        return self.checkpoint

    def with_checkpoint(self, checkpoint) -> RunSettings:
        """These settings with another checkpoint (a path, a shipped model's name or a :class:`Checkpoint`): the
        demo's untrained twin of a model runs with the trained one's settings."""
        return RunSettings(self.config, Checkpoint.open(checkpoint), dict(self.sources), list(self.notes))

    def record(self) -> dict:
        """What an output's attributes record (``nisbflow_settings``): the shown settings, their sources and the
        checkpoint's name and hash. ``decode`` reads ``decoding.threshold`` back from it."""
        return {
            "inference": self.config.inference.model_dump(mode="json"),
            "decoding": (
                {"method": "waterz", "waterz": self.config.decoding.waterz.model_dump(mode="json")}
                if self.config.decoding.method == "waterz"
                else {"threshold": self.config.decoding.threshold}
            ),
            "checkpoint": None if self.checkpoint is None else self.checkpoint.name,
            "checkpoint_sha256": None if self.checkpoint is None else self.checkpoint.sha256,
            "checkpoint_weights": None if self.checkpoint is None else self.checkpoint.weights,
            "sources": {key: self.sources.get(key, "default") for key in SHOWN_KEYS},
        }


def recorded_settings(attributes) -> dict:
    """The settings layer an ``infer`` output records for later stages (its ``decoding.threshold``), as a tree."""
    recorded = dict(attributes or {}).get("nisbflow_settings") or {}
    threshold = (recorded.get("decoding") or {}).get("threshold")
    return {} if threshold is None else {"decoding": {"threshold": threshold}}


def resolve_settings(
    checkpoint=None,
    *,
    config: str | Path | None = None,
    params: str | Path | None = None,
    overrides=(),
    recorded: dict | None = None,
    recorded_from: str = "recorded",
    mode: str | None = None,
) -> RunSettings:
    """Resolve a run's settings by the layers of the module docstring.

    ``checkpoint``: a path, a shipped model's name or a :class:`Checkpoint` (opened once here; None for runs
    without a model). ``config``: a YAML file; ``params``: a parameters YAML; ``overrides``: ``key.path=value``
    strings, or a mapping of key to value (``{"decoding.method": "waterz"}``, values as data). ``recorded`` /
    ``recorded_from``: a settings tree recorded by an earlier stage (see :func:`recorded_settings`) and its label,
    layered where a checkpoint's would be. ``mode``: which of a PyTorch Connectomics file's modes to read (train,
    test, tune, tune-test; default train): such a file is the ``--config`` layer as one tree of nisbflow keys
    (:func:`nisbflow.config.pytc.load_pytc`), its own overrides applied as PyTC applies them.

    >>> resolve_settings("nisb-tiny-synthetic").config.inference.window_size
    (64, 64, 64)
    """
    handle = Checkpoint.open(checkpoint) if checkpoint is not None else None
    overrides = Overrides.of(overrides)
    layers: list[tuple[str, dict]] = []
    own: tuple[str, dict] | None = None
    pytc_notes = []
    pytc = None
    if config is not None and is_pytorch_connectomics(config):
        mode = mode or "train"
        pytc = load_pytc(config, mode, overrides.texts or ())
        pytc.check()
        if overrides.texts is not None:
            overrides = Overrides.of(pytc.nisbflow_overrides)
        own = (f"--config {config} (PyTorch Connectomics, --mode {mode})", pytc.tree)
        pytc_notes.append(pytc.summary())
    elif config is not None:
        *inherited, (named, own_tree) = load_yaml_layers(config)
        layers += [(f"_base_ {_shown_path(path)} (via --config {config})", tree) for path, tree in inherited]
        own = (f"--config {config}", own_tree)
    recorded_layers = []
    if handle is not None:
        recorded_layers.append((f"checkpoint {handle.name}", handle.settings_tree()))
    if recorded:
        recorded_layers.append((recorded_from, recorded))
    layers += recorded_layers
    if own is not None:
        layers.append(own)
    if params is not None:
        fragment = load_yaml_tree(params)  # a configuration fragment, keys checked
        check_params_carry(params, fragment)
        layers.append((f"--params {params}", fragment))
    if overrides:
        layers.append(("KEY=VALUE", apply_overrides({}, overrides)))
    tree, sources, notes = _merge_layers(layers, own, recorded_layers, _pytc_given(pytc), config, handle)
    resolved = validate_tree(tree)
    if handle is not None:  # inference.weights picks between a checkpoint's training and EMA weights
        handle = Checkpoint.open(handle, resolved.inference.weights)
    if params is not None:
        check_tuned_for(params, handle)
        check_tuned_method(params, resolved)
    if handle is not None:  # what importing a peer's checkpoint took from where (nisbflow.model.peers)
        notes = list((handle.metadata or {}).get("notes") or []) + notes
    return RunSettings(resolved, handle, sources, pytc_notes + notes)


def _pytc_given(pytc) -> dict[str, str]:
    """nisbflow key → the PyTorch Connectomics key given as KEY=VALUE that set it (applied inside PyTC's tree)."""
    given: dict[str, str] = {}
    if pytc is not None:
        for mapping in pytc.translation.mappings:
            if mapping.verdict == "set" and any(
                mapping.key == key or mapping.key.startswith((key + ".", key + "["))
                for key in pytc.translation.overridden
            ):
                given.update({target: mapping.key for target in mapping.targets})
    return given


def _merge_layers(layers, own, recorded_layers, pytc_given: dict, config, handle) -> tuple[dict, dict, list]:
    """The layers merged in order: ``(tree, key → the label of the layer that set it, notes)``. A note says where
    the named file replaces a value a checkpoint records; the checkpoint's model keys win over every layer."""
    tree: dict = {}
    sources: dict[str, str] = {}
    notes = []
    for label, layer in layers:
        if own is not None and label == own[0]:
            for key, value in leaves(layer):  # the named file's own keys win over what the checkpoint records
                for recorded_label, recorded_tree in recorded_layers:
                    before = tree_get(recorded_tree, key)
                    if before is not None and before != value and not key.startswith("model."):
                        given = f"KEY=VALUE {pytc_given[key]}" if key in pytc_given else f"--config {config}"
                        notes.append(f"{key} {value!r} from {given} replaces {before!r} recorded by {recorded_label}")
        tree = deep_merge(tree, layer)
        for key, _ in leaves(layer):
            sources[key] = label
    for target, pytc_key in pytc_given.items():
        sources[target] = f"KEY=VALUE {pytc_key}"
    if handle is not None:  # the weights define the network
        for key, value in leaves(handle.settings_tree()["model"], "model."):
            if tree_get(tree, key) != value:
                notes.append(
                    f"{key} stays {value!r} from the checkpoint ({sources.get(key)} said "
                    f"{tree_get(tree, key)!r}): its weights define the network"
                )
                assign(tree, key, value)
                sources[key] = f"checkpoint {handle.name}"
    return tree, sources, notes


def _shown_path(path: Path) -> str:
    """A file as a message shows it: relative to the working folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def check_tuned_for(params, handle: Checkpoint | None) -> None:
    """Refuse a parameters file that ``nisbflow tune`` wrote for another checkpoint (its ``_tuned_`` record)."""
    tuned = tuned_record(params)
    if not tuned or handle is None or not tuned.get("checkpoint_sha256"):
        return
    if not same_hash(tuned["checkpoint_sha256"], handle.sha256):
        raise ConfigError(
            f"--params {params} was tuned for checkpoint {tuned.get('checkpoint')} (sha256 "
            f"{tuned['checkpoint_sha256']}), not for {handle.name} (sha256 {handle.sha256}): its "
            "threshold belongs to that model; tune this checkpoint (nisbflow tune), or pass the "
            "checkpoint it was tuned for"
        )
    if tuned.get("weights") != handle.weights:
        raise ConfigError(
            f"--params {params} was tuned with the {tuned.get('weights') or 'only'} weights of "
            f"checkpoint {handle.name}, but this run predicts with its {handle.weights or 'only'} "
            f"weights; pass --weights {tuned.get('weights') or 'auto'}, or tune with these weights"
        )


def check_params_carry(params, fragment: dict) -> None:
    """Refuse a parameters file that sets nothing (cut down to its header, or empty), and a ``best.yaml`` of
    ``nisbflow tune`` without the parameter its method tunes: the run would decode at the default with no word."""
    tuned = tuned_record(params)
    if not list(leaves(fragment)):
        raise ConfigError(
            f"--params {params} sets no parameter"
            + (" (it holds only its _tuned_ record: was it cut?)" if tuned else "")
            + "; expected a configuration fragment such as best.yaml from nisbflow tune "
            "(decoding.threshold: 0.8)"
        )
    if tuned:
        method = tuned.get("method") or "cc"
        key = "decoding.waterz.thresholds" if method == "waterz" else "decoding.threshold"
        if tree_get(fragment, key) is None:
            raise ConfigError(
                f"--params {params} was written by nisbflow tune for {method} decoding but lacks {key}, "
                "the parameter it tunes (was it cut or edited?); re-run nisbflow tune, or set it"
            )


def check_tuned_method(params, config: Config) -> None:
    """Refuse a parameters file tuned for another decoding method than the run decodes with."""
    tuned = tuned_record(params)
    if tuned and tuned.get("method") and tuned["method"] != config.decoding.method:
        raise ConfigError(
            f"--params {params} holds a threshold tuned for decoding.method {tuned['method']}, but "
            f"this run decodes with {config.decoding.method}; tune with decoding.method="
            f"{config.decoding.method}, or drop the override"
        )


def run_settings_of(run) -> RunSettings:
    """The one settings argument of a stage driver that runs a model: a :class:`RunSettings` as given; a checkpoint
    (a :class:`Checkpoint`, a path or a shipped model's name) → the settings it records (:func:`resolve_settings`)."""
    return run if isinstance(run, RunSettings) else resolve_settings(run)


def as_run_settings(config: Config, checkpoint=None) -> RunSettings:
    """A run's settings from a resolved :class:`Config` and a checkpoint given apart (a notebook's configuration):
    the configuration used as it is, with ``checkpoint`` (a path, a shipped model's name or a :class:`Checkpoint`;
    None for a run without a model). Stage drivers take the result."""
    if not isinstance(config, Config):
        raise TypeError(f"as_run_settings: expected a resolved nisbflow.config.Config, got {type(config).__name__}")
    return RunSettings(config, None if checkpoint is None else Checkpoint.open(checkpoint))
