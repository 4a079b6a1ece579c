"""Training: gradient accumulation, validation with the competition metric, exact resume, DDP.

Run directory layout (``spectraseg train --out RUN``)::

    RUN/config.toml              the resolved config, every key (``spectraseg.config``)
    RUN/stats.json               the normalisation statistics the run uses
    RUN/checkpoints/latest.pt    the last checkpoint: every ``train.checkpoint_every`` steps,
                                 at each epoch end, on Ctrl-C and at the end of the run
    RUN/checkpoints/best.pt      the checkpoint with the best validation mean Jaccard
                                 (the final one when there is no validation)
    RUN/metrics.csv              one row per epoch (and for a final partial epoch)
    RUN/metrics.json             the same rows plus the best epoch
    RUN/pixelmodel.pkl           the per-pixel partner model (``pixel.enabled``), fitted on
                                 the training scenes after the U-Net
    RUN/thresholds.json          per-class thresholds and U-Net/pixel-model blend weights
                                 (written later by ``spectraseg predict``)

Checkpoints are written atomically and load with ``torch.load(weights_only=True)``: they
hold tensors and Python primitives only (RNG states as uint8/int64 tensors). Keys:
``format``, ``version``, ``step``, ``epoch``, ``model``, ``optimizer``, ``scaler``,
``in_channels``, ``config`` (the TOML text), ``rng`` (one entry per rank), ``elapsed``
(training seconds so far), ``best`` (score, step, epoch), ``epoch_acc`` (sums of the current
epoch) and ``history`` (the metric rows so far); with ``train.ema``, also ``ema`` (the
averaged weights and BatchNorm statistics, what :func:`load_model` returns) and
``ema_count`` (steps averaged).

**Accumulation** (the seed's scheme): zero the gradients, run ``train.accumulate``
forward/backward passes, each on a freshly sampled batch of ``train.batch_size`` with its
loss divided by ``accumulate``, then one optimizer step. For a loss that is a mean over
samples this is the gradient of one ``accumulate`` times larger batch (the batch-wide soft
Jaccard of :mod:`spectraseg.losses` is, by design, computed per micro-batch).

**Determinism and resume.** Patch ``j`` of micro-batch ``m`` of epoch ``e`` on rank ``r`` is
item ``(m * world + r) * batch_size + j`` of the epoch's dataset (which draws each item from
``(seed, rank, epoch, index)`` alone: :class:`spectraseg.sampling.PatchDataset`), and the
learning rate is a function of the step count (and of elapsed training time when
``train.minutes`` is set), so a run resumed from a checkpoint sees the same batches and
schedule as an uninterrupted one and, with deterministic algorithms, ends with identical
weights.

**Epochs and validation.** An epoch is ``train.steps_per_epoch`` optimizer steps; the run
has ``train.steps`` steps (or ``epochs * steps_per_epoch``) and stops early after the step
that exhausts ``train.minutes`` of training time. Every ``train.val_every`` epochs and at the
end, rank 0 predicts each held-out scene whole (:func:`spectraseg.predict.predict_probs`),
thresholds it with ``predict.thresholds`` and scores it with the competition metric
(:mod:`spectraseg.metrics`); ``best.pt`` follows the validation mean Jaccard.

**Devices.** CPU by default (``train.threads`` sets ``torch.set_num_threads``); on CUDA,
float16 autocast with a GradScaler when ``train.amp``. Ctrl-C (SIGINT) or SIGTERM stops
after the current step and saves ``latest.pt``; a second Ctrl-C aborts at once.

**DDP.** Under ``torchrun --standalone --nproc-per-node=N -m spectraseg train ...``
(``WORLD_SIZE > 1``) the process group is initialised with gloo on CPU and nccl on CUDA;
each rank draws its own patches; gradients are all-reduced only on the last micro-batch of
a step (``no_sync`` on the others); only rank 0 validates and writes files; a stop request
(Ctrl-C, SIGTERM, time budget) is agreed by all ranks after each step.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io as _io
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from spectraseg import CLASS_NAMES, NUM_CLASSES
from spectraseg.config import Config, from_dict, to_toml
from spectraseg.errors import ConfigError, DataError
from spectraseg.io import atomic_output
from spectraseg.losses import BCEJaccardLoss, build_loss
from spectraseg.model import UNet
from spectraseg.runtime import resolve_device

CHECKPOINT_FORMAT = "spectraseg-checkpoint"
CHECKPOINT_VERSION = 1

# Thresholds at which validation also reports the per-class best Jaccard (a diagnostic of
# how far from calibrated the net is; predict tuning chooses the thresholds actually used).
_TUNE_BINS = 20


# --------------------------------------------------------------------------- data interface


@dataclass
class TrainData:
    """What the loop needs from the data pipeline.

    Attributes:
        train: a map-style dataset; item ``i`` is ``{"image": float32 (C, S, S),
            "mask": uint8 (10, S, S)}``, a pure function of ``(seed, epoch, i)``. If it has
            ``set_epoch(epoch)`` it is called before each epoch; it must be at least
            ``steps_per_epoch * accumulate * batch_size * world`` long.
        in_channels: ``C``.
        val_scenes: held-out scene ids (may be empty).
        load_val: ``image_id -> (image float32 (C, H, W), truth uint8 (10, H, W))``.
        pixel_area: ``image_id -> area of one pixel in squared grid units`` (metric weights);
            None counts pixels.
        stats: the normalisation statistics (saved as ``stats.json``), or None.
    """

    train: Any
    in_channels: int
    val_scenes: Sequence[str] = ()
    load_val: Callable[[str], tuple[np.ndarray, np.ndarray]] | None = None
    pixel_area: Callable[[str], float] | None = None
    stats: Mapping[str, Any] | None = None


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


# --------------------------------------------------------------------------- small helpers


def build_model(config: Config, in_channels: int) -> UNet:
    """The U-Net described by ``config.model`` for ``in_channels`` inputs."""
    m = config.model
    return UNet(
        in_channels,
        NUM_CLASSES,
        width=m.width,
        depth=m.depth,
        norm=m.norm,
        groups=m.groups,
        dropout=m.dropout,
    )


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


def _ddp_info() -> tuple[int, int, int]:
    """``(rank, world, local_rank)`` from the torchrun environment (0, 1, 0 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


# --------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states as tensors (torch CPU/CUDA, numpy, Python ``random``)."""
    np_state = np.random.get_state()  # noqa: NPY002 (the global state is what we save)
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_meta": torch.tensor([int(np_state[2]), int(np_state[3])], dtype=torch.int64),
        "numpy_gauss": torch.tensor([float(np_state[4])], dtype=torch.float64),
        "python": torch.tensor(list(py_state[1]), dtype=torch.int64),
        "python_version": torch.tensor([py_state[0]], dtype=torch.int64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, torch.Tensor]) -> None:
    """Restore states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    meta = state["numpy_meta"].tolist()
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            int(meta[0]),
            int(meta[1]),
            float(state["numpy_gauss"][0]),
        )
    )
    random.setstate(
        (
            int(state["python_version"][0]),
            tuple(int(v) for v in state["python"].tolist()),
            None,
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """``torch.save`` ``state`` to ``path`` atomically (a reader never sees half a file)."""
    with atomic_output(path) as tmp:
        torch.save(dict(state), tmp)


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; DataError if missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise DataError(f"checkpoint {path} cannot be loaded ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path} is not a spectraseg checkpoint")
    return ckpt


def _config_of_checkpoint(ckpt: Mapping[str, Any], where: str) -> Config:
    import tomllib

    try:
        return from_dict(tomllib.loads(ckpt["config"]))
    except (KeyError, tomllib.TOMLDecodeError, ConfigError) as exc:
        raise DataError(f"{where} holds no valid config ({exc})") from None


def load_model(
    run_dir: str | os.PathLike[str],
    which: str = "best",
    device: str | torch.device | None = None,
) -> tuple[UNet, Config, dict[str, Any] | None]:
    """Load a trained model from a run directory.

    Args:
        run_dir: the run directory (module docstring).
        which: ``"best"`` or ``"latest"``; ``"best"`` falls back to ``"latest"`` when no
            validation has produced a best checkpoint yet.
        device: where to put the model (default CPU).

    Returns:
        ``(model in eval mode, config, stats or None)``; the model returns logits.
    """
    if which not in ("best", "latest"):
        raise ConfigError(f"checkpoint {which!r} must be 'best' or 'latest'")
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"run directory {run} does not exist")
    path = run / "checkpoints" / f"{which}.pt"
    if which == "best" and not path.is_file():
        path = run / "checkpoints" / "latest.pt"
    ckpt = load_checkpoint(path)
    config = _config_of_checkpoint(ckpt, str(path))
    model = build_model(config, int(ckpt["in_channels"]))
    # With weight averaging the average is the run's model; the raw weights are for resuming.
    model.load_state_dict(ckpt["ema"] if "ema" in ckpt else ckpt["model"])
    model.eval()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    model.to(dev)
    stats = None
    stats_path = run / "stats.json"
    if stats_path.is_file():
        from spectraseg.normalization import load_stats

        stats = load_stats(stats_path)
    return model, config, stats


# --------------------------------------------------------------------------- one step


@dataclass
class StepStats:
    """Sums over the micro-batches of one optimizer step."""

    loss: float = 0.0
    bce: float = 0.0
    jaccard: float = 0.0
    batches: int = 0
    samples: int = 0


def _to_device(batch: Mapping[str, Any], device: torch.device, channels_last: bool):
    x = torch.as_tensor(batch["image"])
    y = torch.as_tensor(batch["mask"])
    nb = device.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.to(device, dtype=torch.float32, non_blocking=nb).contiguous(memory_format=fmt)
    y = y.to(device, non_blocking=nb)
    return x, y


def accumulation_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: BCEJaccardLoss,
    batches: Sequence[Mapping[str, Any]] | Iterator[Mapping[str, Any]],
    accumulate: int,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    channels_last: bool = False,
) -> StepStats:
    """One optimizer step over ``accumulate`` micro-batches (the seed's accumulation).

    Zeroes the gradients, runs forward/backward on each micro-batch with its loss divided
    by ``accumulate`` (so the accumulated gradient is the mean over all micro-batches), then
    steps the optimizer once. Under DDP gradients are synchronised only on the last
    micro-batch. ``batches`` yields ``{"image": (N, C, S, S), "mask": (N, 10, S, S)}``;
    exactly ``accumulate`` are consumed.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    stats = StepStats()
    it = iter(batches)
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    for k in range(accumulate):
        try:
            batch = next(it)
        except StopIteration:
            raise RuntimeError(f"accumulation step needs {accumulate} batches, got {k}") from None
        x, y = _to_device(batch, device, channels_last)
        sync = contextlib.nullcontext() if (not ddp or k == accumulate - 1) else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = model(x)
            loss = loss_fn(logits, y)  # float32: the loss upcasts the logits
            scaled = loss / accumulate
            if scaler is not None:
                scaler.scale(scaled).backward()
            else:
                scaled.backward()
        stats.loss += float(loss.detach())
        stats.bce += loss_fn.last_terms.get("bce", 0.0)
        stats.jaccard += loss_fn.last_terms.get("jaccard", 0.0)
        stats.batches += 1
        stats.samples += int(x.shape[0])
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return stats


# --------------------------------------------------------------------------- validation


def _bce_sum(probs: np.ndarray, truth: np.ndarray) -> float:
    """Summed binary cross-entropy of probabilities ``(H, W)`` against a 0/1 mask ``(H, W)``."""
    t = truth.astype(bool)
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-(np.log(p[t]).sum(dtype=np.float64) + np.log1p(-p[~t]).sum(dtype=np.float64)))


