"""Config: YAML round trip, dotted overrides, flattening and the errors users see."""

from __future__ import annotations

import pytest

from extune.errors import ConfigError
from extune.train.config import Config, load_yaml, parse_assignments


def test_yaml_round_trip_default_and_modified():
    cfg = Config()
    assert Config.from_yaml(cfg.to_yaml()) == cfg
    changed = cfg.with_overrides({"method": "edda", "optim.lr": 0.3, "explain.layer": "layer3",
                                  "eval.corruptions": ["contrast"], "data.limit": 100})
    assert Config.from_yaml(changed.to_yaml()) == changed
    assert changed != cfg


def test_file_round_trip(tmp_path):
    cfg = Config().with_overrides({"excon.mask_threshold": 0.3})
    cfg.save(tmp_path / "c.yaml")
    assert Config.load(tmp_path / "c.yaml") == cfg


def test_overrides_and_flatten():
    cfg = Config().with_overrides({"optim.lr": 1, "excon.negative_pair": True})
    flat = cfg.flatten()
    assert flat["optim.lr"] == 1.0 and isinstance(flat["optim.lr"], float)
    assert flat["excon.negative_pair"] is True
    for key in ("method", "data.name", "data.root", "data.image_size", "model.backbone",
                "optim.epochs", "optim.batch_size", "optim.lr", "runtime.device",
                "runtime.seed", "explain.explainer", "excon.mask_threshold"):
        assert key in flat
    assert set(flat) == set(Config.keys())
    # flat dicts go back in unchanged
    assert Config().with_overrides(flat) == cfg


def test_parse_assignments_reads_yaml_scalars():
    parsed = parse_assignments(["optim.lr=0.1", "excon.negative_pair=true", "data.limit=none",
                                "explain.layer=layer3", "eval.corruptions=contrast,brightness"])
    assert parsed == {"optim.lr": 0.1, "excon.negative_pair": True, "data.limit": None,
                      "explain.layer": "layer3", "eval.corruptions": "contrast,brightness"}
    cfg = Config().with_overrides(parsed)
    assert cfg.eval.corruptions == ["contrast", "brightness"]
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["optim.lr"])


@pytest.mark.parametrize("overrides, message", [
    ({"optim.lrr": 0.1}, r"unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
    ({"optimm.lr": 0.1}, r"unknown config key 'optimm.lr'; did you mean 'optim.lr'"),
    ({"optim.lr": -1}, r"optim.lr: -1.0 is out of range; allowed: > 0"),
    ({"excon.mask_threshold": 1.0}, r"excon.mask_threshold: 1.0 is out of range; allowed: >= 0 and < 1"),
    ({"optim.epochs": 2.5}, r"optim.epochs: 2.5 is not a valid value; expected int"),
    ({"optim.epochs": "ten"}, r"optim.epochs: 'ten' is not a valid value; expected int"),
    ({"runtime.device": "tpu"}, r"runtime.device: 'tpu' is not allowed"),
    ({"data": 3}, r"'data' is a config section"),
    ({"excon.negative_pair": "maybe"}, r"excon.negative_pair: 'maybe' is not a valid value; expected bool"),
])
def test_errors_name_key_value_and_allowed(overrides, message):
    with pytest.raises(ConfigError, match=message):
        Config().with_overrides(overrides)


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        Config.from_yaml("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        Config.from_yaml("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.from_yaml("optim: [\n")
    with pytest.raises(ConfigError, match="section 'optim' must be a mapping"):
        Config.from_yaml("optim: 3\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        Config.load(tmp_path / "missing.yaml")


def test_yaml_load_is_safe():
    with pytest.raises(ConfigError):
        Config.from_yaml("method: !!python/object/apply:os.system ['true']\n")


def test_direct_construction_is_validated():
    from extune.train.config import OptimConfig

    with pytest.raises(ConfigError, match="optim.batch_size"):
        Config(optim=OptimConfig(batch_size=0))


@pytest.mark.parametrize("raw, value", [("1e-3", 0.001), (" 5E-4 ", 0.0005), ("1e6", 1e6),
                                        ("+2.5e+1", 25.0), ("1_000.5", 1000.5), (3, 3.0)])
def test_float_settings_take_every_number_float_reads(raw, value):
    assert Config().with_overrides({"optim.lr": raw}).optim.lr == value
    assert Config().with_overrides({"optim.probe_lr": raw}).optim.probe_lr == value


@pytest.mark.parametrize("raw, message", [("abc", "expected float"), (True, "expected float"),
                                          ("nan", "not a finite number"),
                                          ("inf", "not a finite number")])
def test_float_settings_reject_what_is_not_a_finite_number(raw, message):
    with pytest.raises(ConfigError, match=message):
        Config().with_overrides({"optim.lr": raw})


def test_yaml_reads_exponent_floats_as_numbers_and_leaves_safe_load_alone():
    import yaml

    assert load_yaml("a: 1e-3\nb: 5E+4\nc: -2e2\nd: '1e-3'\ne: 1e\nf: 10") == {
        "a": 0.001, "b": 50000.0, "c": -200.0, "d": "1e-3", "e": "1e", "f": 10}
    assert yaml.safe_load("a: 1e-3") == {"a": "1e-3"}  # the global SafeLoader is unchanged


def test_a_renamed_key_says_what_replaced_it():
    with pytest.raises(ConfigError, match="'excon.warmup_epochs' was replaced by "
                                          "'excon.warmup_fraction', a share of optim.epochs"):
        Config().with_overrides({"excon.warmup_epochs": 1})
    with pytest.raises(ConfigError, match="edda.warmup_fraction"):
        Config.from_yaml("edda:\n  warmup_epochs: 2\n")
