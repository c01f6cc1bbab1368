from __future__ import annotations

import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor, nn

from extune.augment import (
    Explainer,
    create_explainer,
    grad_cam,
    list_explainers,
    minmax_normalize,
    register_explainer,
)
from extune.augment import explainers as explainers_module
from extune.errors import RegistryError

NAMES = list_explainers()
HOOK_DICTS = ("_forward_hooks", "_backward_hooks", "_forward_pre_hooks", "_backward_pre_hooks")


def _state(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_registry_lists_the_required_explainers() -> None:
    assert {"gradcam", "saliency", "integrated_gradients", "deeplift", "guided_backprop",
            "input_x_gradient"} <= set(NAMES)
    assert NAMES == sorted(NAMES)


@pytest.mark.parametrize("start_training", [True, False], ids=["from_train", "from_eval"])
@pytest.mark.parametrize("name", NAMES)
def test_explainer_contract(name: str, start_training: bool, tiny_net: nn.Module,
                            batch: tuple[Tensor, Tensor]) -> None:
    x, target = batch
    x_before = x.clone()
    tiny_net.train(start_training)
    tiny_net.layer1[0].training = not start_training  # a mixed state must come back too
    modes = {n: m.training for n, m in tiny_net.named_modules()}
    state = _state(tiny_net)
    set_grad = torch.randn_like(tiny_net.fc.weight)
    tiny_net.fc.weight.grad = set_grad

    sal = create_explainer(name, steps=4)(tiny_net, x, target)

    assert sal.shape == (4, 1, 16, 16)
    assert sal.dtype == torch.float32 and sal.device == x.device
    assert torch.isfinite(sal).all() and sal.min() >= 0 and sal.max() <= 1
    assert sal.amax(dim=(1, 2, 3)).eq(1).all()  # min-max normalised per image, none constant
    assert torch.equal(x, x_before) and not x.requires_grad
    assert {n: m.training for n, m in tiny_net.named_modules()} == modes
    after = _state(tiny_net)  # includes BN running_mean/var and num_batches_tracked
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert tiny_net.fc.weight.grad is set_grad and torch.equal(set_grad, tiny_net.fc.weight.grad)
    assert all(p.grad is None for n, p in tiny_net.named_parameters() if n != "fc.weight")
    for module in tiny_net.modules():
        for d in HOOK_DICTS:
            assert not getattr(module, d), f"{name} left a hook in {type(module).__name__}.{d}"


@pytest.mark.parametrize("name", NAMES)
def test_explainer_under_no_grad_autocast_and_inference_mode(
        name: str, tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, target = batch
    explainer = create_explainer(name, steps=4)
    expected = explainer(tiny_net, x, target)
    with torch.no_grad():
        assert torch.allclose(explainer(tiny_net, x, target), expected, atol=1e-6)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = explainer(tiny_net, x, target)
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-6)
    with torch.inference_mode():
        x_inf = x.clone()
        got = explainer(tiny_net, x_inf, target)
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_saliency_mass_lies_in_the_region_the_logit_depends_on(
        name: str, region_net: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g) + 0.1  # positive: every ReLU is active
    target = torch.tensor([0, 1, 1, 0])
    sal = create_explainer(name, steps=8)(region_net, x, target)
    regions = region_net.regions[target]  # [B, 1, H, W]
    inside = (sal * regions).sum(dim=(1, 2, 3)) / sal.sum(dim=(1, 2, 3))
    assert torch.all(inside > 0.999), inside


@pytest.mark.parametrize("layer", ["layer1", "layer2", "layer2.1"])
def test_fast_gradcam_equals_captum(layer: str, tiny_net: nn.Module,
                                    batch: tuple[Tensor, Tensor]) -> None:
    x, target = batch
    tiny_net.eval()
    module = tiny_net.get_submodule(layer)
    raw = LayerGradCam(tiny_net, module).attribute(x, target, relu_attributions=True)
    reference = minmax_normalize(LayerAttribution.interpolate(raw, (16, 16), "bilinear"))

    ours = create_explainer("gradcam", layer=layer)(tiny_net, x, target)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)
    assert torch.equal(grad_cam(tiny_net, module, x, target), ours)


