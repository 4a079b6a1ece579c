"""The state a training run carries from step to step and across processes: the loop's
counters and history (:class:`LoopState`, which converts to and from a
:class:`~spectraseg.runs.Checkpoint`), RNG states, stop requests, and the DDP process group.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel

from spectraseg.config import Config, to_toml
from spectraseg.runs import Checkpoint


def ddp_info() -> tuple[int, int, int]:
    """``(rank, world, local_rank)`` from the torchrun environment (0, 1, 0 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


@contextlib.contextmanager
def process_group(device: torch.device, world: int) -> Iterator[bool]:
    """Initialise the DDP process group when ``world > 1`` and none exists; yields whether
    this call owns it, and tears an owned group down on exit.

    NCCL needs a GPU per process; more processes than GPUs share them through gloo, and
    the CPU always uses gloo.
    """
    own = world > 1 and not dist.is_initialized()
    if own:
        nccl = device.type == "cuda" and world <= torch.cuda.device_count()
        dist.init_process_group("nccl" if nccl else "gloo")
    try:
        yield own
        if own:
            dist.barrier()  # no rank tears the group down while another still uses it
    finally:
        if own:
            # The DDP wrapper sits in reference cycles; free it (and the gloo work it holds)
            # while the group is alive, not at interpreter exit, where gloo's threads abort
            # the process.
            gc.collect()
            dist.destroy_process_group()


def new_epoch_acc() -> dict[str, float]:
    """Empty sums of an epoch: losses, micro-batches, samples and seconds."""
    return {"loss": 0.0, "bce": 0.0, "jaccard": 0.0, "batches": 0.0, "samples": 0.0, "seconds": 0.0}


@dataclass
class LoopState:
    """The training loop's counters: what a checkpoint restores besides weights and RNGs."""

    step: int = 0
    elapsed: float = 0.0
    """Training seconds so far (validation excluded)."""
    best: dict[str, Any] = field(default_factory=lambda: {"score": None, "step": 0, "epoch": 0})
    history: list[dict[str, Any]] = field(default_factory=list)
    acc: dict[str, float] = field(default_factory=new_epoch_acc)
    """Sums of the current epoch."""

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> LoopState:
        """The state a checkpoint was written in."""
        return cls(ckpt.step, ckpt.elapsed, dict(ckpt.best), list(ckpt.history), ckpt.epoch_acc)

    def to_checkpoint(
        self,
        config: Config,
        steps_per_epoch: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        ema: AveragedModel | None,
        in_channels: int,
        rng: list[dict[str, torch.Tensor]],
    ) -> Checkpoint:
        """A checkpoint of this state with the given weights, optimizer and RNG states."""
        return Checkpoint(
            step=self.step,
            epoch=self.step // steps_per_epoch,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else {},
            in_channels=in_channels,
            config=to_toml(config),
            rng=rng,
            elapsed=self.elapsed,
            best=self.best,
            epoch_acc=self.acc,
            history=self.history,
            ema=ema.module.state_dict() if ema is not None else None,
            ema_count=int(ema.n_averaged) if ema is not None else 0,
        )


def seed_everything(seed: int) -> None:
    """Seed torch, numpy's global RNG and Python's ``random`` (dropout and anything else
    drawing from the global RNGs)."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)


def gather_rng(world: int) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG states (:func:`rng_state`), in rank order."""
    mine = rng_state()
    if world == 1:
        return [mine]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, mine)
    return out


def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states as tensors (torch CPU/CUDA, numpy, Python ``random``)."""
    np_state = np.random.get_state()  # noqa: NPY002 (the global state is what we save)
    assert isinstance(np_state, tuple)  # the legacy form, get_state's default
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


class StopRequest:
    """SIGINT/SIGTERM set a flag checked between steps; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if signum == signal.SIGINT:
            print(
                "\nstopping after this step (checkpointing); Ctrl-C again to abort",
                file=sys.stderr,
            )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def ignore_sigint(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: loader workers leave it to the main process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
