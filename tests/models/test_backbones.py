"""Backbone registry and the contract every registered backbone keeps."""

from __future__ import annotations

import collections
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode

from extune.errors import RegistryError
from extune.models import backbones, create_backbone, list_backbones, register_backbone, resnet

_RELU_FUNCS = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}


class _CountReluCalls(TorchFunctionMode):
    """Counts every ReLU evaluated, through a module or functionally."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELU_FUNCS:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def test_registry_lists_the_builtin_backbones():
    assert list_backbones() == sorted(list_backbones())
    assert {"resnet18", "resnet50", "resnet_mini", "tiny_cnn"} <= set(list_backbones())


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_contract(name):
    torch.manual_seed(0)
    model = create_backbone(name)
    x = torch.randn(2, 3, 16, 16)

    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus, "a backbone without nn.ReLU modules cannot be explained by DeepLift"
    assert not any(r.inplace for r in relus)
    calls: collections.Counter[int] = collections.Counter()
    hooks = [r.register_forward_hook(lambda m, i, o: calls.update([id(m)])) for r in relus]
    try:
        with _CountReluCalls() as counter:
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    assert all(calls[id(r)] == 1 for r in relus), "every ReLU module is called exactly once"
    assert counter.calls == len(relus), "no functional ReLU outside the nn.ReLU modules"

    assert isinstance(model.feature_dim, int) and isinstance(model.default_layer, str)
    assert out.shape == (2, model.feature_dim)
    assert torch.isfinite(out).all()
    stages = [n for n, _ in model.named_children() if re.fullmatch(r"layer\d+", n)]
    assert stages == [f"layer{i}" for i in range(1, len(stages) + 1)] and len(stages) >= 3
    assert model.default_layer == stages[-1]
    assert isinstance(model.get_submodule(model.default_layer), nn.Module)

    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


_SMALL_NETS = {  # one per block type; the hook test above covers every registered backbone
    "basic_block": lambda: create_backbone("resnet_mini"),
    "bottleneck": lambda: resnet.ResNetBackbone(resnet.Bottleneck, (1, 1, 1, 1),
                                                (8, 8, 16, 16)),
    "tiny_cnn": lambda: create_backbone("tiny_cnn"),
}


@pytest.mark.filterwarnings("ignore:Setting forward, backward hooks:UserWarning")
@pytest.mark.parametrize("kind", list(_SMALL_NETS))
def test_deeplift_is_complete(kind):
    # DeepLift needs every ReLU as its own module (torchvision's inplace, reused ReLU makes it
    # raise). Its attributions then sum to f(x) - f(baseline).
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    backbone = _SMALL_NETS[kind]()
    model = nn.Sequential(backbone, nn.Linear(backbone.feature_dim, 3))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial eval-mode statistics
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x, target = torch.randn(2, 3, 16, 16, requires_grad=True), torch.tensor([0, 2])
    _, delta = captum_attr.DeepLift(model).attribute(x, target=target,
                                                     return_convergence_delta=True)
    assert delta.abs().max() < 1e-4


@pytest.mark.parametrize("name", ["resnet_mini", "resnet18"])
@pytest.mark.parametrize(("cifar_stem", "expected"), [(True, 32), (False, 8)])
def test_cifar_stem_keeps_resolution_into_layer1(name, cifar_stem, expected):
    model = create_backbone(name, cifar_stem=cifar_stem)
    seen = []
    model.layer1.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-1]))
    model(torch.randn(2, 3, 32, 32))
    assert seen == [expected]
    assert model.conv1.kernel_size == ((3, 3) if cifar_stem else (7, 7))
    assert model.conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity) == cifar_stem
    assert isinstance(model.fc, nn.Identity)


@pytest.mark.parametrize(("name", "feature_dim"), [("resnet18", 512), ("resnet50", 2048)])
def test_resnets_have_torchvision_parameters(name, feature_dim):
    ours = create_backbone(name, cifar_stem=False)
    theirs = getattr(torchvision.models, name)(weights=None)
    assert isinstance(ours, torchvision.models.ResNet)
    assert ours.feature_dim == feature_dim
    expected = {k: v.shape for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected


def test_resnet_mini_widths():
    model = create_backbone("resnet_mini")
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    assert [getattr(model, f"layer{i}")[0].conv2.out_channels for i in range(1, 5)] == [
        16, 32, 64, 128]
    assert model.feature_dim == 128


def test_unknown_backbone_lists_registered_names():
    with pytest.raises(RegistryError) as err:
        create_backbone("resnet19")
    msg = str(err.value)
    assert "\n" not in msg and "resnet19" in msg and "resnet18" in msg
    assert all(name in msg for name in list_backbones())


def test_register_backbone():
    @register_backbone("_test_cnn")
    def _test_cnn(*, cifar_stem: bool = True) -> nn.Module:
        return backbones.TinyCNN()

    @register_backbone("_test_bad")
    def _test_bad(*, cifar_stem: bool = True) -> nn.Module:
        return nn.Conv2d(3, 4, 3)

    try:
        assert "_test_cnn" in list_backbones()
        assert create_backbone("_test_cnn").feature_dim == 32
        with pytest.raises(TypeError, match="feature_dim"):
            create_backbone("_test_bad")
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("_test_cnn")(_test_cnn)
    finally:
        backbones.BACKBONES.remove("_test_cnn")
        backbones.BACKBONES.remove("_test_bad")
