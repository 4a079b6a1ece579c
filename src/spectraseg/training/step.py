"""One optimizer step with gradient accumulation (the seed team's scheme).

Zero the gradients, run ``accumulate`` forward/backward passes, each on a freshly sampled
micro-batch with its loss divided by ``accumulate``, then step the optimizer once. For a
loss that is a mean over samples this is the gradient of one ``accumulate`` times larger
batch (the batch-wide soft Jaccard of :mod:`spectraseg.models.losses` is, by design,
computed per micro-batch), within the memory of one micro-batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spectraseg.models.losses import BCEJaccardLoss


@dataclass
class StepStats:
    """Sums over the micro-batches of one optimizer step."""

    loss: float = 0.0
    bce: float = 0.0
    jaccard: float = 0.0
    batches: int = 0
    samples: int = 0


def _to_device(
    batch: Mapping[str, Any], device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A micro-batch's image (float32, in the training memory format), mask and, when the
    batch has one, its ``valid`` pixels (nodata excluded), on ``device``."""
    x = torch.as_tensor(batch["image"])
    y = torch.as_tensor(batch["mask"])
    nb = device.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.to(device, dtype=torch.float32, non_blocking=nb).contiguous(memory_format=fmt)
    y = y.to(device, non_blocking=nb)
    v = batch.get("valid")
    return x, y, None if v is None else torch.as_tensor(v).to(device, non_blocking=nb)


def accumulation_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: BCEJaccardLoss,
    batches: Sequence[Mapping[str, Any]] | Iterator[Mapping[str, Any]],
    accumulate: int,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
) -> StepStats:
    """One optimizer step over ``accumulate`` micro-batches (the seed's accumulation).

    Zeroes the gradients, runs forward/backward on each micro-batch with its loss divided
    by ``accumulate`` (so the accumulated gradient is the mean over all micro-batches), then
    steps the optimizer once. Under DDP gradients are synchronised only on the last
    micro-batch. ``batches`` yields ``{"image": (N, C, S, S), "mask": (N, K, S, S)}``
    and, for data with nodata pixels, ``"valid": (N, 1, S, S)`` (the loss ignores the
    others); exactly ``accumulate`` are consumed. ``amp``: the forward pass's autocast type
    (None: float32); the loss is float32 either way.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    stats = StepStats()
    it = iter(batches)
    ddp = model if isinstance(model, nn.parallel.DistributedDataParallel) else None
    for k in range(accumulate):
        try:
            batch = next(it)
        except StopIteration:
            raise RuntimeError(f"accumulation step needs {accumulate} batches, got {k}") from None
        x, y, v = _to_device(batch, device, channels_last)
        sync = ddp.no_sync() if ddp is not None and k < accumulate - 1 else contextlib.nullcontext()
        with sync:
            cast = contextlib.nullcontext() if amp is None else torch.autocast(device.type, amp)
            with cast:
                logits = model(x)
            loss = loss_fn(logits, y, v)  # float32: the loss upcasts the logits
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
