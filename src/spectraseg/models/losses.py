"""Losses for multi-label segmentation: binary cross-entropy combined with soft Jaccard.

All losses take **logits** ``(N, C, H, W)`` (any float dtype; computed in float32) and
targets ``(N, C, H, W)`` in ``{0, 1}`` (any dtype) and return a scalar tensor.

Soft Jaccard of class ``c`` with probabilities ``p`` and targets ``t``::

    J_c = (sum p*t + smooth) / (sum p + sum t - sum p*t + smooth)

The ``mode`` says what the sums run over:

- ``"batch"``: all samples and pixels of the batch, one ``J_c`` per class. A class absent
  from one patch no longer has a Jaccard of its own pulling that patch to zero; rare classes
  get one well-defined value per batch.
- ``"present"``: like ``"batch"``, but classes with no positive pixel in the batch are left
  out of the Jaccard term (the BCE term still sees them), so the Jaccard term never pushes a
  class towards "always empty".
- ``"sample"``: per sample and class, averaged. The only mode in which the loss of a batch
  is the mean of the losses of its samples, i.e. in which k accumulated micro-batches give
  exactly the gradient of one k-times larger batch.

The combined loss is ``bce_weight * BCE + jaccard_weight * (1 - J)`` (or ``- log J`` with
``log_jaccard``), where ``J`` is the class-weighted mean of ``J_c``. BCE is the mean over
all elements, with optional per-class positive weights (``pos_weight``: a positive pixel of
class ``c`` counts ``pos_weight[c]`` times) and per-class weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spectraseg.config import LossConfig, per_class

JACCARD_MODES: tuple[str, ...] = ("batch", "present", "sample")
"""Ways of summing the soft Jaccard (module docstring)."""


def _class_vector(values: Sequence[float] | None, n: int, name: str) -> torch.Tensor | None:
    if values is None or len(values) == 0:
        return None
    if len(values) != n:
        raise ValueError(f"{name} needs {n} values (one per class), got {len(values)}")
    t = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if bool((t < 0).any()):
        raise ValueError(f"{name} values must be >= 0, got {list(values)}")
    return t


def soft_jaccard(
    probs: torch.Tensor,
    target: torch.Tensor,
    mode: str = "batch",
    smooth: float = 1.0,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft Jaccard per class.

    Args:
        probs: float ``(N, C, H, W)`` in ``[0, 1]``.
        target: ``(N, C, H, W)`` in ``{0, 1}``.
        mode: ``"batch"`` / ``"present"`` (sums over the batch) or ``"sample"``.
        smooth: added to numerator and denominator (pixels); keeps empty classes defined.
        valid: ``(N, 1, H, W)`` in ``{0, 1}``: pixels that count (None: all); the others
            (nodata) add to neither intersection nor union.

    Returns:
        ``(jaccard, valid)``: float32 ``(C,)`` for the batch modes or ``(N, C)`` for
        ``"sample"``, and a bool mask of the same shape saying which entries count
        (``"present"`` drops classes with no positive pixel in the batch).
    """
    if mode not in JACCARD_MODES:
        raise ValueError(f"unknown Jaccard mode {mode!r}; expected one of {JACCARD_MODES}")
    if probs.shape != target.shape or probs.ndim != 4:
        raise ValueError(
            f"probs and target must both be (N, C, H, W), got {tuple(probs.shape)} "
            f"and {tuple(target.shape)}"
        )
    p = probs.float()
    t = target.float()
    if valid is not None:
        v = valid.float()
        p, t = p * v, t * v
    dims = (2, 3) if mode == "sample" else (0, 2, 3)
    inter = (p * t).sum(dims)
    total = p.sum(dims) + t.sum(dims)
    jac = (inter + smooth) / (total - inter + smooth)
    if mode == "present":
        valid = t.sum(dims) > 0
    else:
        valid = torch.ones_like(jac, dtype=torch.bool)
    return jac, valid


