"""PruneAwareOptunaSearch without a Ray runtime: scheduler-stopped trials are PRUNED (Ray's
OptunaSearch would tell COMPLETE with the partial score), errors FAIL, full trials COMPLETE."""

from __future__ import annotations

import math
import pickle

import optuna
from optuna.trial import TrialState

from extune.search.engine.optuna_search import PruneAwareOptunaSearch
from extune.tracking.trials import TRIAL_NUMBER, split_config
from extune.train.config import Config

BASE = Config().with_overrides({"optim.epochs": 3}).to_dict()


def space(trial):
    trial.suggest_float("optim.lr", 0.01, 1.0, log=True)
    return {"method": "ce"}


def searcher(**kwargs):
    kwargs.setdefault("metric", "val/accuracy")
    kwargs.setdefault("mode", "max")
    return PruneAwareOptunaSearch(space, base=BASE, sampler=optuna.samplers.RandomSampler(0),
                                  **kwargs)


def result(epoch, acc=0.5, **extra):
    return {"epoch": float(epoch), "val/accuracy": acc, "training_iteration": epoch,
            "time_this_iter_s": 1.0, "config/optim.lr": 0.1, "node_id": "n1", **extra}


def test_states_told_to_optuna():
    s = searcher()
    configs = {t: s.suggest(t) for t in ("full", "stopped", "raised", "nan")}
    number, params = split_config(configs["full"])
    assert number == 0 and params["method"] == "ce" and TRIAL_NUMBER not in params
    for t in configs:
        s.on_trial_result(t, result(1, 0.3))
    s.on_trial_complete("full", result(3, 0.8))
    # ASHA stopped it at epoch 2 of 3: Tune passes that result only to on_trial_complete
    s.on_trial_complete("stopped", result(2, 0.4))
    s.on_trial_complete("raised", error=True)
    s.on_trial_complete("nan", result(3, math.nan))
    trials = s._ot_study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED,
                                         TrialState.FAIL, TrialState.FAIL]
    assert trials[0].value == 0.8
    assert trials[1].intermediate_values == {1: 0.3, 2: 0.4}
    assert trials[1].value == 0.4  # Optuna keeps a pruned trial's last intermediate value
    attrs = trials[0].user_attrs
    assert attrs["extune.params"]["method"] == "ce" and attrs["extune.ray_trial_id"] == "full"
    assert attrs["extune.planned_epochs"] == 3 and attrs["extune.node_id"] == "n1"
    assert attrs["extune.metrics"] == {"epoch": 3.0, "val/accuracy": 0.8}


def test_error_after_some_epochs_is_fail_not_complete():
    s = searcher()
    s.suggest("a")
    s.on_trial_result("a", result(2, 0.9))
    s.on_trial_complete("a", result(2, 0.9), error=True)
    assert s._ot_study.get_trials()[0].state == TrialState.FAIL


def test_multi_objective_values():
    s = searcher(metric=["val/accuracy", "val/alignment"], mode=["max", "max"])
    s.suggest("a")
    s.suggest("b")
    s.on_trial_complete("a", result(3, 0.7, **{"val/alignment": 0.2}))
    s.on_trial_complete("b", result(2, 0.9, **{"val/alignment": 0.9}))
    a, b = s._ot_study.get_trials()
    assert a.state == TrialState.COMPLETE and a.values == [0.7, 0.2]
    assert b.state == TrialState.PRUNED


def test_restore_fails_trials_asked_after_the_last_snapshot(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    s = searcher(storage=optuna.storages.RDBStorage(storage), study_name="x")
    s.suggest("a")
    s.save(str(tmp_path / "searcher.pkl"))
    asked_after = s.suggest("b")  # asked, then the driver died before the next snapshot
    fresh = searcher(storage=optuna.storages.RDBStorage(storage), study_name="x")
    fresh.restore(str(tmp_path / "searcher.pkl"))
    states = [t.state for t in optuna.load_study(study_name="x", storage=storage).trials]
    assert states == [TrialState.RUNNING, TrialState.FAIL]
    fresh.on_trial_complete("a", result(3, 0.6))  # the restored trial still ends normally
    assert fresh._ot_study.get_trials()[0].state == TrialState.COMPLETE
    # the sampler goes on from its saved state, in the study loaded again from its storage
    assert fresh._ot_study.sampler is fresh._sampler
    again = fresh.suggest("c")
    assert again["optim.lr"] == asked_after["optim.lr"] and again[TRIAL_NUMBER] == 2
    pickle.dumps(fresh)  # Ray pickles the searcher into the experiment state


def test_a_file_of_rays_own_save_is_restored_too(tmp_path):
    """A search saved by an extune before the searcher saved its study as a reference."""
    from ray.tune.search.optuna import OptunaSearch

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    s = searcher(storage=optuna.storages.RDBStorage(storage), study_name="x")
    s.suggest("a")
    OptunaSearch.save(s, str(tmp_path / "searcher.pkl"))
    fresh = searcher(storage=optuna.storages.RDBStorage(storage), study_name="x")
    fresh.restore(str(tmp_path / "searcher.pkl"))
    fresh.on_trial_complete("a", result(3, 0.6))
    assert fresh._ot_study.get_trials()[0].state == TrialState.COMPLETE


def test_what_the_searcher_saves_does_not_grow_with_ended_trials(tmp_path):
    """Ray saves the searcher at every snapshot of the search's state: ended trials are the
    study's (its storage, which the file names, not copies), so the file stays the size of
    the running trials."""
    saved = tmp_path / "searcher.pkl"
    s = searcher(storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}"),
                 study_name="x")
    sizes = []
    for i in range(25):
        s.suggest(f"t{i}")
        s.on_trial_result(f"t{i}", result(1))
        s.on_trial_complete(f"t{i}", result(3, 0.5 + i / 1000, **{f"m{k}": k for k in range(40)}))
        if i in (4, 24):
            s._ot_study.get_trials()  # what the sampler reads: every trial, cached
            s.save(str(saved))
            sizes.append(saved.stat().st_size)
    assert not s._ot_trials and not s._planned and not s._reported
    assert sizes[1] < sizes[0] + 20 * 20, sizes  # the ended trials' ids only
    assert len(s._ot_study.get_trials(states=(TrialState.COMPLETE,))) == 25
    s.on_trial_complete("t3", result(3))  # a completion told again: warned by Ray, no error


def test_a_resumed_search_does_not_enqueue_its_base_point_again(tmp_path):
    """Each resume built the searcher again, which enqueued the base point again: the resumed
    search ran the base config once more per resume, a trial of its budget each time."""
    from extune.search.engine.run import _searcher
    from extune.search.folder import SearchDir
    from extune.search.settings import SearchSettings
    from extune.spaces import get_space

    settings = SearchSettings(space="ce", out=str(tmp_path), name="s")
    sdir = SearchDir.create(settings, settings.base_config(), get_space("ce"))
    for _ in range(3):  # the start and two resumes
        _searcher(sdir, settings, sdir.base_config().to_dict())
    study = optuna.load_study(study_name="s", storage=sdir.meta["optuna_storage"])
    assert [t.state for t in study.trials] == [TrialState.WAITING]  # the base point, once
