"""Every PyTorch Connectomics key nisbflow knows, and what it becomes: a nisbflow setting, a value nisbflow always
uses, a key with no effect on any output, or a refusal with the reason.

:func:`translate` walks a resolved PyTC tree (:func:`nisbflow.config.pytc.resolve_pytc`) and returns a nisbflow
configuration tree with one :class:`KeyMapping` per PyTC key. The rules are written from PyTC's schema
(``connectomics/config/schema``) and the NISB tutorial's files; keys nobody listed are refused, since nisbflow
cannot know whether ignoring them would change a result.
"""

from __future__ import annotations

import glob as globbing
import math
import os
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

from ..errors import ConfigError
from . import tree

SET, MATCHES, IGNORED, REFUSED = "set", "matches", "ignored", "refused"


@dataclass
class KeyMapping:
    """One PyTC key: its value, what nisbflow does with it (``verdict``: set / matches / ignored / refused), the
    nisbflow keys it sets (``targets``) and why."""

    key: str
    value: Any
    verdict: str
    targets: tuple = ()
    reason: str = ""
    setting: Any = None  # the value nisbflow's key takes (verdict set)

    def line(self) -> str:
        """``key = value -> nisbflow.key = setting (why)``, or ``key = value: why``."""
        given = _short(self.value)
        if self.verdict == SET:
            setting = "" if _same(self.setting, self.value) else f" = {_short(self.setting)}"
            return f"{self.key} = {given} -> {', '.join(self.targets)}{setting}" + (
                f" ({self.reason})" if self.reason else ""
            )
        return f"{self.key} = {given}: {self.reason}"


def _short(value) -> str:
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def _same(a, b) -> bool:
    try:
        return a == b and type(a) is type(b)
    except Exception:  # pragma: no cover - values from YAML compare
        return False


@dataclass
class Translation:
    """A nisbflow configuration ``tree`` and the ``mappings`` that made it."""

    tree: dict = field(default_factory=dict)
    mappings: list = field(default_factory=list)
    source: dict = field(default_factory=dict)  # the resolved PyTC tree, for rules that compare keys
    overridden: set = field(default_factory=set)  # keys KEY=VALUE set (stage prefix dropped), for rules that follow

    def set(self, key: str, value, target: str, reason: str = "", given=None) -> None:
        """nisbflow's ``target`` takes ``value``, from PyTC's ``key`` (whose own value was ``given``; default the
        same)."""
        tree.assign(self.tree, target, value)
        given = value if given is None else given
        self.mappings.append(KeyMapping(key, given, SET, (target,), reason, value))

    def note(self, key: str, value, verdict: str, reason: str) -> None:
        self.mappings.append(KeyMapping(key, value, verdict, (), reason))

    def get(self, key: str, default=None):
        """The resolved PyTC value at ``key`` (``default`` when it is not there)."""
        return tree.get(self.source, key, default)

    def refusals(self) -> list[KeyMapping]:
        return [m for m in self.mappings if m.verdict == REFUSED]


Rule = Callable[[Translation, str, Any], None]


def to(target: str, convert: Callable[[Any], Any] | None = None, reason: str = "") -> Rule:
    """The key sets nisbflow's ``target`` (through ``convert``)."""

    def rule(out: Translation, key: str, value) -> None:
        out.set(key, convert(value) if convert else value, target, reason, given=value)

    return rule


def ignore(reason: str) -> Rule:
    """The key changes no output of nisbflow."""

    def rule(out: Translation, key: str, value) -> None:
        out.note(key, value, IGNORED, reason)

    return rule


def only(allowed, does: str, refusal: str) -> Rule:
    """Accepted when the value is one of ``allowed`` (what nisbflow always ``does``), refused otherwise."""
    values = allowed if isinstance(allowed, tuple) else (allowed,)

    def rule(out: Translation, key: str, value) -> None:
        if value in values:
            out.note(key, value, MATCHES, does)
        else:
            out.note(key, value, REFUSED, refusal)

    return rule


def _equal_numbers(a, b) -> bool:
    try:
        return len(a) == len(b) and all(math.isclose(float(x), float(y)) for x, y in zip(a, b))
    except TypeError:
        return math.isclose(float(a), float(b))


# ---------------------------------------------------------------------------------------------------------------
# rules that read several keys or whole lists


def _follows(out: Translation, key: str, leader: str) -> bool:
    """Whether KEY=VALUE set ``leader`` but not ``key``: a file's value of ``key`` then follows the override (a
    shortened run changes max_steps and the patch, and t_max and the model's sizes are the file's for its own)."""
    return leader in out.overridden and key not in out.overridden


def _model_size(out: Translation, key: str, value) -> None:
    patch = out.get("data.dataloader.patch_size", [128, 128, 128])
    if list(value) == list(patch):
        out.note(key, value, MATCHES, "nisbflow's network input is the training patch, data.dataloader.patch_size")
    elif _follows(out, key, "data.dataloader.patch_size"):
        out.note(
            key,
            value,
            MATCHES,
            f"follows data.dataloader.patch_size={list(patch)} given as KEY=VALUE (the "
            "network input is the training patch)",
        )
    else:
        out.note(
            key,
            value,
            REFUSED,
            f"it differs from data.dataloader.patch_size {list(patch)}; nisbflow trains "
            "on patches the size of the network input",
        )


