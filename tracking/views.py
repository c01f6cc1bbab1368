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

from dataclasses import dataclass, field
from typing import Any

from extune.evaluate.objectives import Objective
from extune.tracking.client import (
    STATE_TAG,
    VIEW_TAG,
    mlflow_client,
    tag_filter,
    view_page,
)

__all__ = ["view_page", "search_filter", "study_filter", "runs_table_view", "study_view",
           "StoreEntry", "store_entries"]  # view_page: client.py


def search_filter(search_id: str) -> str:
    """MLflow's filter of a search's trial runs."""
    return tag_filter({"extune.search_id": search_id, "extune.role": "trial"})


def study_filter(study_id: str) -> str:
    """MLflow's filter of a study's final runs."""
    return tag_filter({"extune.study_id": study_id, "extune.stage": "final"})


def runs_table_view(search_id: str, objectives: tuple[Objective, ...],
                    params: list[str]) -> dict[str, Any]:
    """A search's runs-table view: its trials only, best first by the first objective, with
    the columns that compare them (objectives, accuracy and alignment, the state, the
    searched params)."""
    metrics = [f"objective/{o.name}" for o in objectives]
    metrics += [m for m in ("val/accuracy", "val/alignment")
                if m not in {o.metric for o in objectives}]
    columns = ([f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in params]
               + [f"tags.`{STATE_TAG}`"])
    view: dict[str, Any] = {"selectedColumns": columns, "searchFilter": search_filter(search_id)}
    if objectives:
        view.update(orderByKey=f"metrics.`objective/{objectives[0].name}`",
                    orderByAsc=objectives[0].mode == "min")
    return view


def study_view(study_id: str) -> dict[str, Any]:
    """A study's runs-table view: its final runs (one per method and seed), most accurate
    first, with the method, the seed and the headline test metrics."""
    metrics = ("test/accuracy", "test/alignment", "test/ece", "val/accuracy")
    columns = (["tags.`extune.method`", "tags.`extune.seed`", f"tags.`{STATE_TAG}`"]
               + [f"metrics.`{m}`" for m in metrics])
    return {"selectedColumns": columns, "searchFilter": study_filter(study_id),
            "orderByKey": "metrics.`test/accuracy`", "orderByAsc": False}


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
    """

    kind: str
    name: str
    experiment: str
    page: str | None
    started_ms: int
    children: list[StoreEntry] = field(default_factory=list)


_LISTED_ROLES = ("search", "study", "train")


def store_entries(uri: str) -> list[StoreEntry]:
    """Every search, study and final run of a store, newest first: a study's searches under
    it, a final run under the search its config was exported from (newest first too)."""
    client = mlflow_client(uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return []
    runs = sorted((run for role in _LISTED_ROLES for run in _all_runs(
        client, list(experiments), tag_filter({"extune.role": role}))),
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
    kind = run.data.tags["extune.role"]
    page = (run.data.tags.get(VIEW_TAG) if kind != "train" else
            f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    return StoreEntry(kind, run.info.run_name, experiments.get(run.info.experiment_id, "?"),
                      page, run.info.start_time or 0)


def _all_runs(client: Any, experiment_ids: list[str], filter_string: str) -> list[Any]:
    """Every run that matches, newest first (all pages)."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string,
                                  order_by=["attributes.start_time DESC"], max_results=1000,
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs
