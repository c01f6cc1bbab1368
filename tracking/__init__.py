"""extune.tracking: everything that talks to MLflow.

:mod:`~extune.tracking.store` (the tracking URI: resolved, reachable, writable, whole),
:mod:`~extune.tracking.client` (``MlflowTracker``: runs found or created by tag, links),
:mod:`~extune.tracking.journal` (the ordered, journaled writes: ``Op``, ``TrackingWriter``),
:mod:`~extune.tracking.sync` (``extune sync``: the unsent writes of any journal),
:mod:`~extune.tracking.trials` (what describes one Tune trial in records: its config keys,
Config, name, metrics, error), :mod:`~extune.tracking.callback` (``MlflowCallback``: a search
trial's or final run's child run), :mod:`~extune.tracking.notes` (the descriptions of runs),
:mod:`~extune.tracking.views` (the UI's scoped runs tables and the store's listing),
:mod:`~extune.tracking.mlflow_app` (the server app of ``extune ui``), and for ``extune train``
:mod:`~extune.tracking.training_run` (its run: lineage, links, its end) and
:mod:`~extune.tracking.logged_model` (its MLflow model: pytorch and pyfunc flavours, the
registry, ``models:/`` URIs).

Its floor: it imports ``extune``'s root, ``train``, ``evaluate`` and ``augment``, never
``spaces``, ``search``, ``study`` or the CLI (``tests/test_imports.py``); a search's own parent
run is :mod:`extune.search.reporting.parent_run`. Names are imported lazily: ``import
extune.tracking`` imports no MLflow.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["MlflowCallback", "MlflowTracker"]

_WHERE = {"MlflowCallback": "callback", "MlflowTracker": "client"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"extune.tracking.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'extune.tracking' has no attribute '{name}'")
