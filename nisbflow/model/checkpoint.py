"""Checkpoints that carry their own configuration, and :class:`Checkpoint`, the handle every command resolves once.

A checkpoint is a ``torch.save`` dict ``{"format": "nisbflow-checkpoint", "version": 1, "model": <ModelConfig as a
dict>, "state_dict": ..., "metadata": {...}}``, loaded with ``weights_only=True`` (no code runs on load). Training
records its whole configuration in ``metadata["config"]``; an imported checkpoint the settings it came with in
``metadata["recorded"]``. BANIS's and PyTorch Connectomics' Lightning checkpoints (MIC-DKFZ MedNeXt tensors) load
too, through :mod:`nisbflow.model.peers`, as do Lightning checkpoints with a nisbflow model configuration under
``hyper_parameters``. Shipped models (``nisb-tiny-synthetic``) live in
:data:`SHIPPED_DIR` as ``<stem>.pt`` beside ``<stem>.yaml``, the configuration to run them with.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from nisbflow.config.schema import INFERENCE_WEIGHTS, ModelConfig
from nisbflow.model.network import build
from nisbflow.model.reader import (
    CHECKPOINT_FORMAT,
    SHIPPED_DIR,
    SHIPPED_MODELS,
    CheckpointError,
    CheckpointFile,
    file_sha256,
    has_ema,
    read_checkpoint,
    same_hash,
)

WEIGHTS = INFERENCE_WEIGHTS
"""Which weights of a checkpoint predict (``inference.weights``): auto (the EMA weights when it keeps them), ema,
raw (the training weights)."""


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A checkpoint path, or the name of a shipped model (``nisb-tiny-synthetic``) → the file to load."""
    name = str(checkpoint)
    if name in SHIPPED_MODELS and not Path(name).exists():
        return SHIPPED_DIR / f"{SHIPPED_MODELS[name]}.pt"
    return Path(checkpoint)


def _shipped_yaml(path: Path) -> Path | None:
    """The configuration YAML of a shipped model's weights file, whether named by name or by path."""
    for stem in SHIPPED_MODELS.values():
        if path.resolve() == (SHIPPED_DIR / f"{stem}.pt").resolve():
            return SHIPPED_DIR / f"{stem}.yaml"
    return None


