"""The search budget in trial-epochs (:class:`extune.search.engine.budget.EpochBudget`) on a real
Optuna study in SQLite, without Ray's loop."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from extune.search.engine.budget import EpochBudget
from extune.search.records import consumed_epochs


@pytest.fixture
def study(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    return optuna.create_study(study_name="s", storage=storage), storage


def _finished(study, ray_id: str, epoch: int, state=TrialState.PRUNED) -> None:
    trial = study.ask()
    trial.set_user_attr("extune.ray_trial_id", ray_id)
    trial.set_user_attr("extune.metrics", {"epoch": float(epoch)})
    study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)


def test_finished_trials_count_from_the_study_and_running_ones_as_reported(study):
    study, storage = study
    _finished(study, "a", 4, TrialState.COMPLETE)
    _finished(study, "b", 1)
    budget = EpochBudget(8, storage, "s")
    assert budget.consumed() == 5 and not budget.stop_all()
    budget("c", {"epoch": 2})  # a running trial's second epoch
    assert budget.consumed() == 7 and not budget.stop_all()
    budget("c", {"epoch": 3})
    assert budget.stop_all()
    _finished(study, "c", 3)  # once it is finished it is counted once, from the study
    assert budget.consumed() == 8


def test_a_resumed_search_counts_what_ran_before(study):
    study, storage = study
    _finished(study, "a", 4, TrialState.COMPLETE)
    running = study.ask()  # a trial Ray had started: its epochs as intermediate values
    running.set_user_attr("extune.ray_trial_id", "r")
    running.report(0.3, 1)
    running.report(0.4, 2)
    fresh = EpochBudget(6, storage, "s")  # e.g. the instance Ray restored from its snapshot
    assert fresh.consumed() == 6 and fresh.stop_all()
    import pickle

    assert pickle.loads(pickle.dumps(fresh))._consumed is None  # recounted after a restore


def test_a_seconds_budget_counts_trial_seconds_not_epochs(study):
    from extune.search.engine.budget import SecondsBudget

    study, storage = study
    trial = study.ask()
    trial.set_user_attr("extune.ray_trial_id", "a")
    trial.set_user_attr("extune.metrics", {"epoch": 4.0, "train/seconds": 30.5})
    study.tell(trial, 0.5)
    budget = SecondsBudget(60, storage, "s")
    assert budget.consumed() == pytest.approx(30.5) and not budget.stop_all()
    budget("b", {"epoch": 1, "train/seconds": 20.0})  # a running trial, as Tune reports it
    assert budget.consumed() == pytest.approx(50.5) and not budget.stop_all()
    budget("b", {"epoch": 2, "train/seconds": 31.0})
    assert budget.stop_all()


def test_consumed_epochs_of_records():
    from extune.search.reporting.results import TrialRecord

    records = [TrialRecord(0, metrics={"epoch": 4.0}), TrialRecord(1, metrics={"epoch": 1.0}),
               TrialRecord(2)]
    assert consumed_epochs(records) == 5
