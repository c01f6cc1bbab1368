"""ResNet backbones built from torchvision's blocks (imported on first use of a ResNet).

torchvision's ``BasicBlock`` and ``Bottleneck`` share one inplace ``self.relu``; these
subclasses give every activation its own non-inplace ``nn.ReLU`` (see
:mod:`extune.models.backbones` for why). Kept apart from the registry so that
``import extune.models`` does not import torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

__all__ = ["BasicBlock", "Bottleneck", "ResNetBackbone"]


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
