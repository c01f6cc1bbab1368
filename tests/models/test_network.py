"""Network (encoder + heads), ProjectionHead, create_model and the package's import hygiene."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import extune.models
from extune.errors import RegistryError
from extune.models import Network, ProjectionHead, create_backbone, create_model


@pytest.fixture
def net() -> Network:
    torch.manual_seed(0)
    return Network(create_backbone("tiny_cnn"), num_classes=5, projection_dim=8)


def test_forward_features_project_shapes(net):
    x = torch.randn(3, 3, 16, 16)
    logits = net(x)
    features = net.features(x)
    z = net.project(features)
    assert logits.shape == (3, 5) and features.shape == (3, 32) and z.shape == (3, 8)
    assert torch.allclose(logits, net.classifier(features))
    assert torch.allclose(z.norm(dim=1), torch.ones(3))
    assert isinstance(net.classifier, nn.Linear) and net.feature_dim == 32


def test_projection_head():
    head = ProjectionHead(32, 64, 16)
    assert [type(m) for m in head.mlp] == [nn.Linear, nn.ReLU, nn.Linear]
    assert head.mlp[0].out_features == 64
    z = head(torch.randn(4, 32))
    assert z.shape == (4, 16) and torch.allclose(z.norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match="out_dim"):
        ProjectionHead(32, 64, 0)


def test_projection_hidden_defaults_to_feature_dim(net):
    assert net.head.mlp[0].out_features == 32
    wide = Network(create_backbone("tiny_cnn"), 5, projection_dim=8, projection_hidden=48)
    assert wide.head.mlp[0].out_features == 48


def test_get_layer(net):
    assert net.default_layer == "layer3"
    assert net.get_layer() is net.encoder.layer3
    assert net.get_layer(None) is net.encoder.layer3
    assert net.get_layer("layer2") is net.encoder.layer2
    assert net.get_layer("layer2.0") is net.encoder.layer2[0]
    assert net.get_layer("encoder.layer1") is net.encoder.layer1
    assert net.get_layer("head.mlp.0") is net.head.mlp[0]
    assert net.get_layer("classifier") is net.classifier


@pytest.mark.parametrize("name", ["layer9", "layer3.7", "", "encoder.nope"])
def test_get_layer_unknown_lists_encoder_children(net, name):
    with pytest.raises(RegistryError) as err:
        net.get_layer(name)
    msg = str(err.value)
    assert "\n" not in msg and f"'{name}'" in msg
    assert all(child in msg for child in ("layer1", "layer2", "layer3", "avgpool"))


def test_network_rejects_encoder_without_contract():
    with pytest.raises(TypeError, match="feature_dim"):
        Network(nn.Conv2d(3, 4, 3), num_classes=2)


def test_create_model_defaults():
    model = create_model(backbone="resnet_mini", num_classes=10)
    assert model.default_layer == "layer4" and model.feature_dim == 128
    assert model.classifier.out_features == 10
    assert model.head.mlp[0].out_features == 128 and model.head.mlp[2].out_features == 128
    assert model.encoder.conv1.kernel_size == (3, 3)  # the CIFAR stem by default
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_create_model_honours_its_arguments():
    model = create_model(backbone="resnet18", num_classes=3, cifar_stem=False,
                         projection_dim=16, projection_hidden=24)
    assert model.encoder.conv1.kernel_size == (7, 7)  # ImageNet stem
    assert model.feature_dim == 512
    assert (model.head.mlp[0].out_features, model.head.mlp[2].out_features) == (24, 16)


def test_create_model_unknown_backbone():
    with pytest.raises(RegistryError, match="resnet_mini"):
        create_model(backbone="vgg", num_classes=3)


def test_public_api():
    assert sorted(extune.models.__all__) == sorted([
        "Network", "ProjectionHead", "SupConLoss", "create_backbone", "create_model",
        "list_backbones", "register_backbone"])


