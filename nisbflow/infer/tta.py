"""Test-time augmentation (TTA) of affinity predictions, as PyTorch Connectomics' ``inference.test_time_augmentation``
defines it: pure torch functions on window batches ``(N, C, X, Y, Z)``.

- **Views** (:func:`views`): the identity and every flip of the configured axes (``flip_axes: all``: every subset
  of the three spatial axes, 8 views; a list: the identity plus each listed subset), each combined with the
  quarter turns ``rotate90_k`` (default 0–3) in each ``rotation90_axes`` plane; views that move voxels the same way
  are kept once (PyTC's de-duplication by signature). Axes are the array's spatial axes (0 = x, 1 = y, 2 = z in
  nisbflow's XYZ arrays), as the affinity offsets are.
- **Inverting a view** (:func:`restore`): the prediction is turned back (inverse quarter turn, then the flips), and
  each affinity channel is put where its edge now points. A flip along an axis turns the edge ``(v, v + o)`` into
  ``(v, v − o)``: in nisbflow's source-voxel convention that edge belongs to voxel ``v − o``, so the channel is
  moved by ``−o`` (``dest[u] = src[u + o]``), and its last ``|o|`` voxels along that axis have no value in this
  view (they are invalid, not zero). A quarter turn maps the x and y edges onto each other. The mapping must be a
  bijection of the offsets (BANIS's six are closed under flips and xy quarter turns).
- **Ensemble** (:func:`ensemble`): per channel ``mean``, ``min`` or ``max`` over the views whose value is valid at
  the voxel (the identity view always is). ``ensemble_mode`` is one mode for every channel or a list of
  ``[selector, mode]`` pairs over the output channels (``"0:3"``, ``"3:"``, ``"4"``, ``"-1:"``), PyTC's syntax.

The activation is applied to each view's prediction before the ensemble, as PyTC applies it (after inverting,
which only moves values, so the order does not matter). A network that is equivariant to the views gives back the
plain prediction on every valid voxel.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from nisbflow.errors import ConfigError

MODES = ("mean", "min", "max")


@dataclass(frozen=True)
class View:
    """One augmentation: ``flips`` (spatial axes, applied first), then ``k`` quarter turns in ``plane`` (two spatial
    axes; None: no turn)."""

    flips: tuple[int, ...] = ()
    plane: tuple[int, int] | None = None
    k: int = 0

    @property
    def identity(self) -> bool:
        return not self.flips and (self.plane is None or self.k % 4 == 0)

    def name(self) -> str:
        parts = [f"flip {''.join('xyz'[a] for a in self.flips)}"] if self.flips else []
        if self.plane is not None and self.k % 4:
            parts.append(f"rot90×{self.k % 4} {''.join('xyz'[a] for a in self.plane)}")
        return ", ".join(parts) or "identity"


def _axes(value, where: str) -> list[int]:
    axes = [value] if isinstance(value, int) else list(value)
    out = []
    for axis in axes:
        if int(axis) not in (0, 1, 2):
            raise ConfigError(
                f"inference.test_time_augmentation.{where}: axis {axis} is not a spatial axis 0, 1 or 2 (x, y, z)"
            )
        if int(axis) not in out:
            out.append(int(axis))
    return out


def views(flip_axes="all", rotation90_axes=None, rotate90_k=None) -> list[View]:
    """The views of a TTA configuration (module docstring), identity first."""
    flips: list[tuple[int, ...]]
    planes: list[tuple[int, int]]
    if flip_axes is None or (isinstance(flip_axes, str) and flip_axes.lower() == "none"):
        flips = [()]
    elif flip_axes == "all" or flip_axes == []:
        flips = [combo for r in range(4) for combo in itertools.combinations(range(3), r)]
    elif isinstance(flip_axes, str):
        raise ConfigError(
            f"inference.test_time_augmentation.flip_axes: {flip_axes!r} is not all, none or a list of axis lists"
        )
    else:
        flips = [()] + [tuple(_axes(entry, "flip_axes")) for entry in flip_axes]
    if rotation90_axes is None or (isinstance(rotation90_axes, str) and rotation90_axes.lower() == "none"):
        planes = []
    elif rotation90_axes == "all":
        planes = [(0, 1), (0, 2), (1, 2)]
    else:
        planes = []
        for entry in rotation90_axes:
            axes = _axes(entry, "rotation90_axes")
            if len(axes) != 2:
                raise ConfigError(
                    f"inference.test_time_augmentation.rotation90_axes: {entry} is not a plane of two axes"
                )
            plane = (int(axes[0]), int(axes[1]))
            if plane not in planes:
                planes.append(plane)
    if not planes:
        return [View(f) for f in flips]
    turns = []
    for k in [0, 1, 2, 3] if rotate90_k is None else rotate90_k:
        if int(k) % 4 not in turns:
            turns.append(int(k) % 4)
    seen, out = set(), []
    for flip in flips:
        for plane in planes:
            for k in turns or [0]:
                view = View(flip, plane, k)
                signature = _signature(view)
                if signature not in seen:
                    seen.add(signature)
                    out.append(view)
    return out


def _signature(view: View) -> tuple[int, ...]:
    base = torch.arange(2 * 3 * 5).reshape(2, 3, 5)
    return tuple(augment(base[None, None], view).reshape(-1).tolist())


def augment(batch: torch.Tensor, view: View) -> torch.Tensor:
    """The view of a batch ``(N, C, X, Y, Z)``: its flips, then its quarter turns."""
    if view.flips:
        batch = torch.flip(batch, dims=[a + 2 for a in view.flips])
    if view.plane is not None and view.k % 4:
        batch = torch.rot90(batch, k=view.k, dims=[a + 2 for a in view.plane])
    return batch


def _inverse_offset(offset: tuple[int, int, int], view: View) -> tuple[int, ...]:
    """Where an offset of the view's frame points in the original frame: the inverse quarter turn, then the flips."""
    moved = list(offset)
    if view.plane is not None:
        p, q = view.plane
        for _ in range((-view.k) % 4):
            moved[p], moved[q] = -moved[q], moved[p]
    for axis in view.flips:
        moved[axis] = -moved[axis]
    return tuple(moved)


