"""Training: gradient accumulation, validation with the competition metric, exact resume, DDP.

Everything goes to the run directory (:mod:`spectraseg.runs` owns its layout and the
checkpoint format). Each optimizer step accumulates gradients over ``train.accumulate``
micro-batches (:mod:`spectraseg.training.step`).

**Determinism and resume.** Patch ``j`` of micro-batch ``m`` of epoch ``e`` on rank ``r`` is
item ``(m * world + r) * batch_size + j`` of the epoch's dataset (which draws each item from
``(seed, rank, epoch, index)`` alone: :class:`spectraseg.features.patches.PatchDataset`), and the
learning rate is a function of the step count (and of elapsed training time when
``train.minutes`` is set), so a run resumed from a checkpoint sees the same batches and
schedule as an uninterrupted one and, with deterministic algorithms, ends with identical
weights.

**Epochs and validation.** An epoch is ``train.steps_per_epoch`` optimizer steps; the run
has ``train.steps`` steps (or ``epochs * steps_per_epoch``) and stops early after the step
that exhausts ``train.minutes`` of training time. Every ``train.val_every`` epochs and at the
end, rank 0 predicts each held-out scene whole (:mod:`spectraseg.training.validate`),
thresholds it with ``predict.thresholds`` and scores it with the competition metric;
``best.pt`` follows ``train.select`` (the validation mean Jaccard at those thresholds, or
at tuned ones).

**After the last step** (not after an interruption), with ``train.precise_bn`` > 0, the
BatchNorm statistics are re-estimated over that many patches drawn uniformly over the
training scenes (:mod:`spectraseg.training.batchnorm`), before the final validation and
checkpoint; the patches come from their own deterministic stream, so a resumed run ends
identical too.

**Devices.** CPU by default (``train.threads`` sets ``torch.set_num_threads``). With
``train.amp``: on CUDA float16 autocast with a GradScaler, on a CPU with native bfloat16
bfloat16 autocast (:func:`~spectraseg.runtime.autocast_dtype`). Ctrl-C (SIGINT) or SIGTERM stops
after the current step and saves ``latest.pt``; a second Ctrl-C aborts at once.

**DDP.** Under ``torchrun --standalone --nproc-per-node=N -m spectraseg train ...``
(``WORLD_SIZE > 1``) the process group is initialised with gloo on CPU and nccl on CUDA;
each rank draws its own patches; gradients are all-reduced only on the last micro-batch of
a step (``no_sync`` on the others); only rank 0 validates and writes files; a stop request
(Ctrl-C, SIGTERM, time budget) is agreed by all ranks after each step.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from spectraseg.config import Config
from spectraseg.errors import ConfigError
from spectraseg.models.losses import BCEJaccardLoss, build_loss
from spectraseg.models.unet import build_model
from spectraseg.runs import (
    Checkpoint,
    RunDir,
    Split,
    load_checkpoint,
    promote_latest,
    save_checkpoint,
    write_config,
    write_metrics,
    write_split,
    write_stats,
)
from spectraseg.runtime import autocast_dtype, resolve_device
from spectraseg.training.batchnorm import recalibrate
from spectraseg.training.data import TrainData, prepare_data
from spectraseg.training.pixel import fit_run
from spectraseg.training.state import (
    LoopState,
    StopRequest,
    ddp_info,
    gather_rng,
    ignore_sigint,
    new_epoch_acc,
    process_group,
    seed_everything,
    set_rng_state,
)
from spectraseg.training.step import StepStats, accumulation_step
from spectraseg.training.validate import validate

PRECISE_BN_BATCH = 8
"""Patches per forward pass while re-estimating BatchNorm statistics (``train.precise_bn``)."""


@dataclass
class TrainResult:
    """The outcome of :func:`train`."""

    run_dir: Path
    steps: int
    """Optimizer steps completed (in all, including earlier runs when resumed)."""
    epochs: int
    """Epochs completed."""
    best_score: float | None
    """Best validation mean Jaccard (None without validation)."""
    best_step: int
    interrupted: bool
    """True when stopped by Ctrl-C / SIGTERM before the planned end."""
    seconds: float
    """Training seconds (validation excluded), in all."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """The metric rows (as in ``metrics.json``)."""
    model: nn.Module | None = None
    """The trained model with its final weights (not the best; with ``train.ema`` the final
    average), unwrapped from DDP."""


def lr_factor(config: Config, step: int, time_fraction: float = 0.0) -> float:
    """Learning-rate multiplier for optimizer step ``step`` (0-based).

    Linear warm-up over ``train.warmup_steps``, then cosine from 1 to ``min_lr_ratio``
    over the run's progress: the larger of ``step / total_steps`` and ``time_fraction``
    (elapsed training time / ``train.minutes``, 0 without a time budget).
    """
    t = config.train
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return 1.0
    total = max(1, config.total_steps - t.warmup_steps)
    progress = min(1.0, max((step - t.warmup_steps) / total, time_fraction))
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _epoch_loader(
    data: TrainData,
    config: Config,
    epoch: int,
    start_micro: int,
    rank: int,
    world: int,
    pin: bool,
) -> Iterator[Mapping[str, Any]]:
    """Micro-batches ``start_micro..`` of ``epoch`` for ``rank`` (module docstring)."""
    t = config.train
    b = t.batch_size
    micro = t.steps_per_epoch * t.accumulate
    if hasattr(data.train, "set_epoch"):
        data.train.set_epoch(epoch)
    batches = [[(m * world + rank) * b + j for j in range(b)] for m in range(start_micro, micro)]
    loader = DataLoader(
        data.train,
        batch_sampler=batches,
        num_workers=t.workers,
        pin_memory=pin,
        worker_init_fn=ignore_sigint if t.workers else None,
    )
    return iter(loader)


def progress_bar(config: Config, state: LoopState, show: bool) -> tqdm:
    """The training bar, against the budget that stops the run: training seconds of
    ``train.minutes`` when it is set (a step count would promise hours for a 5-minute run),
    else optimizer steps. Either way the postfix shows ``step``/total steps."""
    budget = config.train.minutes * 60.0
    if budget:
        return tqdm(
            total=budget, initial=min(state.elapsed, budget), desc="train", unit="s",
            disable=not show, dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]",
        )  # fmt: skip
    return tqdm(
        total=config.total_steps, initial=state.step, desc="train", unit="step",
        disable=not show, dynamic_ncols=True,
    )  # fmt: skip


def _configure_torch(config: Config, device: torch.device) -> None:
    """Threads and determinism as ``[train]`` asks."""
    t = config.train
    if t.threads and device.type == "cpu":
        torch.set_num_threads(t.threads)
    if t.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@dataclass
class _Parts:
    """The model and what updates it."""

    model: nn.Module
    net: nn.Module
    """``model``, wrapped in DDP when there are several processes."""
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    ema: AveragedModel | None
    loss_fn: BCEJaccardLoss
    amp: torch.dtype | None
    """The autocast type of the forward pass (:func:`~spectraseg.runtime.autocast_dtype`)."""

    @property
    def averaged(self) -> nn.Module:
        """The run's model: the weight average with ``train.ema``, else the model."""
        return self.ema.module if self.ema is not None else self.model


