"""Checkpoints of the field's tools: BANIS's Lightning ``.ckpt`` and PyTorch Connectomics' checkpoints of MIC-DKFZ's
MedNeXt, read without executing code and mapped onto nisbflow's network.

Both hold MIC-DKFZ's MedNeXt (``nnunet_mednext``) tensors: BANIS under ``model.`` (``model._orig_mod.`` when it
``torch.compile``d the network, its default), PyTorch Connectomics one module deeper under ``model.model.``, with
exponential-moving-average weights in ``callbacks["EMAWeightsCallback"]["ema_state"]`` when it kept them. nisbflow's
network is MONAI's MedNeXt with MIC-DKFZ's down-block expansion ratios (:mod:`nisbflow.model.network`); its tensor
names differ only in layout (``enc_block_i`` → ``enc_stages.i``, ``down_i`` → ``down_blocks.i``, ``up_i`` →
``up_blocks.(3−i)``, ``dec_block_i`` → ``dec_stages.(3−i)``; ``dummy_tensor``, MIC-DKFZ's gradient-checkpointing
helper, has no counterpart). The architecture is read off the tensors themselves (width, kernel, block counts and
expansion ratios, matched against the S/B/M/L variants) and checked against what the checkpoint says
(BANIS's ``model_id`` and ``kernel_size``). BANIS records its training window (``small_size``) and its threshold
tuned on the validation seed (``best_thr_so_far["val"]``, or ``best_thr_val.txt`` beside the file); PyTorch
Connectomics keeps both in its run folder (``config.yaml`` above ``checkpoints/``, a tuning result
``best_params*.yaml``). Each value taken is reported with its source.

Lightning writes non-tensor entries (BANIS's ``best_thr_so_far`` is a ``collections.defaultdict``) that
``torch.load`` with ``weights_only=True`` refuses; :data:`READ_AS` lets the weights-only unpickler read such a
defaultdict as a plain dict, so nothing in the file is executed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nisbflow.config.schema import ModelConfig
from nisbflow.config.tree import get as tree_get


def _defaultdict_as_dict(default_factory=None, *items):
    """A pickled ``collections.defaultdict`` read as a plain dict (its default factory dropped)."""
    return dict(*items)


READ_AS: list[Any] = [(_defaultdict_as_dict, "collections.defaultdict"), float]
"""Globals the weights-only unpickler may meet in a Lightning checkpoint beyond torch's own: a defaultdict (read as
a dict) and its ``float`` default factory."""

PREFIXES = ("model.model._orig_mod.", "model.model.", "model._orig_mod.", "model.", "_orig_mod.")
"""Where BANIS (``model.``, ``model._orig_mod.``) and PyTorch Connectomics (``model.model.``) keep the network."""

EMA_CALLBACK = "EMAWeightsCallback"


class PeerCheckpointError(ValueError):
    """A peer checkpoint whose tensors nisbflow cannot map (raised as a CheckpointError by the caller)."""


def is_mic_dkfz(state: dict) -> bool:
    """Whether a state dict holds MIC-DKFZ's MedNeXt (under any of :data:`PREFIXES`)."""
    return any(re.search(r"(^|\.)enc_block_0\.0\.conv1\.weight$", key) for key in state)