@dataclass(frozen=True)
class Checkpoint:
    """A model checkpoint resolved once, on the client: where it is, what network it holds, what it records.

    ``source``: as the user named it (a path or a shipped model's name); ``path``: the file; ``sha256``: the full hex
    SHA-256 of the file (recorded in every output and used as the workers' cache key);
    ``model``: its :class:`ModelConfig`; ``recorded``: the configuration tree it records — a shipped model's YAML,
    or the training configuration in ``metadata["config"]`` — or None (``nisbflow model init``); ``weights``: which
    of its two weight sets predicts (``ema``, ``raw``) when it keeps EMA weights beside the training ones, else None
    (part of every identity that names the checkpoint's content: :meth:`identity`). The handle is small
    and picklable: Dask tasks receive it and load the weights once per process (:meth:`network`), after checking
    that the file they read still has :attr:`sha256`.
    """

    source: str
    path: str
    sha256: str
    model: ModelConfig
    recorded: dict | None = field(default=None, repr=False)
    metadata: dict = field(default_factory=dict, repr=False, compare=False)
    weights: str | None = None

    @classmethod
    def open(cls, checkpoint: str | Path | Checkpoint, weights: str | None = None) -> Checkpoint:
        """Resolve a path or shipped name (reads the file once: hash, model configuration, recorded settings);
        a :class:`Checkpoint` is returned as it is unless ``weights`` asks for another of its weight sets.
        ``weights``: auto (default), ema or raw (:func:`chosen_weights`)."""
        if isinstance(checkpoint, Checkpoint):
            if (
                weights is None
                or weights == "auto"
                or weights == checkpoint.weights
                or (weights == "raw" and checkpoint.weights is None)
            ):
                return checkpoint
            checkpoint = checkpoint.source
        weights = weights or "auto"
        path = resolve_checkpoint(checkpoint).expanduser().absolute()  # the same file on every worker
        read = read_checkpoint(path, weights)
        _network(read)  # weights that do not fit the network fail here
        metadata, recorded = dict(read.metadata), read.recorded
        shipped = _shipped_yaml(path)
        if shipped is not None:
            from nisbflow.config import load_yaml_tree

            recorded = load_yaml_tree(shipped)
        if read.weights is not None and read.ours:
            ema = metadata.get("ema") or {}
            said = (
                f"weights: the EMA weights (ema_state_dict, {ema.get('updates', '?')} updates, decay "
                f"{ema.get('decay', '?')}) of checkpoint {checkpoint}; --weights raw for the training weights"
                if read.weights == "ema"
                else f"weights: the training weights (state_dict) of checkpoint "
                f"{checkpoint}, not the EMA weights it also keeps"
            )
            metadata["notes"] = list(metadata.get("notes") or []) + [said]
        return cls(str(checkpoint), str(path), read.sha256, read.model, recorded, metadata, read.weights)

    def identity(self) -> dict:
        """What names the weights that predict, for output and cache identities: ``{"checkpoint_sha256": …}``, with
        ``"weights"`` when the file keeps two sets (so EMA and training weights never share a cache)."""
        return {"checkpoint_sha256": self.sha256, **({"weights": self.weights} if self.weights else {})}

    @property
    def short_sha256(self) -> str:
        """The first 16 hex digits of :attr:`sha256`, for lines a person reads (identities keep the full digest)."""
        return self.sha256[:16]

    @property
    def name(self) -> str:
        """How to call it in messages: the shipped name or the path as given."""
        return self.source

    @property
    def worker_reference(self) -> str:
        """What workers load: a shipped model by its name (each machine resolves it inside its own nisbflow
        install), any other checkpoint by its absolute path. Workers check the file's hash against :attr:`sha256`
        (:meth:`network`)."""
        return (
            self.source if _shipped_yaml(Path(self.path)) is not None and self.source in SHIPPED_MODELS else self.path
        )

    def sha256_here(self) -> str | None:
        """The hash of the file this process finds at :attr:`worker_reference` (None when there is none): what a
        worker's probe compares with :attr:`sha256` (:func:`nisbflow.visibility.check_on_workers`)."""
        path = resolve_checkpoint(self.worker_reference)
        return file_sha256(path) if path.is_file() else None

    def network(self, device: str = "cpu", compiled: bool | str = False) -> torch.nn.Module:
        """The network on ``device`` in eval mode, loaded once per process (cached by file, sha256, device and
        ``compiled``: wrapped in ``torch.compile``, static shapes, eager where a graph cannot compile; a string is
        torch.compile's ``mode``, e.g. ``reduce-overhead`` for CUDA graphs). The file read
        must still have :attr:`sha256`, the hash the client resolved: a checkpoint replaced or rewritten during the
        run, or another file at the same path on a worker, is a :class:`CheckpointError` naming both hashes."""
        return _cached_network(
            self.worker_reference,
            self.sha256,
            device,
            compiled if isinstance(compiled, str) else bool(compiled),
            self.weights or "auto",
        )

    def load(self, map_location="cpu") -> torch.nn.Module:
        """The network with its weights (:attr:`weights`), in eval mode (reads the file)."""
        return load_checkpoint(self.path, map_location=map_location, weights=self.weights or "auto")[0]

    def settings_tree(self) -> dict:
        """The settings a run of this checkpoint starts from: ``model`` (always, from the weights), and the
        ``inference`` section and ``decoding.threshold`` it records, as a configuration tree."""
        tree: dict = {"model": self.model.model_dump(mode="json")}
        recorded = self.recorded or {}
        if isinstance(recorded.get("inference"), dict):
            tree["inference"] = dict(recorded["inference"])
        threshold = (recorded.get("decoding") or {}).get("threshold")
        if threshold is not None:
            tree["decoding"] = {"threshold": threshold}
        return tree


def save_random_checkpoint(path: str | Path, config: ModelConfig, seed: int = 0) -> torch.nn.Module:
    """Write an untrained network of ``config`` with weights from ``torch.manual_seed(seed)``; returns it."""
    torch.manual_seed(seed)
    model = build(config)
    save_checkpoint(path, model, config, initialised="random", seed=seed)
    return model


