"""Many very short trials through the real search (``benchmarks/load_search.py`` at CI size):
every trial reaches Optuna and MLflow exactly once, nothing is left unsent, and the driver's
memory does not grow with the number of trials. The figures for 300+ trials are in
docs/reliability.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).parents[2] / "benchmarks" / "load_search.py"


def test_many_short_trials_each_recorded_once(tmp_path):
    spec = importlib.util.spec_from_file_location("load_search", BENCH)
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    figures = load.run(trials=24, concurrent=2, work=tmp_path)
    assert figures["optuna_trials"] == figures["optuna_unique"] == 24
    assert figures["optuna_complete"] == 24
    assert figures["mlflow_trial_runs"] == figures["mlflow_unique"] == 24
    assert figures["mlflow_matches_optuna"] and figures["mlflow_all_finished"]
    assert figures["tracking_pending"] == 0
    # bounded: from a quarter to three quarters of the search, the driver grows < 150 MB
    assert figures["rss_at_75pct_mb"] - figures["rss_at_25pct_mb"] < 150, figures
    assert figures["trials_per_min"] > 0 and figures["driver_overhead_per_trial_s"] > 0
