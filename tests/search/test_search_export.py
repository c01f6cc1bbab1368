"""Export from a search folder built by hand (no Ray): the default rule, knee, by metric."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from extune.cli import main
from extune.errors import ConfigError
from extune.search.folder import SearchDir
from extune.search.reporting.export import export_search
from extune.search.settings import SearchSettings
from extune.spaces import get_space
from extune.train.config import Config

POINTS = [  # (lr, accuracy, alignment, state)
    (0.10, 0.90, 0.10, TrialState.COMPLETE),
    (0.20, 0.80, 0.60, TrialState.COMPLETE),  # the knee
    (0.30, 0.60, 0.80, TrialState.COMPLETE),
    (0.40, 0.20, 0.90, TrialState.COMPLETE),
    (0.50, 0.99, 0.99, TrialState.PRUNED),     # partial score: never exported
]


@pytest.fixture
def search_dir(tmp_path):
    settings = SearchSettings(space="supcon", objective="accuracy,alignment",
                              out=str(tmp_path), name="handmade")
    sdir = SearchDir.create(settings, settings.base_config(), get_space("supcon"))
    study = optuna.create_study(study_name="handmade", storage=sdir.meta["optuna_storage"],
                                directions=["maximize", "maximize"])
    for i, (lr, acc, align, state) in enumerate(POINTS):
        params = {"method": "supcon", "optim.lr": lr}
        study.add_trial(create_trial(
            state=state, values=[acc, align] if state == TrialState.COMPLETE else None,
            params={"optim.lr": lr}, distributions={"optim.lr": FloatDistribution(0.01, 1.0)},
            intermediate_values={1: acc} if state == TrialState.PRUNED else None,
            user_attrs={"extune.params": params, "extune.ray_trial_id": f"t{i}",
                        "extune.planned_epochs": 4,
                        "extune.metrics": {"epoch": 4.0, "val/accuracy": acc,
                                           "val/alignment": align}}))
    return sdir


@pytest.mark.parametrize("select, lr", [(None, 0.2), ("knee", 0.2), ("accuracy", 0.1),
                                        ("alignment", 0.4)])
def test_export_rules(search_dir, tmp_path, select, lr):
    out = tmp_path / "best.yaml"
    config, record = export_search(search_dir.path, out, select)
    assert record.params["optim.lr"] == lr and record.state == "complete"
    loaded = Config.load(out)
    assert loaded == config == search_dir.base_config().with_overrides(record.params)
    assert out.read_text().startswith("# exported from search handmade")


def test_export_cli(search_dir, tmp_path, capsys):
    out = tmp_path / "knee.yaml"
    assert main(["export", str(search_dir.path), "-o", str(out), "--select", "knee"]) == 0
    assert Config.load(out).optim.lr == 0.2
    printed = " ".join(capsys.readouterr().out.split())
    assert "trial-001" in printed and "warm-ups of 3-epoch training: none" in printed
    assert "# warm-ups of 3-epoch training: none" in out.read_text()
    assert main(["export", str(search_dir.path), "-o", str(out), "--epochs", "40"]) == 0
    assert Config.load(out).optim.epochs == 40
    assert "warm-ups of 40-epoch training" in " ".join(capsys.readouterr().out.split())
    assert main(["export", str(search_dir.path), "-o", str(out), "--epochs", "0"]) == 2
    assert main(["export", str(tmp_path / "nothing"), "-o", str(out)]) == 2
    assert "is not a search folder" in " ".join(capsys.readouterr().err.split())
    assert main(["export", "-o", str(out)]) == 2
    assert main(["export", str(search_dir.path), "--run", "x", "-o", str(out)]) == 2


def test_unknown_rule(search_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown selection 'fastest'"):
        export_search(search_dir.path, tmp_path / "x.yaml", "fastest")


def test_a_search_folder_is_not_reused(search_dir):
    settings = SearchSettings(space="supcon", out=str(search_dir.path.parent), name="handmade")
    with pytest.raises(ConfigError, match="already holds a search; pass --resume"):
        SearchDir.create(settings, settings.base_config(), get_space("supcon"))


def test_warm_ups_are_named_and_only_the_epoch_counted_one_is_rescaled():
    from extune.search.reporting.export import epoch_settings, rescale_epochs

    short = Config().with_overrides({"method": "excon", "optim.epochs": 4,
                                     "excon.warmup_fraction": 0.25, "optim.warmup_epochs": 2})
    assert epoch_settings(short) == (
        "warm-ups of 4-epoch training: learning rate 2 epoch(s) (50%, counted in epochs), "
        "excon 1 epoch(s) (25% of the run)")
    long = rescale_epochs(short, 200)
    assert long.optim.epochs == 200 and long.optim.warmup_epochs == 100
    assert long.excon.warmup_fraction == 0.25  # a share means the same in a longer run
    assert "excon 50 epoch(s)" in epoch_settings(long)
    assert rescale_epochs(short, 2).optim.warmup_epochs == 1  # a warm-up stays a warm-up
    assert epoch_settings(Config().with_overrides({"method": "ce"})).endswith(": none")
