"""Where extune keeps its defaults when the user does not say: read by the settings of a search
and a study, and by the command line's help texts, so each default is written once and
``extune --help`` imports no search code."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DEFAULT_TRACKING_URI", "SEARCH", "STUDY", "SearchDefaults", "StudyDefaults",
           "seconds_from_env"]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
"""The MLflow store when ``--tracking-uri`` is not given: a SQLite file in the working folder."""


@dataclass(frozen=True)
class SearchDefaults:
    """``extune search``'s defaults (:class:`extune.search.SearchSettings`)."""

    space: str = "excon"
    trials: int = 8
    cpus_per_trial: float = 1.0
    sampler: str = "tpe"
    seed: int = 0
    scheduler: str = "auto"
    objective: str = "accuracy"
    max_failures: int = 1
    experiment: str = "extune"
    out: str = "runs"
    full_eval: str = "end"


@dataclass(frozen=True)
class StudyDefaults:
    """``extune study``'s defaults (:class:`extune.study.StudySettings`); ``quick_*``: with
    ``--quick``."""

    seeds: int = 5
    trials: int = 8
    search_seeds: int = 1
    eval_explainer: str = "gradcam"
    protocols: tuple[str, ...] = ("gradcam", "gradcam:previous", "integrated_gradients")
    test: str = "welch"
    correction: str = "holm"
    min_driven_share: float = 0.2
    quick_trials: int = 2
    quick_seeds: int = 2
    quick_final_epochs: int = 2


SEARCH = SearchDefaults()
STUDY = StudyDefaults()


def seconds_from_env(name: str) -> float | None:
    """The seconds the environment variable ``name`` gives (``None``: unset or empty), for a
    wait the user may set (``EXTUNE_TRACKING_WAIT_S``, ``EXTUNE_STORE_LOCK_WAIT_S``).

    Raises:
        ValueError: the value is not a number of seconds >= 0 (NaN included); the message
            names the variable and its value.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # NaN too
        raise ValueError(f"{name}={text!r} is not a number of seconds >= 0")
    return seconds
