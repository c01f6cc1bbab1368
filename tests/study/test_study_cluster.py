"""A study on a four-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and
three nodes, two of them declaring a GPU): the cluster holds both searches' trials at once, so
the two method searches run at the same time, each in a driver of its own, with exactly the
settings, budget and seed they get one after another; the sensitivity re-scoring and the audit
run as Ray tasks on the GPU nodes; MLflow holds both searches under the study's run."""

from __future__ import annotations

import json

import pytest
from stores import sqlite_store

from extune.search import SearchDir
from extune.study.folder import StudyDir
from extune.study.run import run_study
from extune.study.settings import StudySettings

pytestmark = pytest.mark.slow

NODES = [{"num_cpus": 2, "num_gpus": 1}, {"num_cpus": 2, "num_gpus": 1}, {"num_cpus": 2}]
"""Beside the head (1 CPU): 7 CPUs and 2 GPUs; at half a GPU per trial, 4 trials at once."""
SEARCH_KEYS = ("space", "trials", "seed", "sampler", "scheduler", "objective", "epoch_budget",
               "seconds_budget", "startup_trials", "fixed", "max_concurrent", "cpus_per_trial",
               "gpus_per_trial", "run_tags")


def test_a_study_runs_its_searches_at_once_and_scores_on_the_gpu_nodes(tmp_path, capsys):
    import ray
    from mlflow import MlflowClient
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        nodes = [cluster.add_node(**resources) for resources in NODES]
        cluster.wait_for_nodes()
        gpu_nodes = {n.node_id for n, r in zip(nodes, NODES, strict=True) if "num_gpus" in r}
        uri, address = sqlite_store(tmp_path / "mlflow.db"), cluster.address
        settings = StudySettings.preset(
            True, methods=["ce", "supcon"], name="wide", out=str(tmp_path / "studies"),
            protocols=["gradcam:previous"], final_epochs=1, address=address, gpus_per_trial=0.5,
            storage=str(tmp_path / "shared"), tracking_uri=uri, live=False,
            overrides={"data.cache_dir": str(tmp_path / "cache")})
        result = run_study(settings)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()

    printed = capsys.readouterr().out
    assert "2 searches, 2 at once" in printed
    assert "[ce] " in printed and "[supcon] " in printed  # each driver's lines, named
    meta = json.loads((result.path / "study.json").read_text())
    assert meta["searches_at_once"] == 2
    (ce_start, ce_end), = meta["search_windows"]["ce"]
    (sc_start, sc_end), = meta["search_windows"]["supcon"]
    assert ce_start < sc_end and sc_start < ce_end  # they ran at the same time

    sdir = StudyDir.load(result.path)
    held = {key: h["value"] for key, h in sdir.plan()["held"].items()}  # e.g. label smoothing
    for method in ("ce", "supcon"):
        folder = result.path / "searches" / method
        ran = SearchDir.load(folder).settings.to_dict()
        alone = sdir.settings.search_settings(
            method, 0, out=str(folder.parent), parent_run=result.parent_run_id,
            study_id=sdir.study_id, base_file=str(sdir.base_file), held=held).to_dict()
        assert {k: ran[k] for k in SEARCH_KEYS} == {k: alone[k] for k in SEARCH_KEYS}, method
        assert ran["address"] == address  # the study's, not the driver's join address
        assert SearchDir.load(folder).meta["status"] == "finished"

    results = json.loads((result.path / "results.json").read_text())
    assert all(r["state"] == "complete" for arm in results["methods"].values()
               for r in arm["runs"])
    places = meta["scored_on"]
    assert len(places["score"]) == 4  # 2 methods x 2 seeds under the one other protocol
    assert places["audit"]
    for place in places["score"] + places["audit"]:
        assert place["node_id"] in gpu_nodes and place["gpu_ids"], place  # where the GPUs are

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("extune").experiment_id
    searches = client.search_runs([experiment], "tags.`extune.role` = 'search' and "
                                  "tags.`extune.stage` = 'search'")
    assert sorted(r.data.tags["extune.method"] for r in searches) == ["ce", "supcon"]
    assert {r.data.tags["mlflow.parentRunId"] for r in searches} == {result.parent_run_id}
    assert all(r.info.status == "FINISHED" for r in searches)
