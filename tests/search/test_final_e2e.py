"""End to end, as a user types it: search -> export -> ``extune train --register demo`` -> the
registered model loads with MLflow (pyfunc and pytorch) and predicts as the checkpoint ->
``extune evaluate --checkpoint models:/demo/1`` -> ``mlflow models serve`` answers.

Tiny: a 2-trial search of 1-epoch trials (16 px, tiny_cnn) on local Ray, one SQLite store.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from extune.cli import main

pytestmark = pytest.mark.slow

TINY = {"data.image_size": 16, "data.train_size": 240, "data.num_classes": 4,
        "data.test_size": 40, "data.cache_dir": "cache", "model.backbone": "tiny_cnn",
        "optim.epochs": 1, "optim.batch_size": 32, "eval.explain_samples": 16,
        "eval.deletion_steps": 4, "eval.grid_images": 4, "eval.corruptions": "[contrast]"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``extune search`` (2 trials), ``extune export``, ``extune train --register demo`` in a
    fresh folder with the default store (./mlflow.db)."""
    import ray

    tmp = tmp_path_factory.mktemp("final-e2e")
    before = os.getcwd()
    os.chdir(tmp)
    try:
        if ray.is_initialized():
            ray.shutdown()
        sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
        assert main(["search", "--trials", "2", "--name", "demo", "--no-live",
                     "--cpus-per-trial", "1", *sets]) == 0
        assert main(["export", "runs/demo", "-o", "best.yaml"]) == 0
        assert main(["train", "--config", "best.yaml", "--register", "demo", "--out",
                     "final"]) == 0
        yield SimpleNamespace(tmp=tmp, uri=f"sqlite:///{tmp / 'mlflow.db'}")
    finally:
        os.chdir(before)


def _val_images(folder: Path, count: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation images of the run's data set and the checkpoint's predicted classes."""
    from extune.augment import standard_view
    from extune.train.checkpoint import load_checkpoint
    from extune.train.checkpoint_eval import load_model
    from extune.train.data import load_data

    model, cfg = load_model(folder)
    ckpt = load_checkpoint(folder)
    images = load_data(cfg.data).val.images[:count]
    with torch.no_grad():
        predicted = model.eval()(standard_view(images, ckpt["mean"], ckpt["std"])).argmax(1)
    return images, predicted


def test_search_export_train_register_load_evaluate(trained, monkeypatch):
    import mlflow

    from extune.tracking.client import mlflow_client

    client = mlflow_client(trained.uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    final = next(r for r in runs if r.data.tags.get("extune.role") == "final")
    trials = {r.data.tags["extune.trial_id"]: r for r in runs
              if r.data.tags.get("extune.role") == "trial"}
    parent = next(r for r in runs if r.data.tags.get("extune.role") == "search")
    tags = final.data.tags
    assert final.info.status == "FINISHED" and tags["extune.lineage.search"] == "demo"
    assert tags["extune.lineage.search_id"] == parent.data.tags["extune.search_id"]
    chosen = trials[tags["extune.lineage.trial_id"]]
    assert tags["extune.lineage.run_id"] == chosen.info.run_id
    assert tags["extune.lineage.select"] == "accuracy" and "extune.lineage.extune_version" in tags
    for other in (chosen, parent):  # the trial and the search list the final run
        assert client.get_run(other.info.run_id).data.tags["extune.final_runs"] == \
            final.info.run_id
    [version] = client.search_model_versions("name = 'demo'")
    assert (str(version.version), version.run_id) == ("1", final.info.run_id)

    images, predicted = _val_images(trained.tmp / "final")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained.uri)
    described = client.get_model_version("demo", "1").description
    assert "of the run [" in described and "[trial-" in described
    pyfunc = mlflow.pyfunc.load_model("models:/demo/1")
    assert np.array_equal(pyfunc.predict(images.numpy()).argmax(1), predicted.numpy())
    assert np.array_equal(pyfunc.predict(images.numpy() / np.float32(255)).argmax(1),
                          predicted.numpy())
    logits = mlflow.pytorch.load_model("models:/demo/1")(images.float() / 255)
    assert torch.equal(logits.argmax(1), predicted)

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(trained.tmp)
    assert main(["evaluate", "--checkpoint", "models:/demo/1", "--split", "test"]) == 0
    evaluated = json.loads((trained.tmp / "evaluation-demo-1-test.json").read_text())
    metrics = json.loads((trained.tmp / "final" / "metrics.json").read_text())["final"]
    assert evaluated["test/accuracy"] == metrics["test/accuracy"]
    assert main(["evaluate", "--checkpoint", "models:/demo/9"]) == 2


def test_mlflow_models_serve_answers_a_request(trained, tmp_path):
    from processes import BIN, free_port, http_ok, start, stop, wait_for, wait_for_port

    port = free_port()
    # mlflow serve runs ``uvicorn`` by name: this environment's, where pytest ran unactivated
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained.uri,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = start([str(BIN / "mlflow"), "models", "serve", "-m", "models:/demo/1",
                    "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                   tmp_path / "serve.log", env=env, cwd=trained.tmp)
    try:
        wait_for_port(port, server, timeout=180)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/ping"), "the model server's /ping",
                 timeout=120)  # its worker has loaded the model
        images, predicted = _val_images(trained.tmp / "final", count=3)
        body = json.dumps({"inputs": images.tolist(), "params": {"saliency": True}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (loopback)
            answer = json.loads(response.read())["predictions"]
    finally:
        stop(server)
    assert np.array_equal(np.array(answer["probabilities"]).argmax(1), predicted.numpy())
    assert np.array(answer["saliency"]).shape == (3, 16, 16)