def _checkpoint_style(out: Translation, key: str, value) -> None:
    if value in (None, "", "outside_block"):
        out.set(
            key,
            value == "outside_block",
            "model.activation_checkpointing",
            "activations recomputed in the backward pass, as MIC-DKFZ's outside_block",
            given=value,
        )
    else:
        out.note(key, value, REFUSED, "MIC-DKFZ's MedNeXt knows only outside_block (or none)")


def _losses(out: Translation, key: str, value) -> None:
    entries = value if isinstance(value, list) else []
    entry = entries[0] if len(entries) == 1 and isinstance(entries[0], dict) else {}
    kwargs = entry.get("kwargs") or {}
    plain = float(entry.get("weight", 1.0)) == 1.0 and not ({"pred_slice", "target_slice", "pos_weight"} & set(entry))
    if plain and entry.get("function") == "WeightedBCEWithLogitsLoss" and kwargs in ({}, {"reduction": "mean"}):
        out.set(key, "WeightedBCEWithLogitsLoss", "model.loss", "BANIS's masked binary cross-entropy", given=value)
        return
    if (
        plain
        and entry.get("function") == "PerChannelBCEWithLogitsLoss"
        and set(kwargs) <= {"auto_pos_weight", "max_pos_weight", "reduction"}
        and kwargs.get("reduction", "mean") == "mean"
    ):
        out.set(
            key,
            "PerChannelBCEWithLogitsLoss",
            "model.loss",
            "BANIS+'s per-channel class-balanced BCE, the channel means summed",
            given=value,
        )
        out.set(f"{key}[0].kwargs.auto_pos_weight", bool(kwargs.get("auto_pos_weight", True)), "model.auto_pos_weight")
        out.set(f"{key}[0].kwargs.max_pos_weight", float(kwargs.get("max_pos_weight", 10.0)), "model.max_pos_weight")
        return
    names = [e.get("function") for e in entries if isinstance(e, dict)]
    out.note(
        key,
        value,
        REFUSED,
        "nisbflow trains with one loss of weight 1: WeightedBCEWithLogitsLoss (BANIS) or "
        "PerChannelBCEWithLogitsLoss with auto_pos_weight / max_pos_weight (BANIS+), "
        f"not {names}"
        + (f" with {sorted(set(entry) - {'function', 'weight', 'kwargs'})}" if entry and not plain else ""),
    )


def _target_context(out: Translation, key: str, value) -> None:
    values = [int(v) for v in (value if isinstance(value, list) else [value])]
    trailing = values[3:] if len(values) == 6 else values
    if len(values) in (3, 6) and (len(values) == 3 or not any(values[:3])) and len(set(trailing)) == 1:
        out.set(key, trailing[0], "data.target_context", "voxels read past the patch's trailing faces", given=value)
    else:
        out.note(
            key,
            value,
            REFUSED,
            "nisbflow reads one context on the trailing side of each axis ([0, 0, 0, c, c, c] or [c, c, c])",
        )


def _targets(out: Translation, key: str, value) -> None:
    entries = value if isinstance(value, list) else []
    if len(entries) == 1 and isinstance(entries[0], dict) and entries[0].get("name") == "affinity":
        kwargs = entries[0].get("kwargs") or {}
        if kwargs.get("affinity_mode", "banis") == "banis" and set(kwargs) <= {"offsets", "affinity_mode"}:
            offsets = [str(o) for o in kwargs.get("offsets", [])]
            out.set(key, offsets, "model.affinity_offsets", "source-voxel (banis) affinities", given=offsets)
            out.set(f"{key}[0].kwargs.affinity_mode", "banis", "model.affinity_mode")
            return
    out.note(
        key,
        value,
        REFUSED,
        "nisbflow learns one target, BANIS's affinities (name: affinity, affinity_mode: banis, offsets)",
    )


def _channel_activations(out: Translation, key: str, value) -> None:
    entries = value if isinstance(value, list) else []
    if (
        len(entries) == 1
        and isinstance(entries[0], dict)
        and entries[0].get("channels") in (":", None)
        and entries[0].get("activation") in ("scale_sigmoid", "sigmoid")
    ):
        out.set(
            key,
            entries[0]["activation"],
            "inference.activation",
            "scale_sigmoid: sigmoid(0.2·logit), BANIS's; sigmoid: plain",
            given=value,
        )
        return
    out.note(key, value, REFUSED, "nisbflow applies one activation to every channel (scale_sigmoid or sigmoid)")


def _decoding_steps(out: Translation, key: str, value) -> None:
    steps = value if isinstance(value, list) else []
    if len(steps) != 1 or not isinstance(steps[0], dict):
        out.note(key, value, REFUSED, "nisbflow decodes with one step (decode_affinity_cc or decode_waterz)")
        return
    name, kwargs = steps[0].get("name"), dict(steps[0].get("kwargs") or {})
    _decoder(out, f"{key}[0].name", f"{key}[0].kwargs", name, kwargs)


