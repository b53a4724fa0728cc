"""The prediction kernel of block-wise inference: one unit's windows predicted on one device and summed with their
blending weights, and one block blended from the pieces of the units reaching it.

:class:`WindowSettings` is the window geometry and output form every caller shares (BANIS's 128³ windows at stride
64, ``scale_sigmoid``, float16 output; docs/design.md). Arrays are ``(X, Y, Z)`` uint8 inputs and ``(C, X, Y, Z)``
float32 sums or affinities in ``output_dtype``; regions are :class:`~nisbflow.region.Region` boxes in the padded
frame. The Dask graph that calls these is :mod:`nisbflow.infer.blockwise`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from nisbflow.infer.geometry import blending_weight
from nisbflow.infer.plan import FINAL, BlockSources, Unit
from nisbflow.infer.predict import Augmentation, predict_crops
from nisbflow.region import Region, triple
from nisbflow.worker_setup import release_compile_workers


class PredictedPiece(NamedTuple):
    """What a prediction task hands a block for one :class:`~nisbflow.infer.plan.Piece` of the plan: the plan's
    ``box`` (:data:`~nisbflow.infer.plan.FINAL` or a shared box's number) and ``region``, and the values there:
    for the final box the divided affinities ``(C, x, y, z)`` in the output dtype and ``weights`` None; for a shared
    box Σ p·w ``(C, x, y, z)`` and Σ w ``(x, y, z)``, float32."""

    box: int
    region: Region
    values: np.ndarray
    weights: np.ndarray | None


@dataclass(frozen=True)
class WindowSettings:
    window: tuple[int, int, int] = (128, 128, 128)
    stride: tuple[int, int, int] = (64, 64, 64)
    sw_batch_size: int = 8
    activation: str = "scale_sigmoid"
    channels: tuple[int, ...] | None = None
    output_dtype: str = "float16"
    compile: bool | str = False
    augmentation: Augmentation | None = None

    @classmethod
    def from_config(cls, inference, channels=None, offsets=None) -> WindowSettings:
        """From an ``inference`` configuration section: stride = window × (1 − overlap), channels
        ``inference.select_channel`` unless ``channels`` is given; with ``test_time_augmentation.enabled``, its views
        and ensemble modes, and ``offsets``: the network's affinity offsets (X, Y, Z), which it then needs."""
        window = triple(inference.window_size)
        stride = triple(max(1, int(round(w * (1 - inference.overlap)))) for w in window)
        channels = tuple(int(c) for c in (inference.select_channel if channels is None else channels))
        tta = inference.test_time_augmentation
        augmentation = None
        if tta.enabled:
            from nisbflow.infer.tta import ensemble_modes, views

            if offsets is None:  # re-anchoring needs the network's own offsets: no default could be right
                raise ValueError("test-time augmentation needs the network's affinity offsets (offsets=…)")
            augmentation = Augmentation(
                tuple(views(tta.flip_axes, tta.rotation90_axes, tta.rotate90_k)),
                tuple(ensemble_modes(tta.ensemble_mode, len(channels))),
                tuple(triple(o) for o in offsets),
            )
        return cls(
            window,
            stride,
            inference.sw_batch_size,
            inference.activation,
            channels,
            inference.output_dtype,
            inference.compile,
            augmentation,
        )

    def record(self) -> dict:
        """JSON-ready, for output attributes (and the identities resume and tuning key on: the augmentation's views
        and modes only when it is on, so records without it stay as they were)."""
        record = {
            "window": list(self.window),
            "stride": list(self.stride),
            "sw_batch_size": self.sw_batch_size,
            "activation": self.activation,
            "channels": None if self.channels is None else list(self.channels),
            "output_dtype": self.output_dtype,
            "compile": self.compile,
        }
        if self.augmentation is not None:
            record["test_time_augmentation"] = self.augmentation.record()
        return record

    @property
    def views(self) -> int:
        """Predictions per window: 1, or the augmentation's views."""
        return 1 if self.augmentation is None else len(self.augmentation.views)

    def compiled_on(self, device: str) -> bool:
        """Whether the network runs through ``torch.compile`` on ``device`` (``auto``: on CUDA only; a mode name:
        always)."""
        return device.startswith("cuda") if self.compile == "auto" else bool(self.compile)

    def compile_mode(self, device: str) -> str | bool:
        """What :meth:`~nisbflow.model.Checkpoint.network` compiles with on ``device``: False (eager), True
        (``torch.compile``'s default mode) or a mode name (``reduce-overhead``, ``max-autotune``, …)."""
        if not self.compiled_on(device):
            return False
        return self.compile if isinstance(self.compile, str) and self.compile != "auto" else True


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def predict_windows(
    piece: np.ndarray,
    model,
    read_start,
    unit: Unit,
    settings: WindowSettings,
    device: str | None = None,
    topic: str | None = None,
) -> dict[tuple, list[PredictedPiece]]:
    """Task (``infer-predict-windows``): one :class:`~nisbflow.infer.plan.Unit`'s windows, on the model's device.

    ``piece``: the (padded-frame) input of the unit's footprint starting at ``read_start``, uint8 ``(x, y, z)``;
    ``model``: a torch module or a :class:`~nisbflow.model.Checkpoint` (:meth:`~nisbflow.model.Checkpoint.network`:
    loaded once per process, its sha256 checked against the client's). The footprint goes to the device once; the
    unit's batches run there (float16 autocast on CUDA), weighted and summed in float32 over the footprint, each
    batch counted to ``topic`` (:func:`nisbflow.tasks.count_done`). Returns, per target block index, its
    :class:`PredictedPiece` list."""
    import torch

    from nisbflow.tasks import count_done

    device = device or default_device()
    total, weights = _weighted_sum(
        piece, model, read_start, unit.footprint, unit.windows, settings, device, report=lambda n: count_done(topic, n)
    )
    pieces: dict[tuple, list[PredictedPiece]] = {}
    for part in unit.pieces:
        local = part.region.local(unit.footprint)
        sums, weight = total[(slice(None),) + local], weights[local]
        if part.box == FINAL:
            entry = PredictedPiece(
                part.box, part.region, (sums / weight).to(getattr(torch, settings.output_dtype)).cpu().numpy(), None
            )
        else:  # copies, so the footprint's sums are freed when the task ends
            entry = PredictedPiece(
                part.box, part.region, sums.to("cpu", copy=True).numpy(), weight.to("cpu", copy=True).numpy()
            )
        pieces.setdefault(part.target, []).append(entry)
    return pieces


def blend_block(sources: list, block: BlockSources, settings: WindowSettings) -> np.ndarray:
    """Task (``infer-blend``): one block's affinities ``(C, x, y, z)`` in ``settings.output_dtype`` from the pieces
    of the units reaching it (:func:`predict_windows`, in the order of ``block.units``): the exclusive box's values
    as they are, each shared box's float32 sums added and divided."""
    write = block.write
    pieces = [piece for unit_pieces in sources for piece in unit_pieces]
    if block.exclusive == write:  # one unit reaches the whole block
        return pieces[0].values
    n_channels = pieces[0].values.shape[0]
    values = np.empty((n_channels,) + write.shape, dtype=settings.output_dtype)
    for box, region, part, _ in pieces:
        if box == FINAL:
            values[(slice(None),) + region.local(write)] = part
    for number, box in enumerate(block.shared):
        total = np.zeros((n_channels,) + box.shape, dtype=np.float32)
        weights = np.zeros(box.shape, dtype=np.float32)
        for piece_box, region, sums, weight in pieces:
            if piece_box == number:
                total[(slice(None),) + region.local(box)] += sums
                weights[region.local(box)] += weight
        total /= weights
        values[(slice(None),) + box.local(write)] = total
    return values


def _weighted_sum(piece, model, read_start, region, windows, settings: WindowSettings, device: str, report=None):
    """Σ prediction × blending weight of ``windows`` over ``region`` (slices, padded frame) and Σ blending weight:
    float32 torch tensors ``(C, x, y, z)`` and ``(x, y, z)`` on ``device``. Windows run in batches of
    ``sw_batch_size``; the weights are summed on the device beside the predictions, so no host work waits on the
    block's last batch. ``report(n)`` is called after each batch of ``n`` windows."""
    import torch

    compiled = settings.compiled_on(device)
    if is_checkpoint(model):  # loaded once per process, its sha256 checked against the client's
        model = model.network(device, settings.compile_mode(device))
    else:
        model = model.to(device).eval()
    image = torch.from_numpy(np.ascontiguousarray(piece)).to(device)
    weight = torch.from_numpy(blending_weight(settings.window)).to(device)
    shape = Region(region).shape
    total, weights = None, torch.zeros(shape, dtype=torch.float32, device=device)
    for i in range(0, len(windows), settings.sw_batch_size):
        batch = windows[i : i + settings.sw_batch_size]
        crops = torch.stack(
            [
                image[tuple(slice(s - r, s - r + w) for s, r, w in zip(start, read_start, settings.window))]
                for start in batch
            ]
        )
        if compiled and len(batch) < settings.sw_batch_size:  # one batch shape: no recompilation for the last
            crops = torch.cat([crops, crops[-1:].expand(settings.sw_batch_size - len(batch), *crops.shape[1:])])
        predictions = predict_crops(model, crops, settings.activation, settings.channels, settings.augmentation)[
            : len(batch)
        ]
        if total is None:
            total = torch.zeros((predictions.shape[1],) + shape, dtype=torch.float32, device=device)
        for start, prediction in zip(batch, predictions):
            # the part of this window inside the region, in window and in region coordinates
            inside = [(max(s, r.start), min(s + w, r.stop)) for s, r, w in zip(start, region, settings.window)]
            local = tuple(slice(a - s, b - s) for (a, b), s in zip(inside, start))
            target = tuple(slice(a - r.start, b - r.start) for (a, b), r in zip(inside, region))
            total[(slice(None),) + target] += prediction[(slice(None),) + local] * weight[local]
            weights[target] += weight[local]
        if report is not None:
            report(len(batch) * settings.views)
    return total, weights


def warm_up(model, settings: WindowSettings, device: str | None = None) -> float:
    """Task (``infer-warm-up``): load the model on this worker (:meth:`~nisbflow.model.Checkpoint.network`) and run
    one batch of ``sw_batch_size`` empty windows through :func:`_weighted_sum`, so ``torch.compile``'s compilation
    (59 s for MedNeXt-S on an H200) and cuDNN's set-up are done before the first block. Returns the seconds it
    took."""
    import torch

    device = device or default_device()
    start = time.perf_counter()
    window = settings.window
    _weighted_sum(
        np.zeros(window, dtype=np.uint8),
        model,
        (0, 0, 0),
        tuple(slice(0, w) for w in window),
        [(0, 0, 0)],
        settings,
        device,
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    release_compile_workers()
    return time.perf_counter() - start


def check_channels(settings: WindowSettings, out_channels: int, where: str) -> None:
    """Raise :class:`~nisbflow.errors.ConfigError` unless every selected channel is one the model outputs."""
    from nisbflow.errors import ConfigError

    if settings.channels is not None and (
        not settings.channels or any(c < 0 or c >= out_channels for c in settings.channels)
    ):
        raise ConfigError(
            f"inference.select_channel / --channels {list(settings.channels)}: {where} outputs "
            f"{out_channels} channels (0 to {out_channels - 1})"
        )


def is_checkpoint(model) -> bool:
    """Whether ``model`` is a :class:`~nisbflow.model.Checkpoint` handle rather than a torch module (imported here:
    torch loads only where a network runs)."""
    from nisbflow.model.checkpoint import Checkpoint

    return isinstance(model, Checkpoint)


def out_channels_of(model) -> int:
    """The channels a :class:`~nisbflow.model.Checkpoint` or a MONAI MedNeXt module outputs."""
    if is_checkpoint(model):
        return model.model.out_channels
    if hasattr(model, "out_0"):  # MONAI MedNeXt's output block
        return int(model.out_0.conv_out.out_channels)
    raise ValueError("cannot tell the model's output channels; pass WindowSettings(channels=...)")
