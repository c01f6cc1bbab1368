"""Search settings: objectives, validation errors, samplers, tracking URI, base config."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from extune.errors import ConfigError
from extune.search.settings import (
    QUICK_BASE,
    SearchSettings,
    make_sampler,
    parse_objectives,
)


def test_objectives_by_name_and_by_metric():
    objs = parse_objectives("accuracy,alignment")
    assert [(o.metric, o.mode) for o in objs] == [("val/accuracy", "max"),
                                                 ("val/alignment", "max")]
    assert parse_objectives(["ece"])[0].mode == "min"
    assert parse_objectives("val/top5:max")[0].metric == "val/top5"
    with pytest.raises(ConfigError, match="unknown objective 'speed'"):
        parse_objectives("speed")
    with pytest.raises(ConfigError, match="names a metric twice"):
        parse_objectives("accuracy,val/accuracy:max")


@pytest.mark.parametrize("kwargs, message", [
    ({"trials": 0}, "--trials must be >= 1"),
    ({"max_concurrent": 0}, "--max-concurrent must be >= 1"),
    ({"gpus_per_trial": -1}, "--gpus-per-trial must be >= 0"),
    ({"sampler": "grid"}, "unknown sampler 'grid'"),
    ({"scheduler": "pbt"}, "unknown scheduler 'pbt'"),
    ({"time_budget_s": 0}, "--time-budget must be > 0"),
    ({"sampler": "cmaes", "objective": "accuracy,alignment"}, "cmaes sampler optimises one"),
    ({"name": "a b"}, "--name 'a b' may only use"),
    ({"full_eval": "sometimes"}, "unknown --full-eval 'sometimes'"),
])
def test_bad_settings_fail_in_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        SearchSettings(**kwargs)


@pytest.mark.parametrize("name", ["tpe", "random", "qmc", "nsga2"])
def test_samplers_are_seeded(name):
    sampler = make_sampler(name, seed=3, trials=8, n_objectives=1)
    assert isinstance(sampler, optuna.samplers.BaseSampler)


def test_quick_base_and_overrides(tmp_path):
    base = SearchSettings(overrides={"optim.epochs": 2}).base_config()
    assert base.optim.epochs == 2 and QUICK_BASE["optim.epochs"] == 3
    assert base.model.backbone == "resnet_mini" and base.data.train_size == 6000  # as train
    assert base.runtime.progress is False
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  epochs: 7\n")
    assert SearchSettings(config=str(path)).base_config().data.train_size == 6000
    with pytest.raises(ConfigError, match="cannot read config file"):
        SearchSettings(config=str(tmp_path / "missing.yaml")).base_config()


def test_tracking_uri_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = SearchSettings().resolved_tracking_uri()
    assert uri == f"sqlite:///{Path(tmp_path).resolve() / 'mlflow.db'}"
    assert SearchSettings(tracking_uri="http://h:5000").resolved_tracking_uri() == "http://h:5000"


def test_settings_round_trip():
    s = SearchSettings(space="edda", objective="accuracy,ece", trials=3)
    assert SearchSettings.from_dict(s.to_dict()) == s


def test_several_objectives_get_no_early_stopping_by_default():
    one = SearchSettings(objective="accuracy")
    assert one.resolved_scheduler == "asha" and "ASHA on val/accuracy" in one.scheduler_text()
    several = SearchSettings(objective="accuracy,alignment")
    assert several.resolved_scheduler == "none"
    assert "Pareto front is not biased" in several.scheduler_text()
    forced = SearchSettings(objective="accuracy,alignment", scheduler="asha")
    assert forced.resolved_scheduler == "asha"
    assert "first objective only" in forced.scheduler_text()
    assert SearchSettings(scheduler="none").scheduler_text() == "no early stopping"


def test_fixed_parameters_are_checked_and_answered_by_the_held_space():
    from extune.search.engine.held_settings import HeldSpace
    from extune.spaces import get_space

    with pytest.raises(ConfigError, match="unknown config key"):
        SearchSettings(fixed={"explain.explaner": "gradcam"})
    with pytest.raises(ConfigError, match="excon.mask_threshold"):
        SearchSettings(fixed={"excon.mask_threshold": 2.0})
    # held in or out of the space's range (batch sizes 64/128/256); conditionals follow
    space = HeldSpace(get_space("excon"), {"explain.explainer": "gradcam",
                                           "optim.batch_size": 32})
    study = optuna.create_study(sampler=make_sampler("tpe", 0, 8, 1))
    for _ in range(6):
        trial = study.ask()
        params = space(trial)
        assert params["explain.explainer"] == "gradcam" and "explain.layer" in params
        assert params["optim.batch_size"] == 32
        assert "optim.batch_size" not in trial.params  # Optuna learns only what varies
        study.tell(trial, 0.5)


def test_held_epochs_are_the_schedulers_horizon(tmp_path):
    from extune.search.engine.held_settings import HeldSpace
    from extune.spaces import get_space

    path = tmp_path / "s.yaml"
    path.write_text("optim.epochs: {type: int, low: 5, high: 10}\n"
                    "optim.lr: {type: float, low: 0.01, high: 0.1}\n")
    assert HeldSpace(get_space(str(path)), {"optim.epochs": 2}).max_epochs == 2
    assert HeldSpace(get_space(str(path)), {"optim.lr": 0.05}).max_epochs == 10


def test_full_suite_epochs_of_a_trial():
    assert SearchSettings().full_epochs(8) == ()  # objectives every epoch, full at the end
    assert SearchSettings(full_eval="every").full_epochs(8) is None  # the config's eval.every
    assert SearchSettings(full_eval="milestones").full_epochs(8) == (1, 3)  # ASHA's rungs
    assert SearchSettings(full_eval="milestones", grace_period=2,
                          reduction_factor=3).full_epochs(20) == (2, 6, 18)
    assert SearchSettings(full_eval="milestones", scheduler="none").full_epochs(8) == ()


def test_quick_search_holds_gradcam_unless_fixed_otherwise(tmp_path):
    assert SearchSettings().resolved_fixed == {"explain.explainer": "gradcam"}
    assert SearchSettings(fixed={"explain.explainer": "saliency"}).resolved_fixed == {
        "explain.explainer": "saliency"}
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  epochs: 2\n")
    assert SearchSettings(config=str(path)).resolved_fixed == {}
    space = tmp_path / "s.yaml"
    space.write_text("optim.lr: {type: float, low: 0.01, high: 0.1}\n")
    assert SearchSettings(space=str(space)).resolved_fixed == {}


def test_fix_on_a_key_the_space_does_not_search_is_applied_to_the_base(capsys):
    from extune.search.engine.held_settings import reconcile_fixed
    from extune.spaces import get_space, validate_space

    settings = SearchSettings(space="ce", fixed={"data.image_size": 24, "optim.lr": 0.05})
    base = settings.base_config()
    space = get_space("ce")
    check = validate_space(space, base, name="ce")
    applied, held = reconcile_fixed(settings, base, space, check)
    assert applied.data.image_size == 24  # trained as --set would, not silently ignored
    assert applied.optim.lr == 0.05  # the saved base says what every trial trains with
    assert held.constants()["optim.lr"] == 0.05
    out = " ".join(capsys.readouterr().out.split())
    assert "--fix data.image_size=24: space 'ce' does not search it; applied to the base" in out


def test_set_on_a_searched_key_is_held_in_every_trial(capsys):
    from extune.search.engine.held_settings import reconcile_fixed
    from extune.spaces import get_space, validate_space

    settings = SearchSettings(space="excon", overrides={"excon.mask_threshold": 0.3,
                                                        "optim.epochs": 2})
    base = settings.base_config()
    check = validate_space(get_space("excon"), base, name="excon")
    _, held = reconcile_fixed(settings, base, get_space("excon"), check)
    assert settings.fixed == {"excon.mask_threshold": 0.3}  # not optim.epochs: not searched
    out = " ".join(capsys.readouterr().out.split())
    assert ("--set excon.mask_threshold=0.3: space 'excon' searches it; held at that value in "
            "every trial, as --fix does") in out
    assert {s["excon.mask_threshold"] for s in held.samples} == {0.3}