def _decoder(out: Translation, name_key: str, kwargs_key: str, name, kwargs: dict) -> None:
    """One decoding step (``decoding.steps[0]`` or the tuning defaults: its function's name under ``name_key``, its
    arguments under ``kwargs_key``) onto ``decoding.*``."""
    if name == "decode_affinity_cc":
        out.set(name_key, "cc", "decoding.method", "connected components of affinities > threshold", given=name)
        rules = {
            "threshold": to("decoding.threshold"),
            "backend": to("decoding.backend"),
            "edge_offset": to("decoding.edge_offset"),
        }
    elif name == "decode_waterz":
        out.set(name_key, "waterz", "decoding.method", "watershed + agglomeration (waterz)", given=name)
        rules = {
            "thresholds": to(
                "decoding.waterz.thresholds", lambda v: [float(t) for t in (v if isinstance(v, list) else [v])]
            ),
            "merge_function": to("decoding.waterz.scoring"),
            "aff_threshold": _aff_threshold,
            "channel_order": only(
                "xyz",
                "affinities in X, Y, Z channel order, nisbflow's",
                "nisbflow's affinities are in X, Y, Z channel order",
            ),
            "use_aff_uint8": ignore("arithmetic width only (lossless for histogram scoring)"),
            "dust_merge": only(
                False,
                "no dust merging, as nisbflow's waterz",
                "nisbflow's waterz does not merge dust segments; set dust_merge: false",
            ),
        }
    else:
        out.note(name_key, name, REFUSED, "nisbflow decodes with decode_affinity_cc or decode_waterz")
        return
    for name_, value in kwargs.items():
        rule = rules.get(name_)
        if rule is None:
            out.note(f"{kwargs_key}.{name_}", value, REFUSED, "no such setting in nisbflow's decoder")
        else:
            rule(out, f"{kwargs_key}.{name_}", value)


def _aff_threshold(out: Translation, key: str, value) -> None:
    if isinstance(value, list) and len(value) == 2:
        out.set(key + "[0]", float(value[0]), "decoding.waterz.aff_low")
        out.set(key + "[1]", float(value[1]), "decoding.waterz.aff_high")
    else:
        out.note(key, value, REFUSED, "aff_threshold must be [low, high]")


def _metrics(out: Translation, key: str, value) -> None:
    names = list(value) if isinstance(value, list) else [value]
    unknown = [n for n in names if n != "nerl"]
    if unknown:
        out.note(key, value, REFUSED, f"nisbflow's skeleton metrics are NERL's; {unknown} are not computed")
        return
    out.set(
        key,
        ["nerl", "em_erl"],
        "evaluation.metrics",
        "PyTC's nerl is em_erl's (metrics.json: em_erl), BANIS's NERL beside it (nerl)",
        given=value,
    )


def _resolution(out: Translation, key: str, value) -> None:
    voxel = out.tree.get("data", {}).get("voxel_size")
    if voxel is None or _equal_numbers(voxel, value):
        out.note(key, value, MATCHES, "NERL's voxel size is data.voxel_size")
    else:
        out.note(key, value, REFUSED, f"it differs from the data's resolution {list(voxel)}")


def _max_epochs(out: Translation, key: str, value) -> None:
    if out.get("optimization.max_steps") not in (None, -1, 0):
        out.note(key, value, IGNORED, "training is step-based: optimization.max_steps ends it")
    else:
        out.note(key, value, REFUSED, "nisbflow trains for optimization.max_steps steps; give max_steps instead")


def _t_max(out: Translation, key: str, value) -> None:
    steps = out.get("optimization.max_steps", 200000)
    if int(value) == int(steps):
        out.note(key, value, MATCHES, "nisbflow's cosine schedule spans optimization.max_steps")
    elif _follows(out, key, "optimization.max_steps"):
        out.note(
            key,
            value,
            MATCHES,
            f"follows optimization.max_steps={steps} given as KEY=VALUE (nisbflow's cosine schedule spans max_steps)",
        )
    else:
        out.note(
            key, value, REFUSED, f"nisbflow's cosine schedule spans optimization.max_steps ({steps}), not {value} steps"
        )


def _scheduler_min_lr(out: Translation, key: str, value) -> None:
    given = out.get("optimization.scheduler.min_lr", 0.0)
    if _equal_numbers(value, given):
        out.note(key, value, MATCHES, "equals optimization.scheduler.min_lr")
    else:
        out.note(key, value, REFUSED, f"it differs from optimization.scheduler.min_lr {given}")


def _ema_detail(out: Translation, key: str, value) -> None:
    if out.get("optimization.ema.enabled", False):
        out.set(key, value, key, "the EMA of the weights, as PyTorch Connectomics' EMAWeightsCallback")
    else:
        out.note(key, value, IGNORED, "EMA is off (optimization.ema.enabled: false)")


def _ema_device(out: Translation, key: str, value) -> None:
    if value in (None, "", "cuda", "cpu") or not out.get("optimization.ema.enabled", False):
        out.note(
            key, value, IGNORED, "where the average is kept changes no value (nisbflow keeps it beside the weights)"
        )
    else:
        out.note(key, value, REFUSED, "nisbflow keeps the average on the weights' device")


def _flip_axes(value):
    """PyTC's ``flip_axes`` (all, none, or a list whose entries are an axis or a list of axes) in nisbflow's form."""
    if isinstance(value, str) or value is None:
        return "none" if value is None else value
    return [[int(entry)] if isinstance(entry, int) else [int(a) for a in entry] for entry in value]


def _tta_detail(convert=None):
    """A test-time augmentation setting: nisbflow's same-named key when it is on, no effect when it is off."""

    def rule(out: Translation, key: str, value) -> None:
        if out.get("inference.test_time_augmentation.enabled", False):
            out.set(
                key, convert(value) if convert else value, key, "test-time augmentation of every window", given=value
            )
        else:
            out.note(key, value, IGNORED, "test-time augmentation is off")

    return rule


def _patch_first(out: Translation, key: str, value) -> None:
    if not out.get("inference.test_time_augmentation.enabled", False):
        out.note(key, value, IGNORED, "test-time augmentation is off")
    else:
        out.note(
            key,
            value,
            MATCHES,
            "nisbflow augments each window and ensembles its views inside the window "
            "before blending (PyTC's patch-first blends each view, then ensembles: the "
            "same on one window, docs/inference.md)",
        )