def test_gradcam_layer_resolution(tiny_net: nn.Module, plain_net: nn.Module,
                                  batch: tuple[Tensor, Tensor]) -> None:
    x, target = batch
    default = create_explainer("gradcam")(tiny_net, x, target)  # model.get_layer(None)
    assert torch.equal(default, create_explainer("gradcam", layer="layer2")(tiny_net, x, target))
    plain_net.load_state_dict(tiny_net.state_dict())
    by_path = create_explainer("gradcam", layer="layer2")(plain_net, x, target)  # get_submodule
    assert torch.equal(by_path, default)
    with pytest.raises(RegistryError, match="unknown layer 'layer9'.*layer1, layer2"):
        create_explainer("gradcam", layer="layer9")(plain_net, x, target)
    with pytest.raises(RegistryError, match="no default layer"):
        create_explainer("gradcam")(plain_net, x, target)


def test_gradcam_works_with_frozen_parameters(tiny_net: nn.Module,
                                              batch: tuple[Tensor, Tensor]) -> None:
    x, target = batch
    expected = create_explainer("gradcam")(tiny_net, x, target)
    tiny_net.requires_grad_(False)
    assert torch.equal(create_explainer("gradcam")(tiny_net, x, target), expected)


def test_gradcam_allows_in_place_operations_after_its_layer() -> None:
    """The explained layer's output continues as a copy: an in-place ReLU after the layer
    leaves the activation Grad-CAM weighs as the layer produced it."""

    def net(inplace: bool) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
                             nn.ReLU(inplace=inplace), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 3)).eval()

    x = torch.randn(5, 3, 8, 8)
    target = torch.tensor([0, 1, 2, 0, 1])
    in_place, plain = net(True), net(False)
    ours = grad_cam(in_place, in_place[1], x, target)
    assert torch.equal(ours, grad_cam(plain, plain[1], x, target))
    assert ours.shape == (5, 1, 8, 8) and torch.isfinite(ours).all()


def test_unknown_explainer_lists_registered_names() -> None:
    with pytest.raises(RegistryError) as info:
        create_explainer("gradcan")
    message = str(info.value)
    assert "\n" not in message and "gradcan" in message and "did you mean 'gradcam'" in message
    assert all(name in message for name in NAMES)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="steps"):
        create_explainer("integrated_gradients", steps=0)
    with pytest.raises(ValueError, match="already registered"):
        register_explainer("gradcam")(Explainer)
    explainer = create_explainer("saliency")
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(ValueError, match="target"):
        explainer(net, torch.zeros(2, 3, 2, 2), torch.zeros(3, dtype=torch.int64))


def test_minmax_normalize_constant_and_non_finite_maps() -> None:
    s = torch.stack([torch.full((1, 4, 4), 3.0), torch.zeros(1, 4, 4),
                     torch.arange(16.0).view(1, 4, 4) * 1e-20,
                     torch.arange(16.0).view(1, 4, 4)])
    s[3, 0, 0, 0] = float("nan")
    out = minmax_normalize(s)
    assert torch.equal(out[:2], torch.zeros(2, 1, 4, 4))
    assert torch.allclose(out[2].flatten(), torch.arange(16.0) / 15)  # tiny but not constant
    assert torch.isfinite(out).all() and out[3, 0, 0, 0] == 0 and out[3].max() == 1


def test_template_subclass_gets_postprocessing_and_registration(
        tiny_net: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    x, target = batch

    @register_explainer("test_ones_low_res")
    class OnesLowRes(Explainer):
        reduction = "none"

        def attribute(self, model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
            assert not model.training and torch.is_grad_enabled() and x.requires_grad
            ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(x.shape[0], 1, 4, 4)
            return ramp - 1  # negative values survive: relu is False

    try:
        assert "test_ones_low_res" in list_explainers()
        sal = create_explainer("test_ones_low_res")(tiny_net, x, target)
        assert sal.shape == (4, 1, 16, 16) and sal.min() == 0 and sal.max() == 1
        assert torch.all(sal[..., 1:] >= sal[..., :-1])  # upsampled ramp, left to right
    finally:
        explainers_module.EXPLAINERS.remove("test_ones_low_res")
