"""extune.search: distributed hyperparameter search (Ray Tune + Optuna + MLflow) and export.

>>> from extune.search import SearchSettings, run_search          # doctest: +SKIP
>>> result = run_search(SearchSettings(space="excon", trials=8))  # doctest: +SKIP
>>> result.best_config                                            # doctest: +SKIP
PosixPath('runs/excon-.../best_config.yaml')

Names are imported lazily: ``import extune.search`` does not import Ray, Optuna or MLflow.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "LiveConsole",
    "MlflowCallback",
    "MlflowTracker",
    "PruneAwareOptunaSearch",
    "SearchResult",
    "SearchSettings",
    "ServiceError",
    "TrialRecord",
    "config_from_params",
    "export_run",
    "export_search",
    "knee_point",
    "pareto_front",
    "run_search",
    "select_trial",
]

_WHERE = {
    "LiveConsole": "reporting.console",
    "MlflowCallback": "tracking.callback",
    "MlflowTracker": "tracking.client",
    "PruneAwareOptunaSearch": "engine.optuna_search",
    "SearchResult": "engine.run",
    "SearchSettings": "settings",
    "ServiceError": "connections",
    "TrialRecord": "reporting.results",
    "config_from_params": "reporting.export",
    "export_run": "reporting.export",
    "export_search": "reporting.export",
    "knee_point": "reporting.results",
    "pareto_front": "reporting.results",
    "run_search": "engine.run",
    "select_trial": "reporting.results",
}
"""Where each public name lives: ``settings.py`` (what a search takes), ``folder.py`` (the search
folder), ``connections.py`` (Ray and the tracking store), and the rooms ``engine/`` (running the
trials), ``tracking/`` (MLflow) and ``reporting/`` (records, console, plots, summary, export)."""


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"extune.search.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'extune.search' has no attribute '{name}'")
