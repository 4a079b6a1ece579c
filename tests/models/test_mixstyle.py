"""MixStyle: identity in eval mode, statistics mixed within the batch's convex hull in
training, and a U-Net that predicts the same with or without it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spectraseg.models.mixstyle import MixStyle
from spectraseg.models.unet import UNet


def _features(seed: int, n: int = 4, c: int = 3, s: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, c, 1, 1, generator=g) * 3 + 0.5
    shift = torch.randn(n, c, 1, 1, generator=g) * 4
    return torch.randn(n, c, s, s, generator=g) * scale + shift


def test_eval_mode_and_p_zero_are_the_identity() -> None:
    x = _features(0)
    m = MixStyle(p=1.0).eval()
    assert torch.equal(m(x), x)
    assert torch.equal(MixStyle(p=0.0).train()(x), x)
    assert torch.equal(MixStyle(p=1.0).train()(x[:1]), x[:1])  # nothing to mix with


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_mixed_statistics_lie_between_the_batchs_own(seed: int) -> None:
    x = _features(seed)
    torch.manual_seed(seed)
    y = MixStyle(p=1.0, alpha=0.5).train()(x)
    for stat in (lambda t: t.mean(dim=(2, 3)), lambda t: t.std(dim=(2, 3))):
        before, after = stat(x), stat(y)
        # Each patch's new statistic is a convex mix of two patches' statistics.
        lo, hi = before.min(dim=0).values, before.max(dim=0).values
        assert bool((after >= lo - 1e-3).all()) and bool((after <= hi + 1e-3).all())
    # The normalised content of every patch is unchanged.
    z = lambda t: (t - t.mean(dim=(2, 3), keepdim=True)) / t.std(dim=(2, 3), keepdim=True)  # noqa: E731
    assert torch.allclose(z(x), z(y), atol=1e-3)


def test_a_batch_of_one_style_is_left_as_it_is() -> None:
    x = _features(1, n=1).repeat(4, 1, 1, 1)
    torch.manual_seed(0)
    assert torch.allclose(MixStyle(p=1.0).train()(x), x, atol=1e-5)


def test_gradients_flow_through_the_content_only() -> None:
    x = _features(2).requires_grad_(True)
    torch.manual_seed(0)
    MixStyle(p=1.0).train()(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="p in \\[0, 1\\] and alpha > 0"):
        MixStyle(p=1.5)
    with pytest.raises(ValueError, match="alpha > 0"):
        MixStyle(alpha=0.0)


def test_unet_predicts_the_same_with_or_without_mixstyle() -> None:
    torch.manual_seed(0)
    plain = UNet(5, 3, width=4, depth=2)
    mixed = UNet(5, 3, width=4, depth=2, mixstyle=1.0)
    assert len(mixed.mixstyle) == 2 and len(plain.mixstyle) == 0
    mixed.load_state_dict(plain.state_dict())  # MixStyle has no parameters or buffers
    x = torch.randn(2, 5, 16, 16)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), mixed.eval()(x))
        torch.manual_seed(1)
        assert not torch.allclose(plain.train()(x), mixed.train()(x))
