"""MixStyle: feature statistics mixed between the patches of a batch during training.

Zhou et al., "Domain Generalization with MixStyle" (ICLR 2021): a scene of a region the
model never saw differs from the training regions mostly in the per-channel mean and
standard deviation of its early feature maps (illumination, haze, season, sensor gains).
With probability ``p`` per batch, each patch's early feature maps are re-styled with a
random convex mix of its own statistics and those of another patch of the batch, which
usually comes from another scene or region: ``(x - mu) / sigma * sigma_mix + mu_mix``.
Unlike random per-band gains (``train.photometric``, which scored lower on dstl-lite:
docs/accuracy.md), the new styles are those of real patches, so their size is realistic.
It is the identity in eval mode (prediction, validation, precise BN).
"""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-6
"""Added to the variance before its square root (float32 feature maps)."""


class MixStyle(nn.Module):
    """Mixes instance statistics of ``(N, C, H, W)`` feature maps between the patches of a
    batch, in training mode only.

    Args:
        p: probability that a batch is mixed at all (0 disables the module).
        alpha: both parameters of the Beta distribution of each patch's mixing weight
            (0.1, the paper's: most weights near 0 or 1, a few in between).
    """

    def __init__(self, p: float = 0.5, alpha: float = 0.1):
        super().__init__()
        if not 0.0 <= p <= 1.0 or alpha <= 0:
            raise ValueError(f"MixStyle needs p in [0, 1] and alpha > 0, got p={p}, alpha={alpha}")
        self.p = p
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if not self.training or self.p == 0 or n < 2:
            return x
        if torch.rand(()).item() >= self.p:
            return x
        f = x.float()
        mu = f.mean(dim=(2, 3), keepdim=True).detach()
        sigma = (f.var(dim=(2, 3), keepdim=True) + EPS).sqrt().detach()
        beta = torch.distributions.Beta(torch.tensor(self.alpha), torch.tensor(self.alpha))
        lam = beta.sample((n, 1, 1, 1)).to(x.device)
        perm = torch.randperm(n).to(x.device)
        mu_mix = lam * mu + (1 - lam) * mu[perm]
        sigma_mix = lam * sigma + (1 - lam) * sigma[perm]
        return ((f - mu) / sigma * sigma_mix + mu_mix).to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, alpha={self.alpha}"
