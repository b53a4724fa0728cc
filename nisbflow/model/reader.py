"""Reading a checkpoint file: one read, one hash, one dispatch on its format.

Every path that loads a checkpoint (:class:`~nisbflow.model.Checkpoint`, ``load_checkpoint``, ``model export`` and
``model import``, a worker's verified load) goes through :func:`read_checkpoint`, which reads the file's bytes once,
hashes them (:func:`sha256_of_bytes`, the full hex SHA-256) and recognises one of four layouts:

- ``nisbflow``: ``{"format": "nisbflow-checkpoint", "model": …, "state_dict": …, "ema_state_dict"?: …,
  "metadata": …}``;
- ``banis`` and ``pytc``: BANIS's and PyTorch Connectomics' Lightning checkpoints of MIC-DKFZ MedNeXt tensors
  (:mod:`nisbflow.model.peers`, read once);
- ``lightning``: a Lightning checkpoint whose ``hyper_parameters`` carry a nisbflow model configuration.

The result, a :class:`CheckpointFile`, holds the chosen weight set (``auto``: the EMA weights when the file keeps
them), the model configuration and what the file records; no code in the file runs (``weights_only=True``).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nisbflow.config.schema import INFERENCE_WEIGHTS, ModelConfig
from nisbflow.errors import NisbflowError

CHECKPOINT_FORMAT = "nisbflow-checkpoint"
SHIPPED_DIR = Path(__file__).parent / "shipped"
SHIPPED_MODELS = {"nisb-tiny-synthetic": "nisb_tiny_synthetic"}
"""Models inside the package: name → file stem in :data:`SHIPPED_DIR` (``<stem>.pt`` weights, ``<stem>.yaml`` the
resolved configuration it was trained with and should be run with). See ``nisbflow/model/shipped/README.md``."""
DEFAULT_SHIPPED = "nisb-tiny-synthetic"
LEGACY_HASH_DIGITS = 16
"""Before 2026-12-07 nisbflow named a checkpoint by the first 16 hex digits of its SHA-256 (in ``best.yaml``'s
``_tuned_`` record, output attributes): :func:`same_hash` accepts such a prefix for the full digest."""


class CheckpointError(NisbflowError, ValueError):
    """A checkpoint file that is missing, unreadable, or does not fit the requested model."""


def sha256_of_bytes(data: bytes) -> str:
    """The full hex SHA-256 of ``data``: how nisbflow names a checkpoint's content."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    """The full hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def same_hash(recorded: str | None, digest: str) -> bool:
    """Whether a recorded checkpoint hash names the file of full SHA-256 ``digest``: equal, or a 16-digit prefix
    recorded before nisbflow kept the full digest (:data:`LEGACY_HASH_DIGITS`)."""
    if not recorded:
        return False
    return recorded == digest or (len(recorded) == LEGACY_HASH_DIGITS and digest.startswith(recorded))


@dataclass
class CheckpointFile:
    """One checkpoint file as read: ``layout`` (nisbflow, banis, pytc, lightning), ``sha256`` (full hex digest),
    ``model`` and ``state`` (the chosen weights, in nisbflow's parameter names), ``weights`` (``ema`` or ``raw``
    when the file keeps both sets, else None), ``recorded`` (the configuration tree it records, or None),
    ``metadata`` (nisbflow's metadata, or a peer's notes) and ``payload`` (the loaded dict, for export and
    resume)."""

    path: Path
    sha256: str
    layout: str
    model: ModelConfig
    state: dict = field(repr=False)
    weights: str | None
    recorded: dict | None = field(default=None, repr=False)
    metadata: dict = field(default_factory=dict, repr=False)
    payload: dict = field(default_factory=dict, repr=False)

    @property
    def ours(self) -> bool:
        return self.layout == "nisbflow"


