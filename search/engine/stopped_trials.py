"""What a search's stop leaves behind: whether Tune returned because of Ctrl-C, and the trials
a time budget, an epoch budget or a stopper cut short (told to Optuna as pruned, or failed
when they had not finished an epoch)."""

from __future__ import annotations

from typing import Any

from extune.search.folder import SearchDir
from extune.search.reporting.parent_run import search_writer
from extune.search.settings import SearchSettings
from extune.tracking.journal import Op
from extune.tracking.trials import reported_metrics

__all__ = ["ray_trials", "was_interrupted", "settle_stopped"]


def ray_trials(sdir: SearchDir) -> list[Any]:
    from ray.tune import ExperimentAnalysis

    try:
        return list(ExperimentAnalysis(sdir.experiment_path).trials)
    except Exception:  # no experiment state (nothing ran)
        return []


def was_interrupted(trials: list[Any], settings: SearchSettings, elapsed: float) -> bool:
    """Ctrl-C makes ``Tuner.fit`` return normally; the saved trial states tell."""
    if any(t.status in ("RUNNING", "PENDING", "PAUSED") for t in trials):
        return True
    budget_hit = settings.time_budget_s is not None and elapsed >= settings.time_budget_s - 1
    return len(trials) < settings.trials and not budget_hit


def settle_stopped(sdir: SearchDir, study: Any, trials: list[Any], tracker: Any,
                    reason: str) -> None:
    """Trials the time budget (or a stopper) stopped are never told to the searcher: PRUNED
    (or FAIL)."""
    from optuna.trial import TrialState

    by_id = {t.trial_id: t for t in trials}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = t.user_attrs.get("extune.ray_trial_id")
        ray_trial = by_id.get(trial_id)
        metrics = reported_metrics(ray_trial.last_result) if ray_trial is not None else {}
        failed = (ray_trial is not None and ray_trial.status == "ERROR") or not metrics
        live = _running_trial(study, t)
        if metrics:
            live.set_user_attr("extune.metrics", metrics)
        if not metrics:
            live.set_user_attr("extune.error", f"stopped by the {reason} before an epoch ended")
        study.tell(t.number, state=TrialState.FAIL if failed else TrialState.PRUNED)
        if trial_id and ray_trial is not None and ray_trial.status != "PENDING":
            # "if_run": a trial the stop caught while its actor was being set up has no run
            state = "failed" if failed else "pruned"
            search_writer(sdir, tracker).submit(Op("tags", trial_id, if_run=True, tags={
                "extune.state": state, "extune.stopped": reason}))


def _running_trial(study: Any, frozen: Any) -> Any:
    """A writable handle on a RUNNING trial that another object (the searcher) asked.

    Optuna has no public way to reach such a trial: ``study.ask()`` only makes new ones, and
    ``optuna.trial.Trial`` takes the storage's trial id, which a ``FrozenTrial`` keeps in its
    private ``_trial_id``. This is the one place extune reads it.
    """
    from optuna.trial import Trial

    return Trial(study, frozen._trial_id)
