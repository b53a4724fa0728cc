"""The training loop: plain PyTorch DDP, one process per GPU under ``torchrun`` (or a single process).

Why plain DDP and not Lightning: the loop is short (AdamW, cosine schedule, clipping, masked BCE), the launch is the
standard ``torchrun``/SLURM one every cluster team knows, and nothing outside torch is needed to run, resume or debug
it. Checkpoints are nisbflow checkpoints (model configuration + weights, readable by ``nisbflow infer``) that also
carry the optimiser and scaler state, the RNG state and the step for resuming (the learning rate is a function of the
step).

Per step: a batch of :class:`~nisbflow.train.dataset.AffinityCrops` per process, the loss ``model.loss`` names
(:func:`~nisbflow.train.loss.loss_function`), gradient clipping, AdamW, cosine annealing to ``min_lr`` over
``max_steps``; float16 autocast on CUDA with ``precision=16-mixed`` (bfloat16 with ``bf16-mixed``). Every
``val_check_interval`` steps the mean
validation loss over ``val_steps_per_epoch`` batches (all ranks; the EMA's with ``optimization.ema``) decides the
top-k checkpoints; ``last.pt`` is
rewritten at every validation, every ``every_n_train_steps`` (which also keeps ``step-N.pt``) and at the last step, so
a resumed run repeats at most ``min(val_check_interval, every_n_train_steps)`` steps. TensorBoard logs go to the run
folder.

Before the first step, the memory of a training process is estimated (:mod:`nisbflow.train.memory`) and said;
activation checkpointing is turned on where only the checkpointed step fits the device. With
``optimization.ema`` an average of the weights (:mod:`nisbflow.train.ema`) is updated after every step and saved in
every checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import os
from pathlib import Path

import torch
import torch.distributed as dist

from nisbflow.config.schema import parse_offset
from nisbflow.errors import ConfigError
from nisbflow.model import build, checkpoint_payload, write_checkpoint
from nisbflow.model.network import checkpoint_activations
from nisbflow.model.reader import load_payload
from nisbflow.tasks import progress_bar
from nisbflow.train.augment import Augmentations
from nisbflow.train.dataset import AffinityCrops
from nisbflow.train.ema import WeightAverage
from nisbflow.train.loss import loss_function
from nisbflow.train.memory import plan_training_memory


AUTOCAST = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}
"""``optimization.precision`` → the autocast dtype on CUDA (``32``/``32-true``: none)."""

EPOCH_LOSS = "train_loss_total_epoch"
"""TensorBoard scalar: the mean training loss of each ``optimization.n_steps_per_epoch`` steps (rank 0's), under the
name PyTorch Connectomics' NISB tutorial tells users to watch."""


def seed_folders(spec) -> list[str]:
    """NISB seed folders from ``data.train.path``: a seed folder, a folder of seed folders, a glob, or a list."""
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    found = []
    for item in specs:
        for path in sorted(glob.glob(str(item))) or [str(item)]:
            if Path(path, "data.zarr").exists():
                found.append(path)
            else:
                found += sorted(str(p.parent) for p in Path(path).glob("*/data.zarr"))
    if not found:
        raise ConfigError(f"no NISB seeds (folders holding data.zarr) found at {spec}")
    return found


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _loader(dataset, batch_size: int, rank: int, world: int, workers: int, start_step: int = 0):
    """Batches of ``dataset`` for one rank, from training step ``start_step`` on: step ``s`` of rank ``r`` reads
    samples ``(s · world + r) · batch_size …`` + ``batch_size``, so a run resumed at step ``s`` reads exactly what
    an uninterrupted run reads from there."""
    steps = len(dataset) // (batch_size * world)
    order = [(step * world + rank) * batch_size + j for step in range(start_step, steps) for j in range(batch_size)]
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=order, num_workers=workers, persistent_workers=workers > 0
    )