def validate(
    model: nn.Module,
    data: TrainData,
    config: Config,
    device: torch.device,
    progress: bool = False,
) -> dict[str, Any]:
    """The competition metric on whole held-out scenes.

    Each scene is predicted by tiled inference (:func:`spectraseg.predict.predict_probs`,
    ``predict.tile``/``margin``, no TTA), thresholded with ``predict.thresholds`` and
    counted per class (TP, FP, FN pixel areas in grid units, summed over scenes:
    :mod:`spectraseg.metrics`). Also reports the mean pixel BCE and, as a calibration
    diagnostic, the per-class Jaccard at the best of 19 thresholds 0.05..0.95.

    Returns a JSON-ready dict: ``val_loss``, ``val_mean``, ``val_jaccard`` (10),
    ``val_empty`` (10 bools: union empty over all scenes), ``val_mean_tuned``,
    ``val_jaccard_tuned`` (10), ``val_thresholds_tuned`` (10).
    """
    from tqdm import tqdm

    from spectraseg.metrics import Evaluation, mask_counts
    from spectraseg.predict import predict_probs

    assert data.load_val is not None
    p = config.predict
    thr = np.asarray(p.thresholds, dtype=np.float32)[:, None, None]
    ids = list(data.val_scenes)
    counts = np.zeros((len(ids), NUM_CLASSES, 3), dtype=np.float64)
    edges = np.linspace(0.0, 1.0, _TUNE_BINS + 1)
    pos_hist = np.zeros((NUM_CLASSES, _TUNE_BINS))
    neg_hist = np.zeros((NUM_CLASSES, _TUNE_BINS))
    bce_sum = 0.0
    n_values = 0
    for n, image_id in enumerate(
        tqdm(ids, desc="validate", unit="scene", disable=not progress, leave=False)
    ):
        image, truth = data.load_val(image_id)
        probs = predict_probs(
            model,
            image,
            tile=p.tile,
            margin=p.margin,
            batch=p.batch,
            device=device,
            amp=config.train.amp,
        )
        area = data.pixel_area(image_id) if data.pixel_area is not None else 1.0
        counts[n] = mask_counts(probs >= thr, truth) * area
        # Class by class: a full-resolution scene's (10, H, W) maps are large.
        for c in range(NUM_CLASSES):
            t = truth[c].astype(bool)
            pos_hist[c] += np.histogram(probs[c][t], edges)[0] * area
            neg_hist[c] += np.histogram(probs[c][~t], edges)[0] * area
            bce_sum += _bce_sum(probs[c], truth[c])
        n_values += probs.size
    ev = Evaluation(tuple(ids), counts, "raster")
    # Pixels with probability >= edges[k] are the bins k.. (bin k holds [edges[k], edges[k+1])).
    tp = pos_hist[:, ::-1].cumsum(1)[:, ::-1]
    fp = neg_hist[:, ::-1].cumsum(1)[:, ::-1]
    fn = pos_hist.sum(1, keepdims=True) - tp
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        jac = np.where(union > 0, tp / union, ev.empty_score)[:, 1:]  # thresholds 0.05..0.95
    best = jac.argmax(1)
    tuned = jac[np.arange(NUM_CLASSES), best]
    return {
        "val_loss": bce_sum / max(1, n_values),
        "val_mean": ev.mean,
        "val_jaccard": [float(v) for v in ev.jaccard],
        "val_empty": [bool(v) for v in ev.empty],
        "val_mean_tuned": float(tuned.mean()),
        "val_jaccard_tuned": [float(v) for v in tuned],
        "val_thresholds_tuned": [round(float(edges[1 + b]), 3) for b in best],
    }


