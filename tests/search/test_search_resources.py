"""Trial resources without a GPU machine: the GPU default, the refusal of impossible requests,
the printed plan, and a trial given no GPU kept off CUDA."""

from __future__ import annotations

import os

import pytest

from extune.errors import ConfigError
from extune.search.engine.resources import hide_unassigned_gpus, plan_resources
from extune.train.config import Config


def plan(cpus, gpus, **kw):
    kw = {"cpus_per_trial": 1.0, "gpus_per_trial": None, "max_concurrent": None, "trials": 64,
          **kw}
    return plan_resources(cpus, gpus, **kw)


def test_one_gpu_per_trial_where_the_cluster_has_gpus():
    p = plan(16, 2)
    assert p.gpus_per_trial == 1.0 and p.concurrency == 2  # not 16 trials on cuda:0
    assert "2 trials at once, each 1 CPU + 1 GPU (one GPU per trial" in p.text()
    cpu_only = plan(2, 0)
    assert cpu_only.gpus_per_trial == 0.0 and cpu_only.concurrency == 2
    assert cpu_only.text().endswith("each 1 CPU, no GPU")


def test_the_user_can_share_or_refuse_gpus():
    assert plan(16, 1, gpus_per_trial=0.25).concurrency == 4
    no_gpu = plan(16, 2, gpus_per_trial=0.0)
    assert no_gpu.gpus_per_trial == 0.0 and no_gpu.concurrency == 16
    assert "one GPU per trial" not in no_gpu.text()


def test_concurrency_follows_cpus_trials_and_the_cap():
    assert plan(16, 0, cpus_per_trial=2).concurrency == 8
    assert plan(16, 0, trials=3).concurrency == 3
    assert plan(1, 0, max_concurrent=5).concurrency == 5


def test_impossible_requests_are_refused():
    with pytest.raises(ConfigError, match="--gpus-per-trial 0.5 but the Ray cluster has 0 GPUs"):
        plan(2, 0, gpus_per_trial=0.5)
    with pytest.raises(ConfigError, match="--cpus-per-trial 4 is more than"):
        plan(2, 0, cpus_per_trial=4)


def test_a_trial_given_no_gpu_never_sees_one(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    cfg = hide_unassigned_gpus(Config(), gpu_ids=[])
    assert cfg.runtime.device == "cpu"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(ConfigError, match="given no GPU"):
        hide_unassigned_gpus(Config().with_overrides({"runtime.device": "cuda"}), gpu_ids=[])


def test_a_trial_with_a_gpu_keeps_its_config(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    cfg = Config().with_overrides({"runtime.device": "auto"})
    assert hide_unassigned_gpus(cfg, gpu_ids=["3"]) is cfg
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