def learning_rate(step: int, optimization) -> float:
    """The learning rate of the update after ``step`` finished steps: cosine annealing from
    ``optimizer.lr`` to ``scheduler.min_lr`` over ``max_steps``, a pure function of the step, so a run resumed with
    another ``max_steps`` continues the schedule of that length (what an uninterrupted run of it would use)."""
    import math

    base, low = optimization.optimizer.lr, optimization.scheduler.min_lr
    progress = min(max(step, 0), optimization.max_steps) / optimization.max_steps
    return low + (base - low) * (1 + math.cos(math.pi * progress)) / 2


def _set_learning_rate(optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value


def train(
    config, *, run_dir: str | Path | None = None, workers: int | None = None, progress: bool = True
) -> tuple[Path, torch.nn.Module]:
    """Train with a configuration; returns the run folder (``<save_path>/<timestamp>`` unless given) and this
    process's model.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains on its own crops and DDP averages gradients
    (NCCL on GPUs, gloo on CPUs). An existing ``checkpoints/last.pt`` in ``run_dir`` is resumed.
    """
    rank, world, local_rank = _distributed()
    use_cuda = torch.cuda.is_available() and config.system.num_gpus != 0
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    run = _run_folder(config, run_dir, rank, world)
    checkpoints = run / "checkpoints"
    optimization = config.optimization
    mixed = AUTOCAST.get(optimization.precision) if use_cuda else None
    model, net, optimizer, scaler = _network_and_optimizer(
        config, device, local_rank if use_cuda else None, world, mixed
    )
    step, best, saved_ema = _resume(
        checkpoints / "last.pt", model, optimizer, scaler, device, use_cuda, optimization, say=rank == 0
    )
    ema = _weight_average(model, optimization.ema, saved_ema, step, checkpoints / "last.pt", say=rank == 0)
    loss_of = loss_function(config.model)
    remaining = optimization.max_steps - step
    batch = config.data.dataloader.batch_size
    train_set, val_loader = _data(config, rank, world)
    # after the resume and data checks, whose errors say more; the blocks' forward is patched in place, so the
    # wrapped (DDP) model recomputes too
    if plan_training_memory(
        config, *_device_memory(device, world), log=_say if rank == 0 else (lambda line: None), mixed=mixed is not None
    ):
        checkpoint_activations(model)
    workers = _loader_workers(config) if workers is None else workers
    writer = _writer(run) if rank == 0 else None
    net.train()
    bar = progress_bar(rank == 0 and progress)
    task = bar.add_task("train", total=optimization.max_steps, completed=step)
    bar.start()
    epoch_losses: list[float] = []  # this rank's losses since the last epoch boundary (a resumed run starts afresh)
    for sample in _loader(train_set, batch, rank, world, workers, start_step=step) if remaining > 0 else []:
        _set_learning_rate(optimizer, learning_rate(step, optimization))
        image, target, mask = (sample[k].to(device) for k in ("image", "target", "mask"))
        loss = _optimizer_step(net, model, optimizer, scaler, loss_of, (image, target, mask), mixed, optimization)
        if ema is not None:
            ema.update()
        step += 1
        if writer is not None:
            _log_step(writer, float(loss.detach()), optimizer, step, epoch_losses, optimization)
        validate = step % optimization.val_check_interval == 0 or step == optimization.max_steps
        val_loss = (
            _validate(net, model, ema, val_loader, device, mixed, world, loss_of, optimization)
            if validate and val_loader
            else None
        )
        if rank == 0:
            if writer is not None and val_loss is not None:
                writer.add_scalar(optimization.checkpoint.monitor, val_loss, step)
                _log_slices(writer, image, target, net, step)
            if validate or step % optimization.checkpoint.every_n_train_steps == 0:
                # last.pt with the optimizer state is tens of MB for MedNeXt-S: written with the other
                # checkpoints (every validation, every every_n_train_steps and the final step), not every step
                best = _save(model, config, optimizer, scaler, step, val_loss, best, checkpoints, ema)
        bar.update(task, completed=step, description=f"train (loss {float(loss.detach()):.4f})")
        if step >= optimization.max_steps:
            break
    bar.stop()
    if writer is not None:
        writer.close()
    if world > 1:
        dist.barrier()
    return run, model


def _network_and_optimizer(config, device, device_id, world: int, mixed):
    """``(model, net, optimizer, scaler)``: the network from ``torch.manual_seed(0)`` on ``device``, ``net`` the
    model or its DDP wrapper when ``world`` > 1, AdamW, and a gradient scaler for float16 autocast (bfloat16 needs
    no loss scaling)."""
    optimization = config.optimization
    torch.manual_seed(0)
    model = build(config.model).to(device)
    net = (
        torch.nn.parallel.DistributedDataParallel(model, device_ids=None if device_id is None else [device_id])
        if world > 1
        else model
    )
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=optimization.optimizer.lr,
        weight_decay=optimization.optimizer.weight_decay,
        betas=tuple(optimization.optimizer.betas),
    )
    scaler = torch.amp.GradScaler("cuda", enabled=mixed is torch.float16)
    return model, net, optimizer, scaler


