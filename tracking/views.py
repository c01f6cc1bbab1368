"""The MLflow UI pages of searches and studies: each one's runs table as a shared view scoped
to its own runs, and the list of every search, study and final run in a store.

Why a tag filter and not one experiment per search: MLflow users keep one experiment per
project (``--experiment``) and compare runs across it; a search is a parent run with its trials
as children, which is how Ray Tune's and Optuna's MLflow integrations record it. The link of a
search opens the experiment's runs table filtered to that search's trials
(``tags.extune.search_id``), so it shows exactly its own runs however many searches the
experiment holds; clearing the filter compares across searches. (MLflow nests children under
their parent only in a table sorted by date and unfiltered, so the scoped view lists the trials
themselves, best first; the parent run has its own page, linked from every trial's page.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from extune.errors import ConfigError
from extune.evaluate.objectives import Objective
from extune.tracking.client import (
    FINAL_ROLE,
    SHARED_VIEW_TAG,
    STATE_TAG,
    TRAIN_ID_TAG,
    VIEW_TAG,
    all_runs,
    mlflow_client,
    run_page,
    tag_filter,
    view_page,
)

__all__ = ["view_page", "search_filter", "study_filter", "runs_table_view", "study_view",
           "search_charts", "charts_state", "StoreEntry", "store_entries", "Comparison",
           "compare_searches", "EPOCH_TAG", "SEARCH_TAG", "COMPARE_TAG", "BEST_SO_FAR",
           "CHARTS_SECTION"]  # view_page: client.py


def search_filter(search_id: str) -> str:
    """MLflow's filter of a search's trial runs."""
    return tag_filter({"extune.search_id": search_id, "extune.role": "trial"})


def study_filter(study_id: str) -> str:
    """MLflow's filter of a study's final runs."""
    return tag_filter({"extune.study_id": study_id, "extune.stage": "final"})


EPOCH_TAG = "extune.epoch"
"""A trial run's progress, ``2/4`` (epochs reported of planned), updated with every report."""
SEARCH_TAG = "extune.search"
"""A search's name on its parent run and on each trial run: what a comparison groups by."""
CHARTS_SECTION = "extune: the first questions"
"""The name of the chart section a search's and a comparison's view open with."""
_MAX_SCATTERS = 8


def runs_table_view(search_id: str, objectives: tuple[Objective, ...],
                    params: list[str]) -> dict[str, Any]:
    """A search's runs-table view: its trials only, best first by the first objective, with
    the columns that compare them (the objectives, the latest validation accuracy and
    alignment and the objectives' own metrics, the epoch reached and the state, the searched
    params), and the charts that answer the first questions (:func:`search_charts`)."""
    view: dict[str, Any] = {"selectedColumns": _trial_columns(objectives, params),
                            "searchFilter": search_filter(search_id),
                            **search_charts(objectives, params)}
    if objectives:
        view.update(orderByKey=f"metrics.`objective/{objectives[0].name}`",
                    orderByAsc=objectives[0].mode == "min")
    return view


def _trial_columns(objectives: tuple[Objective, ...], params: list[str]) -> list[str]:
    """``objective/<name>`` (set when a trial ends), the latest ``val/...`` metrics (set every
    epoch, so a running trial shows them), the epoch, the state, then the searched params."""
    metrics = [f"objective/{o.name}" for o in objectives]
    metrics += [m for m in ("val/accuracy", "val/alignment", *(o.metric for o in objectives))
                if m not in metrics]
    return ([f"metrics.`{m}`" for m in dict.fromkeys(metrics)]
            + [f"tags.`{EPOCH_TAG}`", f"tags.`{STATE_TAG}`"] + [f"params.`{p}`" for p in params])


def search_charts(objectives: tuple[Objective, ...], params: list[str], *,
                  curves: bool = True) -> dict[str, Any]:
    """The view's charts (MLflow's Chart view of the runs table): the first objective against
    each searched parameter (scatter, up to 8), parallel coordinates of the parameters and
    the objectives, the first two objectives against each other (several objectives), and
    with ``curves`` the first objective's metric per epoch of every trial (the validation
    curves; pruned trials stop). MLflow adds its own chart per metric below, in sections of
    their own. Every run of the table is drawn (not MLflow's first 10)."""
    if not objectives:
        return {}
    first = f"objective/{objectives[0].name}"
    charts = [_chart("SCATTER", xaxis={"key": p, "type": "PARAM"},
                     yaxis={"key": first, "type": "METRIC"}) for p in params[:_MAX_SCATTERS]]
    if len(objectives) > 1:
        charts.append(_chart("SCATTER", xaxis={"key": first, "type": "METRIC"},
                             yaxis={"key": f"objective/{objectives[1].name}", "type": "METRIC"}))
    if params:
        charts.append(_chart("PARALLEL", selectedParams=list(params),
                             selectedMetrics=[f"objective/{o.name}" for o in objectives],
                             showAllRuns=True))
    if curves:
        charts += [_line(m) for m in dict.fromkeys(o.metric for o in objectives)]
    return charts_state(charts)


