"""The MLflow run of ``extune train``: what it records, its lineage and the links between it and
the search it came from, its model (pytorch and pyfunc flavours), and how it ends (failed,
interrupted and resumed, the store down and ``extune sync``)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from stores import sqlite_store

from extune.cli import main
from extune.train.config import Config, load_lineage

SMALL = {"data.image_size": 16, "data.train_size": 240, "data.test_size": 40,
         "data.num_classes": 4, "data.cache_dir": "cache", "model.backbone": "tiny_cnn",
         "optim.epochs": 1, "optim.batch_size": 32, "eval.explain_samples": 16,
         "eval.deletion_steps": 4, "eval.grid_images": 4, "eval.corruptions": ["contrast"],
         "runtime.progress": False}
"""The base config of the hand-made search (tests/conftest.py's TINY, one epoch)."""


def _runs(uri: str, role: str) -> list:
    from extune.tracking.client import mlflow_client

    client = mlflow_client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"tags.`extune.role` = '{role}'")


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    """A search folder (by hand) whose store holds its parent and trial runs, the export of its
    best trial, and the tracked final run trained from it (one epoch)."""
    from handmade_search import handmade_search

    from extune.tracking.client import MlflowTracker

    tmp = tmp_path_factory.mktemp("final")
    before = os.getcwd()
    os.chdir(tmp)
    try:
        sqlite_store(tmp / "mlflow.db")  # the default store, ./mlflow.db
        sdir = handmade_search("runs", [({"method": "ce", "optim.lr": 0.05}, 0.4),
                                        ({"method": "ce", "optim.lr": 0.1}, 0.6)],
                               overrides=SMALL)
        tracker = MlflowTracker(sdir.meta["tracking_uri"], sdir.settings.experiment,
                                sdir.search_id, sdir.name)
        parent = tracker.parent_run()
        sdir.set_status("finished", parent_run_id=parent)  # as a search records it
        trial, _ = tracker.child_run("t1", name="ce · trial-001 · complete", params={},
                                     tags={"mlflow.note.content": "**ce · trial-001**"})
        assert main(["export", str(sdir.path), "-o", "best.yaml"]) == 0
        assert main(["train", "--config", "best.yaml", "--out", "final", "--register",
                     "demo-model"]) == 0
        yield SimpleNamespace(tmp=tmp, uri=sdir.meta["tracking_uri"], sdir=sdir,
                              parent=parent, trial=trial, run=_runs(sdir.meta["tracking_uri"],
                                                                    "final")[0])
    finally:
        os.chdir(before)


def test_an_export_records_where_it_comes_from(final):
    lineage = load_lineage(final.tmp / "best.yaml")
    assert lineage == {
        "search": "handmade", "search_id": final.sdir.search_id, "trial": "trial-001",
        "trial_id": "t1", "run_id": final.trial, "parent_run_id": final.parent,
        "tracking_uri": final.uri, "experiment": "extune", "select": "accuracy",
        "rule": "the best complete trial by accuracy", "extune_version": "0.1.0"}
    assert Config.load(final.tmp / "best.yaml").method == "ce"  # not a setting: skipped


def test_the_final_run_carries_the_lineage_and_links_both_ways(final):
    from extune.tracking.client import mlflow_client

    run, client = final.run, mlflow_client(final.uri)
    tags = run.data.tags
    assert run.info.status == "FINISHED" and tags["extune.state"] == "complete"
    assert tags["extune.lineage.trial"] == "trial-001"
    assert tags["extune.lineage.run_id"] == final.trial
    assert tags["extune.lineage.search_id"] == final.sdir.search_id
    assert tags["extune.lineage.select"] == "accuracy"
    note = tags["mlflow.note.content"]
    trial_page = f"#/experiments/{run.info.experiment_id}/runs/{final.trial}"
    assert f"Trained from [trial-001]({trial_page}) of search [`handmade`]" in note
    assert "the best complete trial by accuracy" in note and "test/accuracy" in note
    for other in (final.trial, final.parent):  # and back: the trial and the search
        other_tags = client.get_run(other).data.tags
        assert other_tags["extune.final_runs"] == run.info.run_id
        first = other_tags["mlflow.note.content"].splitlines()[0]  # shown when collapsed
        assert first.endswith(
            f"[final](#/experiments/{run.info.experiment_id}/runs/{run.info.run_id})")