class BCEJaccardLoss(nn.Module):
    """``bce_weight * BCE + jaccard_weight * (1 - J)`` on logits (module docstring).

    Args:
        bce_weight: weight of the BCE term (0 disables it).
        jaccard_weight: weight of the Jaccard term (0 disables it).
        mode: soft Jaccard mode, one of :data:`JACCARD_MODES`.
        smooth: Jaccard smoothing in pixels.
        log_jaccard: use ``-log J`` instead of ``1 - J``.
        pos_weight: per-class weight of positive pixels in BCE (``C`` values) or None.
        class_weights: per-class weight of both terms (``C`` values) or None.
        num_classes: ``C``.

    ``forward(logits, target, valid=None) -> loss`` (0-d float32 tensor); ``valid``
    ``(N, 1, H, W)`` in ``{0, 1}`` leaves nodata pixels out of both terms (None: every
    pixel counts, computed exactly as before the option existed). ``last_terms`` keeps the
    detached ``{"bce": ..., "jaccard": ...}`` of the last call for logging (``jaccard`` is
    the soft Jaccard itself, not the loss term).
    """

    pos_weight: torch.Tensor | None  # buffers (C,) float32, or None
    class_weights: torch.Tensor | None

    def __init__(
        self,
        bce_weight: float = 1.0,
        jaccard_weight: float = 1.0,
        mode: str = "batch",
        smooth: float = 1.0,
        log_jaccard: bool = False,
        pos_weight: Sequence[float] | None = None,
        class_weights: Sequence[float] | None = None,
        num_classes: int = 10,
    ):
        super().__init__()
        if mode not in JACCARD_MODES:
            raise ValueError(f"unknown Jaccard mode {mode!r}; expected one of {JACCARD_MODES}")
        if bce_weight < 0 or jaccard_weight < 0 or bce_weight + jaccard_weight <= 0:
            raise ValueError(
                f"loss weights must be >= 0 and not both 0, got bce={bce_weight}, "
                f"jaccard={jaccard_weight}"
            )
        self.bce_weight = float(bce_weight)
        self.jaccard_weight = float(jaccard_weight)
        self.mode = mode
        self.smooth = float(smooth)
        self.log_jaccard = bool(log_jaccard)
        self.num_classes = num_classes
        pw = _class_vector(pos_weight, num_classes, "pos_weight")
        cw = _class_vector(class_weights, num_classes, "class_weights")
        if cw is not None and float(cw.sum()) <= 0:
            raise ValueError("class_weights must not all be 0")
        self.register_buffer("pos_weight", pw, persistent=False)
        self.register_buffer("class_weights", cw, persistent=False)
        self.last_terms: dict[str, float] = {}

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        if logits.shape != target.shape or logits.ndim != 4:
            raise ValueError(
                f"logits and target must both be (N, C, H, W), got {tuple(logits.shape)} "
                f"and {tuple(target.shape)}"
            )
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} classes, got {logits.shape[1]}")
        x = logits.float()
        t = target.float()
        c = self.num_classes
        cw = self.class_weights
        loss = x.new_zeros(())
        bce_value = x.new_zeros(())
        if self.bce_weight > 0:
            pw = None if self.pos_weight is None else self.pos_weight.view(1, c, 1, 1)
            bce = F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction="none")
            if valid is None:
                per_class = bce.mean(dim=(0, 2, 3))
            else:
                v = valid.float()
                per_class = (bce * v).sum(dim=(0, 2, 3)) / v.sum().clamp(min=1.0)
            if cw is None:
                bce_value = per_class.mean()
            else:
                bce_value = (per_class * cw).sum() / cw.sum()
            loss = loss + self.bce_weight * bce_value
        jac_value = x.new_ones(())
        if self.jaccard_weight > 0:
            jac, counted = soft_jaccard(torch.sigmoid(x), t, self.mode, self.smooth, valid)
            w = counted.float()
            if cw is not None:
                w = w * cw  # broadcasts over the sample axis in "sample" mode
            if float(w.sum()) > 0:
                jac_value = (jac * w).sum() / w.sum()
                term = -torch.log(jac_value) if self.log_jaccard else 1.0 - jac_value
                loss = loss + self.jaccard_weight * term
        self.last_terms = {"bce": float(bce_value.detach()), "jaccard": float(jac_value.detach())}
        return loss


def build_loss(cfg: LossConfig, num_classes: int = 10) -> BCEJaccardLoss:
    """The loss described by a :class:`spectraseg.config.LossConfig` for ``num_classes``
    output maps; ConfigError when a per-class vector has another length."""
    pos_weight = per_class(cfg.pos_weight, num_classes, "loss.pos_weight", 1.0)
    weights = per_class(cfg.class_weights, num_classes, "loss.class_weights", 1.0)
    return BCEJaccardLoss(
        num_classes=num_classes,
        bce_weight=cfg.bce,
        jaccard_weight=cfg.jaccard,
        mode=cfg.jaccard_mode,
        smooth=cfg.smooth,
        log_jaccard=cfg.log_jaccard,
        pos_weight=pos_weight if cfg.pos_weight else None,
        class_weights=weights if cfg.class_weights else None,
    )
