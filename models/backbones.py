"""Backbone registry (timm style) and the built-in backbones.

A backbone maps images ``[B, 3, H, W]`` to global-average-pooled features ``[B, feature_dim]``.
Every backbone

- has the attributes ``feature_dim: int`` and ``default_layer: str`` (its last stage, the layer
  Grad-CAM explains by default);
- names its stages ``layer1`` .. ``layerN``, so ``backbone.get_submodule("layer3")`` works;
- uses a distinct, non-inplace ``nn.ReLU`` module for every activation, each called once per
  forward. captum's DeepLift and GuidedBackprop hook ``nn.ReLU`` modules and go wrong when one
  module is reused (torchvision's blocks reuse an inplace ``self.relu``).

Register your own with :func:`register_backbone`::

    @register_backbone("my_net")
    def my_net(*, cifar_stem: bool = True) -> nn.Module:
        ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from extune.errors import RegistryError

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNetBackbone",
    "TinyCNN",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]

BackboneFactory = Callable[..., nn.Module]
_BACKBONES: dict[str, BackboneFactory] = {}


# ----------------------------------------------------------------------------- registry
def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator that registers a backbone factory under ``name``.

    The factory is called as ``factory(cifar_stem=bool)`` and returns an ``nn.Module`` with the
    backbone contract described in the module docstring.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in _BACKBONES:
            raise ValueError(f"backbone '{name}' is already registered")
        _BACKBONES[name] = factory
        return factory

    return decorator


def list_backbones() -> list[str]:
    """Sorted names of the registered backbones."""
    return sorted(_BACKBONES)


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
    factory = _BACKBONES.get(name)
    if factory is None:
        close = difflib.get_close_matches(str(name), list(_BACKBONES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise RegistryError(f"unknown backbone '{name}'{hint}; registered: "
                            + ", ".join(list_backbones()))
    model = factory(cifar_stem=cifar_stem)
    for attr, kind in (("feature_dim", int), ("default_layer", str)):
        if not isinstance(getattr(model, attr, None), kind):
            raise TypeError(f"backbone '{name}' has no {kind.__name__} attribute '{attr}'")
    return model


# ----------------------------------------------------------------------------- ResNets
class BasicBlock(tv_resnet.BasicBlock):
    """torchvision's ``BasicBlock`` with one non-inplace ``nn.ReLU`` per activation.

    ``relu1`` follows ``bn1``; ``relu2`` follows the residual sum. Shapes as torchvision's:
    ``[B, inplanes, H, W] -> [B, planes, H / stride, W / stride]``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        del self.relu  # torchvision's shared inplace ReLU
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Bottleneck(tv_resnet.Bottleneck):
    """torchvision's ``Bottleneck`` (ResNet v1.5) with one non-inplace ``nn.ReLU`` per activation.

    ``relu1`` follows ``bn1``, ``relu2`` follows ``bn2``, ``relu3`` follows the residual sum.
    Shapes: ``[B, inplanes, H, W] -> [B, 4 * planes, H / stride, W / stride]``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        del self.relu  # torchvision's shared inplace ReLU
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class ResNetBackbone(tv_resnet.ResNet):
    """torchvision's ``ResNet`` as a feature extractor, with configurable stage widths.

    ``ResNet.__init__`` hard-codes the widths 64/128/256/512, so this constructor builds the
    same modules (stem, ``layer1``..``layer4`` through torchvision's ``_make_layer``, average
    pool, ``fc = Identity``) for any widths; torchvision's ``forward`` is used unchanged.
    With the default widths the architecture and initialisation equal torchvision's.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        widths: ``planes`` of the four stages (the stem has ``widths[0]`` channels).
        cifar_stem: 3x3 stride-1 convolution and no max-pool instead of the ImageNet stem.

    Shapes:
        ``forward(x [B, 3, H, W]) -> [B, feature_dim]``, ``feature_dim = widths[3] *
        block.expansion``.
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int],
                 widths: Sequence[int] = (64, 128, 256, 512), *, cifar_stem: bool = True) -> None:
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"layers and widths need 4 stages, got {layers} and {widths}")
        nn.Module.__init__(self)  # ResNet.__init__ would build the fixed 64..512 widths
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()  # the stem's own activation, non-inplace
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        self.feature_dim = widths[3] * block.expansion
        self.default_layer = "layer4"
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


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
    return ResNetBackbone(BasicBlock, (2, 2, 2, 2), cifar_stem=cifar_stem)


@register_backbone("resnet50")
def resnet50(*, cifar_stem: bool = True) -> nn.Module:
    """ResNet-50 (torchvision v1.5 layout), 2048 features: the ExCon reference backbone."""
    return ResNetBackbone(Bottleneck, (3, 4, 6, 3), cifar_stem=cifar_stem)


@register_backbone("resnet_mini")
def resnet_mini(*, cifar_stem: bool = True) -> nn.Module:
    """A ResNet with one basic block per stage, widths 16/32/64/128: 128 features, fast on CPU."""
    return ResNetBackbone(BasicBlock, (1, 1, 1, 1), (16, 32, 64, 128), cifar_stem=cifar_stem)


@register_backbone("tiny_cnn")
def tiny_cnn(*, cifar_stem: bool = True) -> nn.Module:
    """:class:`TinyCNN` (``cifar_stem`` is ignored: it has no stem)."""
    del cifar_stem
    return TinyCNN()
