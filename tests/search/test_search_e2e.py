"""End to end on the synthetic data set with the real ``train.fit`` (tiny: 16 px, tiny_cnn,
2 epochs): MLflow runs, export, Pareto front, failing and pruned trials, resume.

One local Ray instance (2 CPUs) and one MLflow SQLite store serve every test in this module.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray.tune.stopper import Stopper
from tune_callbacks import InterruptOnce

from extune.cli import main
from extune.search.engine.run import run_search
from extune.search.reporting.export import export_search
from extune.search.settings import SearchSettings
from extune.tracking.client import mlflow_client
from extune.train.config import Config

pytestmark = pytest.mark.slow

TINY = {
    "data.image_size": 16, "data.train_size": 240, "data.num_classes": 4,
    "data.test_size": 40, "model.backbone": "tiny_cnn", "optim.epochs": 2,
    "optim.batch_size": 32, "eval.explain_samples": 16, "eval.deletion_steps": 4,
    "eval.grid_images": 4, "eval.corruptions": ["contrast"], "runtime.seed": 0,
}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("search")


def make_settings(workdir: Path, name: str, **kwargs) -> SearchSettings:
    overrides = {**TINY, "data.cache_dir": str(workdir / "cache"), **kwargs.pop("set", {})}
    kwargs.setdefault("trials", 4)
    return SearchSettings(out=str(workdir / "runs"), name=name, experiment="e2e", live=False,
                          tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
                          overrides=overrides, **kwargs)


def runs_of(result):
    client = mlflow_client(result.tracking_uri)
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`extune.search_id` = '{result.search_id}'")
    parents = [r for r in runs if r.data.tags.get("extune.role") == "search"]
    children = [r for r in runs if r.data.tags.get("extune.role") == "trial"]
    return client, parents, children


def check_states_match_epochs(result):
    """Pruned exactly when a trial stopped before its last epoch (never complete-partial)."""
    for r in result.records:
        assert r.state in ("complete", "pruned", "failed"), r
        if r.state != "failed":
            assert (r.state == "pruned") == (r.epoch < r.planned_epochs), r


def test_search_logs_every_trial_and_exports(ray_local, workdir, tmp_path):
    settings = make_settings(workdir, "single", sampler="random",
                             set={"optim.batch_size": 64})  # the base lies inside the space
    result = run_search(settings)
    assert not result.interrupted and len(result.records) == 4
    check_states_match_epochs(result)
    from extune.spaces import base_point, get_space

    first = base_point(get_space("excon"), settings.base_config().with_overrides(
        settings.resolved_fixed))
    assert first and min(result.records, key=lambda r: r.number).params.items() >= first.items()
    assert result.best is not None and result.best.state == "complete"
    # Ray kept two checkpoints per running trial; an ended trial keeps its latest only
    trial_dirs = [p.parent for p in Path(result.path).glob("trials/*/result.json")]
    assert len(trial_dirs) == 4
    for folder in trial_dirs:
        reports = len((folder / "result.json").read_text().splitlines())
        assert [c.name for c in folder.glob("checkpoint_*")] == [f"checkpoint_{reports - 1:06d}"]

    client, parents, children = runs_of(result)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["trials"] == "4"
    assert parent.data.params["model.backbone"] == "tiny_cnn"  # constants on the parent
    assert "optim.lr" not in parent.data.params  # searched: on the trials only
    assert parent.data.tags["extune.optuna_study"] == "single"
    assert parent.data.tags["extune.optuna_storage"].endswith("optuna.db")
    assert "optuna-dashboard" in parent.data.tags["mlflow.note.content"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "summary.csv", "optimization_history.png", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/parallel_coordinate.png", "plots/plots.html"} <= plots
    # 4 trials are too few to fit importances or contours: left out, saying why
    assert "plots/param_importances.png" not in plots and "plots/contour.png" not in plots
    assert "too few trials to fit" in result.plots_left_out["param_importances"]
    assert {c.data.tags["extune.trial_id"] for c in children} == {
        r.trial_id for r in result.records}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED" and "val/accuracy" in child.data.metrics
        assert not any(k.startswith(("time_", "training_iteration")) for k in child.data.metrics)
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
        assert steps == list(range(1, len(steps) + 1))
        assert "model.backbone" not in child.data.params and "optim.lr" in child.data.params
        state = child.data.tags["extune.state"]
        assert state in ("complete", "pruned") and child.info.run_name.endswith(
            "complete" if state == "complete" else f"/{TINY['optim.epochs']}")
        assert "objective/accuracy" in child.data.metrics
        files = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"saliency_grid.png", "config.yaml"} <= files  # pruned trials have a grid too

    out = tmp_path / "best.yaml"
    config, record = export_search(result.path, out)
    assert record.trial_id == result.best.trial_id
    assert Config.load(out) == config == Config.load(result.best_config)
    assert config.model.backbone == "tiny_cnn" and config.method == "excon"
    assert main(["export", str(result.path), "-o", str(tmp_path / "cli.yaml")]) == 0
    assert Config.load(tmp_path / "cli.yaml") == config

    # the final run consumes the exported file and evaluates on the test set
    final = tmp_path / "final"
    assert main(["train", "--config", str(tmp_path / "cli.yaml"), "--set", "optim.epochs=1",
                 "--set", "runtime.progress=false", "--out", str(final), "--no-track"]) == 0
    assert Config.load(final / "config.yaml") == config.with_overrides(
        {"optim.epochs": 1, "runtime.progress": False})
    assert "test/accuracy" in json.loads((final / "metrics.json").read_text())["final"]


def test_multi_objective_gives_a_pareto_front_and_a_knee(ray_local, workdir, tmp_path):
    result = run_search(make_settings(workdir, "pareto", objective="accuracy,alignment",
                                      space="supcon", scheduler="none"))
    assert result.pareto and all(r.state == "complete" for r in result.pareto)
    assert result.best in result.pareto  # the exported trial is the knee of the front
    assert (result.path / "pareto_front.png").is_file()
    _, record = export_search(result.path, tmp_path / "knee.yaml", "knee")
    assert record.trial_id == result.best.trial_id
    _, record = export_search(result.path, tmp_path / "acc.yaml", "accuracy")
    best_acc = max(r.values[0] for r in result.records if r.state == "complete")
    assert record.values[0] == best_acc


FAILING_SPACE = """
method: ce
optim.lr: {type: float, low: 0.001, high: 0.5, log: true}
explain.layer: {type: choice, values: [null, no_such_layer]}
"""


def test_failing_trials_do_not_stop_the_search_and_stopped_ones_are_pruned(
        ray_local, workdir):
    # The objective is the reported learning rate: ASHA's decisions are then deterministic
    # (an lr outside the best third at epoch 1 is stopped); a trial drawing 'no_such_layer'
    # raises in fit (unknown layer, in the explanation metrics: full evaluations every epoch
    # here) and must end FAILED while the others go on. Every trial is drawn (no first trial
    # at the base config): the seed decides which one fails.
    path = workdir / "failing.yaml"
    path.write_text(FAILING_SPACE)
    result = run_search(make_settings(workdir, "failing", space=str(path), sampler="random",
                                      seed=0, trials=5, max_concurrent=1,
                                      objective="train/lr:max", max_failures=1,
                                      start_at_base=False, full_eval="every"))
    assert len(result.records) == 5 and not result.interrupted
    states = [r.state for r in result.records]
    assert "failed" in states and "pruned" in states and "complete" in states, states
    check_states_match_epochs(result)
    for r in result.records:
        assert (r.state == "failed") == (r.params["explain.layer"] == "no_such_layer"), r
    failed = next(r for r in result.records if r.state == "failed")
    assert "unknown layer 'no_such_layer'" in failed.error
    _, _, children = runs_of(result)
    by_id = {c.data.tags["extune.trial_id"]: c for c in children}
    assert by_id[failed.trial_id].info.status == "FAILED"
    assert "unknown layer" in by_id[failed.trial_id].data.tags["extune.error"]
    pruned = next(r for r in result.records if r.state == "pruned")
    assert by_id[pruned.trial_id].data.tags["extune.state"] == "pruned"
    # the no-retry marker is on the storage path, which every node sees, not in the trial folder
    marker = result.path / "trials" / ".extune_failed" / f"{failed.trial_id}.json"
    assert "unknown layer" in json.loads(marker.read_text())["message"]
    assert not list((result.path / "trials").glob("*/.extune_failed"))


class StopAfterFirstEpoch(Stopper):
    """Ends the whole search once any trial has reported an epoch."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.seen = True
        return False

    def stop_all(self) -> bool:
        return self.seen


