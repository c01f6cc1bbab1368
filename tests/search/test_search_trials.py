"""What describes a trial (``extune.tracking.trials``): config keys, Config, name, metrics, error;
and that the trainable's import needs no Optuna."""

from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import pytest

from extune.errors import ConfigError
from extune.tracking.trials import (
    LABEL,
    RUN,
    TRIAL_NUMBER,
    config_label,
    error_summary,
    planned_epochs,
    reported_metrics,
    split_config,
    trial_config,
    trial_error,
    trial_label,
)
from extune.train.config import Config

BASE = Config().with_overrides({"optim.epochs": 3, "runtime.progress": True}).to_dict()


def test_split_config_separates_trial_keys_from_overrides():
    number, params = split_config({TRIAL_NUMBER: 7, "optim.lr": 0.1, LABEL: "x"})
    assert number == 7 and params == {"optim.lr": 0.1}
    number, params = split_config({RUN: {"method": "ce", LABEL: "ce-seed1", "_seed_index": 0},
                                   "optim.lr": 0.2})
    assert number is None and params == {"method": "ce", "optim.lr": 0.2}


def test_labels():
    assert config_label({LABEL: "a"}) == "a"
    assert config_label({RUN: {LABEL: "ce-seed2"}}) == "ce-seed2"
    assert config_label({"optim.lr": 0.1}) is None
    assert trial_label(7) == "trial-007"
    assert trial_label(None, "abc") == "trial-abc"
    assert trial_label(7, "abc", "excon-seed1") == "excon-seed1"


def test_trial_config_and_planned_epochs_agree():
    tune_config = {TRIAL_NUMBER: 0, "optim.epochs": 5, "optim.lr": 0.2}
    cfg = trial_config(BASE, tune_config)
    assert cfg.optim.epochs == 5 and cfg.optim.lr == 0.2
    assert cfg.runtime.progress is True and cfg.runtime.threads is None  # as the search says
    assert planned_epochs(BASE, tune_config) == 5
    assert planned_epochs(BASE, {RUN: {"optim.epochs": 2}}) == 2
    assert planned_epochs(BASE, {"optim.epochs": 0}) is None  # invalid: the trial fails
    with pytest.raises(ConfigError):
        trial_config(BASE, {"optim.epochs": 0})


def test_trial_config_on_a_worker_is_quiet_and_uses_its_cpus():
    cfg = trial_config(BASE, {"optim.lr": 0.2}, cpus=2.5)
    assert cfg.runtime.progress is False and cfg.runtime.threads == 2
    kept = trial_config(BASE, {"runtime.threads": 4}, cpus=2)
    assert kept.runtime.threads == 4


def test_reported_metrics_drop_ray_keys():
    r = {"epoch": 2.0, "val/accuracy": 0.5, "train/loss": math.inf, "training_iteration": 2,
         "config/optim.lr": 0.1, "done": True, "node_id": "n", "pid": 7, "val/top5": True}
    assert reported_metrics(r) == {"epoch": 2.0, "val/accuracy": 0.5}


def test_error_summary_takes_the_exception_line():
    assert error_summary(None) == "unknown error"
    trace = "Traceback (most recent call last):\n  File 'a.py', line 1\nValueError: bad lr"
    assert error_summary(trace) == "ValueError: bad lr"
    assert error_summary("x\nextune.errors.RegistryError: no: x") == "RegistryError: no: x"


def test_trial_error_reads_the_error_file(tmp_path):
    (tmp_path / "error.txt").write_text("Traceback\nextune.errors.ConfigError: bad value\n")
    assert trial_error(SimpleNamespace(error_file=str(tmp_path / "error.txt"))) == (
        "ConfigError: bad value")
    unreadable = SimpleNamespace(error_file=None, get_error=lambda: 1 / 0)
    assert trial_error(unreadable) == "unknown error"


def test_the_trainable_imports_no_optuna():
    code = "import sys, extune.search.engine.trainable; print('optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
