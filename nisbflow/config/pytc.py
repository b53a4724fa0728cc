"""PyTorch Connectomics configuration files read as they are, and translated onto nisbflow's schema.

PyTorch Connectomics (PyTC) resolves a file in four steps, which :func:`resolve_pytc` repeats from PyTC's rules
(``connectomics/config/pipeline``):

1. ``_base_`` files (a path or a list, relative to the file) are merged first, in list order; the file's own keys
   win (mappings merge key by key, lists are replaced);
2. profile selectors pick an entry of a profile library the bases define (``data.augmentation.profile: aug_banis``
   from ``augmentation_profiles``, ``data.dataloader.profile: lazy``, ``model.arch.profile``, …, under a stage
   section); the entry is merged under the keys the file sets beside the selector, and the libraries
   (``*_profiles``, ``decoding_templates``) are dropped. ``decoding.steps`` entries ``{template: NAME}`` expand from
   ``decoding_templates``;
3. the runtime sections of one ``--mode`` are merged: the file's top-level section ← ``default:`` ← the mode's own
   section (``train:`` for train; ``test:`` for test; ``tune:`` for tune and tune-test). Train merges ``system``,
   ``model``, ``data``, ``optimization`` and ``monitor``; test and tune merge ``system``, ``model``, ``data``,
   ``inference``, ``decoding`` and ``evaluation``;
4. ``KEY=VALUE`` overrides (``tune.data.val.path=…``, ``data.dataloader.batch_size=2``,
   ``decoding.steps[0].kwargs.threshold=0.74``) are applied before step 3 and again after it, so a top-level
   override wins over a ``default:`` value.

nisbflow keeps one configuration for every stage, so the sections a mode does not merge are taken from the mode
that uses them: ``optimization``/``monitor`` from ``train:``, ``inference``/``decoding``/``evaluation`` from
``test:`` (``tune:`` in tune mode). A checkpoint trained from a PyTC file thus records the inference settings its
test will use.

:func:`translate` then maps every leaf key onto nisbflow's setting (:class:`KeyMapping`, verdict ``set``), or notes
it once as having no effect on any output (``ignored``), or accepts it because its value is what nisbflow always
does (``matches``); a key whose value nisbflow cannot honour, or that nisbflow does not know, is refused with the
reason (:class:`~nisbflow.errors.ConfigError`, one line), since ignoring it could change a result.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .tree import assign, delete, get, key_parts, merge, parse_override, peek, read_merged

STAGES = ("default", "train", "test", "tune")
MODES = ("train", "test", "tune", "tune-test")
RUNTIME_SECTIONS = ("system", "model", "data", "optimization", "monitor", "inference", "decoding", "evaluation")
MODE_SECTIONS = {
    "train": ("system", "model", "data", "optimization", "monitor"),
    "test": ("system", "model", "data", "inference", "decoding", "evaluation"),
    "tune": ("system", "model", "data", "inference", "decoding", "evaluation"),
}
"""The runtime sections PyTC merges from ``default:`` and the mode's section, by mode."""

PROFILE_FAMILIES = (
    # (library, selector below a stage section, target below that stage section, stages it may appear in)
    ("pipeline_profiles", "pipeline_profile", "", ("default",)),
    ("system_profiles", "system.profile", "system", STAGES),
    ("arch_profiles", "model.arch.profile", "model", STAGES),
    ("augmentation_profiles", "data.augmentation.profile", "data.augmentation", ("default", "train")),
    ("dataloader_profiles", "data.dataloader.profile", "data.dataloader", STAGES),
    ("optimizer_profiles", "optimization.profile", "optimization", ("default", "train")),
    ("loss_profiles", "model.loss.profile", "model.loss", ("default", "train")),
    ("label_profiles", "data.label_transform.profile", "data.label_transform", ("default", "train")),
    ("activation_profiles", "inference.model.activation_profile", "inference.model", ("default", "test", "tune")),
    ("tune_profiles", "profile", "", ("tune",)),
)
"""PyTC's profile selectors: where each may stand and which section its library entry merges into."""

