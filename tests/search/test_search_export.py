"""Export from a search folder built by hand (no Ray): the default rule, knee, by metric."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from handmade_search import handmade_search
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from extune.cli import main
from extune.errors import ConfigError
from extune.search.folder import SearchDir
from extune.search.reporting.export import export_search
from extune.search.settings import GIVEN_KEYS, SearchSettings
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
    assert loaded == config
    trained = search_dir.base_config().with_overrides(record.params).flatten()
    assert {k: v for k, v in config.flatten().items() if k not in GIVEN_KEYS} == {
        k: v for k, v in trained.items() if k not in GIVEN_KEYS}
    assert {k: config.flatten()[k] for k in GIVEN_KEYS} == search_dir.given_values()
    assert out.read_text().startswith("# Exported from search handmade")


def test_export_cli(search_dir, tmp_path, capsys):
    out = tmp_path / "knee.yaml"
    assert main(["export", str(search_dir.path), "-o", str(out), "--select", "knee"]) == 0
    assert Config.load(out).optim.lr == 0.2
    printed = " ".join(capsys.readouterr().out.split())
    assert "trial-001" in printed and "note: 3-epoch training has no warm-up" in printed
    assert "# 3-epoch training has no warm-up.\n" in out.read_text()
    assert main(["export", str(search_dir.path), "-o", str(out), "--epochs", "40"]) == 0
    assert Config.load(out).optim.epochs == 40
    assert "40-epoch training has no warm-up" in " ".join(capsys.readouterr().out.split())
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
        "in 4-epoch training, the learning rate warms up for 2 epochs (optim.warmup_epochs=2, "
        "counted in epochs: 50% of training) and excon trains plain SupCon for the first 25% of "
        "its training steps (excon.warmup_fraction=0.25, counted in steps: the same share of any "
        "run)")
    long = rescale_epochs(short, 200)
    assert long.optim.epochs == 200 and long.optim.warmup_epochs == 100
    assert long.excon.warmup_fraction == 0.25  # a share means the same in a longer run
    assert "excon trains plain SupCon for the first 25% of its training steps" in \
        epoch_settings(long)
    assert rescale_epochs(short, 2).optim.warmup_epochs == 1  # a warm-up stays a warm-up
    assert epoch_settings(Config().with_overrides({"method": "ce", "optim.epochs": 3})) == (
        "3-epoch training has no warm-up")
    edda = Config().with_overrides({"method": "random_occlusion", "optim.epochs": 3,
                                    "edda.warmup_fraction": 0.2})
    assert epoch_settings(edda) == (  # in steps, a share below an epoch still warms up
        "in 3-epoch training, random_occlusion trains plain cross-entropy for the first 20% of "
        "its training steps (edda.warmup_fraction=0.2, counted in steps: the same share of any "
        "run)")


def _notes(path) -> list[str]:
    return [line[2:] for line in path.read_text().splitlines() if line.startswith("#")]


@pytest.mark.parametrize("method, own, other", [("excon", "excon.", "edda."),
                                                ("edda", "edda.", "excon.")])
def test_export_notes_are_sentences_about_the_exported_method(tmp_path, method, own, other):
    params = {"method": method, "optim.lr": 0.1, f"{method}.warmup_fraction": 0.5}
    sdir = handmade_search(str(tmp_path), [(params, 0.5)], space=method,
                           overrides={"optim.warmup_epochs": 1})
    for epochs in (None, 30):
        out = tmp_path / f"{method}-{epochs}.yaml"
        export_search(sdir.path, out, epochs=epochs)
        notes = _notes(out)
        assert len(notes) == 3 and any(f"{own}warmup_fraction=0.5" in n for n in notes)
        assert not any(other in n for n in notes), notes  # no other method's settings
        for note in notes:  # each a sentence: capital first, one final period, no fragments
            assert note[0].isupper() and note.endswith(".") and not note.endswith(".."), note
            assert ": none" not in note and "epoch(s)" not in note, note
    assert notes[0].startswith("Exported from search handmade: trial-000 (Tune trial t0), "
                               "the best complete trial by accuracy; it scored val/accuracy=0.5")
    assert notes[2].startswith("Rescaled with --epochs 30 from the trial's 3 epochs, "
                               "optim.warmup_epochs scaled from 1 to 10: in 30-epoch training")


def test_export_keeps_progress_and_data_paths_as_the_user_gave_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    given = {"data.name": "imagefolder", "data.root": "images", "data.cache_dir": "cache"}
    sdir = handmade_search("runs", [({"method": "excon", "optim.lr": 0.1}, 0.5)],
                           overrides=given)
    base = sdir.base_config()  # what the trials trained: absolute paths, no progress bar
    assert base.data.root == str(tmp_path / "images") and base.runtime.progress is False
    monkeypatch.chdir(tmp_path / "runs")  # exported from elsewhere: the paths stay the user's
    config, _ = export_search(sdir.path, tmp_path / "best.yaml")
    written = Config.load(tmp_path / "best.yaml")
    assert written == config and written.runtime.progress is True  # Config's default
    assert (written.data.root, written.data.cache_dir) == ("images", "cache")
    assert (f"The relative paths data.root=images and data.cache_dir=cache start from "
            f"{tmp_path}, the folder the search was started in") in _notes(tmp_path / "best.yaml")[1]

    quiet = handmade_search(str(tmp_path), [({"method": "excon", "optim.lr": 0.1}, 0.5)],
                            overrides={"runtime.progress": False}, name="quiet")
    config, _ = export_search(quiet.path, tmp_path / "quiet.yaml")
    assert config.runtime.progress is False  # the user's own value
    assert Path(config.data.cache_dir) == Path("~/.cache/extune")  # default, as written
    assert not any("relative" in n for n in _notes(tmp_path / "quiet.yaml"))  # synthetic
