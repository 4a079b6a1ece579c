"""The U-Net: output shapes for several depths and sizes, size errors, norms, gradients."""

from __future__ import annotations

import pytest
import torch

from spectraseg.models.unet import UNet, count_parameters

torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("depth", "size"),
    [(1, (2, 2)), (1, (6, 10)), (2, (8, 12)), (3, (16, 40)), (4, (32, 48)), (5, (64, 32))],
)
def test_output_has_input_size(depth: int, size: tuple[int, int]) -> None:
    model = UNet(5, width=4, depth=depth).eval()
    x = torch.randn(2, 5, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 10, *size)
    assert y.dtype == torch.float32


@pytest.mark.parametrize("norm", ["batch", "group", "instance"])
def test_norms_and_channels_last(norm: str) -> None:
    model = UNet(3, num_classes=4, width=6, depth=2, norm=norm, groups=4).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        got = model_cl(x.contiguous(memory_format=torch.channels_last))
    assert ref.shape == (2, 4, 16, 16)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_group_norm_uses_a_divisor_of_the_channels() -> None:
    # width 6: groups=4 does not divide 6 -> 3 groups; 12 channels -> 4 groups.
    model = UNet(3, width=6, depth=1, norm="group", groups=4)
    groups = sorted({m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)})
    assert groups == [3, 4]


@pytest.mark.parametrize("size", [(30, 32), (32, 20), (7, 8)])
def test_indivisible_size_is_a_clear_error(size: tuple[int, int]) -> None:
    model = UNet(3, width=4, depth=3)
    with pytest.raises(ValueError, match=r"not divisible by 2\*\*depth = 8"):
        model(torch.randn(1, 3, *size))


def test_wrong_channel_count_is_a_clear_error() -> None:
    model = UNet(4, width=4, depth=2)
    with pytest.raises(ValueError, match=r"expects input \(N, 4, H, W\), got \(1, 3, 8, 8\)"):
        model(torch.randn(1, 3, 8, 8))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown normalisation 'layer'"):
        UNet(3, norm="layer")
    with pytest.raises(ValueError, match="positive"):
        UNet(3, depth=0)


def test_upsampling_is_a_learned_stride_2_transposed_3x3_conv() -> None:
    model = UNet(3, width=4, depth=3)
    ups = [m for m in model.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(ups) == 3
    for m in ups:
        assert m.kernel_size == (3, 3) and m.stride == (2, 2) and m.weight.requires_grad
    # Level i has width * 2**i channels: 4, 8, 16 and the bottleneck 32.
    assert [m.in_channels for m in ups] == [32, 16, 8]


def test_every_parameter_gets_a_gradient() -> None:
    model = UNet(3, width=4, depth=2, norm="group")
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert count_parameters(model) > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_initial_logits_are_near_zero() -> None:
    torch.manual_seed(0)
    model = UNet(20, width=8, depth=3).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 20, 32, 32))
    assert y.abs().mean() < 2.0