LIST_OVERRIDES = {"model.loss": "losses", "inference.model": "channel_activations"}
"""Profiles whose entry is a list that an ``overrides: {index: patch}`` beside the selector patches."""

TEMPLATE_LIBRARY = "decoding_templates"

PYTC_ONLY_KEYS = (
    "description",
    "monitor",
    "model.mednext",
    "model.arch",
    "inference.window",
    "inference.model",
    "decoding.steps",
    "data.image_transform",
    "data.label_transform",
    "data.augmentation",
)
"""Keys only PyTC's schema has (sections there; ``model.arch`` is a word in nisbflow's): a flat file (no stage
sections) holding one is PyTC's older form."""

TUNE_SECTIONS = ("system", "model", "data", "inference", "decoding", "evaluation")
"""Sections under ``tune:`` that are tune mode's runtime sections rather than tuning settings."""


# ---------------------------------------------------------------------------------------------------------------
# recognising and reading PyTC files


def pytorch_connectomics_sign(tree: dict, bases: list, path: Path, depth: int = 0) -> str | None:
    """What marks ``tree`` (from ``path``) or a ``_base_`` file it names as a PyTorch Connectomics configuration:
    ``default:``/``train:``/``test:`` sections, or a ``_base_`` into its ``connectomics/config`` profiles; None for
    a nisbflow file."""
    sectioned = [k for k in ("default", "train", "test") if isinstance(tree.get(k), dict)]
    if sectioned:
        return f"{'its' if depth == 0 else path.name + ' has'} {', '.join(s + ':' for s in sectioned)} section(s)"
    flat = [
        key
        for key in PYTC_ONLY_KEYS
        if isinstance(get(tree, key), (dict, list)) or (key == "description" and get(tree, key) is not None)
    ]
    if flat:
        return f"{'its' if depth == 0 else path.name + ' has'} PyTC key(s) {', '.join(flat)}"
    profiles = [b for b in bases if "connectomics/config" in b.replace("\\", "/")]
    if profiles:
        return f"_base_ {profiles[0]}" + ("" if depth == 0 else f" in {path.name}")
    if depth >= 8:
        return None
    for base in bases:
        found = peek(path.parent / base)  # None: the loader reports a missing or broken base
        sign = found and pytorch_connectomics_sign(*found, path.parent / base, depth + 1)
        if sign:
            return sign
    return None


def is_pytorch_connectomics(path: str | Path) -> str | None:
    """The sign (:func:`pytorch_connectomics_sign`) that ``path`` is a PyTC configuration, else None."""
    found = peek(path)
    return None if found is None else pytorch_connectomics_sign(*found, Path(path).expanduser())


def read_with_bases(path: str | Path) -> dict:
    """A PyTC file merged over the ``_base_`` files it names (relative to the file, recursively), as OmegaConf merges
    them: mappings key by key, everything else (lists included) replaced (:func:`nisbflow.config.tree.read_merged`)."""
    return read_merged(path)


# ---------------------------------------------------------------------------------------------------------------
# profiles, stages, overrides


