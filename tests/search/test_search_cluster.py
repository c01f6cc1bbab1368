"""A six-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head, two nodes that
declare a GPU each and three CPU nodes): a local storage path is refused before any trial
starts; with ``--storage``, trials that each ask for half a GPU run on the GPU nodes only, at
most two on a node's GPU at once, and MLflow holds each trial's epochs once."""

from __future__ import annotations

import time
from typing import Any

import pytest
from ray.tune import Callback
from stores import sqlite_store

from extune.errors import ConfigError
from extune.search.engine.run import run_search
from extune.search.settings import SearchSettings

pytestmark = pytest.mark.slow


NODES = [{"num_cpus": 2, "num_gpus": 1}, {"num_cpus": 2, "num_gpus": 1},
         {"num_cpus": 1}, {"num_cpus": 1}, {"num_cpus": 1}]
"""The worker nodes beside the head (1 CPU): 2 GPUs and 7 CPUs in all."""
GPUS_PER_TRIAL = 0.5
TRIALS = 8


class Spans(Callback):
    """When each trial started and ended on the driver, and where it ran (its last report)."""

    def __init__(self) -> None:
        self.start: dict[str, float] = {}
        self.spans: list[dict[str, Any]] = []

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.start[trial.trial_id] = time.monotonic()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        self.spans.append({"trial": trial.trial_id, "start": self.start[trial.trial_id],
                           "end": time.monotonic(), "node": result.get("node_id"),
                           "gpus": result.get("gpu_ids")})


def most_at_once(spans: list[dict[str, Any]]) -> int:
    """The most spans open at one moment (an end before a start at the same moment)."""
    events = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def test_half_gpu_trials_run_within_their_nodes_gpus_and_are_recorded_once(tmp_path):
    import ray
    from mlflow import MlflowClient
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    spans = Spans()
    try:
        nodes = [cluster.add_node(**resources) for resources in NODES]
        cluster.wait_for_nodes()
        gpu_nodes = {n.node_id for n, r in zip(nodes, NODES, strict=True) if "num_gpus" in r}
        assert len(cluster.list_all_nodes()) == 6
        overrides = {"data.image_size": 16, "data.train_size": 400, "data.num_classes": 4,
                     "data.cache_dir": str(tmp_path / "cache"), "model.backbone": "tiny_cnn",
                     "optim.epochs": 2, "optim.batch_size": 32, "eval.explain_samples": 8,
                     "eval.corruptions": ["contrast"], "eval.grid_images": 2}
        uri = sqlite_store(tmp_path / "mlflow.db")
        common = dict(space="ce", trials=TRIALS, scheduler="none", sampler="random",
                      gpus_per_trial=GPUS_PER_TRIAL, address=cluster.address,
                      overrides=overrides, live=False, out=str(tmp_path / "runs"),
                      tracking_uri=uri)
        # without --storage the checkpoints would go to this machine's disk: refused up front
        with pytest.raises(ConfigError, match="has 6 nodes.*pass --storage"):
            run_search(SearchSettings(**common, name="local-storage"))
        # ... before the search folder is created: nothing for --resume to pick up
        assert not (tmp_path / "runs" / "local-storage").exists()
        settings = SearchSettings(**common, name="cluster", storage=str(tmp_path / "shared"))
        result = run_search(settings, callbacks=[spans])
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()

    assert len(result.records) == TRIALS and all(r.state == "complete" for r in result.records)
    assert len(spans.spans) == TRIALS
    assert {s["node"] for s in spans.spans} == gpu_nodes  # both GPU nodes, no other node
    assert all(s["gpus"] == "0" for s in spans.spans)  # each node's one GPU, given by Ray
    per_gpu = int(1 / GPUS_PER_TRIAL)
    for node in gpu_nodes:
        assert most_at_once([s for s in spans.spans if s["node"] == node]) <= per_gpu
    assert most_at_once(spans.spans) > 1  # trials did run side by side

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("extune").experiment_id
    runs = client.search_runs([experiment], "tags.`extune.role` = 'trial'")
    assert sorted(r.data.tags["extune.trial_id"] for r in runs) == sorted(
        s["trial"] for s in spans.spans)  # one run per trial, from whichever node it ran on
    for run in runs:
        assert run.data.tags["extune.node_id"] in gpu_nodes
        assert run.data.tags["extune.gpu_ids"] == "0"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/accuracy")]
        assert sorted(steps) == [1, 2], (run.info.run_name, steps)  # each epoch once