def _strip(state: dict) -> tuple[dict, str]:
    for prefix in PREFIXES:
        if any(key.startswith(prefix + "enc_block_0.") for key in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, prefix
    return dict(state), ""


_STAGE = re.compile(r"^(enc_block|dec_block)_(\d)\.(\d+)\.(.*)$")
_UPDOWN = re.compile(r"^(down|up)_(\d)\.(.*)$")


def monai_name(key: str) -> str | None:
    """nisbflow's (MONAI's) name of a MIC-DKFZ MedNeXt tensor, None for ``dummy_tensor``."""
    if key == "dummy_tensor":
        return None
    found = _STAGE.match(key)
    if found:
        kind, stage, block, rest = found.groups()
        return (
            f"enc_stages.{stage}.{block}.{rest}"
            if kind == "enc_block"
            else f"dec_stages.{3 - int(stage)}.{block}.{rest}"
        )
    found = _UPDOWN.match(key)
    if found:
        kind, stage, rest = found.groups()
        return f"down_blocks.{stage}.{rest}" if kind == "down" else f"up_blocks.{3 - int(stage)}.{rest}"
    return key


def _blocks(state: dict, stem: str) -> int:
    return len({int(m.group(1)) for k in state if (m := re.match(rf"^{re.escape(stem)}\.(\d+)\.", k))})


def mednext_config(state: dict) -> ModelConfig:
    """The :class:`ModelConfig` of a MIC-DKFZ MedNeXt state dict (prefix stripped), read off its tensors."""
    from nisbflow.model.network import mic_dkfz_variant

    stem = state["stem.weight"]
    width, in_channels = int(stem.shape[0]), int(stem.shape[1])
    kernel = int(state["enc_block_0.0.conv1.weight"].shape[-1])
    counts = (
        [_blocks(state, f"enc_block_{i}") for i in range(4)]
        + [_blocks(state, "bottleneck")]
        + [_blocks(state, f"dec_block_{i}") for i in (3, 2, 1, 0)]
    )
    ratios = (
        [int(state[f"enc_block_{i}.0.conv2.weight"].shape[0]) // (width * 2**i) for i in range(4)]
        + [int(state["bottleneck.0.conv2.weight"].shape[0]) // (width * 16)]
        + [int(state[f"dec_block_{i}.0.conv2.weight"].shape[0]) // (width * 2**i) for i in (3, 2, 1, 0)]
    )
    size = mic_dkfz_variant(counts, ratios)
    if size is None:
        raise PeerCheckpointError(
            f"a MedNeXt with block counts {counts} and expansion ratios {ratios} is none of MIC-DKFZ's S, B, M, L"
        )
    outputs = int(state["out_0.conv_out.bias"].shape[0])
    if kernel not in (3, 5):
        raise PeerCheckpointError(
            f"kernel size {kernel} (enc_block_0.0.conv1.weight "
            f"{tuple(state['enc_block_0.0.conv1.weight'].shape)}); nisbflow runs 3 or 5"
        )
    if outputs != 6:
        raise PeerCheckpointError(
            f"the network outputs {outputs} channels (out_0.conv_out.bias); BANIS's 6 "
            "affinities (3 short-range, 3 long-range) are what nisbflow decodes"
        )
    return ModelConfig(size=size, init_filters=width, kernel_size=kernel, in_channels=in_channels, out_channels=6)


@dataclass
class PeerCheckpoint:
    """A peer checkpoint mapped onto nisbflow: its model, its weights in nisbflow's names, the settings it records
    (a configuration tree) and one line per value taken, saying from where."""

    layout: str
    model: ModelConfig
    state: dict
    recorded: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    weights: str = "raw"


def read_peer(payload: dict, path: Path, weights: str = "auto") -> PeerCheckpoint:
    """Map a loaded BANIS or PyTorch Connectomics checkpoint payload. ``weights``: ``ema`` (PyTorch Connectomics'
    EMA weights), ``raw`` (the training weights) or ``auto`` (EMA when the checkpoint has them: PyTorch
    Connectomics validates, and so tunes its threshold, with them)."""
    raw, prefix = _strip(payload["state_dict"])
    layout = "pytc" if prefix.startswith("model.model.") else "banis"
    name = {"banis": "BANIS Lightning checkpoint", "pytc": "PyTorch Connectomics checkpoint"}[layout]
    ema_state = ((payload.get("callbacks") or {}).get(EMA_CALLBACK) or {}).get("ema_state")
    notes = [f"checkpoint {path}: a {name} (MIC-DKFZ MedNeXt tensors under '{prefix}')"]
    if weights not in ("auto", "ema", "raw"):
        raise PeerCheckpointError(f"--weights {weights!r}: expected auto, ema or raw")
    chosen = "raw"
    if weights in ("auto", "ema") and ema_state:
        state, _ = _strip({f"model.{k}": v for k, v in ema_state.items()})
        chosen = "ema"
        notes.append(
            f"weights: the EMA weights (callbacks.{EMA_CALLBACK}.ema_state), as PyTorch Connectomics "
            "validates with them; --weights raw for the training weights"
        )
    elif weights == "ema":
        raise PeerCheckpointError(f"--weights ema, but the checkpoint has no callbacks.{EMA_CALLBACK}.ema_state")
    else:
        state = raw
        if ema_state:
            notes.append("weights: the training weights (state_dict), not the EMA weights it also holds")
    model = mednext_config(state)
    hyper = payload.get("hyper_parameters") or {}
    for key, ours in (("model_id", model.size), ("kernel_size", model.kernel_size)):
        if key in hyper and hyper[key] != ours:
            raise PeerCheckpointError(
                f"hyper_parameters.{key} is {hyper[key]!r}, but the tensors are a MedNeXt-"
                f"{model.size} with kernel {model.kernel_size}"
            )
    deep = sorted(k for k in state if re.match(r"^out_[1-4]\.", k))
    mapped = {}
    for key, value in state.items():
        if key in deep:
            continue
        target = monai_name(key)
        if target is not None:
            mapped[target] = value
    notes.append(
        f"model: MedNeXt-{model.size}, kernel {model.kernel_size}, width {model.init_filters}, "
        f"{model.in_channels} → {model.out_channels} channels (read off its tensors"
        + (f"; hyper_parameters model_id {hyper['model_id']!r} agrees)" if "model_id" in hyper else ")")
        + ("; its deep-supervision heads are not used for inference" if deep else "")
    )
    recorded: dict = {}
    window = hyper.get("small_size")
    if isinstance(window, int) and window > 0:
        recorded["inference"] = {"window_size": [window, window, window]}
        notes.append(
            f"inference.window_size {window}³ from hyper_parameters.small_size (BANIS's training and inference window)"
        )
    threshold, where = _threshold(payload, path)
    if threshold is not None:
        recorded["decoding"] = {"threshold": threshold}
        notes.append(f"decoding.threshold {threshold:g} from {where}")
    elif layout == "pytc":
        _pytc_run_settings(Path(path), model, recorded, notes)
    return PeerCheckpoint(layout, model, mapped, recorded, notes, chosen)


PYTC_RUN_CONFIG = "config.yaml"
"""The merged configuration PyTorch Connectomics saves in a training run's folder (``<save_path>/<timestamp>/``,
its checkpoints in the ``checkpoints`` folder inside)."""


def _run_folders(path: Path) -> list[Path]:
    """Where a PyTorch Connectomics run keeps its files for the checkpoint at ``path``: the checkpoint's folder and,
    when that is the run's ``checkpoints`` folder, the run folder above it and its ``tuning`` folder."""
    folder = path.absolute().parent
    folders = [folder]
    if folder.name == "checkpoints":
        folders += [folder.parent, folder.parent / "tuning"]
    return [f for f in folders if f.is_dir()]


def _read_yaml(path: Path) -> dict:
    from nisbflow.config.tree import read_yaml_mapping
    from nisbflow.errors import ConfigError

    try:
        return read_yaml_mapping(path)
    except ConfigError as error:
        raise PeerCheckpointError(str(error).splitlines()[0]) from None


def _cc_threshold(steps, where: str):
    """``decode_affinity_cc``'s threshold among PyTorch Connectomics' ``decoding.steps`` (None when absent)."""
    for step in steps if isinstance(steps, list) else []:
        if isinstance(step, dict) and step.get("name") == "decode_affinity_cc":
            threshold = (step.get("kwargs") or {}).get("threshold")
            if threshold is not None and not isinstance(threshold, (int, float)):
                raise PeerCheckpointError(f"{where}: decoding threshold {threshold!r} is not a number")
            return threshold
    return None


def _pytc_run_settings(path: Path, model: ModelConfig, recorded: dict, notes: list) -> None:
    """The window and threshold a PyTorch Connectomics run keeps beside its checkpoint, each noted with its file:
    the window from the run's ``config.yaml`` (``inference.window.window_size``, else ``data.dataloader.patch_size``
    as PyTorch Connectomics falls back; stored in the volume's axis order, X, Y, Z for NISB's zarr), the threshold
    from ``decode_affinity_cc`` in a tuning result ``best_params*.yaml`` (what PyTorch Connectomics' test mode applies
    over the configuration) or else in ``config.yaml``'s ``decoding.steps``. A ``config.yaml`` that describes
    another network (``model.mednext.size``/``kernel_size`` against the tensors) is refused; tuning results that
    disagree are refused rather than one picked."""
    folders = _run_folders(path)
    configs = [f / PYTC_RUN_CONFIG for f in folders if (f / PYTC_RUN_CONFIG).is_file()]
    threshold, source = None, ""
    if configs:
        where = configs[0]
        config = _read_yaml(where)
        arch = tree_get(config, "model.arch.type")
        if arch is not None and arch != "mednext":
            raise PeerCheckpointError(
                f"{where}: model.arch.type is {arch!r}, but the checkpoint holds a MedNeXt; "
                "this configuration is another run's"
            )
        for key, ours in (("model.mednext.size", model.size), ("model.mednext.kernel_size", model.kernel_size)):
            theirs = tree_get(config, key)
            if theirs is not None and theirs != ours:
                raise PeerCheckpointError(
                    f"{where}: {key} is {theirs!r}, but the checkpoint's tensors are a "
                    f"MedNeXt-{model.size} with kernel {model.kernel_size}; this configuration "
                    "is another run's"
                )
        for key in ("inference.window.window_size", "data.dataloader.patch_size"):
            window = tree_get(config, key)
            if window is not None:
                break
        if window is not None:
            if not (
                isinstance(window, list) and len(window) == 3 and all(isinstance(v, int) and v > 0 for v in window)
            ):
                raise PeerCheckpointError(f"{where}: {key} is {window!r}; expected three positive voxel counts")
            recorded["inference"] = {"window_size": list(window)}
            notes.append(f"inference.window_size {window} from {where} ({key})")
        threshold = _cc_threshold(tree_get(config, "decoding.steps"), str(where))
        source = f"{where} (decoding.steps decode_affinity_cc)"
    tuned = {}
    for folder in folders:
        for candidate in sorted(folder.glob("best_params*.yaml")):
            result = _read_yaml(candidate)
            if result.get("decoding_function") not in (None, "decode_affinity_cc"):
                notes.append(
                    f"{candidate}: tuned {result.get('decoding_function')}, not decode_affinity_cc; "
                    "its parameters are not taken"
                )
                continue
            value = (result.get("decoding_params") or {}).get("threshold")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                tuned[candidate] = float(value)
    if len(set(tuned.values())) > 1:
        found = ", ".join(f"{file} {value:g}" for file, value in tuned.items())
        raise PeerCheckpointError(
            f"the tuning results beside the checkpoint disagree ({found}); which one is "
            "this checkpoint's cannot be told: move the others out of the run folder"
        )
    if tuned:
        file, threshold = next(iter(tuned.items()))
        source = f"{file} (decoding_params, tuned by PyTorch Connectomics)"
    if threshold is not None:
        recorded["decoding"] = {"threshold": float(threshold)}
        notes.append(f"decoding.threshold {float(threshold):g} from {source}")
    missing = [
        what for what, found in (("window", "inference" in recorded), ("threshold", threshold is not None)) if not found
    ]
    if missing:
        notes.append(
            f"{' and '.join(missing)}: not found beside the checkpoint (PyTorch Connectomics keeps them "
            f"in the run's {PYTC_RUN_CONFIG} and best_params*.yaml); give them with --config or KEY=VALUE"
        )


def _threshold(payload: dict, path: Path) -> tuple[float | None, str]:
    best = payload.get("best_thr_so_far")
    if isinstance(best, dict) and isinstance(best.get("val"), (int, float)) and best["val"] > 0:
        return float(best["val"]), "best_thr_so_far['val'] (tuned on the validation seed)"
    beside = Path(path).with_name("best_thr_val.txt")
    if beside.is_file():
        try:
            return float(beside.read_text().split()[0]), str(beside)
        except (ValueError, IndexError):
            raise PeerCheckpointError(f"{beside}: expected one number, the tuned threshold") from None
    return None, ""