def test_a_stopper_ends_the_search_as_finished(ray_local, workdir, caplog):
    result = run_search(make_settings(workdir, "stopped", space="ce", trials=6,
                                      max_concurrent=2, scheduler="none"),
                        stop=StopAfterFirstEpoch())
    assert not result.interrupted and 1 <= len(result.records) < 6, result.records
    assert "no MLflow run" not in caplog.text  # nothing written for trials that never ran
    assert json.loads((result.path / "search.json").read_text())["status"] == "finished"
    _, _, children = runs_of(result)
    assert children and all(c.info.status != "RUNNING" for c in children)


def _image_tree(root: Path, classes=("cat", "dog", "fox"), per_class=16) -> None:
    from PIL import Image

    for c, name in enumerate(classes):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            colour = (80 * c + 3 * i, 40 + 10 * c, 200 - 50 * c)
            Image.new("RGB", (20, 20), colour).save(folder / f"{i}.png")


def test_space_that_changes_data_keys_finds_a_relative_data_root(ray_local, workdir,
                                                                  tmp_path, monkeypatch):
    # the default ./data style root is relative to where the user starts the search; a trial
    # whose space changes data.image_size loads its own data in the folder Ray switched into
    monkeypatch.chdir(tmp_path)
    _image_tree(tmp_path / "images")
    space = tmp_path / "sizes.yaml"
    space.write_text("method: ce\ndata.image_size: {type: choice, values: [20, 24]}\n")
    settings = make_settings(
        workdir, "data-keys", space=str(space), sampler="random", trials=2, scheduler="none",
        set={"data.name": "imagefolder", "data.root": "images", "optim.epochs": 1})
    del settings.overrides["data.image_size"]  # set, it would be held (docs/search.md)
    result = run_search(settings)
    assert [r.state for r in result.records] == ["complete", "complete"], [
        r.error for r in result.records]
    assert {r.params["data.image_size"] for r in result.records} <= {20, 24}  # base: 32
    base = Config.load(result.path / "base_config.yaml")
    assert base.data.root == str(tmp_path / "images")  # absolute in the saved base



