"""``extune.registry.Registry``: registration, duplicates, lookup errors, order; and that every
registry of the package uses it."""

from __future__ import annotations

import pytest

from extune.errors import RegistryError
from extune.registry import Registry, unknown_name


def test_register_as_decorator_or_call_and_lookup():
    reg: Registry[object] = Registry("widget")

    @reg.register("b_widget")
    def b() -> None: ...

    a = reg.register("a_widget", object())
    assert reg.get("b_widget") is b and reg.get("a_widget") is a
    assert reg.names() == ["a_widget", "b_widget"]  # sorted
    assert list(reg) == ["b_widget", "a_widget"]  # registration order
    assert "a_widget" in reg and "c" not in reg and ["unhashable"] not in reg
    assert len(reg) == 2 and reg.items()[0] == ("b_widget", b)
    reg.check("a_widget")
    reg.remove("a_widget")
    reg.remove("never_there")
    assert reg.names() == ["b_widget"]


def test_duplicates_are_refused():
    reg: Registry[int] = Registry("widget")
    reg.register("x", 1)
    with pytest.raises(ValueError, match="widget 'x' is already registered"):
        reg.register("x", 2)
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register("", 3)
    assert reg.get("x") == 1


def test_unknown_name_says_the_closest_and_every_name():
    reg: Registry[int] = Registry("backbone")
    for i, name in enumerate(("resnet50", "resnet18", "tiny_cnn")):
        reg.register(name, i)
    with pytest.raises(RegistryError) as e:
        reg.get("resnet5")
    assert str(e.value) == ("unknown backbone 'resnet5'; did you mean 'resnet50'? registered: "
                            "resnet18, resnet50, tiny_cnn")
    assert isinstance(e.value, KeyError)  # RegistryError is an ExtuneError and a KeyError
    assert str(reg.error("zzz")) == "unknown backbone 'zzz'; registered: resnet18, resnet50, " \
                                    "tiny_cnn"
    with pytest.raises(RegistryError):
        reg.get(["not", "hashable"])  # e.g. a list from a YAML file


def test_listing_words_and_tail():
    reg: Registry[int] = Registry("space", listing="built-in spaces", tail=", or a file")
    reg.register("excon", 1)
    assert str(reg.error("excn")) == ("unknown space 'excn'; did you mean 'excon'? built-in "
                                      "spaces: excon, or a file")
    assert str(unknown_name("corruption", "fog", ["b", "a"], listing="allowed")) == (
        "unknown corruption 'fog'; allowed: b, a")  # the caller's order


def test_every_registry_of_the_package_is_a_registry():
    from extune.augment.explainers import EXPLAINERS
    from extune.models.backbones import BACKBONES
    from extune.spaces import SPACES
    from extune.spaces.presets import explainer_choices
    from extune.train.datasets import DATASETS
    from extune.train.methods import METHODS

    for reg, kind in ((BACKBONES, "backbone"), (EXPLAINERS, "explainer"), (DATASETS, "data set"),
                      (SPACES, "space"), (METHODS, "method")):
        assert isinstance(reg, Registry) and reg.kind == kind and len(reg) >= 4
    # the presets offer every registered explainer, in registration order (Optuna's choices)
    assert explainer_choices() == list(EXPLAINERS) == [
        "gradcam", "saliency", "input_x_gradient", "guided_backprop", "integrated_gradients",
        "deeplift"]
