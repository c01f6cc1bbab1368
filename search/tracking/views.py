"""The MLflow UI pages of a search: its runs table as a shared view, and the latest searches of
a store."""

from __future__ import annotations

from typing import Any

from extune.search.settings import Objective
from extune.search.tracking.client import STATE_TAG, VIEW_TAG, mlflow_client, view_page

__all__ = ["view_page", "runs_table_view", "recent_views"]  # view_page: client.py


def runs_table_view(parent_run: str, objectives: tuple[Objective, ...],
                    params: list[str]) -> dict[str, Any]:
    """A search's runs-table view: its trials expanded under the parent, sorted by the first
    objective, with the columns that compare them (objectives, accuracy and alignment, the
    state, the searched params)."""
    metrics = [f"objective/{o.name}" for o in objectives]
    metrics += [m for m in ("val/accuracy", "val/alignment")
                if m not in {o.metric for o in objectives}]
    columns = ([f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in params]
               + [f"tags.`{STATE_TAG}`"])
    first = objectives[0] if objectives else None
    view: dict[str, Any] = {"selectedColumns": columns, "runsExpanded": {parent_run: True},
                            "searchFilter": ""}
    if first is not None:
        view.update(orderByKey=f"metrics.`objective/{first.name}`",
                    orderByAsc=first.mode == "min")
    return view


def recent_views(uri: str, limit: int = 5) -> list[tuple[str, str]]:
    """``(search name, UI page)`` of the latest searches in a store, newest first."""
    client = mlflow_client(uri)
    experiments = client.search_experiments()
    if not experiments:
        return []
    runs = client.search_runs([e.experiment_id for e in experiments],
                              filter_string="tags.`extune.role` = 'search'",
                              order_by=["attributes.start_time DESC"], max_results=limit)
    return [(r.info.run_name, r.data.tags[VIEW_TAG]) for r in runs if VIEW_TAG in r.data.tags]
