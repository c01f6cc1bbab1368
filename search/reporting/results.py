"""Ranking a search's trial records (:mod:`extune.search.records`), the Pareto front, the knee
rule, the chosen trial and the summary files.

Everything here works from the Optuna study (with the ``extune.*`` user attributes that
:class:`~extune.search.engine.optuna_search.PruneAwareOptunaSearch` writes) and plain Python,
so it is usable after the search, without Ray.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from extune.errors import ConfigError
from extune.evaluate.objectives import OBJECTIVES, Objective
from extune.search.records import (
    TrialRecord,
    consumed_epochs,
    consumed_seconds,
    records_from_study,
)

__all__ = [
    "TrialRecord",
    "records_from_study",
    "chosen_trial",
    "dominates",
    "pareto_front",
    "pareto_layers",
    "knee_point",
    "select_trial",
    "rank_records",
    "summary_csv",
    "summary_markdown",
    "plot_summary",
]

def _oriented(values: Sequence[float], objectives: Sequence[Objective]) -> list[float]:
    """Values turned so that larger is better for every objective."""
    return [v if o.mode == "max" else -v for v, o in zip(values, objectives, strict=True)]


def dominates(a: Sequence[float], b: Sequence[float], objectives: Sequence[Objective]) -> bool:
    """Whether values ``a`` Pareto-dominate ``b`` (no worse anywhere, better somewhere)."""
    return _dominates_oriented(_oriented(a, objectives), _oriented(b, objectives))


def pareto_front(records: Sequence[TrialRecord],
                 objectives: Sequence[Objective]) -> list[TrialRecord]:
    """The complete trials no other complete trial dominates, by first objective (best first)."""
    layers = pareto_layers(records, objectives)
    return layers[0] if layers else []


def pareto_layers(records: Sequence[TrialRecord],
                  objectives: Sequence[Objective]) -> list[list[TrialRecord]]:
    """The complete trials in Pareto layers: the front, then the front of the rest, and so on;
    each layer best first by the objectives in turn (ties: in ``records``' order).

    Written here because Optuna's non-dominated sort is private. Sorted best first (each
    objective in turn), a trial's dominators all come before it; its layer is the first
    whose members do not dominate it, found by bisection (every member of a layer is dominated
    by one of the layer before), and a tie goes where the trial before it went: O(n log n)
    comparisons for one objective, where comparing each pair was O(n^2) and took most of the
    21 s of a summary of 2,000 trials.
    """
    done = [r for r in records if r.state == "complete" and r.values is not None]
    keyed = sorted(((_oriented(r.values, objectives), i, r) for i, r in enumerate(done)),
                   key=lambda t: ([-v for v in t[0]], t[1]))
    layers: list[list[TrialRecord]] = []
    values: list[list[list[float]]] = []
    previous: tuple[list[float] | None, int] = (None, 0)
    for point, _, record in keyed:
        low, high = 0, len(layers)
        if point == previous[0]:  # a tie (sorted next to each other): the same layer
            low = high = previous[1]
        while low < high:
            mid = (low + high) // 2
            if any(_dominates_oriented(other, point) for other in values[mid]):
                low = mid + 1
            else:
                high = mid
        if low == len(layers):
            layers.append([])
            values.append([])
        layers[low].append(record)
        values[low].append(point)
        previous = (point, low)
    return layers


def _dominates_oriented(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(
        x > y for x, y in zip(a, b, strict=True))


def knee_point(front: Sequence[TrialRecord], objectives: Sequence[Objective]) -> TrialRecord:
    """The Pareto trial closest to the ideal point after min-max normalising each objective.

    Each objective is scaled over the front to [0, 1] with 1 the best value (an objective
    that is the same for every point counts as 1); the ideal point is all ones and the knee is
    the point with the smallest Euclidean distance to it. Ties go to the better first objective.

    Raises:
        ValueError: ``front`` is empty.
    """
    if not front:
        raise ValueError("the Pareto front is empty")
    oriented = [_oriented(r.values, objectives) for r in front]
    lows = [min(col) for col in zip(*oriented, strict=True)]
    highs = [max(col) for col in zip(*oriented, strict=True)]

    def distance(point: list[float]) -> float:
        scaled = [1.0 if hi == lo else (v - lo) / (hi - lo)
                  for v, lo, hi in zip(point, lows, highs, strict=True)]
        return math.sqrt(sum((1.0 - s) ** 2 for s in scaled))

    best = min(range(len(front)), key=lambda i: (distance(oriented[i]), -oriented[i][0]))
    return front[best]


def _objective_for(rule: str, objectives: Sequence[Objective]) -> Objective:
    for o in objectives:
        if rule in (o.name, o.metric):
            return o
    if rule in OBJECTIVES:
        return Objective(rule, *OBJECTIVES[rule])
    metric, _, mode = rule.partition(":")
    if "/" in metric and mode in ("max", "min"):
        return Objective(rule, metric, mode)
    raise ConfigError(f"unknown selection '{rule}'; use knee or an objective such as "
                      f"{', '.join(o.name for o in objectives)} (or METRIC:max|min)")


def select_trial(records: Sequence[TrialRecord], objectives: Sequence[Objective],
                 rule: str | None = None) -> TrialRecord:
    """The trial a rule picks among the complete trials (pruned ones never: partial scores).

    Args:
        records: the search's trials.
        objectives: the search's objectives.
        rule: ``None`` (the objective; ``knee`` for several), ``knee``, or a metric name
            (``accuracy``, ``alignment``, ``val/top5:max``): the best complete trial by it.

    Raises:
        ConfigError: no complete trial, or an unknown rule.
    """
    done = [r for r in records if r.state == "complete"]
    if not done:
        raise ConfigError("the search has no complete trial to export (all pruned, failed or "
                          "still running)")
    rule = rule or ("knee" if len(objectives) > 1 else objectives[0].name)
    if rule == "knee":
        return knee_point(pareto_front(records, objectives), objectives)
    objective = _objective_for(rule, objectives)
    scored = [r for r in done if r.value(objective) is not None]
    if not scored:
        raise ConfigError(f"no complete trial reported {objective.metric}")
    sign = 1.0 if objective.mode == "max" else -1.0
    return max(scored, key=lambda r: (sign * r.value(objective), -r.number))


def rank_records(records: Sequence[TrialRecord],
                 objectives: Sequence[Objective]) -> list[TrialRecord]:
    """Complete trials by Pareto layer then first objective; then pruned (by their last value
    of the first objective), failed, running and waiting trials, then any other state."""
    first = objectives[0]
    sign = 1.0 if first.mode == "max" else -1.0

    def score(r: TrialRecord) -> float:
        v = r.value(first)
        return -sign * v if v is not None else math.inf

    ranked: list[TrialRecord] = []
    for layer in pareto_layers(records, objectives):
        ranked.extend(sorted(layer, key=score))
    for state in ("pruned", "failed", "running", "waiting"):
        ranked.extend(sorted((r for r in records if r.state == state), key=score))
    listed = {id(r) for r in ranked}
    return ranked + [r for r in records if r.state != "complete" and id(r) not in listed]


# --------------------------------------------------------------------- summaries
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _rows(records: Sequence[TrialRecord], objectives: Sequence[Objective], *, pareto: bool
          ) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the ranked trials; ``pareto``: with the ``pareto`` column."""
    ranked = rank_records(records, objectives)
    front = {id(r) for r in pareto_front(records, objectives)}
    keys = sorted({k for r in records for k in r.params})
    header = ["rank", "trial", "trial_id", "state", "epochs",
              *[o.metric for o in objectives], *(["pareto"] if pareto else []), *keys]
    rows = []
    for i, r in enumerate(ranked, 1):
        on_front = ["yes" if id(r) in front else ""] if pareto else []
        rows.append([str(i), r.name, r.trial_id or "", r.state,
                     f"{r.epoch}/{r.planned_epochs or '?'}",
                     *[_fmt(r.value(o)) for o in objectives], *on_front,
                     *[_fmt(r.params.get(k)) for k in keys]])
    return header, rows