def _build_parts(
    config: Config, data: TrainData, ckpt: Checkpoint | None, device: torch.device, world: int
) -> _Parts:
    """Model, optimizer, scaler, weight average and loss; weights from ``ckpt`` if given."""
    t = config.train
    # Same initial weights on every rank (DDP also broadcasts them from rank 0).
    torch.manual_seed(t.seed)
    in_channels, k = data.in_channels, len(data.schema)
    model = build_model(config, in_channels, k)
    if ckpt is not None:
        if ckpt.in_channels != in_channels:
            raise ConfigError(
                f"the data now has {in_channels} input channels but the run was "
                f"trained with {ckpt.in_channels}"
            )
        if ckpt.schema != data.schema:
            raise ConfigError(
                f"the data's classes are now {data.schema.names} but the run was trained "
                f"on {ckpt.schema.names}"
            )
        model.load_state_dict(ckpt.model)
    fmt = torch.channels_last if t.channels_last else torch.contiguous_format
    # Module.to takes memory_format, but torch's overloads of it leave the keyword out.
    model.to(device=device, memory_format=fmt)  # type: ignore[call-overload]
    net: nn.Module = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    opt_cls = torch.optim.AdamW if t.weight_decay > 0 else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    amp = autocast_dtype(device) if t.amp else None
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    ema: AveragedModel | None = None
    if t.ema > 0:
        # A copy of the model (same device and memory format) whose parameters and buffers
        # follow the EMA of the trained ones; the first update copies them.
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True)
        if ckpt is not None and ckpt.ema is not None:
            ema.module.load_state_dict(ckpt.ema)
            ema.n_averaged.fill_(ckpt.ema_count)
    loss_fn = build_loss(config.loss, k).to(device)
    return _Parts(model, net, optimizer, scaler, ema, loss_fn, amp)