def test_the_final_run_holds_params_metrics_files_and_the_model(final):
    from extune.tracking.client import mlflow_client

    run, client = final.run, mlflow_client(final.uri)
    assert set(run.data.params) == set(Config.keys())
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/accuracy")] == [1]
    metrics = json.loads((final.tmp / "final" / "metrics.json").read_text())["final"]
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["test/accuracy"], abs=1e-6)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "config.yaml", "metrics.json", "saliency_grid.png", "summary.txt"}
    assert "accuracy" in (final.tmp / "final" / "summary.txt").read_text()
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [(m.name, m.source_run_id) for m in models] == [("model", run.info.run_id)]
    assert sorted(p.name for p in (final.tmp / "final" / "tracking").iterdir()) == ["run.json"]


def test_the_run_its_model_and_its_version_link_to_each_other(final):
    """search -> trial -> final run -> logged model -> registered version, and back."""
    from extune.tracking.client import mlflow_client

    client = mlflow_client(final.uri)
    run = client.get_run(final.run.info.run_id)
    experiment, run_id = run.info.experiment_id, run.info.run_id
    [model] = client.search_logged_models(experiment_ids=[experiment])
    version = client.get_model_version("demo-model", "1")
    model_page = f"#/experiments/{experiment}/models/{model.model_id}"
    version_page = "#/models/demo-model/versions/1"
    run_page = f"#/experiments/{experiment}/runs/{run_id}"
    # the run -> its model and version, in the description's first lines (seen collapsed)
    second = run.data.tags["mlflow.note.content"].split("\n\n")[1]
    assert second.startswith("Trained from [trial-001]")
    assert f"Model: [model]({model_page})" in second
    assert f"registered as [demo-model version 1]({version_page})" in second
    # the model: the run's test metrics and params, a description, its version
    assert {m.key: m.value for m in model.metrics} == {
        k: v for k, v in run.data.metrics.items() if k.startswith("test/")}
    assert model.params == run.data.params
    note = model.tags["mlflow.note.content"]
    assert f"[final]({run_page})" in note and f"({version_page})" in note
    assert "Trained from [trial-001]" in note and "Model:" not in note
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": "demo-model",
                                                               "version": "1"}]
    assert model.source_run_id == run_id
    # the version -> the model (its source, MLflow's "Source Model") and the run
    assert version.source == f"models:/{model.model_id}" and version.run_id == run_id
    assert f"({model_page})" in version.description and f"({run_page})" in version.description
    assert [m.step for m in client.get_metric_history(run_id, "test/accuracy")] == [1]


def test_the_model_loads_as_pyfunc_and_pytorch_and_predicts_as_the_checkpoint(final):
    import mlflow
    from mlflow.exceptions import MlflowException

    from extune.train.checkpoint import load_checkpoint
    from extune.train.checkpoint_eval import load_model
    from extune.train.data import load_data

    uri = f"runs:/{final.run.info.run_id}/model"
    model, cfg = load_model(final.tmp / "final")
    ckpt = load_checkpoint(final.tmp / "final")
    images = load_data(cfg.data).val.images[:6]
    from extune.augment import standard_view

    with torch.no_grad():
        expected = model.eval()(standard_view(images, ckpt["mean"], ckpt["std"])).softmax(1)
    os.environ["MLFLOW_TRACKING_URI"] = final.uri
    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
        torch_model = mlflow.pytorch.load_model(uri)
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    probs = pyfunc.predict(images.numpy())
    assert np.allclose(probs, expected.numpy(), atol=1e-5)
    assert np.allclose(pyfunc.predict(images.numpy().astype(np.float32) / 255), probs, atol=1e-5)
    out = pyfunc.predict(images.numpy().transpose(0, 2, 3, 1), params={"saliency": True})
    assert np.allclose(out["probabilities"], probs, atol=1e-5)
    assert out["saliency"].shape == (6, 16, 16)
    assert 0 <= out["saliency"].min() and out["saliency"].max() <= 1
    logits = torch_model(images.float() / 255)
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    assert pyfunc.metadata.metadata["classes"] == ckpt["classes"]
    for bad, words in [(images.numpy()[:, :2], "batch of RGB images"),
                       (images.numpy().astype(np.float32), "float images must be in [0, 1]")]:
        with pytest.raises(MlflowException, match=words.replace("[", r"\[").replace("]", r"\]")):
            pyfunc.predict(bad)


def test_evaluate_takes_a_runs_uri(final, monkeypatch):
    monkeypatch.chdir(final.tmp)
    uri = f"runs:/{final.run.info.run_id}/model"
    assert main(["evaluate", "--checkpoint", uri, "--split", "test", "--tracking-uri",
                 final.uri]) == 0
    written = final.tmp / f"evaluation-{final.run.info.run_id}-model-test.json"
    trained = json.loads((final.tmp / "final" / "metrics.json").read_text())["final"]
    assert json.loads(written.read_text())["test/accuracy"] == trained["test/accuracy"]
    assert main(["explain", "--checkpoint", uri, "--tracking-uri", final.uri, "--count", "2",
                 "-o", str(final.tmp / "grid.png")]) == 0


