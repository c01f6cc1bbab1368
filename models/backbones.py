"""Backbone registry (timm style) and the built-in backbones.

A backbone maps images ``[B, 3, H, W]`` to global-average-pooled features ``[B, feature_dim]``.
Every backbone

- has the attributes ``feature_dim: int`` and ``default_layer: str`` (its last stage, the layer
  Grad-CAM explains by default);
- names its stages ``layer1`` .. ``layerN``, so ``backbone.get_submodule("layer3")`` works;
- uses a distinct, non-inplace ``nn.ReLU`` module for every activation, each called once per
  forward. captum's DeepLift and GuidedBackprop hook ``nn.ReLU`` modules and go wrong when one
  module is reused (torchvision's blocks reuse an inplace ``self.relu``).

The ResNets are built from :mod:`extune.models.resnet`, imported when one is first created, so
that ``import extune.models`` does not import torchvision.

Register your own with :func:`register_backbone`::

    @register_backbone("my_net")
    def my_net(*, cifar_stem: bool = True) -> nn.Module:
        ...
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from extune.registry import Registry

__all__ = [
    "BACKBONES",
    "TinyCNN",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]

BackboneFactory = Callable[..., nn.Module]

BACKBONES: Registry[BackboneFactory] = Registry("backbone")
"""Backbone factories by name (``model.backbone``)."""


# ----------------------------------------------------------------------------- registry
def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator that registers a backbone factory under ``name``.

    The factory is called as ``factory(cifar_stem=bool)`` and returns an ``nn.Module`` with the
    backbone contract described in the module docstring.

    Raises:
        ValueError: ``name`` is already registered.
    """
    return BACKBONES.register(name)


def list_backbones() -> list[str]:
    """Sorted names of the registered backbones."""
    return BACKBONES.names()


def create_backbone(name: str, *, cifar_stem: bool = True) -> nn.Module:
    """Build a registered backbone with freshly initialised weights (nothing is downloaded).

    Args:
        name: a name from :func:`list_backbones`.
        cifar_stem: 3x3 stride-1 first convolution without max-pool (for images <= 64 px);
            otherwise the ImageNet stem (7x7 stride-2 convolution and max-pool). Backbones
            without a stem (``tiny_cnn``) ignore it.

    Returns:
        The backbone: ``forward(x [B, 3, H, W]) -> [B, feature_dim]``.

    Raises:
        RegistryError: ``name`` is not registered (the message lists the registered names).
    """
    model = BACKBONES.get(name)(cifar_stem=cifar_stem)
    for attr, kind in (("feature_dim", int), ("default_layer", str)):
        if not isinstance(getattr(model, attr, None), kind):
            raise TypeError(f"backbone '{name}' has no {kind.__name__} attribute '{attr}'")
    return model


# ----------------------------------------------------------------------------- tiny CNN
def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class TinyCNN(nn.Module):
    """Three conv-BN-ReLU stages (8/16/32 channels, strides 1/2/2) for unit tests.

    Shapes: ``forward(x [B, 3, H, W]) -> [B, 32]``; ``layer3`` outputs ``[B, 32, H/4, W/4]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = _conv_bn_relu(3, 8, 1)
        self.layer2 = _conv_bn_relu(8, 16, 2)
        self.layer3 = _conv_bn_relu(16, 32, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = 32
        self.default_layer = "layer3"

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(self.avgpool(x), 1)


# ----------------------------------------------------------------------------- registered
@register_backbone("resnet18")
def resnet18(*, cifar_stem: bool = True) -> nn.Module:
    """ResNet-18 (torchvision layout), 512 features."""
    from extune.models.resnet import BasicBlock, ResNetBackbone

    return ResNetBackbone(BasicBlock, (2, 2, 2, 2), cifar_stem=cifar_stem)


@register_backbone("resnet50")
def resnet50(*, cifar_stem: bool = True) -> nn.Module:
    """ResNet-50 (torchvision v1.5 layout), 2048 features: the ExCon reference backbone."""
    from extune.models.resnet import Bottleneck, ResNetBackbone

    return ResNetBackbone(Bottleneck, (3, 4, 6, 3), cifar_stem=cifar_stem)


@register_backbone("resnet_mini")
def resnet_mini(*, cifar_stem: bool = True) -> nn.Module:
    """A ResNet with one basic block per stage, widths 16/32/64/128: 128 features, fast on CPU."""
    from extune.models.resnet import BasicBlock, ResNetBackbone

    return ResNetBackbone(BasicBlock, (1, 1, 1, 1), (16, 32, 64, 128), cifar_stem=cifar_stem)


@register_backbone("tiny_cnn")
def tiny_cnn(*, cifar_stem: bool = True) -> nn.Module:
    """:class:`TinyCNN` (``cifar_stem`` is ignored: it has no stem)."""
    del cifar_stem
    return TinyCNN()
