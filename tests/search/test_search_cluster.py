"""A two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``): a local storage path
is refused before any trial starts; with ``--storage`` trials run on both nodes."""

from __future__ import annotations

import pytest

from extune.errors import ConfigError
from extune.search.engine.run import run_search
from extune.search.settings import SearchSettings

pytestmark = pytest.mark.slow


def test_trials_run_on_both_nodes(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        node_ids = {node.node_id for node in cluster.list_all_nodes()}
        overrides = {"data.image_size": 16, "data.train_size": 200, "data.num_classes": 4,
                     "data.cache_dir": str(tmp_path / "cache"), "model.backbone": "tiny_cnn",
                     "optim.epochs": 1, "optim.batch_size": 32, "eval.explain_samples": 8,
                     "eval.corruptions": ["contrast"], "eval.grid_images": 2}
        common = dict(space="ce", trials=2, max_concurrent=2, scheduler="none",
                      address=cluster.address, overrides=overrides, live=False,
                      out=str(tmp_path / "runs"),
                      tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        # without --storage the checkpoints would go to this machine's disk: refused up front
        with pytest.raises(ConfigError, match="has 2 nodes.*pass --storage"):
            run_search(SearchSettings(**common, name="local-storage"))
        # ... before the search folder is created: nothing for --resume to pick up
        assert not (tmp_path / "runs" / "local-storage").exists()
        settings = SearchSettings(**common, name="cluster", storage=str(tmp_path / "shared"))
        result = run_search(settings)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    assert all(r.state == "complete" for r in result.records)
    used = {r.node_id for r in result.records}
    assert used == node_ids and len(used) == 2
