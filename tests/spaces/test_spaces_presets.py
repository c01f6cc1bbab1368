"""Built-in spaces: each one run with optuna's FixedTrial (no study, no Ray), conditions,
registry errors, and a random sample of every space building a valid Config."""

from __future__ import annotations

import pytest
from optuna.trial import FixedTrial

from extune.errors import RegistryError
from extune.spaces import base_point, get_space, list_spaces, space_name, validate_space
from extune.train.config import Config

OPTIM = {"optim.lr": 0.1, "optim.weight_decay": 1e-4, "optim.batch_size": 128}

FIXED = {
    "excon": {"excon.mask_threshold": 0.4, "excon.warmup_fraction": 0.2,
              "excon.negative_pair": False, "explain.explainer": "saliency",
              "supcon.temperature": 0.1, **OPTIM},
    "edda": {"edda.warmup_fraction": 0.0, "edda.ratio": 0.5, "edda.keep_fraction": 0.3,
             "edda.occlude_fraction": 0.3, "edda.salient_target": "uniform", "edda.fill": "blur",
             "edda.nonsalient_weight": 1.0, "edda.salient_weight": 0.5,
             "explain.explainer": "input_x_gradient", **OPTIM},
    "random_occlusion": {"edda.warmup_fraction": 0.3, "edda.ratio": 0.4, "edda.keep_fraction": 0.2,
                         "edda.occlude_fraction": 0.5, "edda.salient_target": "uniform",
                         "edda.fill": "mean", "edda.nonsalient_weight": 1.0,
                         "edda.salient_weight": 1.0, **OPTIM},
    "supcon": {"supcon.temperature": 0.2, **OPTIM},
    "ce": {"optim.label_smoothing": 0.1, **OPTIM},
}


def test_registry_lists_the_presets():
    assert list_spaces() == ["ce", "edda", "excon", "random_occlusion", "supcon"]
    assert space_name(get_space("excon")) == "excon"


@pytest.mark.parametrize("name", sorted(FIXED))
def test_preset_returns_config_overrides(name):
    params = FIXED[name]
    out = get_space(name)(FixedTrial(params))
    assert out == {"method": name, **params}
    cfg = Config().with_overrides(out)
    assert cfg.method == name and cfg.optim.lr == 0.1


@pytest.mark.parametrize("name", sorted(FIXED))
def test_random_draws_of_every_preset_are_valid_configs(name):
    check = validate_space(get_space(name), Config(), samples=48, name=name)
    assert "method" in check.keys and "optim.lr" in check.keys
    assert all(s["method"] == name for s in check.samples)


def test_gradcam_layer_is_asked_only_for_gradcam():
    space = get_space("excon")
    gradcam = {**FIXED["excon"], "explain.explainer": "gradcam", "explain.layer": "layer3"}
    assert space(FixedTrial(gradcam))["explain.layer"] == "layer3"
    assert "explain.layer" not in space(FixedTrial(FIXED["excon"]))  # saliency: no layer
    ig = {**FIXED["excon"], "explain.explainer": "integrated_gradients", "explain.steps": 8}
    out = space(FixedTrial(ig))
    assert out["explain.steps"] == 8 and "explain.layer" not in out
    with pytest.raises(ValueError):  # gradcam without a layer value: the layer IS asked
        space(FixedTrial({**FIXED["excon"], "explain.explainer": "gradcam"}))


def test_background_anchor_only_with_negative_pairs():
    space = get_space("excon")
    assert "excon.background_anchor" not in space(FixedTrial(FIXED["excon"]))
    both = {**FIXED["excon"], "excon.negative_pair": True, "excon.background_anchor": True}
    out = space(FixedTrial(both))
    assert out["excon.negative_pair"] is True and out["excon.background_anchor"] is True


def test_edda_smoothing_only_for_the_smooth_target():
    space = get_space("edda")
    smooth = {**FIXED["edda"], "edda.salient_target": "smooth", "edda.smoothing": 0.3}
    assert space(FixedTrial(smooth))["edda.smoothing"] == 0.3
    assert "edda.smoothing" not in space(FixedTrial(FIXED["edda"]))


def test_random_occlusion_searches_what_edda_does_but_the_explainer():
    edda = set(get_space("edda")(FixedTrial(FIXED["edda"])))
    occlusion = set(get_space("random_occlusion")(FixedTrial(FIXED["random_occlusion"])))
    assert edda - occlusion == {"explain.explainer"}
    assert occlusion <= edda


def test_unknown_space_lists_the_registered_ones():
    with pytest.raises(RegistryError, match="unknown space 'excn'; did you mean 'excon'"):
        get_space("excn")


@pytest.mark.parametrize("name", sorted(FIXED))
def test_base_point_is_the_base_config_inside_every_preset(name):
    base = Config().with_overrides({"explain.explainer": "gradcam"})
    point = base_point(get_space(name), base)
    flat = base.flatten()
    assert point and all(flat[k] == v for k, v in point.items())
    FixedTrial(point)  # a complete answer to the space: nothing else is asked
    get_space(name)(FixedTrial(point))


def test_base_point_outside_the_space_is_none():
    assert base_point(get_space("ce"), Config().with_overrides({"optim.lr": 5.0})) is None
    assert base_point(get_space("ce"), Config().with_overrides({"optim.batch_size": 32})) is None