def checkpoint_payload(model: torch.nn.Module, config: ModelConfig, metadata: dict, **training_state) -> dict:
    """The dict a checkpoint file holds: format header, model configuration, weights, ``metadata``, and any
    ``training_state`` entries (``optimizer``, ``scheduler``, ``scaler`` from training, for resuming)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "model": config.model_dump(mode="json"),
        "state_dict": model.state_dict(),
        **training_state,
        "metadata": metadata,
    }


def write_checkpoint(path: str | Path, payload: dict) -> None:
    """``torch.save`` a checkpoint payload to a temporary name next to ``path``, then rename it into place
    (:func:`nisbflow.staging.staged_output`)."""
    path = Path(path)
    folder = path.absolute().parent
    if not folder.is_dir():
        raise CheckpointError(f"cannot write checkpoint {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise CheckpointError(f"cannot write checkpoint {path}: folder {folder} is not writable")
    from nisbflow.staging import staged_output

    try:
        with staged_output(path, overwrite=True) as temporary:
            torch.save(payload, temporary)
    except (OSError, RuntimeError) as error:  # torch reports a full disk as a RuntimeError
        raise CheckpointError(f"cannot write checkpoint {path}: {error}") from None


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: ModelConfig, /, **metadata) -> None:
    """Write a checkpoint (written to a temporary name, then renamed)."""
    write_checkpoint(path, checkpoint_payload(model, config, metadata))


def _load_verified(reference: str, sha256: str, map_location="cpu", weights: str = "auto") -> torch.nn.Module:
    """Load the checkpoint ``reference`` (a path or shipped name, as a worker receives it) and check that the file
    read has the hash the client resolved: a worker that sees another file at the same path, or a file rewritten
    since the client read it, fails its task with one line instead of predicting with other weights."""
    path = resolve_checkpoint(reference)
    read = read_checkpoint(path, weights, map_location)
    if not same_hash(sha256, read.sha256):
        raise CheckpointError(
            f"checkpoint {reference}: the file this process reads ({path}) has sha256 "
            f"{read.sha256}, not {sha256} as when the run started: it was replaced or rewritten "
            "during the run, or this worker sees another file at that path; every task must load "
            "the same checkpoint: re-run once it no longer changes"
        )
    return _network(read)[0]


@functools.lru_cache(maxsize=4)
def _cached_network(
    reference: str, sha256: str, device: str, compiled: bool | str, weights: str = "auto"
) -> torch.nn.Module:
    """:meth:`Checkpoint.network`'s per-process cache (``sha256`` keys a re-written file)."""
    model = _load_verified(reference, sha256, map_location=device, weights=weights).to(device)
    if compiled:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True  # fall back to eager rather than fail a block
        return torch.compile(
            model,
            dynamic=False,  # type: ignore[return-value]  # an OptimizedModule
            mode=compiled if isinstance(compiled, str) else None,
        )
    return model


def _network(read: CheckpointFile, expected: ModelConfig | None = None) -> tuple[torch.nn.Module, ModelConfig]:
    """The network of a checkpoint as read, its chosen weights in place, in eval mode; ``expected``: the
    architecture and channel counts it must have."""
    config, path = read.model, read.path
    if expected is not None:
        for key in ("arch", "size", "init_filters", "kernel_size", "in_channels", "out_channels"):
            if getattr(config, key) != getattr(expected, key):
                raise CheckpointError(
                    f"checkpoint {path} holds model.{key}={getattr(config, key)!r}, but "
                    f"model.{key}={getattr(expected, key)!r} was asked for"
                )
    model = build(config)
    try:
        missing, unexpected = model.load_state_dict(read.state, strict=False)
    except RuntimeError as error:  # tensors of other shapes: another network under the same configuration
        mismatch = str(error).split("size mismatch for ", 1)[-1].split("\n")[0].strip()
        raise CheckpointError(
            f"checkpoint {path} does not fit {config.arch}-{config.size} (init_filters "
            f"{config.init_filters}, kernel {config.kernel_size}): its weights have other shapes "
            f"({mismatch})"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path} does not fit {config.arch}-{config.size} "
            f"(init_filters {config.init_filters}): {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    return model.eval(), config


