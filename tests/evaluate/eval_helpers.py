"""Tiny hand-made models and data for the extune.evaluate tests (CPU, 16-32 px, seeded).

Imported by the test modules as ``eval_helpers`` (a unique name: tests/ has no packages).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class QuadrantModel(nn.Module):
    """Two classes; ``logit_0 = a * mean(x[top-left quadrant] ** 2) - b``, ``logit_1 = 0``.

    Class 0's evidence is the energy (texture) of the top-left quadrant in normalised space:
    filling pixels with 0 (the mean colour) or blurring removes it, other pixels are ignored.
    """

    def __init__(self, a: float = 8.0, b: float = 4.0) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.register_buffer("anchor", torch.zeros(()))  # gives the model a device

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        energy = x[:, :, :h, :w].pow(2).mean(dim=(1, 2, 3))
        logit0 = self.a * energy - self.b
        return torch.stack([logit0, torch.zeros_like(logit0)], dim=1)


class TinyNet(nn.Module):
    """Conv + BatchNorm + linear classifier (has parameters, BN statistics, a training flag)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


@dataclass
class Split:
    """ImageSet-like split."""

    images: Tensor
    labels: Tensor
    masks: Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)


def noise_images(n: int, size: int = 32, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def quadrant_mask(n: int, size: int = 32) -> Tensor:
    m = torch.zeros(n, 1, size, size, dtype=torch.bool)
    m[:, :, : size // 2, : size // 2] = True
    return m
