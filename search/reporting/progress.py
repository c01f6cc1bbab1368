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
        self._best: dict[str, float] = {}
        self._planned: dict[str, int | None] = {}  # trial id -> its epochs (a Config each)

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks; the store has the rest
        return {**self.__dict__, "_best": {}, "_planned": {}}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tell(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tell(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._tell(trials)

    def _tell(self, trials: list) -> None:
        try:
            states = self._states(trials)
            progress = self.progress(trials, states)
            writer = writer_for(self.tracker, self.journal_dir)
            c = progress.counts
            done = sum(c.get(k, 0) for k in ("complete", "pruned", "failed"))
            writer.submit(Op("tags", tags={
                NOTE_TAG: search_note(self.facts, progress),
                PROGRESS_TAG: f"{done}/{self.facts.trials} done: {c.get('complete', 0)} "
                              f"complete, {c.get('pruned', 0)} pruned, {c.get('failed', 0)} "
                              f"failed; {c.get('running', 0)} running"}))
            self._log_best(writer, self._improved(trials, states))
        except Exception as e:  # the search matters more than its description
            log.warning("could not describe the search's progress in MLflow: %s",
                        one_line(e, 200))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """The best values once more at the end: each line of a comparison spans its search."""
        try:
            self._improved(trials, self._states(trials))
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

    def progress(self, trials: list, states: dict[str, str]) -> Progress:
        """The counts and the best complete trial of Tune's ``trials`` (``states``: each
        trial's, :meth:`_states`)."""
        counts: dict[str, int] = {}
        best = None
        first = self.facts.objectives[0]
        sign = 1 if first.mode == "max" else -1
        for t in trials:
            state = states[t.trial_id]
            counts[state] = counts.get(state, 0) + 1
            value = (t.last_result or {}).get(first.metric)
            if state == "complete" and finite(value) and (
                    best is None or sign * value > sign * best[0]):
                best = (value, t)
        if best is None:
            return Progress("running", counts)
        trial = best[1]
        values = {o.name: (trial.last_result or {}).get(o.metric) for o in self.facts.objectives}
        return Progress("running", counts, (_trial_name(trial), trial.trial_id, values))

    def _states(self, trials: list) -> dict[str, str]:
        """Trial id -> ``running``, ``failed``, ``waiting``, ``pruned`` or ``complete``."""
        return {t.trial_id: self._state(t) for t in trials}

    def _state(self, trial: Any) -> str:
        if trial.status == "RUNNING":
            return "running"
        if trial.status == "ERROR":
            return "failed"
        if trial.status != "TERMINATED":
            return "waiting"
        if trial.trial_id not in self._planned:
            self._planned[trial.trial_id] = planned_epochs(self.base, trial.config)
        planned = self._planned[trial.trial_id]
        epoch = (trial.last_result or {}).get("epoch", 0)
        return "pruned" if planned is not None and epoch < planned else "complete"

    def _improved(self, trials: list, states: dict[str, str]) -> dict[str, float]:
        """Each objective's best complete value, where it improved since the last call."""
        better = {}
        complete = [t for t in trials if states[t.trial_id] == "complete"]
        for o in self.facts.objectives:
            sign = 1 if o.mode == "max" else -1
            values = [(t.last_result or {}).get(o.metric) for t in complete]
            values = [v for v in values if finite(v)]
            if values:
                top = max(values, key=lambda v: sign * v)
                if o.name not in self._best or sign * top > sign * self._best[o.name]:
                    self._best[o.name] = better[o.name] = top
        return better


def _trial_name(trial: Any) -> str:
    number, _ = split_config(trial.config)
    return trial_label(number, trial.trial_id)