def _validate(net, model, ema, val_loader, device, mixed, world, loss_of, optimization) -> float:
    """The validation loss, with the EMA weights swapped in when ``optimization.ema.validate_with_ema``."""
    with (
        ema.swapped_into(model) if ema is not None and optimization.ema.validate_with_ema else contextlib.nullcontext()
    ):
        return _validation_loss(net, val_loader, device, mixed, world, loss_of)


def _loader_workers(config) -> int:
    """Data-loader processes: ``system.num_workers``, or up to 4 (one per core) when it is negative."""
    return min(4, os.cpu_count() or 1) if config.system.num_workers < 0 else config.system.num_workers


def _optimizer_step(net, model, optimizer, scaler, loss_of, batch, mixed, optimization) -> torch.Tensor:
    """One optimizer step on ``batch`` ``(image, target, mask)``: the loss under autocast (``mixed``: its dtype, or
    None for float32), scaled backward, gradients unscaled and clipped at ``gradient_clip_val``; returns the loss."""
    image, target, mask = batch
    with torch.autocast(image.device.type, dtype=mixed or torch.float32, enabled=mixed is not None):
        loss = loss_of(net(image), target, mask)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    if optimization.gradient_clip_val > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), optimization.gradient_clip_val)
    scaler.step(optimizer)
    scaler.update()
    return loss


def _log_step(writer, loss: float, optimizer, step: int, epoch_losses: list[float], optimization) -> None:
    """TensorBoard scalars of a step: the loss, the learning rate, and the mean loss of each PyTC "epoch"
    (``n_steps_per_epoch`` steps)."""
    writer.add_scalar("train_loss", loss, step)
    writer.add_scalar("learning_rate", optimizer.param_groups[0]["lr"], step)
    epoch_losses.append(loss)
    if step % optimization.n_steps_per_epoch == 0:
        writer.add_scalar(EPOCH_LOSS, sum(epoch_losses) / len(epoch_losses), step)
        epoch_losses.clear()


def _say(line: str) -> None:
    print(line, flush=True)


