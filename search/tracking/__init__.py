"""MLflow for a search: its runs, their writes and what a user opens in the UI.

:mod:`~extune.search.tracking.client` (``MlflowTracker``: runs found or created by tag),
:mod:`~extune.search.tracking.callback` (``MlflowCallback``: a trial's child run),
:mod:`~extune.search.tracking.parent` (the search's parent run: its params, description, view,
results, and the runs a stopped driver left running), :mod:`~extune.search.tracking.journal`
(the ordered, journaled writes: ``Op``, ``TrackingWriter``),
:mod:`~extune.search.tracking.sync` (``extune sync``),
:mod:`~extune.search.tracking.views` (the UI pages), and for ``extune train``
:mod:`~extune.search.tracking.final` (its run: lineage, links, its end) and
:mod:`~extune.search.tracking.model` (its MLflow model: pytorch and pyfunc flavours).

``MlflowCallback`` and ``MlflowTracker`` are also importable from here, where searches started
by earlier versions saved them (Ray pickles the callbacks with the experiment).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["MlflowCallback", "MlflowTracker"]

_WHERE = {"MlflowCallback": "callback", "MlflowTracker": "client"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"extune.search.tracking.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'extune.search.tracking' has no attribute '{name}'")