# --------------------------------------------------------------------------- stop requests


class _StopRequest:
    """SIGINT/SIGTERM set a flag checked between steps; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if signum == signal.SIGINT:
            import sys

            print(
                "\nstopping after this step (checkpointing); Ctrl-C again to abort",
                file=sys.stderr,
            )

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _ignore_sigint(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: loader workers leave it to the main process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# --------------------------------------------------------------------------- metrics files

_CSV_BASE = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_bce",
    "train_jaccard",
    "patches_per_s",
    "seconds",
    "val_loss",
    "val_mean",
    "val_mean_tuned",
)


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else v


def _write_metrics(run: Path, history: list[dict[str, Any]], best: Mapping[str, Any]) -> None:
    cols = list(_CSV_BASE) + [f"val_jaccard_{c}" for c in range(1, NUM_CLASSES + 1)]
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for row in history:
        jac = row.get("val_jaccard") or [None] * NUM_CLASSES
        values = [row.get(k) for k in _CSV_BASE] + list(jac)
        w.writerow([_csv_cell(v) for v in values])
    with atomic_output(run / "metrics.csv") as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    doc = {
        "classes": [CLASS_NAMES[c] for c in range(1, NUM_CLASSES + 1)],
        "epochs": history,
        "best": dict(best),
    }
    with atomic_output(run / "metrics.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- the loop


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
        worker_init_fn=_ignore_sigint if t.workers else None,
    )
    return iter(loader)


def _new_epoch_acc() -> dict[str, float]:
    return {"loss": 0.0, "bce": 0.0, "jaccard": 0.0, "batches": 0.0, "samples": 0.0, "seconds": 0.0}


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
    run = Path(run_dir)
    latest_path = run / "checkpoints" / "latest.pt"
    best_path = run / "checkpoints" / "best.pt"
    ckpt: dict[str, Any] | None = None
    if resume:
        ckpt = load_checkpoint(latest_path)
        saved = _config_of_checkpoint(ckpt, str(latest_path))
        if config is None:
            config = saved
        elif config.model != saved.model:
            raise ConfigError(
                f"the model section differs from the run's in {run / 'config.toml'}; "
                "a resumed run keeps its model"
            )
    elif config is None:
        raise ConfigError("a new run needs a config")
    elif latest_path.exists():
        raise ConfigError(
            f"{run} already holds a run; resume it with --resume or choose another --out"
        )
    assert config is not None
    t = config.train

    rank, world, local_rank = _ddp_info()
    device = resolve_device(t.device, local_rank)
    own_group = False
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl collectives use the current device
    if world > 1 and not dist.is_initialized():
        # NCCL needs a GPU per process; more processes than GPUs share them through gloo.
        nccl = device.type == "cuda" and world <= torch.cuda.device_count()
        dist.init_process_group("nccl" if nccl else "gloo")
        own_group = True
    is_main = rank == 0
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        result = _train(
            config,
            run,
            ckpt,
            device,
            rank,
            world,
            is_main,
            progress,
            data,
            callback,
            latest_path,
            best_path,
        )
        if own_group:
            dist.barrier()  # no rank tears the group down while another still uses it
        return result
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        if own_group:
            # The DDP wrapper sits in reference cycles; free it (and the gloo work it
            # holds) while the group is alive, not at interpreter exit, where gloo's
            # threads abort the process.
            gc.collect()
            dist.destroy_process_group()


def _train(
    config: Config,
    run: Path,
    ckpt: dict[str, Any] | None,
    device: torch.device,
    rank: int,
    world: int,
    is_main: bool,
    progress: bool,
    data: TrainData | None,
    callback: Callable[[int, dict[str, Any]], None] | None,
    latest_path: Path,
    best_path: Path,
) -> TrainResult:
    from tqdm import tqdm

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

    if data is None:
        data = prepare_data(
            config, run, resume=ckpt is not None, rank=rank, world=world, progress=progress
        )
    needed = t.steps_per_epoch * t.accumulate * t.batch_size * world
    if len(data.train) < needed:
        raise ValueError(
            f"the training dataset has {len(data.train)} items per epoch, the loop needs "
            f"{needed} (steps_per_epoch * accumulate * batch_size * world size)"
        )
    if is_main:
        run.mkdir(parents=True, exist_ok=True)
        with atomic_output(run / "config.toml") as tmp:
            tmp.write_text(to_toml(config), encoding="utf-8")
        if data.stats is not None:
            from spectraseg.normalization import save_stats

            save_stats(data.stats, run / "stats.json")

    # Same initial weights on every rank (DDP also broadcasts them from rank 0).
    torch.manual_seed(t.seed)
    model = build_model(config, data.in_channels)
    if ckpt is not None:
        if int(ckpt["in_channels"]) != data.in_channels:
            raise ConfigError(
                f"the data now has {data.in_channels} input channels but the run was "
                f"trained with {int(ckpt['in_channels'])}"
            )
        model.load_state_dict(ckpt["model"])
    fmt = torch.channels_last if t.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=fmt)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt_cls = torch.optim.AdamW if t.weight_decay > 0 else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    amp = bool(t.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda") if amp else None
    ema: AveragedModel | None = None
    if t.ema > 0:
        # A copy of the model (same device and memory format) whose parameters and buffers
        # follow the EMA of the trained ones; the first update copies them.
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True)
        if ckpt is not None and "ema" in ckpt:
            ema.module.load_state_dict(ckpt["ema"])
            ema.n_averaged.fill_(int(ckpt["ema_count"]))
    averaged: nn.Module = ema.module if ema is not None else model
    loss_fn = build_loss(config.loss).to(device)

    total = config.total_steps
    step = 0
    elapsed = 0.0
    best: dict[str, Any] = {"score": None, "step": 0, "epoch": 0}
    history: list[dict[str, Any]] = []
    acc = _new_epoch_acc()
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt["step"])
        elapsed = float(ckpt["elapsed"])
        best = dict(ckpt["best"])
        history = [dict(r) for r in ckpt["history"]]
        acc = {k: float(v) for k, v in ckpt["epoch_acc"].items()}
        states = ckpt["rng"]
        set_rng_state(states[rank] if rank < len(states) else states[0])
    else:
        # Dropout and anything else drawing from the global RNGs: seeded per rank.
        torch.manual_seed(t.seed + 1 + rank)
        np.random.seed(t.seed + 1 + rank)  # noqa: NPY002
        random.seed(t.seed + 1 + rank)
    budget = t.minutes * 60.0
    validating = bool(data.val_scenes) and data.load_val is not None
    spe = t.steps_per_epoch

    def gather_rng() -> list[dict[str, torch.Tensor]]:
        mine = rng_state()
        if world == 1:
            return [mine]
        out: list[Any] = [None] * world
        dist.all_gather_object(out, mine)
        return out

    def checkpoint(path: Path, states: list[dict[str, torch.Tensor]]) -> None:
        save_checkpoint(
            path,
            {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "step": step,
                "epoch": step // spe,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "in_channels": data.in_channels,
                "config": to_toml(config),
                "rng": states,
                "elapsed": elapsed,
                "best": best,
                "epoch_acc": acc,
                "history": history,
                **(
                    {"ema": ema.module.state_dict(), "ema_count": int(ema.n_averaged)}
                    if ema is not None
                    else {}
                ),
            },
        )

    def end_epoch(final: bool) -> None:
        """Metrics row for the epoch ending at ``step`` (validate when due); rank 0 only."""
        nonlocal best, acc
        epoch = math.ceil(step / spe)
        n = max(1.0, acc["batches"])
        row: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": acc["loss"] / n,
            "train_bce": acc["bce"] / n,
            "train_jaccard": acc["jaccard"] / n,
            "patches_per_s": acc["samples"] * world / acc["seconds"] if acc["seconds"] else 0.0,
            "seconds": elapsed,
        }
        due = final or (t.val_every > 0 and epoch % t.val_every == 0)
        improved = False
        if validating and due:
            row.update(validate(averaged, data, config, device, progress=progress))
            score = row[t.select]
            if best["score"] is None or score > best["score"]:
                best = {"score": score, "step": step, "epoch": epoch}
                improved = True
        history.append(row)
        acc = _new_epoch_acc()
        if improved:
            checkpoint(best_path, rng_states)
        _write_metrics(run, history, best)

    bar = tqdm(
        total=total,
        initial=step,
        desc="train",
        unit="step",
        disable=not (progress and is_main),
        dynamic_ncols=True,
    )
    interrupted = False
    rng_states: list[dict[str, torch.Tensor]] = []
    loader: Iterator[Mapping[str, Any]] | None = None
    loader_epoch = -1
    with _StopRequest() as stop:
        while step < total:
            epoch = step // spe
            if loader is None or loader_epoch != epoch:
                loader = _epoch_loader(
                    data,
                    config,
                    epoch,
                    (step % spe) * t.accumulate,
                    rank,
                    world,
                    pin=device.type == "cuda",
                )
                loader_epoch = epoch
            lr = t.lr * lr_factor(config, step, elapsed / budget if budget else 0.0)
            for group in optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            s = accumulation_step(
                net,
                optimizer,
                loss_fn,
                loader,
                t.accumulate,
                device,
                scaler,
                amp,
                t.channels_last,
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if ema is not None:
                ema.update_parameters(model)
            dt = time.perf_counter() - t0
            step += 1
            acc["loss"] += s.loss
            acc["bce"] += s.bce
            acc["jaccard"] += s.jaccard
            acc["batches"] += s.batches
            acc["samples"] += s.samples
            acc["seconds"] += dt
            elapsed += dt
            # Ranks agree on stopping and on the clock (the schedule may follow it).
            flags = torch.tensor(
                [float(stop.requested), elapsed, 1.0 if budget and elapsed >= budget else 0.0],
                dtype=torch.float64,
            )
            if world > 1:
                # nccl reduces device tensors only; gloo takes CPU tensors.
                flags = flags.to(device)
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                flags = flags.cpu()
            elapsed = float(flags[1])
            interrupted = bool(flags[0])
            finished = step >= total or bool(flags[2])
            done = finished or interrupted
            # An interruption is not an epoch end: the resumed run must validate (and
            # choose its best checkpoint) exactly where an uninterrupted one does.
            epoch_end = step % spe == 0 or finished
            due_ckpt = (
                epoch_end or done or (t.checkpoint_every > 0 and step % t.checkpoint_every == 0)
            )
            if due_ckpt:
                rng_states = gather_rng()
            if is_main:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{s.loss / s.batches:.4f}",
                    pps=f"{s.samples * world / dt:.1f}",
                    lr=f"{lr:.2e}",
                )
                if epoch_end:
                    end_epoch(final=finished)
                if due_ckpt:
                    checkpoint(latest_path, rng_states)
            if world > 1 and (epoch_end or due_ckpt):
                dist.barrier()
            if callback is not None:
                callback(step, {"loss": s.loss / s.batches, "lr": lr, "seconds": dt})
            if done:
                break
    bar.close()
    if world > 1:
        # DDP keeps parameters in step but each rank's last forward updated its own
        # BatchNorm statistics: adopt rank 0's (the ones its checkpoints hold).
        modules = (model,) if averaged is model else (model, averaged)
        for buf in (b for m in modules for b in m.buffers()):
            dist.broadcast(buf, src=0)
    if is_main and not validating and latest_path.is_file():
        # Without validation "best" is simply the last model.
        with atomic_output(best_path) as tmp:
            shutil.copyfile(latest_path, tmp)
    if is_main and config.pixel.enabled and not interrupted:
        from spectraseg.pixelmodel import fit_run

        fit_run(run, config, list(data.train.image_ids), data.stats, progress=progress)
    return TrainResult(
        run_dir=run,
        steps=step,
        epochs=len(history),
        best_score=best["score"],
        best_step=int(best["step"]),
        interrupted=interrupted,
        seconds=elapsed,
        history=history,
        model=averaged,
    )


# --------------------------------------------------------------------------- real data


def labelled_scenes(cache: Any, root: str, progress: bool = False) -> list[str]:
    """Cached scenes with label masks, building missing masks from ``root`` when given.

    When every cached scene has a mask, all of them; otherwise, with a dataset ``root``,
    the cached scenes that have labels there (their masks rasterised into the cache where
    missing); without ``root``, the scenes whose masks exist.
    """
    from spectraseg.sampling import _mask_ok, build_masks, mask_path

    ids = list(cache.image_ids)
    have = [i for i in ids if _mask_ok(mask_path(cache, i), cache.load(i).shape[1:])]
    if len(have) == len(ids) or not root:
        return have
    from spectraseg.io import open_dataset

    labelled = set(open_dataset(root).labels)
    usable = [i for i in ids if i in labelled]
    build_masks(cache, root, usable, progress=progress)
    return usable


_labelled_scenes = labelled_scenes  # the earlier private name, still imported elsewhere


def prepare_data(
    config: Config,
    run: Path,
    resume: bool = False,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> TrainData:
    """Build :class:`TrainData` from ``config.data``.

    Scenes: ``data.scenes``, else every cached scene with labels (masks are rasterised
    into the cache from ``data.root`` where missing). Split by ``data.val_scenes`` or
    ``data.val_fraction`` (whole region groups, :func:`spectraseg.sampling.split_scenes`).
    Statistics: the run's ``stats.json`` when resuming, else ``data.stats``, else computed
    over every cached scene (they use no labels, and this way validation and test scenes
    have statistics of their own region); ``data.norm`` sets their scope. Under DDP rank 0 prepares
    masks and statistics and the others receive them.
    """
    from spectraseg.normalization import compute_stats, load_stats, open_cache_dir, with_mode
    from spectraseg.sampling import PatchDataset, _open_mask, load_scene, split_scenes

    d, t = config.data, config.train
    if not d.cache:
        raise ConfigError(
            "config key 'data.cache' is empty: set it to a cache written by spectraseg align"
        )
    cache = open_cache_dir(d.cache)
    stats: dict[str, Any] | None = None
    scenes: list[str] = []
    if rank == 0:
        scenes = list(d.scenes) or labelled_scenes(cache, d.root, progress)
        known = set(cache.image_ids)
        for i in scenes:
            if i not in known:
                raise ConfigError(f"config key 'data.scenes' lists {i}, which is not in {d.cache}")
        if not scenes:
            raise ConfigError(
                f"no labelled scene in {d.cache}: set data.root to the dataset to rasterise "
                "the labels from"
            )
    if world > 1:
        box: list[Any] = [scenes]
        dist.broadcast_object_list(box, src=0)
        scenes = box[0]
    val: Sequence[str] | float = list(d.val_scenes) if d.val_scenes else d.val_fraction
    train_ids, val_ids = split_scenes(scenes, val, seed=t.seed)
    if not train_ids:
        raise ConfigError("no training scene is left after the validation split")
    if rank == 0:
        if resume and (run / "stats.json").is_file():
            stats = load_stats(run / "stats.json")
        elif d.stats:
            stats = with_mode(load_stats(d.stats), d.norm)
        else:
            # Statistics describe imagery, not labels: computing them over every cached
            # scene gives held-out and test scenes their own region's entry.
            stats = compute_stats(cache, None, mode=d.norm, progress=progress)
    if world > 1:
        box = [stats]
        dist.broadcast_object_list(box, src=0)
        stats = box[0]
    assert stats is not None
    dataset = PatchDataset(
        cache,
        train_ids,
        stats,
        size=t.patch_size,
        length=t.steps_per_epoch * t.accumulate * t.batch_size * world,
        seed=t.seed,
        rank=rank,
        rare_share=t.rare_share,
        augment=t.augment,
        photometric=t.photometric,
        indices=d.indices,
        progress=progress and rank == 0,
    )
    grid_sizes: dict[str, tuple[float, float]] = {}
    if d.root:
        from spectraseg.io import read_grid_sizes

        grid_path = Path(d.root) / "grid_sizes.csv"
        if grid_path.is_file():
            grid_sizes = read_grid_sizes(grid_path)

    def load_val(image_id: str) -> tuple[np.ndarray, np.ndarray]:
        image = load_scene(cache, image_id, stats, d.indices)
        truth = np.asarray(_open_mask(cache, image_id, image.shape[1:]))
        return image, truth

    def pixel_area(image_id: str) -> float:
        if image_id not in grid_sizes:
            return 1.0
        from spectraseg.metrics import pixel_area as area

        h, w = cache.load(image_id).shape[1:]
        return area(w, h, *grid_sizes[image_id])

    return TrainData(
        train=dataset,
        in_channels=dataset.in_channels,
        val_scenes=val_ids,
        load_val=load_val,
        pixel_area=pixel_area if grid_sizes else None,
        stats=stats,
    )
