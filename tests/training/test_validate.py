"""Validation on whole scenes with the competition metric (``spectraseg.training.validate``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy import tiny_config, toy_data

from spectraseg.training.validate import validate


class ThresholdNet(torch.nn.Module):
    """Predicts every class as ``channel 0 > 0.5`` (logits +-10): class 1 of the toy truth."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = (x[:, :1] > 0.5).float() * 20 - 10
        return logits.expand(-1, 10, -1, -1).contiguous()


def test_validate_is_the_competition_metric_on_whole_scenes() -> None:
    config = tiny_config()
    data = toy_data(config)
    data.pixel_area = lambda image_id: 2.0 if image_id == "toy_0" else 1.0
    got = validate(ThresholdNet(), data, config, torch.device("cpu"))
    tp = np.zeros(10)
    union = np.zeros(10)
    for image_id in data.val_scenes:
        image, truth = data.load_val(image_id)
        pred = np.broadcast_to(image[0] > 0.5, truth.shape)
        t = truth.astype(bool)
        w = data.pixel_area(image_id)
        tp += w * (pred & t).sum(axis=(1, 2))
        union += w * (pred | t).sum(axis=(1, 2))
    expected = np.where(union > 0, tp / np.maximum(union, 1), 0.0)
    assert got["val_jaccard"] == pytest.approx(expected.tolist())
    assert got["val_jaccard"][0] == 1.0  # class 1 is exactly what the net predicts
    assert got["val_mean"] == pytest.approx(expected.mean())
    assert got["val_empty"] == [False] * 10  # the net predicts every class somewhere
    # Logits +-10: every threshold in 0.05..0.95 gives the same masks.
    assert got["val_jaccard_tuned"] == pytest.approx(expected.tolist())
    assert 0 < got["val_loss"] < 10
