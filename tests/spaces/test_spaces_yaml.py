"""User spaces in YAML: the documented format, conditions, and every validation error."""

from __future__ import annotations

import pytest
from optuna.trial import FixedTrial

from extune.errors import ConfigError
from extune.spaces import YamlSpace, get_space, validate_space
from extune.train.config import Config

EXAMPLE = """
method: excon                                   # a fixed value
optim.lr: {type: float, low: 1e-3, high: 1.0, log: true}
optim.batch_size: {type: int, low: 64, high: 256, step: 64}
explain.explainer: {type: choice, values: [gradcam, saliency]}
explain.layer: {type: choice, values: [null, layer3], when: {explain.explainer: gradcam}}
excon:
  mask_threshold: {type: float, low: 0.2, high: 0.8}
  negative_pair: {type: bool}
  background_anchor: {type: bool, when: {excon.negative_pair: true}}
"""


def test_example_space_samples_with_conditions(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(EXAMPLE)
    space = get_space(str(path))
    assert isinstance(space, YamlSpace) and space.path == str(path)
    params = {"optim.lr": 0.01, "optim.batch_size": 128, "explain.explainer": "gradcam",
              "explain.layer": None, "excon.mask_threshold": 0.5, "excon.negative_pair": True,
              "excon.background_anchor": False}
    out = space(FixedTrial(params))
    assert out == {"method": "excon", **params}
    saliency = {**params, "explain.explainer": "saliency", "excon.negative_pair": False}
    out = space(FixedTrial(saliency))
    assert "explain.layer" not in out and "excon.background_anchor" not in out
    Config().with_overrides(out)


def test_example_space_random_draws_are_valid():
    check = validate_space(YamlSpace.from_yaml(EXAMPLE), Config(), samples=32)
    assert {"optim.lr", "excon.mask_threshold", "method"} <= check.keys
    lrs = [s["optim.lr"] for s in check.samples]
    assert all(1e-3 <= v <= 1.0 for v in lrs)
    assert all(s["optim.batch_size"] in (64, 128, 192, 256) for s in check.samples)


@pytest.mark.parametrize("text, message", [
    ("optim.lrr: {type: float, low: 0.1, high: 1}",
     "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
    ("optim.lr: {type: float, low: 1.0, high: 0.1}", "low (1) is greater than high (0.1)"),
    ("explain.explainer: {type: choice, values: []}", "needs a non-empty list of values"),
    ("explain.explainer: {type: choice}", "needs a non-empty list of values"),
    ("excon.mask_threshold: {type: float, low: 0.2, high: 1.0}",
     "excon.mask_threshold: 1.0 is out of range"),
    ("optim.batch_size: {type: float, low: 32, high: 64}",
     "optim.batch_size: 32.0 is not a valid value; expected int"),
    ("method: {type: choice, values: [excon, magic]}",
     "method: unknown method 'magic'; registered: ce, "),
    ("explain.explainer: {type: choice, values: [saliency, gradcm]}",
     "space file bad.yaml: explain.explainer: unknown explainer 'gradcm'; did you mean "
     "'gradcam'?"),
    ("model.backbone: resnet5", "unknown backbone 'resnet5'; did you mean 'resnet50'?"),
    ("optim.lr: {type: normal, low: 0.1, high: 1}", "type must be float, int, choice or bool"),
    ("optim.lr: {type: float, lo: 0.1, high: 1}", "unknown field(s) lo"),
    ("optim.lr: {type: float, high: 1}", "needs both low and high"),
    ("optim.lr: {type: float, low: 0, high: 1, log: true}", "a log range needs low > 0"),
    ("optim.batch_size: {type: int, low: 8.5, high: 64}", "low must be a whole number"),
    ("explain.layer: {type: choice, values: [a, b], when: {explain.explainer: gradcam}}",
     "condition on 'explain.explainer', which is not declared above it"),
    ("explain.explainer: {type: choice, values: [saliency]}\n"
     "explain.layer: {type: choice, values: [layer3], when: {explain.explainer: gradcam}}",
     "can never hold"),
    ("optim.lr: 0.1\noptim:\n  lr: 0.2", "'optim.lr' is declared twice"),
    ("optim.lr: [0.1, 0.2", "is not valid YAML"),
    ("- optim.lr", "must be a non-empty mapping"),
    ("", "must be a non-empty mapping"),
    ("optim.lr: -1", "optim.lr: -1.0 is out of range"),
])
def test_invalid_spaces_fail_in_one_line(text, message):
    with pytest.raises(ConfigError) as info:
        YamlSpace.from_yaml(text, path="bad.yaml")
    assert message in str(info.value)
    assert "\n" not in str(info.value) and str(info.value).startswith("space file bad.yaml")


def test_missing_space_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read space file"):
        get_space(str(tmp_path / "nope.yaml"))


def test_scientific_notation_without_dot_is_a_number():
    space = YamlSpace.from_yaml("optim.weight_decay: {type: float, low: 1e-6, high: 1e-3, "
                                "log: true}")
    (param,) = space.params
    assert param.low == 1e-6 and param.high == 1e-3 and param.log


def test_space_sets_keys_that_fail_together_are_caught_by_sampling():
    # each value is valid alone; the Config check of whole draws catches the rest
    space = YamlSpace.from_yaml("method: ce\noptim.epochs: {type: int, low: 1, high: 3}")
    check = validate_space(space, Config(), samples=16)
    assert check.max_epochs == 10  # the base's 10 epochs are the largest
    check = validate_space(space, Config().with_overrides({"optim.epochs": 1}), samples=16)
    assert check.max_epochs == 3


def test_loguniform_samples_on_a_log_scale():
    import optuna

    space = YamlSpace.from_yaml("optim.lr: {type: loguniform, low: 1.0e-5, high: 1.0}")
    assert space.params[0].log
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = []
    for _ in range(400):
        trial = study.ask()
        values.append(space(trial)["optim.lr"])
        study.tell(trial, 0.0)
    decades = [sum(10.0 ** -(d + 1) <= v < 10.0 ** -d for v in values) for d in range(5)]
    assert all(n > 400 / 5 * 0.6 for n in decades), decades  # linear: ~90% in the top decade


def test_loguniform_with_log_false_is_refused():
    with pytest.raises(ConfigError, match="loguniform is a log range"):
        YamlSpace.from_yaml("optim.lr: {type: loguniform, low: 1.0e-5, high: 1.0, log: false}")


def test_condition_on_a_float_key_is_an_error():
    text = ("excon.mask_threshold: {type: float, low: 0.2, high: 0.8}\n"
            "optim.warmup_epochs: {type: int, low: 0, high: 2, when: {excon.mask_threshold: 0.5}}")
    with pytest.raises(ConfigError, match="a float drawn from a range, can never hold"):
        YamlSpace.from_yaml(text)


def test_condition_on_an_int_key_outside_its_range_is_an_error():
    text = ("optim.warmup_epochs: {type: int, low: 0, high: 2}\n"
            "excon.mask_threshold: {type: float, low: 0.2, high: 0.8, "
            "when: {optim.warmup_epochs: 5}}")
    with pytest.raises(ConfigError, match="can never hold"):
        YamlSpace.from_yaml(text)


def test_scheduler_horizon_is_the_largest_epochs_the_space_allows():
    space = YamlSpace.from_yaml("optim.epochs: {type: int, low: 1, high: 40}\n"
                                "optim.lr: {type: float, low: 0.01, high: 0.1}")
    assert space.max_epochs == 40
    # 3 random draws almost never hit 40; the horizon must still be 40
    assert validate_space(space, Config(), samples=3, seed=0).max_epochs == 40
    choice = YamlSpace.from_yaml("optim.epochs: {type: choice, values: [5, 20, 10]}")
    assert choice.max_epochs == 20
    assert YamlSpace.from_yaml("optim.lr: 0.1").max_epochs is None
