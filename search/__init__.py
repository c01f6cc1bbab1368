"""extune.search: distributed hyperparameter search (Ray Tune + Optuna) and export.

This package is the front door: ``extune.study`` and the CLI import its names from here, never
its modules (``tests/test_imports.py`` checks it).

>>> from extune.search import SearchSettings, run_search          # doctest: +SKIP
>>> result = run_search(SearchSettings(space="excon", trials=8))  # doctest: +SKIP
>>> result.best_config                                            # doctest: +SKIP
PosixPath('runs/excon-.../best_config.yaml')

Inside, imports point down only: ``settings.py`` (what a search takes), ``connections.py``
(Ray) and ``records.py`` (its trials as records) at the floor; ``folder.py`` (the search
folder) above them; ``reporting/`` (ranking, the chosen trial, the live console, plots,
summary files, export, the parent MLflow run) above that; ``engine/`` (running the trials:
``run_search``, the one Tuner builder, the trainable, the Optuna searcher, resources, budgets,
a full disk, held settings) on top. MLflow itself is :mod:`extune.tracking`, below all of
them. Names are imported lazily: ``import extune.search`` imports neither Ray, Optuna nor
MLflow.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    # what a search takes, and checks shared with studies
    "SearchSettings": "settings",
    "TrialPlace": "settings",
    "SAMPLER_SEED_MAX": "settings",
    "check_name": "settings",
    "parse_objectives": "settings",
    "require": "settings",
    # Ray
    "connect_ray": "connections",
    "quiet_ray_env": "connections",
    "ray_address": "connections",
    # the search folder and its trials
    "SearchDir": "folder",
    "is_search_folder": "folder",
    "storage_root": "folder",
    "TrialRecord": "records",
    # running trials
    "run_search": "engine.run",
    "SearchResult": "engine.run",
    "trial_tuner": "engine.tuner",
    "keep_latest_checkpoints": "engine.tuner",
    "cluster_plan": "engine.resources",
    "GPU_RULE": "engine.resources",
    "PruneAwareOptunaSearch": "engine.optuna_search",
    # reporting and export
    "chosen_trial": "reporting.results",
    "select_trial": "reporting.results",
    "pareto_front": "reporting.results",
    "knee_point": "reporting.results",
    "LiveConsole": "reporting.console",
    "ranked_table": "reporting.console",
    "export_search": "reporting.export",
    "export_run": "reporting.export",
    "config_from_params": "reporting.export",
    "epoch_settings": "reporting.export",
    "search_caveat": "reporting.export",
    "search_journals": "reporting.parent_run",
}
"""Where each public name lives (module docstring)."""

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"extune.search.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'extune.search' has no attribute '{name}'")


def __dir__() -> list[str]:
    return __all__