def _gaussian_only(out: Translation, key: str, value) -> None:
    out.note(
        key,
        value,
        IGNORED,
        "read by gaussian blending and padding only; nisbflow blends by distance "
        "transform on a grid snapped to the volume's edge",
    )


def _scheduler_name(out: Translation, key: str, value) -> None:
    if value == "CosineAnnealingLR":
        out.set(key, "cosine", "optimization.scheduler.name", "cosine annealing per step to min_lr", given=value)
    else:
        out.note(key, value, REFUSED, "nisbflow anneals the learning rate by cosine (CosineAnnealingLR) only")


def _mask_path(out: Translation, key: str, value) -> None:
    out.set(key, value or None, "decoding.affinity_mask_path", "'' means no mask, as in PyTC", given=value)


# ---------------------------------------------------------------------------------------------------------------
# augmentation: compared with what nisbflow's training does (nisbflow.train.augment, BANIS's data.py)

NISBFLOW_AUGMENTATION: dict[str, dict[str, Any]] = {
    "axis_permute": {"enabled": True, "prob": 1.0},
    "rotate90_all": {"enabled": True, "prob": 1.0},
    "flip": {"enabled": True, "prob": 0.5, "spatial_axis": [0, 1, 2]},
    "slice_drop": {"enabled": True, "prob": 0.5, "slice_prob": 0.05, "spatial_axis": [0, 1, 2], "fill_value": 0.0},
    "slice_shift": {
        "enabled": True,
        "prob": 0.5,
        "slice_prob": 0.05,
        "shift_magnitude": 10,
        "spatial_axis": [0, 1, 2],
        "wrap": True,
    },
    "affine": {
        "enabled": True,
        "prob": 0.5,
        "rotate_range": [math.pi] * 3,
        "scale_range": [0.2] * 3,
        "shear_range": [0.5] * 3,
    },
    "intensity": {
        "enabled": True,
        "banis_style": True,
        "mul_add_prob": 0.5,
        "mul_range": [0.9, 1.1],
        "add_range": [-0.1, 0.1],
        "gaussian_noise_prob": 0.5,
        "gaussian_noise_std": 0.5,
    },
}
"""nisbflow's training augmentation in PyTC's words: every group always on, with BANIS's train_base_long values
(:class:`nisbflow.train.augment.Augmentations`)."""


def _augmentation(out: Translation, key: str, value) -> None:
    groups = value if isinstance(value, dict) else {}
    for group, settings in groups.items():
        expected = NISBFLOW_AUGMENTATION.get(group)
        for name, given in (settings or {}).items() if isinstance(settings, dict) else [(None, settings)]:
            where = f"{key}.{group}" + (f".{name}" if name else "")
            if expected is None:
                if isinstance(settings, dict) and settings.get("enabled") is False:
                    out.note(where, given, MATCHES, f"{group} is off, and nisbflow does not apply it")
                else:
                    out.note(
                        where,
                        given,
                        REFUSED,
                        f"nisbflow's training does not apply {group} (its augmentation is BANIS's: PyTC's aug_banis)",
                    )
                continue
            wanted = expected.get(str(name))
            same = wanted is not None and (
                given == wanted
                or (
                    not isinstance(given, (bool, str))
                    and not isinstance(wanted, bool)
                    and _equal_numbers(given, wanted)
                )
            )
            if same:
                out.note(where, given, MATCHES, "BANIS's augmentation, which nisbflow trains with")
            else:
                out.note(
                    where,
                    given,
                    REFUSED,
                    f"nisbflow trains with BANIS's augmentation ({group}.{name}: "
                    f"{wanted!r}, PyTC's aug_banis) and has no setting for another",
                )


# ---------------------------------------------------------------------------------------------------------------
# data splits: PyTC's path + image/label globs → nisbflow's seed folders


def _split(split: str) -> Rule:
    def rule(out: Translation, key: str, value) -> None:
        settings = dict(value or {})
        root = out.get("data.root_path") or ""
        base = settings.pop("path", "") or ""
        if root and not os.path.isabs(base):
            base = os.path.join(root, base) if base else root
        image, label = settings.pop("image", None), settings.pop("label", None)
        seeds = _seed_folders(out, key, base, image, label)
        if seeds is None:
            return
        if not seeds and base:
            seeds = [base.rstrip("/")]
        if seeds:
            if split != "train" and (len(seeds) > 1 or globbing.has_magic(seeds[0])):
                matched = sorted(globbing.glob(seeds[0])) if len(seeds) == 1 else seeds
                if len(matched) != 1:
                    out.note(
                        f"{key}.image", image, REFUSED, f"data.{split} must name one seed; {seeds} name {len(matched)}"
                    )
                    return
                seeds = matched
            setting = seeds if len(seeds) > 1 else seeds[0]
            out.set(
                f"{key}.path",
                setting,
                f"data.{split}.path",
                "the seed folder holding data.zarr: path joined with image/label as PyTC does",
                given=base if image is None else f"{base} + {image}",
            )
            for name, given in (("image", image), ("label", label)):
                if given not in (None, "", []):
                    out.mappings.append(
                        KeyMapping(
                            f"{key}.{name}",
                            given,
                            SET,
                            (f"data.{split}.path",),
                            f"<seed>/data.zarr/{'img' if name == 'image' else 'seg'} of that seed folder",
                            setting,
                        )
                    )
        _split_extras(out, key, split, settings)

    return rule