@dataclass(frozen=True)
class Move:
    """Output channel ``dst`` takes the restored channel ``src``, moved by ``shift`` voxels (None: in place)."""

    src: int
    dst: int
    shift: tuple[int, ...] | None = None


def channel_moves(offsets, view: View) -> list[Move]:
    """How the restored channels of ``view`` map onto the source-voxel affinities of ``offsets`` (X, Y, Z tuples);
    a :class:`~nisbflow.errors.ConfigError` when the view does not map the offsets onto themselves."""
    offsets = [tuple(int(v) for v in o) for o in offsets]
    moves, taken = [], set()
    for source, offset in enumerate(offsets):
        directed = _inverse_offset(offset, view)
        exact = [i for i, o in enumerate(offsets) if o == directed]
        reverse = [i for i, o in enumerate(offsets) if tuple(-v for v in o) == directed]
        candidates = exact or reverse
        if len(candidates) != 1 or candidates[0] in taken:
            raise ConfigError(
                f"test-time augmentation {view.name()}: the affinity offset {offset} becomes "
                f"{directed}, which is not one of the offsets {offsets} (or their reverses) exactly "
                "once; choose flips and turns that map the offsets onto themselves"
            )
        target = candidates[0]
        taken.add(target)
        shift = None if exact else tuple(-v for v in offsets[target])
        moves.append(Move(source, target, shift if shift and any(shift) else None))
    return moves


def restore(prediction: torch.Tensor, view: View, offsets) -> tuple[torch.Tensor, list]:
    """A view's prediction ``(N, C, X, Y, Z)`` in the original frame with its affinities re-anchored (module
    docstring): ``(values, valid)``, ``valid[c]`` None where channel ``c`` is valid everywhere, else the box (a
    tuple of slices) where it is. ``offsets``: the channels' offsets (all ``C`` channels)."""
    if view.plane is not None and view.k % 4:
        prediction = torch.rot90(prediction, k=-view.k, dims=[a + 2 for a in view.plane])
    if view.flips:
        prediction = torch.flip(prediction, dims=[a + 2 for a in view.flips])
    moves = channel_moves(offsets, view)
    if all(m.src == m.dst and m.shift is None for m in moves):
        return prediction, [None] * prediction.shape[1]
    restored = torch.empty_like(prediction)
    valid: list = [None] * prediction.shape[1]
    shape = prediction.shape[2:]
    for move in moves:
        if move.shift is None:
            restored[:, move.dst] = prediction[:, move.src]
            continue
        into = tuple(slice(max(0, s), n + min(0, s)) for s, n in zip(move.shift, shape))
        came = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(move.shift, shape))
        restored[:, move.dst] = 0
        target: tuple[slice | int, ...] = (slice(None), move.dst, *into)
        source: tuple[slice | int, ...] = (slice(None), move.src, *came)
        restored[target] = prediction[source]
        valid[move.dst] = into
    return restored, valid