def _device_memory(device, world: int) -> tuple[int, str]:
    """``(bytes, how to name them)`` a training process may use: its GPU's memory, or this machine's memory shared
    by the processes training on it."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"GPU {device.index or 0}"
    import psutil

    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    share = psutil.virtual_memory().total // max(local, 1)
    return share, "this machine" if local <= 1 else f"each of this machine's {local} training processes"


def _run_folder(config, run_dir, rank: int, world: int) -> Path:
    """The run folder (``run_dir``, else ``<save_path>/<timestamp>``), the same on every rank; rank 0 creates its
    ``checkpoints`` folder and writes the resolved configuration to ``config.yaml`` (what ``--config`` loads; a
    resumed run rewrites it with its own)."""
    folder = [
        str(run_dir) if run_dir else str(Path(config.save_path) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    ]
    if world > 1:
        dist.broadcast_object_list(folder, src=0)  # one run folder for all ranks
    run = Path(folder[0])
    if rank == 0:
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        from nisbflow.config.load import config_to_yaml
        from nisbflow.staging import staged_output

        with staged_output(run / "config.yaml", overwrite=True) as temporary:  # loadable by --config
            Path(temporary).write_text(config_to_yaml(config))
    return run


def _resume(last: Path, model, optimizer, scaler, device, use_cuda: bool, optimization, say: bool):
    """``(step, best checkpoints, saved EMA)`` to continue from: ``last`` (weights, optimizer, scaler and random state
    loaded in place; the EMA ``(state, updates)`` it keeps, else None) or ``(0, [], None)`` when there is none. A
    damaged or foreign ``last`` is a one-line error; with ``say``, a
    ``max_steps`` other than the one it was trained for is said in one line (the schedule changes)."""
    for leftover in last.parent.glob(".*.partial-*"):  # a checkpoint being written when the run was killed
        leftover.unlink(missing_ok=True)
    if not last.exists():
        return 0, [], None
    try:
        state, _ = load_payload(last, map_location=device)  # the one checkpoint reader: weights only
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, best = int(state["metadata"]["step"]), list(state["metadata"].get("best", []))
        saved_ema = None
        if state.get("ema_state_dict") is not None:
            saved_ema = (state["ema_state_dict"], int((state["metadata"].get("ema") or {}).get("updates", step)))
        if "rng" in state:  # whatever in the step draws from torch's generators draws as it would have
            torch.set_rng_state(state["rng"]["cpu"].cpu())
            if use_cuda and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
    except Exception as error:  # truncated, not a checkpoint, or another model's
        raise ConfigError(
            f"cannot resume from {last}: {type(error).__name__}: {str(error).split('. ')[0][:160]}"
            "; it is damaged or from another model: move it away to start from step 0, or "
            "resume from a step-N.pt copied to last.pt"
        ) from error
    trained_for = (state["metadata"].get("config") or {}).get("optimization", {}).get("max_steps")
    if say and trained_for is not None and trained_for != optimization.max_steps:
        print(
            f"resuming {last} at step {step} with optimization.max_steps {optimization.max_steps} (it was "
            f"trained for {trained_for}): the learning rate continues the {optimization.max_steps}-step cosine "
            f"schedule at step {step} ({learning_rate(step, optimization):.3g})",
            flush=True,
        )
    kept = [entry for entry in best if (last.parent / f"best-step-{int(entry[1])}.pt").exists()]
    if say and len(kept) < len(best):
        print(
            f"{last} names {len(best) - len(kept)} best checkpoint(s) that are not in {last.parent} (deleted, or "
            "never written by a killed run); ranking the others",
            flush=True,
        )
    return step, kept, saved_ema


def _weight_average(model, settings, saved, step: int, last: Path, say: bool) -> WeightAverage | None:
    """The EMA of ``optimization.ema`` (None when off): the one ``last`` saved (``saved``: ``(state, updates)``) when
    resuming, else seeded from the network's weights. A resume that turns EMA on or off says so."""
    if not settings.enabled:
        if saved is not None and say:
            print(
                f"{last} keeps EMA weights, but optimization.ema.enabled is false: training goes on without them "
                "(the checkpoints this run writes hold the training weights only)",
                flush=True,
            )
        return None
    if saved is None:
        if step > 0 and say:
            print(
                f"{last} keeps no EMA weights (trained with optimization.ema.enabled false): the average starts "
                f"from the weights of step {step}",
                flush=True,
            )
        return WeightAverage(model, settings.decay, settings.warmup_steps)
    try:
        return WeightAverage(model, settings.decay, settings.warmup_steps, state=saved[0], updates=saved[1])
    except ValueError as error:
        raise ConfigError(f"cannot resume from {last}: {error}") from None


