"""A search budget counted in trial-epochs: :class:`EpochBudget` ends a search once its trials
have trained that many epochs in all.

A budget in trials is equal only in name when early stopping prunes trials at different
rates: ASHA may stop one method's trials after one epoch and let another's run to the end. A
study compares methods with the same number of trial-epochs instead (docs/study.md).
"""

from __future__ import annotations

from typing import Any

from ray.tune.stopper import Stopper

from extune.search.settings import SearchSettings

__all__ = ["EpochBudget", "with_budget", "epoch_budget"]

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

    def __init__(self, budget: int, storage: str, study_name: str) -> None:
        self.budget = int(budget)
        self.storage, self.study_name = storage, study_name
        self._running: dict[str, int] = {}
        self._consumed: int | None = None  # cached until the next result

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        epoch = int(result.get("epoch", 0) or 0)
        self._running[trial_id] = max(epoch, self._running.get(trial_id, 0))
        self._consumed = None
        return False

    def stop_all(self) -> bool:
        # Tune asks at every step of its loop: the study is read only after a new result
        if self._consumed is None:
            self._consumed = self.consumed()
        return self._consumed >= self.budget

    def consumed(self) -> int:
        """Trial-epochs trained so far: finished trials from the study, the others as
        reported."""
        import optuna

        study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        epochs = dict(self._running)
        for t in study.get_trials(deepcopy=False):
            key = t.user_attrs.get("extune.ray_trial_id") or f"#{t.number}"
            if t.state.name in _FINISHED:
                epochs[key] = int(t.user_attrs.get("extune.metrics", {}).get("epoch", 0))
            elif t.intermediate_values:  # running: one intermediate value per epoch
                epochs[key] = max(epochs.get(key, 0), max(t.intermediate_values))
        return sum(epochs.values())

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles the stopper with the experiment
        return {**self.__dict__, "_consumed": None}


def with_budget(sdir: Any, settings: SearchSettings, stop: Any) -> Any:
    """``stop`` and, with ``epoch_budget``, the search's :class:`EpochBudget`."""
    if settings.epoch_budget is None:
        return stop
    from ray.tune.stopper import CombinedStopper

    budget = epoch_budget(sdir, settings)
    return budget if stop is None else CombinedStopper(stop, budget)


def epoch_budget(sdir: Any, settings: SearchSettings, trials: list[Any] = ()) -> Any:
    """The search's :class:`EpochBudget`, told the last results of ``trials`` (Ray's saved
    trials: after ``fit``, what the stopping instance saw)."""
    budget = EpochBudget(settings.epoch_budget, sdir.meta["optuna_storage"], sdir.name)
    for trial in trials:
        budget(trial.trial_id, trial.last_result or {})
    return budget