def load_payload(path: Path, map_location="cpu") -> tuple[dict, str]:
    """``(the torch payload, its full SHA-256)`` of a checkpoint file, read once; a missing file names the twin that
    exists (``last.ckpt`` for ``last.pt``), an unreadable one the reason."""
    if not path.exists():
        twins = [path.with_suffix(suffix) for suffix in (".pt", ".ckpt") if suffix != path.suffix]
        there = [twin for twin in twins if path.suffix in (".pt", ".ckpt") and twin.is_file()]
        if there:  # PyTorch Connectomics' tutorial names <run>/checkpoints/last.ckpt; nisbflow writes last.pt
            raise CheckpointError(
                f"checkpoint {path} does not exist, but {there[0]} does (nisbflow writes .pt "
                "checkpoints where PyTorch Connectomics writes .ckpt): give that file"
            )
        raise CheckpointError(
            f"checkpoint {path} does not exist (give a .pt file or a shipped model name: {', '.join(SHIPPED_MODELS)})"
        )
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give the .pt file inside it")
    data = path.read_bytes()
    from nisbflow.model.peers import READ_AS

    try:  # weights only: no code in the file runs; Lightning's defaultdicts read as dicts
        with torch.serialization.safe_globals(READ_AS):
            payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for foreign or corrupt files
        raise CheckpointError(
            f"checkpoint {path} cannot be read as a torch checkpoint with weights_only=True: {error}"
        ) from error
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(
            f"checkpoint {path} has no state_dict; expected a nisbflow, BANIS, PyTorch "
            "Connectomics or Lightning checkpoint"
        )
    return payload, sha256_of_bytes(data)


def peek_payload(path: str | Path) -> dict | None:
    """A checkpoint's payload memory-mapped, not read whole and not hashed, for a look at its keys (what a file
    output would replace); None for a file torch cannot load with ``weights_only=True``."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    return payload if isinstance(payload, dict) else None


def has_ema(payload) -> bool:
    """Whether a loaded checkpoint payload keeps EMA weights beside its training weights (nisbflow's
    ``ema_state_dict``, PyTorch Connectomics' ``callbacks.EMAWeightsCallback.ema_state``)."""
    if not isinstance(payload, dict):
        return False
    if payload.get("format") == CHECKPOINT_FORMAT:
        return payload.get("ema_state_dict") is not None
    return bool(((payload.get("callbacks") or {}).get("EMAWeightsCallback") or {}).get("ema_state"))


def chosen_weights(payload, path, weights: str = "auto") -> str | None:
    """Which of a checkpoint's two weight sets ``weights`` picks (``ema`` or ``raw``); None for a checkpoint with one
    set (``raw`` accepted, ``ema`` refused naming the file)."""
    if weights not in INFERENCE_WEIGHTS:
        raise CheckpointError(f"weights {weights!r}: expected one of {', '.join(INFERENCE_WEIGHTS)}")
    if has_ema(payload):
        return "raw" if weights == "raw" else "ema"
    if weights == "ema":
        raise CheckpointError(
            f"checkpoint {path} keeps no EMA weights (trained with optimization.ema.enabled "
            "false); inference.weights ema (--weights ema) needs them: use auto or raw"
        )
    return None


def read_checkpoint(path: str | Path, weights: str = "auto", map_location="cpu") -> CheckpointFile:
    """Read a checkpoint file once and recognise its layout (the module docstring); ``weights``: auto, ema or raw."""
    path = Path(path)
    payload, digest = load_payload(path, map_location)
    which = chosen_weights(payload, path, weights)
    if payload.get("format") == CHECKPOINT_FORMAT:
        metadata = dict(payload.get("metadata") or {})
        state = payload["ema_state_dict"] if which == "ema" else payload["state_dict"]
        recorded = metadata.pop("config", None) or metadata.get("recorded")
        return CheckpointFile(
            path,
            digest,
            "nisbflow",
            ModelConfig.model_validate(payload["model"]),
            state,
            which,
            recorded,
            metadata,
            payload,
        )
    from nisbflow.model.peers import PeerCheckpointError, is_mic_dkfz, read_peer

    if is_mic_dkfz(payload.get("state_dict") or {}):
        try:
            peer = read_peer(payload, path, weights)
        except PeerCheckpointError as error:
            raise CheckpointError(f"checkpoint {path}: {error}") from None
        return CheckpointFile(
            path,
            digest,
            peer.layout,
            peer.model,
            peer.state,
            which,
            peer.recorded,
            {"notes": peer.notes, "weights": peer.weights},
            payload,
        )
    hyper = payload.get("hyper_parameters") or {}  # Lightning: "model." prefixes, configuration in hyper_parameters
    config = hyper.get("model") or (hyper.get("config") or {}).get("model")
    if config is None:
        raise CheckpointError(
            f"checkpoint {path} carries no model configuration (hyper_parameters.model) and "
            "no MIC-DKFZ MedNeXt tensors (enc_block_0.…) as BANIS and PyTorch Connectomics "
            "save them"
        )
    state = {k.removeprefix("model."): v for k, v in payload["state_dict"].items()}
    return CheckpointFile(
        path, digest, "lightning", ModelConfig.model_validate(config), state, which, hyper.get("config"), {}, payload
    )
