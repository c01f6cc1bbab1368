"""A search's parent run while the search runs: a Tune callback that keeps its description,
its progress tag and its best-so-far metrics current (:mod:`~extune.search.reporting.parent_run`
writes them at the start and the end)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from extune.errors import one_line
from extune.search.reporting.parent_run import (
    BEST_SO_FAR,
    PROGRESS_TAG,
    ParentFacts,
    Progress,
    search_note,
)
from extune.tracking.journal import Op, writer_for
from extune.tracking.notes import NOTE_TAG, finite
from extune.tracking.trials import planned_epochs, split_config, trial_label

__all__ = ["ParentProgress"]

log = logging.getLogger(__name__)


class ParentProgress(Callback):
    """Tune callback that keeps a search's parent run telling where the search stands: its
    description's first line (trials complete, pruned, failed and running, the best complete
    trial so far), the tag ``extune.progress``, and each objective's ``best_so_far/<name>``
    metric when it improves and when the trials end (step: whole seconds since the search
    started, so that a comparison plots it against wall time). Writes go through the search's
    journal writer, like the trials'.

    Args:
        facts: the description's fixed parts (:func:`parent_facts`).
        base: the base config as a dict (a trial's planned epochs).
        tracker: the search's tracker; journal_dir: its journal's folder.
    """

    def __init__(self, facts: ParentFacts, base: dict[str, Any], tracker: Any,
                 journal_dir: Path) -> None:
        self.facts, self.base, self.tracker = facts, base, tracker
        self.journal_dir = journal_dir
        self._reset()

    def _reset(self) -> None:
        self._best: dict[str, float] = {}  # objective name -> best complete value
        self._best_trial: tuple[str, str, dict[str, float | None]] | None = None
        self._ended: dict[str, str] = {}  # trial id -> complete or pruned (read once)
        self._ended_counts: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks; the store has the rest
        state = dict(self.__dict__)
        for key in ("_best", "_best_trial", "_ended", "_ended_counts"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tell(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tell(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tell(trials)

    def _tell(self, trials: list) -> None:
        try:
            progress, improved = self.look(trials)
            writer = writer_for(self.tracker, self.journal_dir)
            c = progress.counts
            done = sum(c.get(k, 0) for k in ("complete", "pruned", "failed"))
            writer.submit(Op("tags", tags={
                NOTE_TAG: search_note(self.facts, progress),
                PROGRESS_TAG: f"{done}/{self.facts.trials} done: {c.get('complete', 0)} "
                              f"complete, {c.get('pruned', 0)} pruned, {c.get('failed', 0)} "
                              f"failed; {c.get('running', 0)} running"}))
            self._log_best(writer, improved)
        except Exception as e:  # the search matters more than its description
            log.warning("could not describe the search's progress in MLflow: %s",
                        one_line(e, 200))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """The best values once more at the end: each line of a comparison spans its search."""
        try:
            self.look(trials)
            self._log_best(writer_for(self.tracker, self.journal_dir), dict(self._best))
        except Exception as e:  # the search matters more than its description
            log.warning("could not log the search's best values in MLflow: %s",
                        one_line(e, 200))

    def _log_best(self, writer: Any, values: dict[str, float]) -> None:
        if values:
            step = max(0, int(time.time() - self.facts.started_s))
            writer.submit(Op("metrics", metrics={f"{BEST_SO_FAR}{k}": v
                                                 for k, v in values.items()},
                             step=step, once_per_step=False))

    def look(self, trials: list) -> tuple[Progress, dict[str, float]]:
        """Where Tune's ``trials`` stand (counts by state, the best complete trial) and each
        objective's best complete value where it improved since the last look.

        A trial that ended complete or pruned is read once and then only counted: a look
        costs a dictionary lookup per ended trial (it read every trial's results three times,
        twice per trial: 40 ms a look at trial 2,000, ``benchmarks/growth.py``).
        """
        improved: dict[str, float] = {}
        live: dict[str, int] = {}
        for t in trials:
            if t.trial_id in self._ended:
                continue
            state = self._state(t)
            if state in ("complete", "pruned"):
                self._end(t, state, improved)
            else:
                live[state] = live.get(state, 0) + 1
        counts = dict(self._ended_counts)
        for state, n in live.items():
            counts[state] = counts.get(state, 0) + n
        return Progress("running", counts, self._best_trial), improved

    def _end(self, trial: Any, state: str, improved: dict[str, float]) -> None:
        self._ended[trial.trial_id] = state
        self._ended_counts[state] = self._ended_counts.get(state, 0) + 1
        if state != "complete":
            return
        result = trial.last_result or {}
        for i, o in enumerate(self.facts.objectives):
            value = result.get(o.metric)
            sign = 1 if o.mode == "max" else -1
            if finite(value) and (o.name not in self._best
                                  or sign * value > sign * self._best[o.name]):
                self._best[o.name] = improved[o.name] = value
                if i == 0:  # the best trial is the first objective's
                    self._best_trial = (_trial_name(trial), trial.trial_id, {
                        ob.name: result.get(ob.metric) for ob in self.facts.objectives})

    def _state(self, trial: Any) -> str:
        """``running``, ``failed``, ``waiting``, ``pruned`` or ``complete``."""
        if trial.status == "RUNNING":
            return "running"
        if trial.status == "ERROR":
            return "failed"
        if trial.status != "TERMINATED":
            return "waiting"
        planned = planned_epochs(self.base, trial.config)
        epoch = (trial.last_result or {}).get("epoch", 0)
        return "pruned" if planned is not None and epoch < planned else "complete"


def _trial_name(trial: Any) -> str:
    number, _ = split_config(trial.config)
    return trial_label(number, trial.trial_id)

