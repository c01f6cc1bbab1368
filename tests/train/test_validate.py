"""validate_config: every registered name in a config, checked in one line with the closest name;
and the entry points that call it before anything trains (fit, evaluate)."""

from __future__ import annotations

import pytest

from extune.augment import list_explainers
from extune.errors import ConfigError
from extune.evaluate import list_corruptions
from extune.models import list_backbones
from extune.train import validate_config
from extune.train.config import Config
from extune.train.data import list_datasets
from extune.train.methods import list_methods


@pytest.mark.parametrize("overrides, message, names", [
    ({"method": "excn"},
     r"method: unknown method 'excn'; did you mean 'excon'\? registered: ce, ", list_methods()),
    ({"data.name": "cifar"},
     r"data.name: unknown data set 'cifar'; did you mean 'cifar10'\? registered: ",
     list_datasets()),
    ({"model.backbone": "resnet5"},
     r"model.backbone: unknown backbone 'resnet5'; did you mean 'resnet50'\? registered: ",
     list_backbones()),
    ({"explain.explainer": "gradcm"},
     r"explain.explainer: unknown explainer 'gradcm'; did you mean 'gradcam'\? registered: ",
     list_explainers()),
    ({"eval.explainer": "saliencyy"},
     r"eval.explainer: unknown explainer 'saliencyy'; did you mean 'saliency'\? registered: ",
     list_explainers()),
    ({"eval.corruptions": ["fog"]},
     r"eval.corruptions: unknown corruption 'fog'; allowed: gaussian_noise", list_corruptions()),
    ({"eval.corruptions": ["contrast", "brightnes"]},
     r"unknown corruption 'brightnes'; did you mean 'brightness'\? allowed: ",
     list_corruptions()),
])
def test_each_kind_of_name_is_checked(overrides, message, names):
    cfg = Config().with_overrides(overrides)  # keys, types and ranges are fine
    with pytest.raises(ConfigError, match=message) as e:
        validate_config(cfg)
    text = str(e.value)
    assert "\n" not in text and all(name in text for name in names)


def test_valid_names_pass_and_the_config_comes_back():
    cfg = Config().with_overrides({"method": "edda", "data.name": "synthetic",
                                   "model.backbone": "tiny_cnn", "explain.explainer": "saliency",
                                   "eval.explainer": "gradcam", "eval.corruptions": ["contrast"]})
    assert validate_config(cfg) is cfg
    assert validate_config(Config()) == Config()  # eval.explainer None: nothing to check


def test_fit_checks_names_before_loading_data(tmp_path, monkeypatch):
    import extune.train.loop as loop

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the names were checked")

    monkeypatch.setattr(loop, "load_data", no_data)
    cfg = Config().with_overrides({"explain.explainer": "gradcm"})
    with pytest.raises(ConfigError, match="did you mean 'gradcam'"):
        loop.fit(cfg, out_dir=tmp_path)
