"""Tiny hand-made models for the augment tests (no dependency on extune.models)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn


class TinyNet(nn.Module):
    """Two conv stages (16 px -> 8 px) with BatchNorm, distinct non-inplace ReLUs, dropout."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                                    nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.flatten(self.pool(self.layer2(self.layer1(x))))))

    def get_layer(self, name: str | None) -> nn.Module:
        return self.get_submodule(name or "layer2")


class PlainNet(TinyNet):
    """TinyNet without ``get_layer``: layers are found by ``get_submodule``."""

    get_layer = None  # type: ignore[assignment]


class RegionNet(nn.Module):
    """Hand-weighted: logit ``c`` depends only on the pixels in ``regions[c]``.

    Each class has its own branch: the image masked to the class's region, a 1x1 conv with
    positive weights, ReLU, global average, and a block-diagonal positive classifier.
    """

    def __init__(self, regions: Tensor) -> None:  # regions: bool [C, H, W]
        super().__init__()
        c = regions.shape[0]
        self.register_buffer("regions", regions[:, None].float())  # [C, 1, H, W]
        self.layer1 = nn.Conv2d(3 * c, 2 * c, 1, groups=c, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * c, c, bias=False)
        with torch.no_grad():
            self.layer1.weight.uniform_(0.5, 1.0)
            self.fc.weight.copy_(torch.block_diag(*[torch.ones(1, 2)] * c))

    def forward(self, x: Tensor) -> Tensor:
        z = torch.cat([x * r for r in self.regions], dim=1)
        return self.fc(self.pool(self.relu(self.layer1(z))).flatten(1))

    def get_layer(self, name: str | None) -> nn.Module:
        return self.get_submodule(name or "relu")


def _trained_bn(net: nn.Module) -> nn.Module:
    """Give BatchNorm non-trivial running statistics (a few training-mode forwards)."""
    torch.manual_seed(1)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 3, 16, 16) * 2 + 0.5)
    return net


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return _trained_bn(TinyNet())


@pytest.fixture
def plain_net() -> PlainNet:
    torch.manual_seed(0)
    return _trained_bn(PlainNet())


@pytest.fixture
def region_net() -> RegionNet:
    """Two classes on 16 px: class 0 <- top-left 6x6 box, class 1 <- bottom-right 5x7 box."""
    torch.manual_seed(0)
    regions = torch.zeros(2, 16, 16, dtype=torch.bool)
    regions[0, 1:7, 2:8] = True
    regions[1, 10:15, 8:15] = True
    return RegionNet(regions)


@pytest.fixture
def batch() -> tuple[Tensor, Tensor]:
    """Normalised images ``[4, 3, 16, 16]`` and targets ``[4]``."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 4])
