"""What describes one Tune trial: its config keys, its Config, its name, metrics and error.

Used alike by the searcher (:mod:`~extune.search.engine.optuna_search`), the trainable, the MLflow
callback, the console and a study's final runs, so that they agree on every trial. Imports
neither Ray, Optuna nor MLflow (the trainable runs on workers that need none of them but Ray).

A Tune trial config holds Config overrides (dotted keys) plus keys that start with ``_`` and
describe the trial: :data:`TRIAL_NUMBER`, :data:`LABEL` and :data:`RUN`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from extune.errors import ExtuneError
from extune.train.config import Config

__all__ = [
    "TRIAL_NUMBER",
    "PLACE_KEYS",
    "LABEL",
    "RUN",
    "ARM",
    "split_config",
    "config_label",
    "config_arm",
    "trial_label",
    "trial_config",
    "planned_epochs",
    "reported_metrics",
    "trial_error",
    "error_summary",
]

PLACE_KEYS = ("node_id", "gpu_ids", "hostname", "pid")
"""Keys of a trial's report that say where it ran: MLflow tags and Optuna user attributes
``extune.<key>``."""

TRIAL_NUMBER = "_optuna_trial"
"""Key added to every Tune trial config: the Optuna trial number (how trials are named)."""

LABEL = "_label"
"""Optional key of a Tune trial config: the trial's name (a study's final runs: ``excon-seed1``)."""

RUN = "_run"
"""Optional key of a Tune trial config: a whole override dict (a study's final runs are a Tune
grid over such dicts, one per method and seed); its keys join the config's own."""


ARM = "_arm"
"""Optional key of a Tune trial config: the arm of a study's final run when that is not its
method (a control: ``excon-off`` trains ``supcon``)."""


def split_config(config: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
    """A Tune trial config -> (Optuna trial number, Config overrides).

    Keys that start with ``_`` (:data:`TRIAL_NUMBER`, :data:`LABEL`, :data:`RUN`) describe the
    trial and are not Config overrides; the dict under :data:`RUN` holds overrides.
    """
    merged = {**config.get(RUN, {}), **config}
    params = {k: v for k, v in merged.items() if not k.startswith("_")}
    number = config.get(TRIAL_NUMBER)
    return (int(number) if number is not None else None), params


def config_label(config: dict[str, Any]) -> str | None:
    """The :data:`LABEL` of a Tune trial config (top level or in its :data:`RUN` dict)."""
    return config.get(LABEL) or config.get(RUN, {}).get(LABEL)


def config_arm(config: dict[str, Any]) -> str | None:
    """The :data:`ARM` of a Tune trial config (top level or in its :data:`RUN` dict)."""
    return config.get(ARM) or config.get(RUN, {}).get(ARM)


def trial_label(number: int | None, trial_id: str | None = None,
                label: str | None = None) -> str:
    """``label`` if given, else ``trial-007`` (Optuna number), else the Tune trial id."""
    if label:
        return label
    return f"trial-{number:03d}" if number is not None else f"trial-{trial_id}"


def trial_config(base: dict[str, Any], config: dict[str, Any],
                 cpus: float | None = None) -> Config:
    """The Config a trial trains: ``base`` with the overrides of its Tune config.

    Args:
        base: the search's base config as a dict (``Config.to_dict()``).
        config: the Tune trial config (or plain overrides: keys without ``_``).
        cpus: on the worker, the CPUs Ray gave the trial: the config is made quiet
            (``runtime.progress=false``) and uses as many torch threads (unless it says
            otherwise). ``None``: the config as the search describes it.

    Raises:
        ConfigError: the overrides do not make a valid Config.
    """
    cfg = Config.from_dict(base).with_overrides(split_config(config)[1])
    if cpus is None:
        return cfg
    overrides: dict[str, Any] = {"runtime.progress": False}
    if cfg.runtime.threads is None:
        overrides["runtime.threads"] = max(1, int(cpus))
    return cfg.with_overrides(overrides)


def planned_epochs(base: dict[str, Any], config: dict[str, Any]) -> int | None:
    """The epochs a trial trains (``optim.epochs`` of :func:`trial_config`); ``None`` when its
    overrides do not make a valid Config (the trial fails on its worker)."""
    try:
        return trial_config(base, config).optim.epochs
    except ExtuneError:
        return None


def reported_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The training metrics of a Tune result: ``epoch`` and ``section/name`` floats.

    Ray's own keys (``training_iteration``, ``time_this_iter_s``, ``config/...``, ``done``,
    ``pid``...) and non-numeric or non-finite values are left out.
    """
    out: dict[str, float] = {}
    for key, value in result.items():
        if key != "epoch" and ("/" not in key or key.startswith("config/")):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def trial_error(trial: Any) -> str:
    """One line saying why a Tune trial failed (its error file, read where it is)."""
    path = getattr(trial, "error_file", None)
    try:
        if path and Path(path).is_file():
            return error_summary(Path(path).read_text())
        return error_summary(trial.get_error())
    except Exception:  # storage unreachable: the status still says FAILED
        return "unknown error"


def error_summary(trace: Any) -> str:
    """The last ``Type: message`` line of an error trace, without the module path, one line."""
    if not trace:
        return "unknown error"
    lines = [line.strip() for line in str(trace).splitlines() if line.strip()]
    line = next((ln for ln in reversed(lines)
                 if ":" in ln and not ln.startswith(("File ", "^", "~"))), lines[-1] if lines
                else "unknown error")
    return re.sub(r"^(?:[A-Za-z_][\w]*\.)+(?=\w+:)", "", line)[:500]