def _restore(parts: _Parts, ckpt: Checkpoint | None, seed: int, rank: int) -> LoopState:
    """The loop state and RNGs of ``ckpt``, or a fresh start seeded per rank."""
    if ckpt is None:
        seed_everything(seed + 1 + rank)
        return LoopState()
    parts.optimizer.load_state_dict(ckpt.optimizer)
    if parts.scaler is not None and ckpt.scaler:
        parts.scaler.load_state_dict(ckpt.scaler)
    set_rng_state(ckpt.rng[rank] if rank < len(ckpt.rng) else ckpt.rng[0])
    return LoopState.from_checkpoint(ckpt)


class _Loop:
    """The training loop over optimizer steps, with its epoch ends and checkpoints."""

    def __init__(
        self,
        config: Config,
        run: RunDir,
        data: TrainData,
        parts: _Parts,
        state: LoopState,
        device: torch.device,
        rank: int,
        world: int,
    ) -> None:
        self.config, self.run, self.data, self.parts = config, run, data, parts
        self.state, self.device, self.rank, self.world = state, device, rank, world
        self.is_main = rank == 0
        self.spe = config.train.steps_per_epoch
        self.budget = config.train.minutes * 60.0
        self.validating = bool(data.val_scenes) and data.load_val is not None
        self.rng: list[dict[str, torch.Tensor]] = []

    def checkpoint(self, path: Path) -> None:
        p, s = self.parts, self.state
        ckpt = s.to_checkpoint(
            self.config, self.spe, p.model, p.optimizer, p.scaler, p.ema,
            self.data.in_channels, self.rng,
        )  # fmt: skip
        if not self.data.schema.is_dstl:
            ckpt.classes = self.data.schema.to_json()
        save_checkpoint(path, ckpt)

    def end_epoch(self, final: bool, progress: bool) -> None:
        """Metrics row for the epoch ending at this step (validate when due); rank 0 only."""
        s, t = self.state, self.config.train
        epoch = math.ceil(s.step / self.spe)
        n = max(1.0, s.acc["batches"])
        seconds = s.acc["seconds"]
        row: dict[str, Any] = {
            "epoch": epoch,
            "step": s.step,
            "lr": self.parts.optimizer.param_groups[0]["lr"],
            "train_loss": s.acc["loss"] / n,
            "train_bce": s.acc["bce"] / n,
            "train_jaccard": s.acc["jaccard"] / n,
            "patches_per_s": s.acc["samples"] * self.world / seconds if seconds else 0.0,
            "seconds": s.elapsed,
        }
        improved = False
        if self.validating and (final or (t.val_every > 0 and epoch % t.val_every == 0)):
            averaged = self.parts.averaged
            row.update(validate(averaged, self.data, self.config, self.device, progress))
            score = row[t.select]
            if s.best["score"] is None or score > s.best["score"]:
                s.best = {"score": score, "step": s.step, "epoch": epoch}
                improved = True
        s.history.append(row)
        s.acc = new_epoch_acc()
        if improved:
            self.checkpoint(self.run.best)
        write_metrics(self.run, s.history, s.best, self.data.schema)

    def step(self, loader: Iterator[Mapping[str, Any]]) -> tuple[StepStats, float, float]:
        """One optimizer step: ``(its sums, its seconds, the learning rate)``."""
        t, s, p = self.config.train, self.state, self.parts
        lr = t.lr * lr_factor(self.config, s.step, s.elapsed / self.budget if self.budget else 0.0)
        for group in p.optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        stats = accumulation_step(
            p.net, p.optimizer, p.loss_fn, loader, t.accumulate, self.device, p.scaler, p.amp,
            t.channels_last,
        )  # fmt: skip
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if p.ema is not None:
            p.ema.update_parameters(p.model)
        dt = time.perf_counter() - t0
        s.step += 1
        for key in ("loss", "bce", "jaccard", "batches", "samples"):
            s.acc[key] += getattr(stats, key)
        s.acc["seconds"] += dt
        s.elapsed += dt
        return stats, dt, lr

    def recalibrate(self) -> None:
        """BatchNorm statistics of the trained model (the weight average under ``train.ema``)
        over ``train.precise_bn`` patches drawn uniformly over the training scenes, on every
        rank alike (:mod:`spectraseg.training.batchnorm`)."""
        t = self.config.train
        view = getattr(self.data.train, "uniform_view", None)
        data = view(t.precise_bn) if view is not None else self.data.train
        n = min(t.precise_bn, len(data))
        batches = (
            torch.stack([data[j]["image"] for j in range(i, min(i + PRECISE_BN_BATCH, n))])
            for i in range(0, n, PRECISE_BN_BATCH)
        )
        recalibrate(self.parts.averaged, batches, self.device, t.channels_last)

    def agree(self, stop: StopRequest) -> tuple[bool, bool]:
        """``(interrupted, budget spent)``, agreed by all ranks (and the clock with them)."""
        s = self.state
        out_of_time = 1.0 if self.budget and s.elapsed >= self.budget else 0.0
        flags = torch.tensor([float(stop.requested), s.elapsed, out_of_time], dtype=torch.float64)
        if self.world > 1:
            # nccl reduces device tensors only; gloo takes CPU tensors.
            flags = flags.to(self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            flags = flags.cpu()
        s.elapsed = float(flags[1])
        return bool(flags[0]), bool(flags[2])

    def after_step(self, finished: bool, done: bool, progress: bool) -> None:
        """Epoch end and checkpoints due after a step (rank 0 writes)."""
        t, s = self.config.train, self.state
        # An interruption is not an epoch end: the resumed run must validate (and choose
        # its best checkpoint) exactly where an uninterrupted one does.
        epoch_end = s.step % self.spe == 0 or finished
        every = t.checkpoint_every > 0 and s.step % t.checkpoint_every == 0
        due_ckpt = epoch_end or done or every
        if due_ckpt:
            self.rng = gather_rng(self.world)
        if finished and t.precise_bn:
            self.recalibrate()
        if self.is_main:
            if epoch_end:
                self.end_epoch(finished, progress)
            if due_ckpt:
                self.checkpoint(self.run.latest)
        if self.world > 1 and (epoch_end or due_ckpt):
            dist.barrier()

    def run_steps(
        self, progress: bool, callback: Callable[[int, dict[str, Any]], None] | None
    ) -> bool:
        """Steps until the planned end, the time budget or a stop request; True if stopped."""
        s = self.state
        total = self.config.total_steps
        bar = progress_bar(self.config, s, show=progress and self.is_main)
        interrupted = False
        loader: Iterator[Mapping[str, Any]] | None = None
        loader_epoch = -1
        with StopRequest() as stop:
            while s.step < total:
                epoch = s.step // self.spe
                if loader is None or loader_epoch != epoch:
                    start = (s.step % self.spe) * self.config.train.accumulate
                    pin = self.device.type == "cuda"
                    loader = _epoch_loader(
                        self.data, self.config, epoch, start, self.rank, self.world, pin
                    )
                    loader_epoch = epoch
                stats, dt, lr = self.step(loader)
                interrupted, spent = self.agree(stop)
                finished = s.step >= total or spent
                bar.update(dt if self.budget else 1)
                bar.set_postfix(
                    step=f"{s.step}/{total}",
                    loss=f"{stats.loss / stats.batches:.4f}",
                    pps=f"{stats.samples * self.world / dt:.1f}",
                    lr=f"{lr:.2e}",
                )
                self.after_step(finished, finished or interrupted, progress)
                if callback is not None:
                    callback(s.step, {"loss": stats.loss / stats.batches, "lr": lr, "seconds": dt})
                if finished or interrupted:
                    break
        bar.close()
        return interrupted

    def finish(self, interrupted: bool, progress: bool) -> None:
        """After the last step: one set of BatchNorm statistics, ``best.pt``, the pixel model."""
        p = self.parts
        if self.world > 1:
            # DDP keeps parameters in step but each rank's last forward updated its own
            # BatchNorm statistics: adopt rank 0's (the ones its checkpoints hold).
            modules = (p.model,) if p.averaged is p.model else (p.model, p.averaged)
            for buf in (b for m in modules for b in m.buffers()):
                dist.broadcast(buf, src=0)
        if self.is_main and not self.validating and self.run.latest.is_file():
            promote_latest(self.run)
        if self.is_main and self.config.pixel.enabled and not interrupted:
            assert self.data.stats is not None  # checked by _train before the first step
            scenes = list(self.data.train_scenes)
            fit_run(self.run, self.config, scenes, self.data.stats, progress=progress)


def _open_run(config: Config | None, run: RunDir, resume: bool) -> tuple[Config, Checkpoint | None]:
    """The config to train with and, when resuming, the checkpoint to resume from."""
    if resume:
        ckpt = load_checkpoint(run.latest)
        saved = ckpt.parsed_config(str(run.latest))
        if config is None:
            return saved, ckpt
        if config.model != saved.model:
            raise ConfigError(
                f"the model section differs from the run's in {run.config}; "
                "a resumed run keeps its model"
            )
        return config, ckpt
    if config is None:
        raise ConfigError("a new run needs a config")
    if run.root.exists() and not run.root.is_dir():
        raise ConfigError(f"{run.root} exists and is not a directory: choose another --out")
    if run.latest.exists():
        raise ConfigError(
            f"{run.root} already holds a run; resume it with --resume or choose another --out"
        )
    return config, None


def _write_run_files(run: RunDir, config: Config, data: TrainData) -> None:
    """The run's config, statistics and split, before the first step (rank 0)."""
    run.root.mkdir(parents=True, exist_ok=True)
    write_config(run, config)
    if data.stats is not None:
        write_stats(run, data.stats)
    write_split(run, Split(tuple(data.train_scenes), tuple(data.val_scenes)))


def train(
    config: Config | None,
    run_dir: str | os.PathLike[str],
    resume: bool = False,
    progress: bool = True,
    data: TrainData | None = None,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a U-Net; everything goes to ``run_dir`` (module docstring).

    Args:
        config: the configuration; with ``resume`` it may be None (the run's own
            ``config.toml`` is used) or a config whose ``model`` section matches the run's.
        run_dir: the run directory; a new run refuses a directory that already holds one.
        resume: continue from ``run_dir/checkpoints/latest.pt``.
        progress: tqdm bar (stderr) with loss and throughput.
        data: the data; None builds it from ``config.data`` (:func:`prepare_data`).
        callback: called on every rank after each optimizer step (and any checkpoint it
            triggers) as ``callback(step, info)``; for monitoring and tests.

    Returns:
        a :class:`TrainResult`. Ctrl-C / SIGTERM stop after the current step, save
        ``latest.pt`` and return with ``interrupted=True``.
    """
    run = RunDir.of(run_dir)
    config, ckpt = _open_run(config, run, resume)
    rank, world, local_rank = ddp_info()
    device = resolve_device(config.train.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl collectives use the current device
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        with process_group(device, world):
            return _train(config, run, ckpt, device, rank, world, progress, data, callback)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _train(
    config: Config,
    run: RunDir,
    ckpt: Checkpoint | None,
    device: torch.device,
    rank: int,
    world: int,
    progress: bool,
    data: TrainData | None,
    callback: Callable[[int, dict[str, Any]], None] | None,
) -> TrainResult:
    t = config.train
    _configure_torch(config, device)
    if data is None:
        data = prepare_data(config, run, ckpt is not None, rank, world, progress)
    if config.pixel.enabled and (data.stats is None or not data.train_scenes):
        # Only data given to train() can lack them; fail before training, not after.
        raise ValueError("pixel.enabled needs the training data's statistics and scene ids")
    needed = t.steps_per_epoch * t.accumulate * t.batch_size * world
    if len(data.train) < needed:
        raise ValueError(
            f"the training dataset has {len(data.train)} items per epoch, the loop needs "
            f"{needed} (steps_per_epoch * accumulate * batch_size * world size)"
        )
    if rank == 0:
        _write_run_files(run, config, data)
    parts = _build_parts(config, data, ckpt, device, world)
    state = _restore(parts, ckpt, t.seed, rank)
    loop = _Loop(config, run, data, parts, state, device, rank, world)
    interrupted = loop.run_steps(progress, callback)
    loop.finish(interrupted, progress)
    return TrainResult(
        run_dir=run.root,
        steps=state.step,
        epochs=len(state.history),
        best_score=state.best["score"],
        best_step=int(state.best["step"]),
        interrupted=interrupted,
        seconds=state.elapsed,
        history=state.history,
        model=parts.averaged,
    )
