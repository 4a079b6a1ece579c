"""U-Net with learned transposed-convolution upsampling (GUIDE section 2, step 7).

Encoder: ``depth`` levels of two conv3x3-norm-ReLU blocks, each followed by 2x2 max
pooling; a bottleneck of two more blocks. Decoder: at each level a learned 3x3 transposed
convolution of stride 2 doubles the resolution, the encoder's skip is concatenated and two
conv3x3-norm-ReLU blocks follow. A 1x1 convolution gives one logit per class.

The network returns **logits** ``(N, 10, H, W)``: classes overlap, so each is an independent
sigmoid, applied by the caller (``torch.sigmoid``) or folded into the loss
(:mod:`spectraseg.models.losses` works on logits for numerical stability).

Level ``i`` has ``width * 2**i`` channels. Input height and width must be divisible by
``2**depth``; other sizes raise :class:`ValueError` naming the size.
"""

from __future__ import annotations

import torch
from torch import nn

from spectraseg import NUM_CLASSES
from spectraseg.config import Config
from spectraseg.data.classes import ClassSchema
from spectraseg.models.mixstyle import MixStyle

NORMS: tuple[str, ...] = ("batch", "group", "instance")
"""Normalisation layers the blocks can use."""

MIXSTYLE_LEVELS = 2
"""Encoder levels followed by MixStyle when enabled: the early ones, whose statistics carry
a scene's style more than its content (the paper's choice, after its first two stages)."""


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # The largest divisor of `channels` not above `groups`, so any width works.
        g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
        return nn.GroupNorm(g, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"unknown normalisation {kind!r}; expected one of {', '.join(NORMS)}")


class ConvBlock(nn.Sequential):
    """Two conv3x3 (no bias: the norm has one) -> norm -> ReLU; keeps the spatial size."""

    def __init__(self, cin: int, cout: int, norm: str, groups: int, dropout: float = 0.0):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            _norm(norm, cout, groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            _norm(norm, cout, groups),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class Up(nn.Module):
    """Learned 3x3 transposed convolution, stride 2: ``(N, cin, h, w) -> (N, cout, 2h, 2w)``."""

    def __init__(self, cin: int, cout: int, norm: str, groups: int):
        super().__init__()
        # padding=1 + output_padding=1 makes the 3x3 kernel map h -> exactly 2h.
        self.conv = nn.ConvTranspose2d(
            cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False
        )
        self.norm = _norm(norm, cout, groups)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class UNet(nn.Module):
    """U-Net for multi-label segmentation.

    Args:
        in_channels: input channels (20 with all products, plus derived index channels).
        num_classes: output maps (10 DSTL classes).
        width: channels of the first level; level ``i`` has ``width * 2**i``.
        depth: number of 2x downsamplings.
        norm: ``"batch"``, ``"group"`` or ``"instance"``.
        groups: GroupNorm groups (reduced to a divisor of the channel count).
        dropout: Dropout2d rate after the bottleneck (0 disables it).
        mixstyle: probability per training batch of :class:`MixStyle` after each of the
            first two encoder levels (0 disables it; no effect in eval mode).

    ``forward(x)``: ``x`` float32 ``(N, in_channels, H, W)`` with ``H, W`` divisible by
    ``2**depth`` -> logits float32 ``(N, num_classes, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = NUM_CLASSES,
        width: int = 16,
        depth: int = 4,
        norm: str = "batch",
        groups: int = 8,
        dropout: float = 0.0,
        mixstyle: float = 0.0,
    ):
        super().__init__()
        if in_channels < 1 or num_classes < 1 or width < 1 or depth < 1:
            raise ValueError(
                f"UNet needs positive in_channels, num_classes, width and depth, got "
                f"{in_channels}, {num_classes}, {width}, {depth}"
            )
        if norm not in NORMS:
            raise ValueError(f"unknown normalisation {norm!r}; expected one of {', '.join(NORMS)}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.schema: ClassSchema | None = None
        """The classes of the output channels, set when loaded from a run (None: unknown)."""
        self.depth = depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        cin = in_channels
        for c in chans[:-1]:
            self.encoders.append(ConvBlock(cin, c, norm, groups))
            cin = c
        self.pool = nn.MaxPool2d(2)
        levels = min(MIXSTYLE_LEVELS, depth) if mixstyle > 0 else 0
        self.mixstyle = nn.ModuleList(MixStyle(mixstyle) for _ in range(levels))
        self.bottleneck = ConvBlock(chans[-2], chans[-1], norm, groups, dropout)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            self.ups.append(Up(chans[i + 1], chans[i], norm, groups))
            self.decoders.append(ConvBlock(2 * chans[i], chans[i], norm, groups))
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # The head is linear: a plain fan-in init keeps the initial logits near 0.
        nn.init.xavier_uniform_(self.head.weight)
        assert self.head.bias is not None  # nn.Conv2d's default bias=True
        nn.init.zeros_(self.head.bias)

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this (``2**depth``)."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects input (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(
                f"input size {h}x{w} is not divisible by 2**depth = {self.multiple}; "
                f"pad or crop it to a multiple of {self.multiple}"
            )
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x)
            if i < len(self.mixstyle):
                x = self.mixstyle[i](x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(config: Config, in_channels: int, num_classes: int = NUM_CLASSES) -> UNet:
    """The U-Net described by ``config.model`` for ``in_channels`` inputs and one output map
    per class (10 for DSTL; a run on a description's data has its schema's count)."""
    m = config.model
    return UNet(
        in_channels,
        num_classes,
        width=m.width,
        depth=m.depth,
        norm=m.norm,
        groups=m.groups,
        dropout=m.dropout,
        mixstyle=m.mixstyle,
    )