def ensemble_modes(ensemble_mode, channels: int) -> list[str]:
    """One mode per output channel from ``ensemble_mode`` (module docstring); every channel must get one."""
    if isinstance(ensemble_mode, str):
        if ensemble_mode not in MODES:
            raise ConfigError(
                f"inference.test_time_augmentation.ensemble_mode {ensemble_mode!r}: one of "
                f"{', '.join(MODES)}, or a list of [channels, mode] pairs"
            )
        return [ensemble_mode] * channels
    modes: list = [None] * channels
    for entry in ensemble_mode:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or entry[1] not in MODES:
            raise ConfigError(
                f"inference.test_time_augmentation.ensemble_mode entry {entry!r}: expected [channels, "
                f"mode] with a mode among {', '.join(MODES)}"
            )
        for channel in range(channels)[_selector(str(entry[0]), channels)]:
            modes[channel] = entry[1]
    missing = [c for c, m in enumerate(modes) if m is None]
    if missing:
        raise ConfigError(
            f"inference.test_time_augmentation.ensemble_mode gives no mode to output channel(s) {missing} of {channels}"
        )
    return modes


def _selector(text: str, channels: int) -> slice:
    try:
        if ":" in text:
            start, stop = text.split(":", 1)
            return slice(int(start) if start.strip() else None, int(stop) if stop.strip() else None)
        index = int(text) % channels
        return slice(index, index + 1)
    except ValueError:
        raise ConfigError(
            f"inference.test_time_augmentation.ensemble_mode channel selector {text!r}: expected "
            "'3', '0:3', '3:' or '-1:'"
        ) from None


class Ensemble:
    """Streams views into a per-channel ensemble of shape ``(N, C, X, Y, Z)`` (float32): ``add(values, valid)``
    for each view, then :meth:`result`. A voxel no view covers is an error (the identity view covers all)."""

    def __init__(self, modes: list[str]):
        self.modes = modes
        self.total: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def add(self, values: torch.Tensor, valid: list) -> None:
        values = values.float()
        if self.total is None:
            fill = {"mean": 0.0, "min": float("inf"), "max": float("-inf")}
            self.total = torch.empty_like(values)
            for channel, mode in enumerate(self.modes):
                self.total[:, channel] = fill[mode]
            self.count = torch.zeros(values.shape, dtype=torch.int16, device=values.device)
        assert self.total is not None and self.count is not None
        for channel, mode in enumerate(self.modes):
            box = (slice(None), channel, *(valid[channel] or ()))
            here, total = values[box], self.total[box]
            if mode == "mean":
                total += here
            elif mode == "min":
                torch.minimum(total, here, out=total)
            else:
                torch.maximum(total, here, out=total)
            self.count[box] += 1

    def result(self) -> torch.Tensor:
        if self.total is None or self.count is None or bool(torch.any(self.count == 0)):
            raise RuntimeError("test-time augmentation left voxels without any valid view")
        out = self.total.clone()
        for channel, mode in enumerate(self.modes):
            if mode == "mean":
                out[:, channel] /= self.count[:, channel]
        return out


def predict_views(predict, batch: torch.Tensor, view_list: list[View], offsets, channels, modes) -> torch.Tensor:
    """The ensembled prediction of ``batch`` ``(N, 1, X, Y, Z)`` over ``view_list``: ``predict`` maps a batch to its
    activated predictions ``(N, C, X, Y, Z)`` (all channels, whose ``offsets`` are given); ``channels``: the output
    channels kept (None: all), ``modes``: their ensemble modes."""
    ensembled = Ensemble(modes)
    for view in view_list:
        values, valid = restore(predict(augment(batch, view)), view, offsets)
        if channels is not None:
            values, valid = values[:, list(channels)], [valid[c] for c in channels]
        ensembled.add(values, valid)
    return ensembled.result()