@pytest.fixture
def tiny_args(tiny_config) -> list[str]:
    """The tiny config (tests/conftest.py) as ``--set`` options."""
    return [a for k, v in tiny_config.flatten().items() if k.startswith(("data.", "model.",
            "optim.", "eval.", "runtime.")) and k != "eval.corruptions"
            for a in ("--set", f"{k}={v}")]


def test_interrupted_failed_and_resumed_runs_end_as_they_should(tiny_args, tmp_path,
                                                                monkeypatch, capsys):
    from extune.errors import DiskFullError
    from extune.tracking.training_run import FinalRun

    monkeypatch.chdir(tmp_path)
    uri = sqlite_store(tmp_path / "mlflow.db")
    epoch = FinalRun.epoch

    def stop(error):
        def patched(self, metrics):
            epoch(self, metrics)
            raise error
        return patched

    train = ["train", *tiny_args, "--set", "method=ce", "--set",
             f"data.cache_dir={tmp_path / 'cache'}"]
    monkeypatch.setattr(FinalRun, "epoch", stop(KeyboardInterrupt()))
    assert main([*train, "--out", "run"]) == 130
    monkeypatch.setattr(FinalRun, "epoch", stop(DiskFullError("the disk is full")))
    assert main([*train, "--out", "failed"]) == 2
    monkeypatch.setattr(FinalRun, "epoch", epoch)
    assert main([*train, "--out", "nodata", "--set", "data.name=imagefolder", "--set",
                 f"data.root={tmp_path / 'none'}"]) == 2
    assert not (tmp_path / "nodata").exists()  # a failed start leaves nothing on disk
    runs = {r.info.run_name: r for r in _runs(uri, "final")}
    assert {n: (r.info.status, r.data.tags["extune.state"]) for n, r in runs.items()} == {
        "run": ("KILLED", "interrupted"), "failed": ("FAILED", "failed"),
        "nodata": ("FAILED", "failed")}
    assert "the disk is full" in runs["failed"].data.tags["extune.error"]

    capsys.readouterr()
    assert main([*train, "--resume", "run", "--out", "run"]) == 0  # the same run goes on
    resumed = {r.info.run_name: r for r in _runs(uri, "final")}["run"]
    assert resumed.info.run_id == runs["run"].info.run_id
    assert (resumed.info.status, resumed.data.tags["extune.state"]) == ("FINISHED", "complete")
    from extune.tracking.client import mlflow_client

    history = mlflow_client(uri).get_metric_history(resumed.info.run_id, "val/accuracy")
    assert [m.step for m in history] == [1, 2]


def test_a_store_down_during_training_costs_nothing_and_sync_sends_the_rest(
        tiny_args, tmp_path, monkeypatch, capsys):
    from extune.tracking import journal

    monkeypatch.chdir(tmp_path)
    uri = sqlite_store(tmp_path / "mlflow.db")

    def down(*args, **kwargs):
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(journal, "apply_op", down)
    monkeypatch.setattr(journal, "FLUSH_TIMEOUT_S", 1.0)
    assert main(["train", *tiny_args, "--set", "method=ce", "--set",
                 f"data.cache_dir={tmp_path / 'cache'}", "--out", "run"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "could not be sent" in printed and f"extune sync {tmp_path / 'run'}" in printed
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert [r.info.status for r in _runs(uri, "final")] == ["RUNNING"]

    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(["sync", "run"]) == 0
    [run] = _runs(uri, "final")
    assert run.info.status == "FINISHED" and "test/accuracy" in run.data.metrics
    assert main(["sync", "run"]) == 0
    assert "nothing to send" in capsys.readouterr().out


def test_register_needs_a_store_with_a_registry():
    from extune.errors import ServiceError
    from extune.tracking.training_run import _check_registry

    class NoRegistry:
        uri = "file:///srv/mlruns"

        class client:
            @staticmethod
            def search_registered_models(max_results):
                raise RuntimeError("the model registry is not available\non this store")

    with pytest.raises(ServiceError) as raised:
        _check_registry(NoRegistry())
    message = str(raised.value)
    assert "\n" not in message and "has none" in message and "drop --register" in message


def test_a_lineage_that_is_not_a_mapping_is_one_line(tmp_path):
    from extune.errors import ConfigError

    path = tmp_path / "best.yaml"
    path.write_text("method: ce\nlineage: trial-003\n")
    assert Config.load(path).method == "ce"
    with pytest.raises(ConfigError, match="'lineage' must be a mapping"):
        load_lineage(path)
    path.write_text("method: ce\n")
    assert load_lineage(path) == {}