def expand_profiles(tree: dict) -> tuple[dict, list[str]]:
    """Profile selectors and ``decoding.steps`` templates expanded, libraries dropped (step 2 of the module
    docstring); also the notes saying which entry each selector chose."""
    tree = copy.deepcopy(tree)
    notes = []
    allowed = {f"{stage}.{selector}" for _, selector, _, stages in PROFILE_FAMILIES for stage in stages}
    for library, selector, target, stages in PROFILE_FAMILIES:
        for stage in stages:
            selector_path = f"{stage}.{selector}"
            chosen = get(tree, selector_path)
            if chosen in (None, ""):
                continue
            entries = tree.get(library)
            if not isinstance(entries, dict):
                raise ConfigError(
                    f"{selector_path}: {chosen!r} names a profile of {library}, which no _base_ file "
                    "defines (PyTC's connectomics/config/all_profiles.yaml does)"
                )
            if chosen not in entries:
                raise ConfigError(
                    f"{selector_path}: unknown profile {chosen!r}; {library} has {', '.join(sorted(map(str, entries)))}"
                )
            delete(tree, selector_path)
            target_path = f"{stage}.{target}" if target else stage
            existing = get(tree, target_path)
            merged = merge(entries[chosen], existing) if isinstance(existing, dict) else copy.deepcopy(entries[chosen])
            assign(tree, target_path, merged)
            list_key = LIST_OVERRIDES.get(target)
            patches = merged.get("overrides") if list_key else None
            if isinstance(patches, dict) and isinstance(merged.get(list_key), list):
                items = merged[list_key]
                for index, patch in patches.items():
                    if not 0 <= int(index) < len(items):
                        raise ConfigError(
                            f"{target_path}.overrides: index {index} is outside {library}.{chosen}'s "
                            f"{len(items)}-entry {list_key}"
                        )
                    items[int(index)] = merge(items[int(index)], patch)
                merged.pop("overrides")
                assign(tree, target_path, merged)
            notes.append(f"{selector_path}: {chosen} (from {library})")
    for path in _selector_paths(tree):
        if path not in allowed:
            raise ConfigError(
                f"profile selector {path} stands where PyTorch Connectomics reads none; selectors go "
                "under a stage section, e.g. default.data.augmentation.profile"
            )
    _expand_templates(tree)
    for key in [k for k in tree if k.endswith("_profiles") or k == TEMPLATE_LIBRARY]:
        del tree[key]
    _resolve_references(tree)
    return tree, notes


def _selector_paths(tree, prefix: str = "") -> list[str]:
    found = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{prefix}{key}"
            if not prefix and (str(key).endswith("_profiles") or key == TEMPLATE_LIBRARY):
                continue
            if (key == "profile" or str(key).endswith("_profile")) and value not in (None, ""):
                found.append(path)
            found += _selector_paths(value, path + ".")
    return found


def _expand_templates(tree: dict) -> None:
    templates = tree.get(TEMPLATE_LIBRARY) or {}
    for root in ("", "default.", "tune.", "test."):
        steps = get(tree, f"{root}decoding.steps")
        if not isinstance(steps, list):
            continue
        expanded = []
        for item in steps:
            if not (isinstance(item, dict) and "template" in item):
                expanded.append(item)
                continue
            name = item["template"]
            if name not in templates:
                raise ConfigError(
                    f"{root}decoding.steps: unknown template {name!r}; {TEMPLATE_LIBRARY} has "
                    f"{', '.join(sorted(templates)) or 'none (no _base_ file defines it)'}"
                )
            payload = templates[name]
            listed = payload.get("steps", payload) if isinstance(payload, dict) else payload
            rest = {k: v for k, v in item.items() if k != "template"}
            if rest:
                base = listed[0] if isinstance(listed, list) else listed
                expanded.append(merge(base, rest))
            else:
                expanded += copy.deepcopy(list(listed))
        assign(tree, f"{root}decoding.steps", expanded)


_REFERENCE = re.compile(r"^\$\{([A-Za-z0-9_.\-]+)\}$")


def _resolve_references(tree: dict) -> None:
    """Whole-value interpolations ``${a.b.c}`` replaced by the value they name (OmegaConf's absolute references);
    any other use of ``${…}`` is refused (nisbflow does not evaluate resolvers)."""

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                node[key] = walk(value, f"{path}{key}.")
        elif isinstance(node, list):
            return [walk(v, f"{path}[{i}].") for i, v in enumerate(node)]
        elif isinstance(node, str) and "${" in node:
            match = _REFERENCE.match(node)
            target = get(tree, match.group(1)) if match else None
            if target is None:
                raise ConfigError(
                    f"{path[:-1]}: {node!r} is an OmegaConf interpolation nisbflow cannot resolve; "
                    "write the value itself"
                )
            return copy.deepcopy(target)
        return node

    walk(tree, "")