def test_resume_after_an_interruption_ends_every_trial_once(ray_local, workdir):
    settings = make_settings(workdir, "resumable", space="ce", trials=4, max_concurrent=2,
                             set={"optim.epochs": 3})
    first = run_search(settings, callbacks=[InterruptOnce(str(workdir / "interrupted"))])
    assert first.interrupted
    assert sum(r.state in ("complete", "pruned") for r in first.records) < 4

    second = run_search(resume=first.path)
    assert not second.interrupted and second.search_id == first.search_id
    assert len(second.records) == 4
    assert len({r.trial_id for r in second.records}) == 4
    check_states_match_epochs(second)
    client, parents, children = runs_of(second)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4  # no run duplicated by the resume
    assert {c.data.tags["extune.trial_id"] for c in children} == {
        r.trial_id for r in second.records}
    for child in children:
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
        assert steps == list(range(1, len(steps) + 1))  # every epoch logged once
    # interrupted trials continued from their checkpoint, not from scratch. Ray resumes a trial
    # from the last checkpoint its saved experiment state knows; an epoch reported in the
    # moment of the interruption may be newer than that snapshot and is then trained again
    # (at-least-once; MLflow still holds it once, checked above). So: epochs never go back by
    # more than that one in-flight epoch, and no epoch is trained more than twice.
    for results in (second.path / "trials").glob("*/result.json"):
        epochs = [json.loads(line)["epoch"] for line in results.read_text().splitlines()]
        assert sorted(set(epochs)) == [float(e) for e in range(1, len(set(epochs)) + 1)]
        assert all(b >= a for a, b in zip(epochs[:-1], epochs[1:], strict=True)), (results.parent.name, epochs)
        assert len(epochs) - len(set(epochs)) <= 1, (results.parent.name, epochs)


def test_a_search_reads_an_imagefolder_per_batch_when_told_to(ray_local, workdir, tmp_path):
    """``data.in_memory=false``: the driver ships the training files' paths, not their pixels,
    and each trial's DataLoader workers decode its batches (inside Ray's worker)."""
    import numpy as np
    from PIL import Image

    from extune.train.data import load_data
    from extune.train.datasets.streamed import StreamedSet

    rng = np.random.default_rng(0)
    for k, name in enumerate(("cat", "dog")):
        folder = tmp_path / "tree" / "train" / name
        folder.mkdir(parents=True)
        for i in range(40):
            pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
            pixels[..., k] = 220
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    data = {"data.name": "imagefolder", "data.root": str(tmp_path / "tree"),
            "data.in_memory": False, "optim.epochs": 1}
    settings = make_settings(workdir, "streamed", trials=2, max_concurrent=2, set=data)
    assert isinstance(load_data(Config().with_overrides(
        {**TINY, **data, "data.cache_dir": ""}).data).train, StreamedSet)
    result = run_search(settings)
    assert [r.state for r in result.records] == ["complete", "complete"]
    assert all(r.metrics["val/accuracy"] >= 0 and r.metrics["train/images_per_s"] > 0
               for r in result.records)