def _data(config, rank: int, world: int):
    """The training crops (every step's, seeded, so a resumed run draws what it would have) and the validation
    loader (None without ``data.val.path`` or validation steps)."""
    optimization, batch = config.optimization, config.data.dataloader.batch_size
    offsets = [parse_offset(o) for o in config.model.affinity_offsets]
    relabel = config.data.relabel_connectivity if config.data.relabel_connected_components else None
    train_set = AffinityCrops(
        seed_folders(config.data.train.path),
        config.data.patch_size,
        config.data.target_context,
        offsets,
        config.data.erosion,
        length=optimization.max_steps * batch * world,
        seed=1,
        augmentations=Augmentations(),
        relabel=relabel,
    )
    if not (config.data.val.path and optimization.val_steps_per_epoch > 0):
        return train_set, None
    val_set = AffinityCrops(
        seed_folders(config.data.val.path),
        config.data.patch_size,
        config.data.target_context,
        offsets,
        config.data.erosion,
        length=optimization.val_steps_per_epoch * batch * world,
        seed=10**6,
        relabel=relabel,
    )
    return train_set, _loader(val_set, batch, rank, world, 0)


def _writer(run: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return None
    return SummaryWriter(str(run / "tensorboard"), flush_secs=20)  # live curves; little lost if killed


@torch.no_grad()
def _validation_loss(net, loader, device, mixed, world: int, loss_of) -> float:
    net.eval()
    total = torch.zeros(2, device=device)
    for sample in loader:
        image, target, mask = (sample[k].to(device) for k in ("image", "target", "mask"))
        with torch.autocast(device.type, dtype=mixed or torch.float32, enabled=mixed is not None):
            total += torch.stack([loss_of(net(image), target, mask).float(), torch.ones((), device=device)])
    if world > 1:
        dist.all_reduce(total)
    net.train()
    return float(total[0] / total[1].clamp(min=1))


@torch.no_grad()
def _log_slices(writer, image, target, net, step: int) -> None:
    """Middle z slices of the first sample: input, short-range targets and predictions (scale_sigmoid)."""
    middle = image.shape[-1] // 2
    prediction = torch.sigmoid(0.2 * net(image[:1]).float())
    writer.add_image("input", image[0, :, :, :, middle], step)
    writer.add_image("target", target[0, :3, :, :, middle].float(), step)
    writer.add_image("prediction", prediction[0, :3, :, :, middle], step)


def _save(
    model, config, optimizer, scaler, step: int, val_loss, best: list, folder: Path, ema: WeightAverage | None = None
) -> list:
    """Write the top-k by validation loss, step-N.pt (every_n_train_steps) and last.pt (each with the EMA weights
    under ``ema_state_dict`` when training keeps them), in that order: last.pt,
    which names the best checkpoints, is written after them, and a best checkpoint dropped from the top-k is deleted
    only once last.pt no longer names it (a kill anywhere leaves a last.pt whose files exist)."""
    settings = config.optimization.checkpoint
    dropped = []
    if val_loss is not None and settings.save_top_k != 0:
        ranked = sorted(best + [[val_loss, step]], reverse=settings.mode == "max")
        best = ranked if settings.save_top_k < 0 else ranked[: settings.save_top_k]
        dropped = [entry[1] for entry in ranked[len(best) :]]
    metadata = {"step": step, "val_loss": val_loss, "best": best, "config": config.model_dump(mode="json")}
    extra = {}
    if ema is not None:
        metadata["ema"] = ema.record()
        extra["ema_state_dict"] = ema.state_dict()
    state = checkpoint_payload(
        model,
        config.model,
        metadata,
        **extra,
        optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict(),
        rng={"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None},
    )
    targets = []
    if val_loss is not None and [val_loss, step] in best:
        targets.append(folder / f"best-step-{step}.pt")
    if step % settings.every_n_train_steps == 0:
        targets.append(folder / f"step-{step}.pt")
    if settings.save_last:
        targets.append(folder / "last.pt")
    for target in targets:
        write_checkpoint(target, state)
    for old in dropped:
        (folder / f"best-step-{old}.pt").unlink(missing_ok=True)
    return best