def summary_csv(records: Sequence[TrialRecord], objectives: Sequence[Objective]) -> str:
    """The ranked trials as CSV (one column per objective and per searched parameter).

    The columns are the same for one objective or several (``pareto`` is ``yes`` on the
    Pareto front; with one objective, on the best complete trial), for scripts that read it.
    """
    header, rows = _rows(records, objectives, pareto=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def summary_markdown(records: Sequence[TrialRecord], objectives: Sequence[Objective],
                     title: str = "Search summary") -> str:
    """The ranked trials as a Markdown table (a ``pareto`` column for several objectives)."""
    header, rows = _rows(records, objectives, pareto=len(objectives) > 1)
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_summary(records: Sequence[TrialRecord], objectives: Sequence[Objective],
                 path: str | Path) -> Path:
    """Pareto-front plot (several objectives: the first two) or optimisation history (one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    try:
        if len(objectives) > 1:
            _plot_pareto(ax, records, objectives)
        else:
            _plot_history(ax, records, objectives[0])
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return Path(path)


def _plot_pareto(ax: Any, records: Sequence[TrialRecord], objectives: Sequence[Objective]
                 ) -> None:
    x, y = objectives[0], objectives[1]
    done = [r for r in records if r.state == "complete"]
    front = pareto_front(records, objectives)
    ax.scatter([r.value(x) for r in done], [r.value(y) for r in done], c="0.7",
               label="complete trials")
    if front:
        pts = sorted((r.value(x), r.value(y)) for r in front)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", c="tab:blue",
                label="Pareto front")
        knee = knee_point(front, objectives)
        ax.scatter([knee.value(x)], [knee.value(y)], s=160, facecolors="none",
                   edgecolors="tab:red", linewidths=2, label=f"knee ({knee.name})")
    ax.set_xlabel(f"{x.metric} ({x.mode})")
    ax.set_ylabel(f"{y.metric} ({y.mode})")
    ax.set_title("Pareto front", fontsize=10)
    ax.legend(loc="best", fontsize=8)


def _plot_history(ax: Any, records: Sequence[TrialRecord], objective: Objective) -> None:
    better = max if objective.mode == "max" else min
    best: float | None = None
    xs, bests = [], []
    points: dict[str, tuple[list[int], list[float]]] = {}  # one scatter per state, not trial
    for r in sorted(records, key=lambda r: r.number):
        v = r.value(objective)
        if v is None:
            continue
        group = r.state if r.state in ("complete", "pruned") else "other"
        points.setdefault(group, ([], []))[0].append(r.number)
        points[group][1].append(v)
        if r.state == "complete":
            best = v if best is None else better(best, v)
        if best is not None:
            xs.append(r.number)
            bests.append(best)
    for group, (numbers, values) in points.items():
        ax.scatter(numbers, values, marker={"complete": "o", "pruned": "x"}.get(group, "."),
                   c="tab:blue" if group == "complete" else "0.6")
    ax.step(xs, bests, where="post", c="tab:red", label="best complete trial")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial number (as in trial-000, trial-001, ...)")
    ax.set_ylabel(f"{objective.metric} ({objective.mode})")
    ax.set_title("Optimisation history (o complete, x pruned: last value)", fontsize=10)
    ax.legend(loc="best", fontsize=8)


def chosen_trial(search: Any) -> dict[str, Any]:
    """What a finished search chose (its best config file, trial, objective value) and what it
    spent (trials by state, trial-epochs), with the settings that shaped it: sampler, seed,
    TPE start-up trials, scheduler constants."""
    from extune.search.settings import default_startup_trials

    records = search.records()
    counts = {s: sum(r.state == s for r in records) for s in ("complete", "pruned", "failed")}
    best_file = search.path / "best_config.yaml"
    s = search.settings
    chosen: dict[str, Any] = {
        "config": str(best_file) if best_file.is_file() else None, "counts": counts,
        "trial_epochs": consumed_epochs(records), "trial_seconds": consumed_seconds(records),
        "search_dir": str(search.path),
        "parent_run_id": search.meta.get("parent_run_id"), "name": search.name,
        "sampler": s.sampler, "seed": s.seed, "trials": s.trials,
        "epoch_budget": s.epoch_budget, "seconds_budget": s.seconds_budget,
        "startup_trials": (s.startup_trials or default_startup_trials(s.trials))
        if s.sampler == "tpe" else None,
        "scheduler": s.scheduler_text(), "scheduler_settings": {
            "name": s.resolved_scheduler, "reduction_factor": s.reduction_factor,
            "grace_period": s.grace_period,
            "max_epochs": search.base_config().optim.epochs},
        "fixed": s.resolved_fixed}
    if counts["complete"]:
        best = select_trial(records, search.objectives)
        objective = search.objectives[0]
        chosen.update(trial=best.name, value=best.value(objective), metric=objective.metric,
                      params=best.params, number=best.number,
                      startup=chosen["startup_trials"] is not None
                      and best.number < chosen["startup_trials"])
    return chosen