def resolve_stages(tree: dict, mode: str) -> dict:
    """The runtime configuration of ``mode`` (step 3 of the module docstring), with ``tune`` holding only the
    tuning settings; sections the mode does not merge come from the mode that uses them."""
    stage = "tune" if mode in ("tune", "tune-test") else mode
    resolved = {k: copy.deepcopy(v) for k, v in tree.items() if k not in STAGES}
    for section in RUNTIME_SECTIONS:
        if section in MODE_SECTIONS[stage]:
            source = stage
        elif section in MODE_SECTIONS["train"]:
            source = "train"
        else:
            source = "test"
        found = resolved.get(section)
        merged: dict = found if isinstance(found, dict) else {}
        for layer in ("default", source):
            patch = (tree.get(layer) or {}).get(section) if isinstance(tree.get(layer), dict) else None
            if isinstance(patch, dict):
                merged = merge(merged, patch)
        if merged:
            resolved[section] = merged
    tuning = tree.get("tune")
    if isinstance(tuning, dict):
        resolved["tune"] = {k: copy.deepcopy(v) for k, v in tuning.items() if k not in TUNE_SECTIONS}
    return resolved


def _is_top_level(key: str) -> bool:
    """Whether an override names a runtime or tuning key rather than one inside a stage section."""
    parts = key_parts(key)
    return parts[0] not in STAGES or (parts[0] == "tune" and (len(parts) < 2 or parts[1] not in TUNE_SECTIONS))


def resolve_pytc(path: str | Path, mode: str = "train", overrides=()) -> tuple[dict, list[str]]:
    """A PyTC file's runtime tree for ``mode`` (module docstring, steps 1-4) and the profile notes. ``overrides``:
    ``key=value`` strings in PyTC's key space."""
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
    tree, notes = expand_profiles(read_with_bases(path))
    pairs = [(key, value, _is_top_level(key)) for key, value in map(parse_override, overrides)]
    for key, value, top_level in pairs:
        try:
            assign(tree, key, value)
        except ConfigError:
            if not top_level:  # a top-level list index may exist only once the stages are merged
                raise
    resolved = resolve_stages(tree, mode)
    for key, value, top_level in pairs:  # a top-level override wins over default:/mode values
        if top_level:
            assign(resolved, key, value)
    return resolved, notes


# ---------------------------------------------------------------------------------------------------------------
# onto nisbflow


@dataclass
class PytcConfig:
    """A PyTC file read for one ``mode``: the nisbflow configuration ``tree`` it sets, the :class:`KeyMapping`
    list that made it (``translation``), the profile ``notes``, and the overrides left for nisbflow's own keys."""

    path: Path
    mode: str
    translation: Any
    notes: list = field(default_factory=list)
    nisbflow_overrides: list = field(default_factory=list)

    @property
    def tree(self) -> dict:
        return self.translation.tree

    def check(self) -> None:
        """Raise the one-line refusal when any key is refused."""
        from .pytc_keys import refuse

        refuse(self.translation, f"{self.path} (PyTorch Connectomics, --mode {self.mode})")

    def summary(self) -> str:
        """One line: how many keys were set, matched and ignored."""
        from collections import Counter

        counts = Counter(m.verdict for m in self.translation.mappings)
        return (
            f"{self.path} read as PyTorch Connectomics' --mode {self.mode}: {counts['set']} keys set nisbflow's, "
            f"{counts['matches']} match what nisbflow does, {counts['ignored']} have no effect in nisbflow "
            f"(nisbflow config show --config {self.path} --mode {self.mode} lists each)"
        )

    def describe(self) -> list[str]:
        """The mapping, one line per PyTC key, grouped: set, matches, ignored, refused."""
        from .pytc_keys import IGNORED, MATCHES, REFUSED, SET

        lines = [
            f"{self.path}: PyTorch Connectomics configuration, --mode {self.mode} (top-level <- default: <- "
            f"{'tune' if self.mode == 'tune-test' else self.mode}: <- KEY=VALUE)"
        ]
        lines += [f"  profile {note}" for note in self.notes]
        titles = {
            SET: "sets",
            MATCHES: "matches what nisbflow always does",
            IGNORED: "ignored (no effect in nisbflow)",
            REFUSED: "refused",
        }
        for verdict, title in titles.items():
            chosen = [m for m in self.translation.mappings if m.verdict == verdict]
            if chosen:
                lines.append(f"{title}:")
                lines += [f"  {m.line()}" for m in chosen]
        return lines