def load_checkpoint(
    path, expected: ModelConfig | None = None, map_location="cpu", weights: str = "auto"
) -> tuple[torch.nn.Module, ModelConfig]:
    """Load a nisbflow or Lightning checkpoint (a path, a shipped name or a :class:`Checkpoint`) →
    ``(model in eval mode, its ModelConfig)``.

    ``expected``: when given, the checkpoint's architecture and channel counts must match it; ``weights``: auto
    (the EMA weights when it keeps them), ema or raw.
    """
    path = Path(path.path) if isinstance(path, Checkpoint) else resolve_checkpoint(path)
    return _network(read_checkpoint(path, weights, map_location), expected)


def export_checkpoint(
    source: str | Path, output: str | Path, overrides=(), *, require_config: bool = False, **metadata
) -> dict:
    """Weights-only copy of a checkpoint (training state dropped; EMA weights kept beside the training weights), keeping
    its model configuration and metadata.

    The result is what ships inside the package or goes to collaborators: a training ``last.pt`` with AdamW
    state is about three times larger. ``metadata`` entries are added (e.g. the command that trained it);
    ``overrides`` (``key.path=value``) change the configuration it records (e.g. a tuned ``decoding.threshold``),
    so the file and a ``--config-yaml`` written beside it agree. ``require_config``: refuse, before writing
    anything, a checkpoint that records no training configuration. Returns the metadata written.
    """
    from nisbflow.config import Config, apply_overrides, without_derived_paths

    path = resolve_checkpoint(source)
    read = read_checkpoint(path)  # a peer's chosen weights (auto: EMA when it has them)
    ours, payload, digest = read.ours, read.payload, read.sha256
    if ours and read.weights == "ema":  # a nisbflow checkpoint keeps both sets: the training weights stay the network
        read = replace(read, state=payload["state_dict"], weights="raw")
    model, config = _network(read)
    kept = dict(payload.get("metadata", {})) if ours else {}
    if require_config and kept.get("config") is None:
        raise CheckpointError(f"checkpoint {source} records no training configuration; --config-yaml needs one")
    if "exported_from" in kept:  # exporting an export: keep the chain back to the training run
        kept.setdefault("export_history", []).append(
            {"exported_from": kept["exported_from"], "source_sha256": kept.get("source_sha256")}
        )
    if kept.get("config") is not None:
        tree = apply_overrides(without_derived_paths(kept["config"]), overrides)
        kept["config"] = without_derived_paths(Config.model_validate(tree).model_dump(mode="json"))
    kept.update(metadata, exported_from=str(source), source_sha256=digest)
    ema = {"ema_state_dict": payload["ema_state_dict"]} if ours and has_ema(payload) else {}
    write_checkpoint(output, checkpoint_payload(model, config, kept, **ema))
    return kept


def import_checkpoint(source: str | Path, output: str | Path, *, weights: str = "auto") -> dict:
    """A nisbflow checkpoint of a BANIS or PyTorch Connectomics checkpoint (:mod:`nisbflow.model.peers`): the chosen
    weights (``auto``: EMA when present, ``ema``, ``raw``) in nisbflow's names, the model read off the tensors, and
    the settings it records (window, threshold) under ``metadata["recorded"]``. Returns the metadata written."""
    path = resolve_checkpoint(source)
    read = read_checkpoint(path, weights)
    if read.layout not in ("banis", "pytc"):
        raise CheckpointError(
            f"checkpoint {source} is not a BANIS or PyTorch Connectomics checkpoint (no MIC-DKFZ "
            "MedNeXt tensors, enc_block_0.…); nisbflow checkpoints need no import"
        )
    model, config = _network(read)  # the weights must fit, as for any checkpoint
    metadata = dict(
        imported_from=str(source),
        source_sha256=read.sha256,
        source_format=read.layout,
        weights=read.metadata["weights"],
        recorded=read.recorded,
        notes=read.metadata["notes"],
    )
    save_checkpoint(output, model, config, **metadata)
    return metadata