def charts_state(charts: list[dict[str, Any]]) -> dict[str, Any]:
    """The view-state keys that open MLflow's Chart view on ``charts``, in one section first
    (MLflow's own per-metric sections come after it), drawing every run of the table."""
    return {"compareRunCharts": charts, "isAccordionReordered": True, "runsHiddenMode": "SHOW_ALL",
            "compareRunSections": [{"uuid": _SECTION, "name": CHARTS_SECTION, "display": True,
                                    "isReordered": True, "deleted": False,
                                    "isGenerated": False}]}


_SECTION = "extune-first-questions"


def _chart(kind: str, **fields: Any) -> dict[str, Any]:
    """One chart card of MLflow's Chart view (the fields of its ``RunsChartsCardConfig``),
    its id made from what it draws (so that saving the view again changes nothing)."""
    key = json.dumps([kind, fields], sort_keys=True)
    return {"uuid": "extune-" + hashlib.sha1(key.encode()).hexdigest()[:12], "type": kind,
            "runsCountToCompare": 100, "metricSectionId": _SECTION, "deleted": False,
            "isGenerated": False, **fields}


def _line(metric: str, x_axis: str = "step") -> dict[str, Any]:
    """A line chart of ``metric`` per run against ``x_axis`` (``step``: the epoch;
    ``time-relative``: seconds since the run started)."""
    return _chart("LINE", metricKey=metric, selectedMetricKeys=[metric], xAxisKey=x_axis,
                  useGlobalXaxisKey=False, lineSmoothness=0, useGlobalLineSmoothing=False,
                  scaleType="linear", xAxisScaleType="linear", selectedXAxisMetricKey="",
                  yAxisKey="metric", yAxisExpressions=[], ignoreOutliers=False, range={})


def study_view(study_id: str) -> dict[str, Any]:
    """A study's runs-table view: its final runs grouped by method (a row per method with the
    mean of its seeds, opened on its seeds), each method's runs by seed, with the method, the
    seed and the headline test metrics."""
    metrics = ("test/accuracy", "test/alignment", "test/ece", "val/accuracy")
    columns = (["tags.`extune.method`", "tags.`extune.seed`", f"tags.`{STATE_TAG}`"]
               + [f"metrics.`{m}`" for m in metrics])
    return {"selectedColumns": columns, "searchFilter": study_filter(study_id),
            "orderByKey": "tags.`extune.seed`", "orderByAsc": True,
            "groupBy": {"aggregateFunction": "average",
                        "groupByKeys": [{"mode": "tag", "groupByData": "extune.method"}]}}


@dataclass
class StoreEntry:
    """A search, a study or a final run (``extune train``) of a tracking store, for
    ``extune ui``.

    Attributes:
        kind: ``search``, ``study`` or ``train``.
        name: its name (the run's name).
        experiment: the MLflow experiment's name.
        page: its page (after ``http://host:port/``): a search's or study's runs table, a final
            run's own page; ``None`` for a search or study without a view (started by an older
            extune).
        started_ms: start time of its run.
        children: a study's searches, a search's final runs (newest first).
        run_id: its MLflow run (a search's or study's parent run).
        experiment_id: the experiment's id.
        tags: its run's tags.
    """

    kind: str
    name: str
    experiment: str
    page: str | None
    started_ms: int
    children: list[StoreEntry] = field(default_factory=list)
    run_id: str = ""
    experiment_id: str = ""
    tags: dict[str, str] = field(default_factory=dict, repr=False)


_LISTED_ROLES = ("search", "study", FINAL_ROLE, "train")  # "train": final runs before 0.2