def _seed_folders(out: Translation, key: str, base: str, image, label) -> list | None:
    """The seed folders a PyTC split's ``image`` and ``label`` paths (joined to ``base``) lie in (``<seed>/data.zarr
    /img``, ``…/seg``); None when one is refused (noted on ``out``): not a NISB seed, or image and label disagree."""
    seeds: list = []
    for name, given, suffix in (("image", image, "data.zarr/img"), ("label", label, "data.zarr/seg")):
        if given in (None, "", []):
            continue
        listed = given if isinstance(given, list) else [given]
        joined = [p if os.path.isabs(str(p)) or not base else os.path.join(base, str(p)) for p in listed]
        bad = [p for p in joined if not str(p).rstrip("/").endswith(suffix)]
        if bad:
            out.note(
                f"{key}.{name}",
                given,
                REFUSED,
                f"nisbflow reads NISB seed folders (<seed>/{suffix}); {bad[0]} is not one: convert it "
                "with nisbflow convert into <seed>/data.zarr",
            )
            return None
        folders = [str(p).rstrip("/")[: -len(suffix)].rstrip("/") or "." for p in joined]
        if seeds and seeds != folders:
            out.note(f"{key}.{name}", given, REFUSED, f"its seed folders {folders} differ from the image's {seeds}")
            return None
        seeds = folders
    return seeds


def _split_extras(out: Translation, key: str, split: str, settings: dict) -> None:
    """A PyTC split's keys beside its paths: ``mask`` (refused), ``skeleton``, ``resolution`` (one voxel size for
    every split), anything else refused."""
    mask = settings.pop("mask", None)
    if mask not in (None, "", []):
        out.note(f"{key}.mask", mask, REFUSED, "nisbflow trains and infers without a volume mask")
    skeleton = settings.pop("skeleton", None)
    if skeleton not in (None, ""):
        out.set(f"{key}.skeleton", skeleton, f"data.{split}.skeleton")
    resolution = settings.pop("resolution", None)
    if resolution is not None:
        voxel = out.tree.get("data", {}).get("voxel_size")
        if voxel is not None and not _equal_numbers(voxel, resolution):
            out.note(
                f"{key}.resolution",
                resolution,
                REFUSED,
                f"it differs from another split's resolution {list(voxel)}; nisbflow has one voxel size",
            )
        else:
            out.set(
                f"{key}.resolution",
                [float(r) for r in resolution],
                "data.voxel_size",
                "nm, (x, y, z)",
                given=resolution,
            )
    for name, given in settings.items():
        out.note(f"{key}.{name}", given, REFUSED, "no such setting for a nisbflow data split (path, skeleton)")


# ---------------------------------------------------------------------------------------------------------------
# tuning


def _sampler(out: Translation, key: str, value) -> None:
    settings: dict[str, Any] = {"name": value} if isinstance(value, str) else dict(value or {})
    names = {"grid": "grid", "tpe": "TPE", "random": "random"}
    name = str(settings.pop("name", "TPE"))
    if name.lower() not in names:
        out.note(f"{key}.name", name, REFUSED, "nisbflow's samplers are Grid, TPE and Random")
        return
    out.set(f"{key}.name", names[name.lower()], "tune.sampler", given=name)
    kwargs = dict(settings.pop("kwargs", None) or {})
    if "n_startup_trials" in kwargs:
        out.set(f"{key}.kwargs.n_startup_trials", int(kwargs.pop("n_startup_trials")), "tune.n_startup_trials")
    if "seed" in kwargs:
        out.set(f"{key}.kwargs.seed", kwargs.pop("seed"), "tune.seed")
    space = kwargs.pop("search_space", None) or {}
    for parameter, values in space.items():
        _grid_values(out, f"{key}.kwargs.search_space.{parameter}", parameter, values)
    for name_, given in {**kwargs, **settings}.items():
        out.note(f"{key}.{name_}", given, REFUSED, "no such sampler setting in nisbflow")


def _search_target(out: Translation) -> str:
    method = out.tree.get("decoding", {}).get("method") or "cc"
    return "tune.waterz_threshold" if method == "waterz" else "tune.threshold"


def _grid_values(out: Translation, key: str, parameter: str, values) -> None:
    if parameter not in ("threshold", "thresholds"):
        out.note(key, values, REFUSED, "nisbflow tunes the decoding threshold only")
        return
    values = sorted(float(v) for v in values)
    steps = {round(b - a, 9) for a, b in zip(values, values[1:])}
    if len(values) < 2 or len(steps) != 1:
        out.note(key, values, REFUSED, "nisbflow's grid is evenly spaced (low, high, step); these values are not")
        return
    step = steps.pop()
    target = _search_target(out)
    out.set(
        key,
        {"low": values[0], "high": values[-1], "step": step},
        target,
        f"{len(values)} thresholds {values[0]:g}-{values[-1]:g} step {step:g}",
        given=values,
    )


def _objective(out: Translation, key: str, value) -> None:
    settings = dict(value or {})
    mode = settings.pop("mode", "single")
    if mode != "single":
        out.note(f"{key}.mode", mode, REFUSED, "nisbflow tunes one objective")
        return
    out.note(f"{key}.mode", mode, MATCHES, "one objective")
    objective = dict(settings.pop("single_objective", None) or {})
    metric = objective.pop("metric", None)
    if metric is not None:
        if metric == "nerl":
            out.set(
                f"{key}.single_objective.metric",
                "em_erl",
                "tune.metric",
                "PyTC's nerl is em_erl's NERL at evaluation.nerl_merge_threshold",
                given=metric,
            )
        else:
            out.note(f"{key}.single_objective.metric", metric, REFUSED, "nisbflow tunes on NERL (nerl)")
    if "direction" in objective:
        out.set(f"{key}.single_objective.direction", objective.pop("direction"), "tune.direction")
    for name, given in {**objective, **settings}.items():
        out.note(f"{key}.{name}", given, REFUSED, "no such tuning objective setting in nisbflow")


