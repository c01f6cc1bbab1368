"""Accuracy, top-k, cross-entropy and ECE against known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from eval_helpers import MEAN, STD, TinyNet

from extune.evaluate import (
    classification_metrics,
    expected_calibration_error,
    predict_logits,
)


def _naive_ece(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            acc = (pred[inside] == labels[inside]).float().mean()
            total += inside.float().mean().item() * abs(acc.item() - conf[inside].mean().item())
    return total


def test_ece_zero_when_confident_and_always_right() -> None:
    labels = torch.tensor([0, 1, 2, 1, 0])
    logits = F.one_hot(labels, 3).float() * 100.0  # softmax confidence 1.0, always right
    assert float(expected_calibration_error(logits, labels, 3)) == pytest.approx(0.0, abs=1e-6)


def test_ece_of_constructed_calibrated_and_overconfident_sets() -> None:
    # confidence 0.8 on class 0 for 10 samples; 8 right -> calibrated, 10 right -> ECE 0.2
    logits = torch.tensor([[math.log(4.0), 0.0]]).repeat(10, 1)
    calibrated = torch.tensor([0] * 8 + [1] * 2)
    assert float(expected_calibration_error(logits, calibrated, 2)) == pytest.approx(0, abs=1e-6)
    all_right = torch.zeros(10, dtype=torch.long)
    assert float(expected_calibration_error(logits, all_right, 2)) == pytest.approx(0.2, abs=1e-6)


def test_ece_matches_naive_reference() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 5, generator=g) * 2
    labels = torch.randint(0, 5, (200,), generator=g)
    ece = float(expected_calibration_error(logits, labels, 5))
    assert ece == pytest.approx(_naive_ece(logits, labels), abs=1e-5)


def test_classification_metrics_known_values() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0],
                           [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
                           [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    labels = torch.tensor([0, 0, 4])  # right; last of 6 (outside top-5); 5th of top-5
    m = classification_metrics(logits, labels, 6)
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["top5"] == pytest.approx(2 / 3)
    assert m["loss"] == pytest.approx(F.cross_entropy(logits, labels).item())
    assert set(m) == {"accuracy", "top5", "loss", "ece"}
    assert all(isinstance(v, float) for v in m.values())


def test_top5_is_top_c_when_fewer_than_five_classes() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    m = classification_metrics(logits, torch.tensor([0, 2]), 3)
    assert m["accuracy"] == 0.0 and m["top5"] == 1.0


def test_classification_metrics_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="logits"):
        classification_metrics(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), 5)


def test_predict_logits_batched_eval_mode_restored() -> None:
    torch.manual_seed(0)
    net = TinyNet().train()
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    stats = net.bn.running_mean.clone()
    a = predict_logits(net, images, mean=MEAN, std=STD, batch_size=3)
    b = predict_logits(net, images, mean=MEAN, std=STD, batch_size=10)
    assert a.shape == (10, 3) and net.training
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(net.bn.running_mean, stats)  # eval mode: no BatchNorm update
    x = (images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(a, net.eval()(x), atol=1e-5)