def store_entries(uri: str) -> list[StoreEntry]:
    """Every search, study and final run of a store, newest first: a study's searches under
    it, a final run under the search its config was exported from (newest first too)."""
    client = mlflow_client(uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return []
    runs = sorted((run for role in _LISTED_ROLES for run in all_runs(
        client, list(experiments), tag_filter({"extune.role": role}))
        if role != FINAL_ROLE or TRAIN_ID_TAG in run.data.tags),  # not a study's final runs
        key=lambda r: r.info.start_time or 0, reverse=True)  # MLflow's filters have no "or"
    entries = {run.info.run_id: _entry(run, experiments) for run in runs}
    parents = {}  # study id or search id -> its entry
    for run in runs:
        tags = run.data.tags
        if tags["extune.role"] == "study" and "extune.study_id" in tags:
            parents[tags["extune.study_id"]] = entries[run.info.run_id]
        elif tags["extune.role"] == "search" and "extune.search_id" in tags:
            parents[tags["extune.search_id"]] = entries[run.info.run_id]
    top = []
    for run in runs:
        entry, tags = entries[run.info.run_id], run.data.tags
        parent_id = {"search": tags.get("extune.study_id"),
                     "train": tags.get("extune.lineage.search_id")}.get(entry.kind)
        parent = parents.get(parent_id or "")
        (parent.children if parent is not None else top).append(entry)
    return top


def _entry(run: Any, experiments: dict[str, str]) -> StoreEntry:
    """A search, a study, or (kind ``train``) a final run of ``extune train``."""
    role = run.data.tags["extune.role"]
    kind = "train" if role == FINAL_ROLE else role
    page = (run.data.tags.get(VIEW_TAG) if kind != "train" else
            run_page(run.info.experiment_id, run.info.run_id))
    return StoreEntry(kind, run.info.run_name, experiments.get(run.info.experiment_id, "?"),
                      page, run.info.start_time or 0, run_id=run.info.run_id,
                      experiment_id=run.info.experiment_id, tags=dict(run.data.tags))


@dataclass
class Comparison:
    """Searches shown side by side (:func:`compare_searches`).

    Attributes:
        searches: the compared searches (:class:`StoreEntry`), in the order asked.
        experiment: the experiment's name; page: the comparison's runs table (after
            ``http://host:port/``).
        best: search name -> ``(objective name, best complete value, its trial, trials,
            seconds from the search's start to its last trial's end)``; the value and trial
            ``None`` without a complete trial.
    """

    searches: list[StoreEntry]
    experiment: str
    page: str
    best: dict[str, tuple[str, float | None, str | None, int, float]]


COMPARE_TAG = "extune.compare."
"""Prefix of the tag a comparison puts on the runs it shows (``extune.compare.<key> = 1``):
MLflow's filters have no "or" and no "in" for tags, so the runs of several searches are
found by a tag of their own."""


def compare_searches(uri: str, names: list[str]) -> Comparison:
    """Show searches side by side in the MLflow UI: their parent runs and trials tagged for one
    shared view of their experiment, grouped by search (each group's row: its best objective),
    with each search's best complete objective so far against wall time (the parent run's
    ``best_so_far/<objective>`` metric; written here from its trials where the search did not
    log it) and each search's validation curve (mean and range of its trials per epoch).

    Args:
        uri: the store.
        names: searches by name (the newest of each name); a study's name stands for its
            searches.

    Raises:
        ConfigError: fewer than two searches, a name that is neither, or searches of several
            experiments (a view belongs to one).
    """
    from mlflow.entities import RunTag

    client = mlflow_client(uri)
    searches = _named_searches(store_entries(uri), names, uri)
    experiments = {s.experiment_id for s in searches}
    if len(experiments) > 1:
        where = ", ".join(f"{s.name} in {s.experiment}" for s in searches)
        raise ConfigError(f"--compare: the searches are in different experiments ({where}); "
                          "MLflow's view of a comparison holds one experiment's runs")
    ids = sorted(s.tags.get("extune.search_id", s.run_id) for s in searches)
    key = hashlib.sha1(",".join(ids).encode()).hexdigest()[:10]
    tag = f"{COMPARE_TAG}{key}"
    every: dict[str, Objective] = {}  # each search's objectives, the first search's first
    params: list[str] = []
    best = {}
    for search in searches:
        objectives = _objectives(client, search)
        every.update({o.name: o for o in objectives if o.name not in every})
        trials = all_runs(client, [search.experiment_id],
                          search_filter(search.tags.get("extune.search_id", "")))
        for run in [*trials, client.get_run(search.run_id)]:
            tags = {tag: "1"} if run.data.tags.get(tag) != "1" else {}
            if run.data.tags.get(SEARCH_TAG) != search.name:
                tags[SEARCH_TAG] = search.name
            if tags:
                client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        params += [p for p in search.tags.get("extune.searched", "").split(",") if p]
        params += [p for t in trials for p in t.data.tags.get("extune.searched", "").split(",")
                   if p]
        best[search.name] = _best_so_far(client, search, trials, objectives)
    params = sorted(set(params))
    objectives = list(every.values())
    first = objectives[0] if objectives else None
    view: dict[str, Any] = {
        "selectedColumns": _trial_columns(tuple(objectives), params),
        "searchFilter": f"tags.`{tag}` = '1'",
        "groupBy": {"aggregateFunction": first.mode if first else "average",
                    "groupByKeys": [{"mode": "tag", "groupByData": SEARCH_TAG}]},
        "useGroupedValuesInCharts": True,
        **charts_state([_line(f"{BEST_SO_FAR}{o.name}") for o in objectives]
                       + [_line(m) for m in dict.fromkeys(o.metric for o in objectives)])}
    if first:
        view.update(orderByKey=f"metrics.`objective/{first.name}`",
                    orderByAsc=first.mode == "min")
    experiment = searches[0].experiment_id
    client.set_experiment_tag(experiment, f"{SHARED_VIEW_TAG}extune-compare-{key}",
                              json.dumps(view))
    return Comparison(searches, searches[0].experiment,
                      view_page(experiment, f"extune-compare-{key}"), best)


BEST_SO_FAR = "best_so_far/"
"""Prefix of a search's parent-run metric of each objective's best complete value so far
(step: whole seconds since the search started; time: when it was reached), what a comparison
plots against wall time; :class:`~extune.search.reporting.progress.ParentProgress` logs it
as a search runs."""


def _named_searches(entries: list[StoreEntry], names: list[str], uri: str
                    ) -> list[StoreEntry]:
    every = [e for top in entries for e in (top, *top.children)]
    found: list[StoreEntry] = []
    for name in names:
        match = next((e for e in every if e.name == name and e.kind in ("search", "study")),
                     None)  # newest first: the latest of that name
        if match is None:
            known = sorted({e.name for e in every if e.kind in ("search", "study")})
            raise ConfigError(f"--compare {name}: no search or study of that name in {uri}"
                              + (f"; it has {', '.join(known[:10])}" if known else ""))
        found += [c for c in match.children if c.kind == "search"] if match.kind == "study" \
            else [match]
    found = list({e.run_id: e for e in found}.values())
    if len(found) < 2:
        raise ConfigError(f"--compare {','.join(names)}: that is {len(found)} search; name two "
                          "or more (comma-separated), or a study")
    return found


def _objectives(client: Any, search: StoreEntry) -> list[Objective]:
    """A search's objectives (its parent run's ``objective`` param); none when unreadable."""
    from extune.errors import ExtuneError
    from extune.evaluate.objectives import parse_objectives

    try:
        return parse_objectives(client.get_run(search.run_id).data.params.get("objective", ""))
    except ExtuneError:
        return []


def _best_so_far(client: Any, search: StoreEntry, trials: list[Any],
                 objectives: list[Objective]) -> tuple[str, float | None, str | None, int, float]:
    """The search's best complete value of its first objective, and its ``best_so_far/...``
    history written on its parent run from its complete trials (their end times) where the
    run has none."""
    from mlflow.entities import Metric

    if not objectives:
        return ("", None, None, len(trials), 0.0)
    complete = sorted((t for t in trials if t.data.tags.get(STATE_TAG) == "complete"),
                      key=lambda t: t.info.end_time or 0)
    parent = client.get_run(search.run_id)
    start = parent.info.start_time or 0
    last = max([t.info.end_time or start for t in trials] or [start])
    points = []
    for o in objectives:
        sign = 1 if o.mode == "max" else -1
        best_value = None
        for t in complete:
            value = t.data.metrics.get(f"objective/{o.name}")
            end = t.info.end_time or start
            if value is not None and (best_value is None or sign * value > sign * best_value):
                best_value = value
                points.append(Metric(f"{BEST_SO_FAR}{o.name}", value, end,
                                     (end - start) // 1000))
        if best_value is not None:  # to the search's last trial: a line, not a dot
            points.append(Metric(f"{BEST_SO_FAR}{o.name}", best_value, last,
                                 (last - start) // 1000))
    missing = [p for p in points if p.key not in parent.data.metrics]
    for i in range(0, len(missing), 1000):
        client.log_batch(search.run_id, metrics=missing[i:i + 1000])
    first = objectives[0]
    sign = 1 if first.mode == "max" else -1
    scored = [(t.data.metrics[f"objective/{first.name}"], t) for t in complete
              if f"objective/{first.name}" in t.data.metrics]
    ends = [t.info.end_time for t in trials if t.info.end_time]
    wall = (max(ends) - parent.info.start_time) / 1000 if ends else 0.0
    if not scored:
        return (first.name, None, None, len(trials), wall)
    value, trial = max(scored, key=lambda p: sign * p[0])
    return (first.name, value, trial.info.run_name, len(trials), wall)