def _parameter_space(out: Translation, key: str, value) -> None:
    space = dict((value or {}).get("decoding") or {})
    others = {k: v for k, v in (value or {}).items() if k != "decoding"}
    for name, given in others.items():
        out.note(f"{key}.{name}", given, REFUSED, "nisbflow tunes decoding only")
    function = space.pop("function_name", None)
    defaults = dict(space.pop("defaults", None) or {})
    if function is not None:
        _decoder(out, f"{key}.decoding.function_name", f"{key}.decoding.defaults", function, defaults)
    for parameter, spec in dict(space.pop("parameters", None) or {}).items():
        where = f"{key}.decoding.parameters.{parameter}"
        spec = dict(spec or {})
        if parameter not in ("threshold", "thresholds") or spec.get("type", "float") != "float":
            out.note(where, spec, REFUSED, "nisbflow tunes the decoding threshold (a float) only")
            continue
        low, high = (float(v) for v in spec.get("range", [0.4, 0.9]))
        step = float(spec.get("step") or 0.1)
        target = _search_target(out)
        already = out.tree.get("tune", {}).get(target.split(".")[1])
        wanted = {"low": low, "high": high, "step": step}
        if already and not all(math.isclose(already[k], wanted[k]) for k in wanted):
            out.note(
                where,
                spec,
                REFUSED,
                f"its range {low:g}-{high:g} step {step:g} differs from the sampler's search space {already}",
            )
            continue
        out.set(where, wanted, target, "the search range", given=spec)
    for name, given in space.items():
        out.note(f"{key}.decoding.{name}", given, REFUSED, "no such parameter-space setting in nisbflow")


# ---------------------------------------------------------------------------------------------------------------
# the table

ON_ZARR = "how samples are read, not which: nisbflow reads zarr chunks lazily"
WHERE_TENSORS_LIVE = "where tensors live while predicting, not what is predicted"
PRESET = "arch mednext builds MIC-DKFZ's predefined size, which fixes it (PyTC's build_mednext)"
LOGGING = "TensorBoard logging only: nisbflow logs train_loss_total_epoch, val_loss_total and image slices"

SUBTREE_RULES: dict[str, Rule] = {
    "model.loss.losses": _losses,
    "data.label_transform.targets": _targets,
    "data.augmentation": _augmentation,
    "data.train": _split("train"),
    "data.val": _split("val"),
    "data.test": _split("test"),
    "inference.model.channel_activations": _channel_activations,
    "decoding.steps": _decoding_steps,
    "evaluation.metrics": _metrics,
    "monitor.logging": ignore(LOGGING),
    "tune.logging": ignore("what tuning prints; nisbflow shows a progress bar and the curve"),
    "tune.sampler": _sampler,
    "tune.optimization": _objective,
    "tune.parameter_space": _parameter_space,
    "optimization.optimizer.betas": to("optimization.optimizer.betas"),
    "model.input_size": _model_size,
    "model.output_size": _model_size,
    "data.dataloader.patch_size": to("data.patch_size", reason="(x, y, z) voxels"),
    "data.dataloader.target_context": _target_context,
    "inference.window.window_size": to("inference.window_size"),
    "inference.model.select_channel": to("inference.select_channel"),
    "evaluation.nerl_resolution": _resolution,
    "model.mednext.block_counts": ignore(PRESET),
    "model.mednext.exp_r": ignore(PRESET),
}

