"""extune.study: a fair, seeded comparison of methods (``extune study``, docs/study.md).

The same search budget for every method, the chosen configs retrained with several seeds, every
method scored under one evaluation protocol, verdicts for the papers' claims from tests
corrected for multiplicity, and the report that says what the numbers do and do not show.

>>> from extune.study import StudySettings, run_study                # doctest: +SKIP
>>> result = run_study(StudySettings(methods=["ce", "edda"], seeds=5))  # doctest: +SKIP

Modules: :mod:`~extune.study.settings` (what a study takes), :mod:`~extune.study.folder` (its
folder), :mod:`~extune.study.run` (the stages), :mod:`~extune.study.retrain` (the final runs),
:mod:`~extune.study.protocols` and :mod:`~extune.study.sensitivity` (evaluation protocols),
:mod:`~extune.study.stats` (the statistics), :mod:`~extune.study.claims` (claims and verdicts),
:mod:`~extune.study.report` and :mod:`~extune.study.plots` (the report). Names are imported
lazily: ``import extune.study`` imports neither Ray, Optuna nor MLflow.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["StudySettings", "StudyDir", "StudyResult", "run_study", "study_journals"]

_WHERE = {"StudySettings": "settings", "StudyDir": "folder", "StudyResult": "run",
          "run_study": "run", "study_journals": "tracking"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"extune.study.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'extune.study' has no attribute '{name}'")
