"""The console view of a search: a live table of trials and the final ranked table (rich)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from extune.evaluate.objectives import Objective
from extune.search.reporting.results import TrialRecord, pareto_front, rank_records
from extune.tracking.notes import finite
from extune.tracking.trials import (
    config_label,
    planned_epochs,
    reported_metrics,
    split_config,
    trial_error,
    trial_label,
)
from extune.train.progress import QuietClock

__all__ = ["LiveConsole", "ranked_table", "short_key", "params_text"]

_STYLE = {"running": "cyan", "complete": "green", "pruned": "yellow",
          "failed": "red", "retrying": "magenta", "pending": "dim",
          "waiting": "dim"}


def short_key(key: str) -> str:
    """``excon.mask_threshold`` -> ``mask_threshold`` (the column header of a parameter)."""
    return key.rsplit(".", 1)[-1]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e3 else f"{value:.3f}"
    return "-" if value is None else str(value)


def params_text(params: dict[str, Any]) -> str:
    """``lr=0.12 batch_size=128 ...``: a trial's searched settings in one (wrapping) cell."""
    return " ".join(f"{short_key(k)}={_fmt(v)}" for k, v in sorted(params.items())
                    if k != "method")


@dataclass
class _Row:
    label: str
    state: str = "pending"
    epoch: int = 0
    planned: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class LiveConsole(Callback):
    """Tune callback that shows every trial (running / complete / pruned / failed: the states
    of ``summary.md`` and MLflow's ``extune.state``) and the best complete trial so far; a
    live table on a terminal, one line per event otherwise (a trial that starts, ends or is
    retried), and in a log a line of where the search stands after
    :data:`~extune.train.progress.LOG_EVERY_S` seconds without one, so that a log is never
    silent for long.

    Args:
        title: the search name.
        objectives: the search's objectives (their metrics are columns).
        base: the base config as a dict (to know each trial's planned epochs).
        total: number of trials the search will run.
        study: ``(storage URL, study name)`` of the Optuna study, read at start-up so that a
            resumed search shows the trials that ended before the interruption.
        live: use a live table when the console is a terminal.
        max_rows: rows shown (running trials first, then the best finished ones).
    """

    def __init__(self, *, title: str, objectives: list[Objective], base: dict[str, Any],
                 total: int, study: tuple[str, str] | None = None, live: bool = True,
                 max_rows: int = 16) -> None:
        self.title, self.objectives, self.base, self.total = title, objectives, base, total
        self.study, self.live, self.max_rows = study, live, max_rows
        self._rows: dict[str, _Row] = {}
        self._console: Console | None = None
        self._live: Live | None = None
        self._quiet = QuietClock()

    def __getstate__(self) -> dict[str, Any]:  # picklable for Ray's tuner.pkl
        return {**self.__dict__, "_console": None, "_live": None, "_rows": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:  # saved by an older extune too
        self.__dict__.update({**state, "_quiet": QuietClock()})  # quiet from the restore on

    # ---------------------------------------------------------------- Tune hooks
    def setup(self, **info: Any) -> None:
        self._console = Console()
        self._preload()
        if self.live and self._console.is_terminal:
            self._live = Live(self.render(), console=self._console, refresh_per_second=2,
                              transient=False)
            self._live.start()
        else:
            plural = "s" if self.total != 1 else ""
            self._print(f"search [bold]{self.title}[/]: {self.total} trial{plural}")

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row.state = "running"
        self._changed(row, event=False)
        if self._live is None and self._console is not None:
            self._print(f"{row.label} started: {escape(params_text(row.params)) or 'the base'}"
                        f" ({row.planned or '?'} epochs)")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """In a log, where the search stands when it has been quiet for a while."""
        if self._live is not None or self._console is None or not self._quiet.due():
            return
        running = [r for r in self._rows.values() if r.state in ("running", "retrying")]
        done = max(sum(r.state in ("complete", "pruned", "failed") for r in self._rows.values()),
                   sum(getattr(t, "status", None) in ("TERMINATED", "ERROR") for t in trials))
        # Tune's list holds the trials a restored experiment finished before (no event here)
        where = ", ".join(f"{r.label} in epoch {_current(r)}/{r.planned or '?'}"
                          for r in running[:6])
        more = f" and {len(running) - 6} more" if len(running) > 6 else ""
        self._print(f"{done} of {self.total} trials done; running: {where or 'none yet'}{more}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        row = self._row(trial)
        row.metrics.update(reported_metrics(result))
        row.epoch = int(row.metrics.get("epoch", row.epoch))
        row.state = "running"
        self._changed(row, event=False)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row.metrics.update(reported_metrics(trial.last_result))
        row.epoch = int(row.metrics.get("epoch", row.epoch))
        row.state = "pruned" if row.planned and row.epoch < row.planned else "complete"
        self._changed(row)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row.state, row.error = "failed", trial_error(trial)
        self._changed(row)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row.state, row.error = "retrying", trial_error(trial)
        self._changed(row)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.stop()
            self._live = None

    # ---------------------------------------------------------------- state
    def _row(self, trial: Any) -> _Row:
        if trial.trial_id not in self._rows:
            number, params = split_config(trial.config)
            label = trial_label(number, trial.trial_id, config_label(trial.config))
            planned = planned_epochs(self.base, trial.config)
            self._rows[trial.trial_id] = _Row(label, planned=planned, params=params)
        return self._rows[trial.trial_id]

    def _preload(self) -> None:
        """Trials that ended before a resume, from the Optuna study."""
        if self.study is None:
            return
        import optuna

        try:
            study = optuna.load_study(storage=self.study[0], study_name=self.study[1])
        except Exception:  # a new search: no study yet
            return
        from extune.search.reporting.results import records_from_study

        for r in records_from_study(study, self.objectives):
            if r.trial_id and r.state in ("complete", "pruned", "failed"):
                self._rows[r.trial_id] = _Row(r.name, r.state, r.epoch, r.planned_epochs,
                                              dict(r.metrics), dict(r.params))

    def _changed(self, row: _Row, event: bool = True) -> None:
        if self._live is not None:
            self._live.update(self.render())
        elif event and self._console is not None:
            values = " ".join(f"{o.metric}={_fmt(row.metrics.get(o.metric))}"
                              for o in self.objectives)
            extra = f"  {escape(row.error)}" if row.error else ""
            self._print(f"{row.label} {_state_text(row.state)} epoch {row.epoch}/"
                        f"{row.planned or '?'} {values}{extra}")

    def _print(self, text: str) -> None:
        """One line of the log (rich markup in ``text``); the quiet time starts again."""
        if self._console is not None:
            self._console.print(text, highlight=False, soft_wrap=True)
        self._quiet.said()

    def _best(self) -> _Row | None:
        first = self.objectives[0]
        complete = [r for r in self._rows.values()
                    if r.state == "complete" and finite(r.metrics.get(first.metric))]
        if not complete:
            return None
        sign = 1 if first.mode == "max" else -1
        return max(complete, key=lambda r: sign * r.metrics[first.metric])

    # ---------------------------------------------------------------- rendering
    def render(self) -> Table:
        """The live table: counts and the best trial in the title, running trials first."""
        counts = {s: sum(r.state == s for r in self._rows.values())
                  for s in ("running", "complete", "pruned", "failed")}
        best = self._best()
        first = self.objectives[0]
        best_text = (f" | best {best.label} {first.metric}={_fmt(best.metrics[first.metric])}"
                     if best else "")
        title = (f"{self.title}: {counts['complete']} complete, {counts['pruned']} pruned, "
                 f"{counts['failed']} failed, {counts['running']} running of "
                 f"{self.total}{best_text}")
        table = Table(title=title, title_justify="left", header_style="bold")
        for name in ("trial", "state", "epoch", *[o.metric for o in self.objectives]):
            table.add_column(name, no_wrap=True)
        table.add_column("parameters", overflow="fold")
        order = {"running": 0, "retrying": 0, "complete": 1, "pruned": 2, "failed": 3, "pending": 4}
        sign = 1 if first.mode == "max" else -1
        rows = sorted(self._rows.values(), key=lambda r: (
            order.get(r.state, 5), -sign * r.metrics.get(first.metric, -sign * math.inf)))
        for r in rows[: self.max_rows]:
            label = f"[bold]{r.label}[/]" if r is best else r.label
            table.add_row(label, _state_text(r.state), f"{r.epoch}/{r.planned or '?'}",
                          *[_fmt(r.metrics.get(o.metric)) for o in self.objectives],
                          escape(params_text(r.params)))
        return table


def _state_text(state: str) -> str:
    """A trial state as rich markup: coloured where it has a colour, plain (escaped) otherwise
    (``[]stopped[/]`` would be a markup error)."""
    style = _STYLE.get(state)
    return f"[{style}]{escape(state)}[/]" if style else escape(state)


def _current(row: _Row) -> int:
    """The epoch a running trial trains now (the one after its last report)."""
    return min(row.epoch + 1, row.planned) if row.planned else row.epoch + 1


def ranked_table(records: list[TrialRecord], objectives: list[Objective], *,
                 title: str = "trials, best first", best: TrialRecord | None = None,
                 limit: int = 30) -> Table:
    """The final table: complete trials ranked (Pareto layers for several objectives), then
    pruned, failed and unfinished ones; the exported trial in bold."""
    front = {id(r) for r in pareto_front(records, objectives)}
    table = Table(title=title, title_justify="left", header_style="bold")
    columns = ["#", "trial", "state", "epochs", *[o.metric for o in objectives]]
    if len(objectives) > 1:
        columns.append("pareto")
    for name in columns:
        table.add_column(name, no_wrap=True)
    table.add_column("parameters / error", overflow="fold")
    for i, r in enumerate(rank_records(records, objectives)[:limit], 1):
        cells = [str(i), f"[bold]{r.name}[/]" if r is best else r.name,
                 _state_text(r.state), f"{r.epoch}/{r.planned_epochs or '?'}",
                 *[_fmt(r.value(o)) for o in objectives]]
        if len(objectives) > 1:
            cells.append("*" if id(r) in front else "")
        note = f"[red]{escape(r.error[:160])}[/]" if r.error else escape(params_text(r.params))
        table.add_row(*cells, note)
    return table
