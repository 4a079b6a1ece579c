"""BCE + soft Jaccard: values on known inputs, the three Jaccard modes, weights, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spectraseg.config import LossConfig
from spectraseg.models.losses import BCEJaccardLoss, build_loss, soft_jaccard

LN2 = math.log(2.0)


def test_known_values_at_zero_logits() -> None:
    # p = 0.5 everywhere, every target 1: BCE = ln 2; J = 2 / (2 + 4 - 2) = 0.5.
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.ones(1, 1, 2, 2)
    loss = BCEJaccardLoss(1.0, 1.0, smooth=0.0, num_classes=1)
    assert loss(logits, target).item() == pytest.approx(LN2 + 0.5, abs=1e-6)
    assert loss.last_terms == pytest.approx({"bce": LN2, "jaccard": 0.5}, abs=1e-6)
    log_loss = BCEJaccardLoss(0.0, 1.0, smooth=0.0, log_jaccard=True, num_classes=1)
    assert log_loss(logits, target).item() == pytest.approx(LN2, abs=1e-6)  # -log 0.5


def test_weights_combine_linearly() -> None:
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # p = 0.5: I = 0.5, sum p = 2, sum t = 1 -> J = 0.5 / 2.5 = 0.2
    loss = BCEJaccardLoss(0.3, 2.0, smooth=0.0, num_classes=1)
    assert loss(logits, target).item() == pytest.approx(0.3 * LN2 + 2.0 * 0.8, abs=1e-6)


def test_perfect_prediction_has_near_zero_loss() -> None:
    target = (torch.rand(2, 10, 8, 8) > 0.5).float()
    logits = (target * 2 - 1) * 30
    loss = BCEJaccardLoss()
    assert loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_pos_weight_scales_positive_pixels() -> None:
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, 2)
    target[:, 0] = 1  # class 1 all positive, class 2 all negative
    loss = BCEJaccardLoss(1.0, 0.0, pos_weight=[3.0, 5.0], num_classes=2)
    # class 1: 3 ln2 per pixel; class 2: negatives unaffected, ln 2; mean over classes.
    assert loss(logits, target).item() == pytest.approx((3 * LN2 + LN2) / 2, abs=1e-6)


def test_class_weights_remove_a_class() -> None:
    logits = torch.randn(2, 2, 4, 4)
    target = (torch.rand(2, 2, 4, 4) > 0.5).float()
    only_first = BCEJaccardLoss(class_weights=[1.0, 0.0], num_classes=2)
    single = BCEJaccardLoss(num_classes=1)
    torch.testing.assert_close(only_first(logits, target), single(logits[:, :1], target[:, :1]))


def test_batch_mode_sums_over_samples() -> None:
    probs = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])  # (2, 1, 1, 2)
    target = torch.tensor([[[[1.0, 1.0]]], [[[0.0, 0.0]]]])
    jac, valid = soft_jaccard(probs, target, "batch", smooth=0.0)
    assert jac.tolist() == [0.5] and valid.tolist() == [True]
    jac, valid = soft_jaccard(probs, target, "sample", smooth=1.0)
    # sample 1: (1 + 1) / (1 + 2 - 1 + 1) = 2/3; sample 2 (empty): 1 / 1 = 1
    assert jac.shape == (2, 1)
    assert jac[:, 0].tolist() == pytest.approx([2 / 3, 1.0])


def test_present_mode_ignores_classes_absent_from_the_batch() -> None:
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    target = torch.zeros(2, 2, 4, 4)
    target[0, 0, :2] = 1  # class 1 present, class 2 absent from the whole batch
    loss = BCEJaccardLoss(0.0, 1.0, mode="present", num_classes=2)
    loss(logits, target).backward()
    assert logits.grad[:, 1].abs().max() == 0  # nothing pushes the absent class down
    assert logits.grad[:, 0].abs().max() > 0
    batch = BCEJaccardLoss(0.0, 1.0, mode="batch", num_classes=2)
    logits.grad = None
    batch(logits, target).backward()
    assert logits.grad[:, 1].abs().max() > 0  # "batch" mode does push it towards empty


def test_present_mode_with_nothing_present_is_bce_only() -> None:
    logits = torch.randn(1, 10, 4, 4)
    target = torch.zeros(1, 10, 4, 4)
    both = BCEJaccardLoss(1.0, 1.0, mode="present")
    bce = BCEJaccardLoss(1.0, 0.0)
    torch.testing.assert_close(both(logits, target), bce(logits, target))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_sample_mode_is_the_mean_of_per_sample_losses(n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 3, 4, 4, generator=g)
    target = (torch.rand(n, 3, 4, 4, generator=g) > 0.7).float()
    loss = BCEJaccardLoss(0.5, 1.0, mode="sample", pos_weight=[1.0, 2.0, 4.0], num_classes=3)
    whole = loss(logits, target)
    parts = torch.stack([loss(logits[i : i + 1], target[i : i + 1]) for i in range(n)])
    torch.testing.assert_close(whole, parts.mean(), rtol=1e-5, atol=1e-6)


def test_uint8_targets_and_half_logits() -> None:
    logits = torch.zeros(1, 10, 4, 4, dtype=torch.float16)
    target = torch.ones(1, 10, 4, 4, dtype=torch.uint8)
    out = BCEJaccardLoss(1.0, 0.0)(logits, target)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(LN2, abs=1e-6)


def test_errors() -> None:
    with pytest.raises(ValueError, match="pos_weight needs 10 values"):
        BCEJaccardLoss(pos_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="unknown Jaccard mode"):
        BCEJaccardLoss(mode="pixel")
    with pytest.raises(ValueError, match="not both 0"):
        BCEJaccardLoss(0.0, 0.0)
    with pytest.raises(ValueError, match=r"must both be \(N, C, H, W\)"):
        BCEJaccardLoss()(torch.zeros(1, 10, 4, 4), torch.zeros(1, 10, 4, 5))


def test_build_loss_from_config() -> None:
    cfg = LossConfig(bce=0.5, jaccard=2.0, jaccard_mode="present", pos_weight=(2.0,) * 10)
    loss = build_loss(cfg)
    assert (loss.bce_weight, loss.jaccard_weight, loss.mode) == (0.5, 2.0, "present")
    assert loss.pos_weight.tolist() == [2.0] * 10


@pytest.mark.parametrize("mode", ["batch", "present", "sample"])
def test_pixels_outside_valid_count_for_nothing(mode: str) -> None:
    """The loss with the right half marked invalid equals the loss of the left half alone,
    whatever the right half holds; all-valid equals no mask."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    target = (torch.rand(2, 3, 8, 8, generator=g) > 0.6).float()
    valid = torch.zeros(2, 1, 8, 8)
    valid[..., :4] = 1
    loss = BCEJaccardLoss(mode=mode, num_classes=3)
    left = loss(logits[..., :4], target[..., :4])
    noisy = logits.clone()
    noisy[..., 4:] = 50.0 * torch.randn(2, 3, 8, 4, generator=g)
    torch.testing.assert_close(loss(noisy, target, valid), left)
    torch.testing.assert_close(loss(logits, target, torch.ones(2, 1, 8, 8)), loss(logits, target))
