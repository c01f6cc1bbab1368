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
    "LiveConsole": "console",
    "MlflowCallback": "tracking",
    "MlflowTracker": "tracking",
    "PruneAwareOptunaSearch": "optuna_search",
    "SearchResult": "tuner",
    "SearchSettings": "settings",
    "ServiceError": "services",
    "TrialRecord": "results",
    "config_from_params": "export",
    "export_run": "export",
    "export_search": "export",
    "knee_point": "results",
    "pareto_front": "results",
    "run_search": "tuner",
    "select_trial": "results",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"extune.search.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'extune.search' has no attribute '{name}'")