TRAINING_ONLY = (
    "model.loss",
    "model.input_size",
    "model.output_size",
    "data.augmentation",
    "data.label_transform",
    "data.dataloader",
    "data.train",
    "optimization",
    "monitor",
)
"""PyTC keys only training reads: a mode that does not train ignores what nisbflow would refuse of them."""


def _training_only(translation, mode: str) -> None:
    from .pytc_keys import IGNORED, REFUSED

    for mapping in translation.mappings:
        if mapping.verdict == REFUSED and any(
            mapping.key == p or mapping.key.startswith(p + ".") or mapping.key.startswith(p + "[")
            for p in TRAINING_ONLY
        ):
            mapping.verdict = IGNORED
            mapping.reason = (
                f"a training setting, and --mode {mode} does not train (refused in train: {mapping.reason})"
            )


def _is_pytc_key(key: str) -> bool:
    """Whether an override names a PyTC key (a stage section, a key PyTC's rules know, or a key nisbflow's schema
    does not have) rather than one of nisbflow's own."""
    from .pytc_keys import LEAF_RULES, SUBTREE_RULES

    plain = re.sub(r"\[-?\d+\]", "", key)
    head = plain.split(".")[0]
    if head in ("default", "train", "test") or (
        head == "tune" and len(plain.split(".")) > 1 and plain.split(".")[1] in TUNE_SECTIONS
    ):
        return True
    if plain in LEAF_RULES or any(plain == p or plain.startswith(p + ".") for p in SUBTREE_RULES):
        return True
    from .schema import valid_keys

    return plain not in valid_keys()  # neither's: PyTC's rules refuse it with the reason


def load_pytc(path: str | Path, mode: str = "train", overrides=()) -> PytcConfig:
    """Read a PyTC file for ``mode`` onto nisbflow's keys (:mod:`nisbflow.config.pytc_keys`); ``overrides`` are
    ``key=value`` strings, PyTC's keys applied as PyTC applies them and nisbflow's own (``decoding.threshold``,
    ``system.cluster``) kept in ``nisbflow_overrides``. Refusals are recorded, not raised (:meth:`PytcConfig.check`).
    ``tune-test`` reads ``tune:`` and takes ``data.test`` from ``test:``."""
    from .pytc_keys import translate

    path = Path(path).expanduser()
    overrides = list(overrides)
    pytc = [o for o in overrides if _is_pytc_key(parse_override(o)[0])]
    own = [o for o in overrides if o not in pytc]
    resolved, notes = resolve_pytc(path, "tune" if mode == "tune-test" else mode, pytc)
    overridden = {re.sub(r"^(default|train|test|tune)\.", "", parse_override(o)[0]) for o in pytc}
    translation = translate(resolved, overridden)
    if mode != "train":
        _training_only(translation, mode)
    if mode == "tune-test":
        tested = translate(resolve_pytc(path, "test", pytc)[0], overridden)
        test_split = tested.tree.get("data", {}).get("test")
        if test_split:
            translation.tree.setdefault("data", {})["test"] = test_split
        translation.mappings += [m for m in tested.mappings if m.key.startswith("data.test")]
    if "save_path" not in resolved:
        translation.set(
            "save_path",
            f"outputs/{path.stem}",
            "save_path",
            "PyTC's default for a file without save_path: outputs/<file name>",
        )
    return PytcConfig(path, mode, translation, notes, own)
