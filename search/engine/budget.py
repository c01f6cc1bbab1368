"""A search budget counted in trial-epochs or trial-seconds: :class:`EpochBudget` ends a search
once its trials have trained that many epochs in all, :class:`SecondsBudget` once they have
run that many seconds in all (``train/seconds``: training and evaluation of every trial).

A budget in trials is equal only in name when early stopping prunes trials at different
rates: ASHA may stop one method's trials after one epoch and let another's run to the end. A
study compares methods with the same number of trial-epochs instead (docs/study.md); equal
trial-epochs are still not equal compute (an ExCon epoch explains every batch), which a budget
in trial-seconds matches.
"""

from __future__ import annotations

from typing import Any

from ray.tune.stopper import Stopper

from extune.search.settings import SearchSettings

__all__ = ["EpochBudget", "SecondsBudget", "with_budget", "epoch_budget", "search_budgets"]

_FINISHED = ("COMPLETE", "PRUNED", "FAIL")


class EpochBudget(Stopper):
    """Stop the whole search once its trials trained ``budget`` epochs in all.

    Trials are counted from the Optuna study (their last epoch when finished, their
    intermediate values while running; so a resumed search counts what ran before, and a new
    instance after the search counts what the search's instance counted) and from the results
    Tune passes here (several objectives report no intermediate values). The search's running
    trials end when the budget is reached; the search marks them pruned (they are short of
    their epochs).

    Args:
        budget: trial-epochs.
        storage: the Optuna storage URL; study_name: the study in it.
    """

    key = "epoch"
    """The reported metric that counts a trial's consumption (cumulative)."""

    def __init__(self, budget: float, storage: str, study_name: str) -> None:
        self.budget = budget
        self.storage, self.study_name = storage, study_name
        self._running: dict[str, float] = {}
        self._consumed: float | None = None  # cached until the next result

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        value = float(result.get(self.key, 0) or 0)
        self._running[trial_id] = max(value, self._running.get(trial_id, 0))
        self._consumed = None
        return False

    def stop_all(self) -> bool:
        # Tune asks at every step of its loop: the study is read only after a new result
        if self._consumed is None:
            self._consumed = self.consumed()
        return self._consumed >= self.budget

    def consumed(self) -> float:
        """Consumed so far: finished trials from the study, the others as reported."""
        import optuna

        study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        used = dict(self._running)
        for t in study.get_trials(deepcopy=False):
            key = t.user_attrs.get("extune.ray_trial_id") or f"#{t.number}"
            if t.state.name in _FINISHED:
                used[key] = float(t.user_attrs.get("extune.metrics", {}).get(self.key, 0))
            else:
                used[key] = max(used.get(key, 0), self._running_value(t))
        return sum(used.values())

    def _running_value(self, trial: Any) -> float:
        """What a running trial of the study consumed: one intermediate value per epoch."""
        return max(trial.intermediate_values) if trial.intermediate_values else 0

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles the stopper with the experiment
        return {**self.__dict__, "_consumed": None}


class SecondsBudget(EpochBudget):
    """Stop the whole search once its trials ran ``budget`` seconds in all (each trial's
    ``train/seconds``: its training and validation, counted over resumes), so that methods of
    unequal cost get equal compute. A running trial counts what Tune last reported of it.

    Args:
        budget: trial-seconds.
        storage: the Optuna storage URL; study_name: the study in it.
    """

    key = "train/seconds"

    def _running_value(self, trial: Any) -> float:
        return 0.0  # the study holds no seconds of a running trial: Tune's results count them


def search_budgets(sdir: Any, settings: SearchSettings, trials: list[Any] = ()) -> list[Any]:
    """The search's budgets (:class:`EpochBudget`, :class:`SecondsBudget`), told the last
    results of ``trials`` (Ray's saved trials: after ``fit``, what the stopping instance
    saw)."""
    found = []
    for amount, kind in ((settings.epoch_budget, EpochBudget),
                         (settings.seconds_budget, SecondsBudget)):
        if amount is not None:
            budget = kind(amount, sdir.meta["optuna_storage"], sdir.name)
            for trial in trials:
                budget(trial.trial_id, trial.last_result or {})
            found.append(budget)
    return found


def with_budget(sdir: Any, settings: SearchSettings, stop: Any) -> Any:
    """``stop`` and the search's budgets (:func:`search_budgets`)."""
    budgets = search_budgets(sdir, settings)
    if not budgets:
        return stop
    from ray.tune.stopper import CombinedStopper

    stoppers = budgets if stop is None else [stop, *budgets]
    return stoppers[0] if len(stoppers) == 1 else CombinedStopper(*stoppers)


def epoch_budget(sdir: Any, settings: SearchSettings, trials: list[Any] = ()) -> Any:
    """The search's :class:`EpochBudget`, told the last results of ``trials``."""
    budget = EpochBudget(settings.epoch_budget, sdir.meta["optuna_storage"], sdir.name)
    for trial in trials:
        budget(trial.trial_id, trial.last_result or {})
    return budget