LEAF_RULES: dict[str, Rule] = {
    "experiment_name": to("experiment_name"),
    "save_path": to("save_path"),
    "description": ignore("a description, read by no stage"),
    "system.num_gpus": to("system.num_gpus"),
    "system.num_workers": to("system.num_workers"),
    "system.seed": ignore("nisbflow's training crops are a fixed function of the sample index"),
    "model.arch.type": only("mednext", "MedNeXt", "nisbflow's network is MedNeXt (arch type mednext)"),
    "model.in_channels": to("model.in_channels"),
    "model.out_channels": to("model.out_channels"),
    "model.loss.deep_supervision": only(
        False, "no deep supervision, as BANIS", "deep supervision is not implemented in nisbflow's training"
    ),
    "model.mednext.size": to("model.size", reason="MIC-DKFZ's MedNeXt S/B/M/L"),
    "model.mednext.kernel_size": to("model.kernel_size"),
    "model.mednext.checkpoint_style": _checkpoint_style,
    "model.mednext.dim": only("3d", "3-D", "nisbflow's network is 3-D"),
    "model.mednext.base_channels": ignore(PRESET),
    "model.mednext.do_res": ignore(PRESET),
    "model.mednext.do_res_up_down": ignore(PRESET),
    "model.mednext.norm": ignore(PRESET),
    "model.mednext.grn": ignore(PRESET),
    "data.root_path": ignore("joined to each split's path (data.train/val/test)"),
    "data.dataloader.batch_size": to("data.dataloader.batch_size", reason="patches per GPU per step"),
    "data.dataloader.use_cache": ignore(ON_ZARR),
    "data.dataloader.use_preloaded_cache_train": ignore(ON_ZARR),
    "data.dataloader.use_preloaded_cache_val": ignore(ON_ZARR),
    "data.dataloader.persistent_workers": ignore(ON_ZARR),
    "data.dataloader.use_lazy_zarr": ignore(ON_ZARR),
    "data.dataloader.val_random_sampling": only(
        True, "nisbflow validates on seeded random crops", "nisbflow validates on random crops only"
    ),
    "data.image_transform.normalize": to("data.normalize"),
    "data.label_transform.erosion": to("data.erosion"),
    "data.label_transform.relabel_connected_components": to("data.relabel_connected_components"),
    "data.label_transform.relabel_connectivity": to("data.relabel_connectivity"),
    "optimization.optimizer.name": to("optimization.optimizer.name"),
    "optimization.optimizer.lr": to("optimization.optimizer.lr"),
    "optimization.optimizer.weight_decay": to("optimization.optimizer.weight_decay"),
    "optimization.optimizer.eps": only((1e-8,), "AdamW's eps 1e-8 (torch's default)", "nisbflow's AdamW uses eps 1e-8"),
    "optimization.scheduler.name": _scheduler_name,
    "optimization.scheduler.interval": only("step", "stepped every step", "nisbflow steps its schedule per step"),
    "optimization.scheduler.frequency": only(1, "every step", "nisbflow steps its schedule every step"),
    "optimization.scheduler.min_lr": to("optimization.scheduler.min_lr"),
    "optimization.scheduler.params.t_max": _t_max,
    "optimization.scheduler.params.min_lr": _scheduler_min_lr,
    "optimization.scheduler.params.eta_min": _scheduler_min_lr,
    "optimization.max_epochs": _max_epochs,
    "optimization.max_steps": to("optimization.max_steps"),
    "optimization.n_steps_per_epoch": to("optimization.n_steps_per_epoch"),
    "optimization.val_check_interval": to("optimization.val_check_interval"),
    "optimization.val_check_interval_unit": only(
        "step", "validation every val_check_interval steps", "nisbflow validates every val_check_interval steps"
    ),
    "optimization.val_steps_per_epoch": to("optimization.val_steps_per_epoch"),
    "optimization.gradient_clip_val": to("optimization.gradient_clip_val"),
    "optimization.accumulate_grad_batches": only(
        1, "one batch per update", "nisbflow updates after every batch (no gradient accumulation)"
    ),
    "optimization.precision": to("optimization.precision", str),
    "optimization.log_every_n_steps": ignore(LOGGING),
    "optimization.num_sanity_val_steps": ignore("Lightning's check before training; no effect on the weights"),
    "optimization.ema.enabled": to("optimization.ema.enabled", bool, "BANIS+'s EMA of the weights"),
    "optimization.ema.decay": _ema_detail,
    "optimization.ema.warmup_steps": _ema_detail,
    "optimization.ema.validate_with_ema": _ema_detail,
    "optimization.ema.device": _ema_device,
    "optimization.ema.copy_buffers": only(
        True,
        "buffers copied into the average, as PyTorch Connectomics' default",
        "nisbflow copies buffers into the average (copy_buffers: true)",
    ),
    "monitor.checkpoint.monitor": to("optimization.checkpoint.monitor"),
    "monitor.checkpoint.mode": to("optimization.checkpoint.mode"),
    "monitor.checkpoint.save_top_k": to("optimization.checkpoint.save_top_k"),
    "monitor.checkpoint.save_every_n_steps": to("optimization.checkpoint.every_n_train_steps"),
    "monitor.checkpoint.save_last": to("optimization.checkpoint.save_last"),
    "monitor.checkpoint.save_on_train_epoch_end": ignore("nisbflow saves checkpoints on steps"),
    "monitor.checkpoint.checkpoint_filename": ignore(
        "file names: nisbflow writes last.pt, step-N.pt and best-step-N.pt under <run>/checkpoints"
    ),
    "inference.model.output_dtype": to("inference.output_dtype"),
    "inference.execution.strategy": only(
        "whole_volume",
        "the whole-volume sliding window, which nisbflow's block-wise inference equals exactly",
        "nisbflow predicts the whole-volume sliding window (block-wise, equal to it)",
    ),
    "inference.window.overlap": to("inference.overlap"),
    "inference.window.blending": to("inference.blending"),
    "inference.window.snap_to_edge": to("inference.snap_to_edge"),
    "inference.window.sw_batch_size": to("inference.sw_batch_size"),
    "inference.window.sigma_scale": _gaussian_only,
    "inference.window.padding_mode": _gaussian_only,
    "inference.window.keep_input_on_cpu": ignore(WHERE_TENSORS_LIVE),
    "inference.window.sw_device": ignore(WHERE_TENSORS_LIVE),
    "inference.window.output_device": ignore(WHERE_TENSORS_LIVE),
    "inference.window.distributed_sharding": ignore(
        "how windows are shared out; nisbflow shares blocks among Dask workers"
    ),
    "inference.test_time_augmentation.enabled": to(
        "inference.test_time_augmentation.enabled", bool, "test-time augmentation of every window"
    ),
    "inference.test_time_augmentation.ensemble_mode": _tta_detail(
        lambda v: v if isinstance(v, str) else [[str(c), m] for c, m in v]
    ),
    "inference.test_time_augmentation.flip_axes": _tta_detail(_flip_axes),
    "inference.test_time_augmentation.rotation90_axes": _tta_detail(
        lambda v: v if isinstance(v, str) or v is None else [[int(a) for a in plane] for plane in v]
    ),
    "inference.test_time_augmentation.rotate90_k": _tta_detail(
        lambda v: None if v is None else [int(k) for k in (v if isinstance(v, list) else [v])]
    ),
    "inference.test_time_augmentation.patch_first_local": _patch_first,
    "inference.test_time_augmentation.distributed_sharding": ignore(
        "how views are shared among GPUs; nisbflow shares blocks among Dask workers"
    ),
    "inference.test_time_augmentation.distributed_reduce_chunk_mb": ignore("how views are shared among GPUs"),
    "inference.test_time_augmentation.empty_cache_interval": ignore("GPU cache cleanup cadence"),
    "inference.test_time_augmentation.apply_mask": ignore(
        "PyTC multiplies the ensemble by an inference mask when one is given; nisbflow's inference takes none"
    ),
    "inference.test_time_augmentation.transforms": only(
        None, "no extra transforms", "nisbflow's views are flips and quarter turns"
    ),
    "inference.save_results": ignore("nisbflow test always writes affinities.zarr"),
    "inference.save_backend": ignore(
        "the file format: nisbflow writes zarr (nisbflow convert writes PyTC's test_im_prediction.h5)"
    ),
    "decoding.enabled": only(True, "test decodes", "nisbflow test always decodes; use nisbflow infer to predict only"),
    "decoding.affinity_mask_path": _mask_path,
    "evaluation.enabled": only(
        True, "test evaluates", "nisbflow test always evaluates; use nisbflow infer and decode without it"
    ),
    "evaluation.nerl_merge_threshold": to(
        "evaluation.em_erl_merge_threshold", int, "em_erl's merge threshold (metric em_erl)"
    ),
    "evaluation.nerl_chunk_num": ignore("how em_erl splits its work"),
    "evaluation.nerl_num_workers": ignore("how em_erl splits its work"),
    "evaluation.nerl_skeleton_id_attribute": only("id", "skeleton ids from 'id'", "nisbflow reads 'id'"),
    "evaluation.nerl_skeleton_position_attribute": only(
        "index_position", "positions from 'index_position'", "nisbflow reads 'index_position'"
    ),
    "evaluation.nerl_skeleton_edge_length_attribute": only(
        "edge_length", "em_erl's lengths from 'edge_length'", "nisbflow's em_erl reads 'edge_length'"
    ),
    "evaluation.nerl_skeleton_position_order": only("xyz", "X, Y, Z positions", "nisbflow's skeletons are XYZ"),
    "evaluation.nerl_prediction_position_order": only(
        (None, "xyz"), "X, Y, Z segmentations", "nisbflow's segmentations are XYZ"
    ),
    "tune.enabled": ignore("--mode tune (or nisbflow tune) chooses to tune"),
    "tune.n_trials": to("tune.n_trials"),
    "tune.study_name": to("tune.study_name"),
    "tune.load_if_exists": to("tune.load_if_exists"),
    "tune.storage": to("tune.storage"),
    "tune.save_study": ignore("the study is always kept in tune.storage"),
}


