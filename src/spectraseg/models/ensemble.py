"""Ensembles of U-Nets trained on different folds: their probabilities averaged.

A cross-validated run (:func:`spectraseg.crossval.train_folds`) holds one U-Net and one
per-pixel model per fold; predicting with the run averages each kind over the folds (the
per-pixel models: :class:`spectraseg.models.pixel.PixelEnsemble`). :class:`ProbabilityMean`
looks like one U-Net to the tiler: it returns the logit of the members' mean probability,
so the caller's sigmoid gives exactly that mean (up to float32 rounding), and test-time
augmentation, tiling and float16 autocast work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

LOGIT_EPS = 1e-6
"""Mean probabilities are clipped to ``[eps, 1 - eps]`` before the logit (a finite output)."""


class ProbabilityMean(nn.Module):
    """``logit(mean_k sigmoid(member_k(x)))``: logits ``(N, K, H, W)`` like each member's."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.in_channels = int(getattr(first, "in_channels", 0))
        self.multiple = int(getattr(first, "multiple", 1))
        self.num_classes = int(getattr(first, "num_classes", 10))
        self.schema = getattr(first, "schema", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.sigmoid(self.members[0](x).float())
        for member in self.members[1:]:
            total = total.add_(torch.sigmoid(member(x).float()))
        mean = total.div_(len(self.members)).clamp_(LOGIT_EPS, 1.0 - LOGIT_EPS)
        return torch.logit(mean)
