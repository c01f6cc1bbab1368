"""A search's trials as plain records, read from its Optuna study (with the ``extune.*`` user
attributes :class:`~extune.search.engine.optuna_search.PruneAwareOptunaSearch` writes), and what
they consumed; usable after the search, without Ray."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from extune.evaluate.objectives import Objective

__all__ = ["TrialRecord", "records_from_study", "consumed_epochs", "consumed_seconds"]

_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
           "WAITING": "waiting"}


@dataclass
class TrialRecord:
    """One trial of a search.

    Attributes:
        number: Optuna trial number (0-based, in the order trials were asked).
        trial_id: Ray Tune trial id (also the MLflow tag ``extune.trial_id``).
        state: ``complete``, ``pruned`` (stopped early), ``failed``, ``running`` or ``waiting``.
        values: objective values of a complete trial (in objective order), else ``None``.
        metrics: the last reported metrics (``epoch``, ``val/...``, ``train/...``).
        params: the trial's config overrides (dotted keys).
        planned_epochs: epochs the trial would have trained.
        node_id, gpu_ids, hostname, pid: where it ran last (``gpu_ids``: the Ray GPU ids it
            was given, ``"0,1"``; ``""`` for none).
        error: one-line error of a failed trial, when known.
    """

    number: int
    trial_id: str | None = None
    state: str = "running"
    values: list[float] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    planned_epochs: int | None = None
    node_id: str | None = None
    gpu_ids: str | None = None
    hostname: str | None = None
    pid: int | None = None
    error: str | None = None

    @property
    def epoch(self) -> int:
        return int(self.metrics.get("epoch", 0))

    @property
    def name(self) -> str:
        return f"trial-{self.number:03d}"  # as in MLflow and the live view

    def value(self, objective: Objective) -> float | None:
        v = self.metrics.get(objective.metric)
        return v if v is not None and math.isfinite(v) else None


def records_from_study(study: Any, objectives: Sequence[Objective]) -> list[TrialRecord]:
    """One :class:`TrialRecord` per Optuna trial, in trial-number order."""
    records = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        metrics = dict(attrs.get("extune.metrics", {}))
        state = _STATES.get(t.state.name, t.state.name.lower())
        values = list(t.values) if state == "complete" and t.values is not None else None
        if values is not None:  # the study holds the values told; keep metrics consistent
            for obj, v in zip(objectives, values, strict=False):
                metrics.setdefault(obj.metric, v)
        records.append(TrialRecord(
            number=t.number, trial_id=attrs.get("extune.ray_trial_id"), state=state,
            values=values, metrics=metrics, params=dict(attrs.get("extune.params", t.params)),
            planned_epochs=attrs.get("extune.planned_epochs"),
            node_id=attrs.get("extune.node_id"), gpu_ids=attrs.get("extune.gpu_ids"),
            hostname=attrs.get("extune.hostname"),
            pid=attrs.get("extune.pid"), error=attrs.get("extune.error")))
    return records


# ---------------------------------------------------------------- Pareto / knee
def consumed_epochs(records: Iterable[Any]) -> int:
    """Trial-epochs of a search's trials
    (:class:`TrialRecord`): the sum of each trial's last
    reported epoch."""
    return sum(r.epoch for r in records)


def consumed_seconds(records: Iterable[Any]) -> float:
    """Trial-seconds of a search's trials (:class:`TrialRecord`): the sum of each trial's last
    reported ``train/seconds`` (training and validation: the compute, whatever ran at once)."""
    return sum(float(r.metrics.get("train/seconds", 0.0)) for r in records)