def translate(resolved: dict, overridden=()) -> Translation:
    """A resolved PyTC tree → nisbflow configuration tree and one :class:`KeyMapping` per key (module docstring).
    Rules that compare keys see the whole tree; data splits are read first so ``data.voxel_size`` is known.
    ``overridden``: the keys KEY=VALUE set, without a stage prefix (what a shortened run's settings follow)."""
    out = Translation(source=resolved, overridden=set(overridden))
    order = ["data.train", "data.val", "data.test"]
    for key in order:
        value = out.get(key)
        if value is not None:
            SUBTREE_RULES[key](out, key, value)
    decoding_first = ["decoding.steps", "tune.parameter_space"]  # the method decides which search range is set
    for key in decoding_first:
        value = out.get(key)
        if value is not None:
            SUBTREE_RULES[key](out, key, value)
    _walk(out, resolved, "", skip=set(order + decoding_first))
    return out


def _walk(out: Translation, node: dict, prefix: str, skip: set) -> None:
    for name, value in node.items():
        key = f"{prefix}{name}"
        if key in skip:
            continue
        if key in SUBTREE_RULES:
            SUBTREE_RULES[key](out, key, value)
        elif isinstance(value, dict) and value:
            _walk(out, value, key + ".", skip)
        elif key in LEAF_RULES:
            LEAF_RULES[key](out, key, value)
        elif isinstance(value, dict):
            continue  # an empty section
        else:
            from .schema import valid_keys

            reason = (
                (
                    f"{key} is nisbflow's key, not PyTorch Connectomics': a PyTC file holds PyTC's keys (nisbflow "
                    "config show lists them); give nisbflow's as KEY=VALUE"
                )
                if key in valid_keys()
                else (
                    "nisbflow has no such setting and cannot tell whether ignoring it would change a result; remove it"
                )
            )
            out.note(key, value, REFUSED, reason)


def refuse(translation: Translation, where: str) -> None:
    """One :class:`ConfigError` line for the refused keys of ``translation`` (the first with its reason)."""
    refused = translation.refusals()
    if not refused:
        return
    first = refused[0]
    more = f"; also refused: {', '.join(m.key for m in refused[1:])}" if len(refused) > 1 else ""
    raise ConfigError(
        f"{where}: {first.key} = {first.value!r} is refused: {first.reason}{more} "
        "(nisbflow config show --config FILE --mode MODE lists every key)"
    )
