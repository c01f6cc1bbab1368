"""FGSM in pixel space lowers the accuracy of a quickly trained tiny model."""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from eval_helpers import MEAN, STD, TinyNet

from extune.evaluate import PixelSpaceModel, fgsm_accuracy, fgsm_attack, predict_logits


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (n,), generator=g)
    base = 0.4 + 0.2 * labels.float()  # class 1 is brighter
    x = base.view(n, 1, 1, 1) + 0.05 * torch.randn(n, 3, 16, 16, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels


def _trained() -> TinyNet:
    return copy.deepcopy(_train_once())


@functools.cache
def _train_once() -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet(num_classes=2)
    images, labels = _data()
    x = (images.float() / 255 - 0.5) / 0.25
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(net(x), labels).backward()
        opt.step()
    net.zero_grad(set_to_none=True)
    return net


def test_fgsm_lowers_accuracy_and_leaves_model_alone() -> None:
    net = _trained().train()
    images, labels = _data()
    clean = float((predict_logits(net, images, mean=MEAN, std=STD).argmax(1) == labels)
                  .float().mean())
    running = net.bn.running_mean.clone()
    adv = fgsm_accuracy(net, images, labels, mean=MEAN, std=STD, eps=0.1, batch_size=16)
    assert clean >= 0.9
    assert adv < clean - 0.3
    assert net.training and all(p.grad is None for p in net.parameters())
    assert torch.equal(net.bn.running_mean, running)
    same = fgsm_accuracy(net, images, labels, mean=MEAN, std=STD, eps=0.0)
    assert same == clean


def test_fgsm_attack_step_and_bounds() -> None:
    net = _trained().eval()
    images, labels = _data(8)
    x = images.float() / 255
    adv = fgsm_attack(net, x, labels, mean=MEAN, std=STD, eps=0.1)
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6
    assert float((adv - x).abs().mean()) > 0.05  # almost every component moved by eps


def test_pixel_space_model_normalises() -> None:
    net = _trained().eval()
    x = torch.rand(2, 3, 16, 16)
    wrapped = PixelSpaceModel(net, MEAN, STD)
    assert torch.allclose(wrapped(x), net((x - 0.5) / 0.25))
    assert list(wrapped.state_dict()) == [f"model.{k}" for k in net.state_dict()]
