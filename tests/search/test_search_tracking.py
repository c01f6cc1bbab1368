"""The MLflow callback with a local SQLite store and fake Tune trials: parent/child runs,
params, per-epoch metrics without Ray keys, statuses, tags, resume without duplicates, and
``export --run`` rebuilding the typed Config from the string params."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from stores import sqlite_store

from extune.errors import ConfigError
from extune.evaluate.objectives import Objective
from extune.search.reporting.export import config_from_params, export_run
from extune.tracking.callback import MlflowCallback
from extune.tracking.client import MlflowTracker, mlflow_client, param_value
from extune.tracking.journal import close_writer
from extune.tracking.trials import TRIAL_NUMBER
from extune.train.config import Config

ACCURACY = Objective("accuracy", "val/accuracy", "max")
BASE = Config().with_overrides({"optim.epochs": 3, "model.backbone": "tiny_cnn"})


def fake_trial(trial_id, number, lr, last_result=None):
    return SimpleNamespace(
        trial_id=trial_id, config={TRIAL_NUMBER: number, "optim.lr": lr, "method": "ce"},
        last_result=last_result or {}, checkpoint=None, num_failures=1, status="RUNNING",
        get_error=lambda: "Traceback...\n  File x\nextune.errors.ExtuneError: boom happened")


def result(epoch, acc):
    return {"epoch": float(epoch), "val/accuracy": acc, "train/loss": 1.0 / epoch,
            "training_iteration": epoch, "time_this_iter_s": 0.1, "done": False,
            "config/optim.lr": 0.1, "node_id": "node-a", "hostname": "h", "pid": 42}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return sqlite_store(tmp_path_factory.mktemp("mlflow") / "mlflow.db")


def runs_of(tracker):
    return tracker.client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`extune.search_id` = '{tracker.search_id}'")


def test_parent_and_child_runs(store, tmp_path):
    tracker = MlflowTracker(store, "test-tracking", "search-1", "demo")
    tracker.check()
    parent = tracker.parent_run(params={"sampler": "tpe", "trials": 3})
    cb = MlflowCallback(tracker, BASE.to_dict(), objectives=(ACCURACY,),
                        journal_dir=tmp_path / "journal")
    cb.setup()
    done, stopped, failed = (fake_trial("aaa", 0, 0.1), fake_trial("bbb", 1, 0.2),
                             fake_trial("ccc", 2, 0.3))
    for t in (done, stopped, failed):
        cb.on_trial_start(0, [], t)
    for epoch in (1, 2, 3):
        cb.on_trial_result(0, [], done, result(epoch, 0.1 * epoch))
    cb.on_trial_result(0, [], done, result(3, 0.3))  # a replayed result is not logged twice
    cb.on_trial_result(0, [], stopped, result(1, 0.05))
    done.last_result, stopped.last_result = result(3, 0.3), result(1, 0.05)
    cb.on_trial_complete(0, [], done)
    cb.on_trial_complete(0, [], stopped)
    cb.on_trial_error(0, [], failed)
    assert close_writer(tmp_path / "journal", timeout=30) == 0
    assert not (tmp_path / "journal" / "journal.jsonl").exists()  # all sent: no journal kept

    runs = {r.data.tags.get("extune.trial_id", "parent"): r for r in runs_of(tracker)}
    assert set(runs) == {"parent", "aaa", "bbb", "ccc"}
    assert runs["parent"].info.run_id == parent and runs["parent"].data.params["trials"] == "3"
    child = runs["aaa"]
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.info.run_name == "ce · trial-000 · complete"  # the method says which search
    assert child.info.status == "FINISHED"
    assert "extune.pruned" not in child.data.tags  # one state tag
    assert child.data.tags["extune.state"] == "complete"
    note = child.data.tags["mlflow.note.content"]  # the run page shows it first
    lines = note.splitlines()
    assert lines[2:5] == ["| objective | value |", "|---|---|",
                          "| accuracy (val/accuracy, max) | 0.3000 |"]
    assert "accuracy **0.3000** (objective)" in lines[0]  # the collapsed note shows it
    assert not any("val/alignment ↑" in line for line in lines)  # not asked for: no row
    assert child.data.tags["extune.node_id"] == "node-a"
    assert child.data.params == {"optim.lr": "0.1", "method": "ce"}  # the searched keys only
    assert set(child.data.metrics) == {"val/accuracy", "train/loss",
                                       "objective/accuracy"}  # no Ray keys; epoch: the step
    assert child.data.metrics["objective/accuracy"] == pytest.approx(0.3)
    history = tracker.client.get_metric_history(child.info.run_id, "val/accuracy")
    assert [(m.step, round(m.value, 3)) for m in history] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    artifacts = {f.path for f in tracker.client.list_artifacts(child.info.run_id)}
    assert artifacts == {"config.yaml"}  # no checkpoint, so no grid
    stopped_run = runs["bbb"]
    assert stopped_run.data.tags["extune.state"] == "pruned"
    assert stopped_run.info.run_name == "ce · trial-001 · pruned at 1/3"
    pruned_note = stopped_run.data.tags["mlflow.note.content"]
    assert "**pruned** after 1 of 3 epochs" in pruned_note
    assert "| val/alignment ↑ | not measured |" in pruned_note.splitlines()
    assert stopped_run.data.metrics["objective/accuracy"] == pytest.approx(0.05)
    assert runs["ccc"].info.status == "FAILED" and runs["ccc"].data.tags["extune.state"] == "failed"
    assert "objective/accuracy" not in runs["ccc"].data.metrics
    assert runs["ccc"].data.tags["extune.error"] == "ExtuneError: boom happened"
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    # the trial's config comes back, typed, from the run's string params
    out = tmp_path / "best.yaml"
    cfg, note = export_run(child.info.run_id, out, tracking_uri=store)
    assert note is None
    assert cfg == BASE.with_overrides({"optim.lr": 0.1, "method": "ce"})
    assert Config.load(out) == cfg
    with pytest.raises(ConfigError, match="parent run"):
        export_run(parent, out, tracking_uri=store)
    with pytest.raises(ConfigError, match="cannot read MLflow run 'nope'"):
        export_run("nope", out, tracking_uri=store)


def test_resumed_search_reuses_its_runs(store, tmp_path):
    tracker = MlflowTracker(store, "test-tracking", "search-2", "demo2")
    tracker.parent_run(params={"trials": 2})
    cb = MlflowCallback(tracker, BASE.to_dict(), journal_dir=tmp_path / "j1")
    t = fake_trial("ddd", 0, 0.5)
    cb.on_trial_start(0, [], t)
    cb.on_trial_result(0, [], t, result(1, 0.2))
    cb.on_experiment_end([t])  # interrupted: the open run is KILLED
    close_writer(tmp_path / "j1", timeout=30)
    assert {r.info.status for r in runs_of(tracker)} == {"RUNNING", "KILLED"}
    assert {r.data.tags.get("extune.state") for r in runs_of(tracker)} == {None, "interrupted"}

    # a new process: new tracker and callback objects, same search id
    tracker2 = MlflowTracker(store, "test-tracking", "search-2", "demo2")
    tracker2.parent_run(params={"trials": 2})
    cb2 = MlflowCallback(tracker2, BASE.to_dict(), journal_dir=tmp_path / "j2")
    cb2.on_trial_start(0, [], t)
    cb2.on_trial_result(0, [], t, result(1, 0.2))  # replayed epoch 1: skipped
    cb2.on_trial_result(0, [], t, result(2, 0.4))
    t.last_result = result(3, 0.5)
    cb2.on_trial_result(0, [], t, result(3, 0.5))
    cb2.on_trial_complete(0, [], t)
    close_writer(tmp_path / "j2", timeout=30)
    runs = runs_of(tracker2)
    assert len(runs) == 2  # one parent, one child: nothing duplicated
    child = next(r for r in runs if r.data.tags.get("extune.trial_id") == "ddd")
    assert child.info.status == "FINISHED" and child.data.tags["extune.state"] == "complete"
    steps = [m.step for m in tracker2.client.get_metric_history(child.info.run_id, "train/loss")]
    assert steps == [1, 2, 3]

    # extune sync finds the ended search again without reopening it: nothing left RUNNING
    parent = tracker2.parent_run()
    tracker2.end(parent, "FINISHED")
    syncing = MlflowTracker(store, "test-tracking", "search-2", "demo2", reopen=False)
    assert syncing.parent_run() == parent
    assert syncing.end_abandoned() == 0
    assert syncing.client.get_run(parent).info.status == "FINISHED"


def test_a_tracker_restored_from_a_pickle_reads_the_store_again(store):
    """Ray pickles the tracker in tuner.pkl when a search starts; trial runs made after that
    are found by the restored one (read once from the store), reopened, never made twice."""
    import pickle

    tracker = MlflowTracker(store, "test-tracking", "search-3", "demo3")
    tracker.parent_run(params={})
    saved = pickle.dumps(tracker)
    run_id, created = tracker.child_run("t1", name="a", params={"optim.lr": 0.1})
    assert created and tracker.child_run("t1", name="a", params={}) == (run_id, False)
    assert tracker.find_child("t1") == run_id and tracker.find_child("t2") is None
    tracker.end(run_id, "KILLED")

    restored = pickle.loads(saved)
    assert restored.find_child("t1") == run_id
    assert restored.child_run("t1", name="a", params={}) == (run_id, False)
    assert restored.client.get_run(run_id).info.status == "RUNNING"  # the resumed trial's
    older = MlflowTracker.__new__(MlflowTracker)  # an older extune pickled its partial map
    older.__setstate__({**vars(tracker), "_client": None, "_children": {}})
    assert older.child_run("t1", name="a", params={}) == (run_id, False)
    assert sum("extune.trial_id" in r.data.tags for r in runs_of(restored)) == 1


def test_a_trial_lost_to_a_stopped_search_ends_failed_when_the_resumed_search_ends(store,
                                                                                   tmp_path):
    """Ray could not save the search's state before a trial started (a full disk), the stopped
    search ended its run KILLED, and --resume sampled a new trial instead: the lost run ends
    FAILED and says why, not KILLED beside the trials that count."""
    from extune.search.reporting.parent_run import close_orphans, journal_dir

    tracker = MlflowTracker(store, "test-tracking", "search-3", "demo3")
    tracker.parent_run(params={"trials": 2})
    cb = MlflowCallback(tracker, BASE.to_dict(), journal_dir=tmp_path / "j1")
    kept, lost = fake_trial("kkk", 0, 0.1), fake_trial("lll", 1, 0.2)
    for t in (kept, lost):
        cb.on_trial_start(0, [], t)
        cb.on_trial_result(0, [], t, result(1, 0.2))
    cb.on_experiment_end([kept, lost])  # the stopped search: both KILLED
    close_writer(tmp_path / "j1", timeout=30)

    sdir = SimpleNamespace(search_id="search-3", path=tmp_path / "search")
    close_orphans(sdir, MlflowTracker(store, "test-tracking", "search-3", "demo3"), [kept])
    assert close_writer(journal_dir(sdir), timeout=30) == 0
    runs = {r.data.tags.get("extune.trial_id"): r for r in runs_of(tracker)}
    assert runs["kkk"].info.status == "KILLED"  # Ray has it: the resumed search ends it
    assert runs["lll"].info.status == "FAILED" and runs["lll"].info.run_name.endswith("· lost")
    assert runs["lll"].data.tags["extune.state"] == "failed"
    assert runs["lll"].data.tags["extune.error"].startswith("lost: ")


def test_param_strings_round_trip_to_a_typed_config():
    cfg = Config().with_overrides({"explain.layer": "layer3", "data.limit": 100,
                                   "eval.corruptions": ["contrast"], "runtime.threads": None,
                                   "data.name": "synthetic", "excon.negative_pair": True})
    params = {k: param_value(v) for k, v in cfg.flatten().items()}
    params["some.other"] = "x"  # not a Config key: ignored
    assert config_from_params(params) == cfg
    with pytest.raises(ConfigError, match="no extune config params"):
        config_from_params({"lr": "0.1"})


def test_store_lists_every_search_and_study_newest_first_with_scoped_views(tmp_path):
    from extune.tracking.views import runs_table_view, store_entries

    client = mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    first, second = client.create_experiment("a"), client.create_experiment("b")

    def run(experiment, name, start, **tags):
        client.create_run(experiment, run_name=name, start_time=start,
                          tags={"extune.mlflow_view": f"#/{name}", **tags})

    run(first, "old", 1000, **{"extune.role": "search"})
    run(second, "duel", 2000, **{"extune.role": "study", "extune.study_id": "s1"})
    run(second, "ce", 2100, **{"extune.role": "search", "extune.study_id": "s1"})
    run(second, "excon", 2200, **{"extune.role": "search", "extune.study_id": "s1"})
    run(first, "new", 3000, **{"extune.role": "search", "extune.search_id": "n1"})
    run(first, "trial", 3100, **{"extune.role": "trial", "extune.search_id": "n1"})
    run(first, "new-final", 3200, **{"extune.role": "final", "extune.train_id": "t1",
                                            "extune.lineage.search_id": "n1"})
    run(first, "scratch", 900, **{"extune.role": "train"})  # a config written by hand
    entries = store_entries(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [(e.kind, e.name, e.experiment) for e in entries] == [
        ("search", "new", "a"), ("study", "duel", "b"), ("search", "old", "a"),
        ("train", "scratch", "a")]
    assert [s.name for s in entries[1].children] == ["excon", "ce"]
    assert entries[0].page == "#/new"
    final = entries[0].children[0]
    assert (final.kind, final.name) == ("train", "new-final")
    run_id = client.search_runs([first], "tags.`extune.role` = 'final'")[0].info.run_id
    assert final.page == f"#/experiments/{first}/runs/{run_id}"

    view = runs_table_view("abc", (Objective("alignment", "val/alignment", "max"),),
                           ["optim.lr"])
    assert view["searchFilter"] == ("tags.`extune.search_id` = 'abc' and "
                                    "tags.`extune.role` = 'trial'")
    found = client.search_runs([first], filter_string=view["searchFilter"])
    assert found == []  # MLflow's own parser takes the filter
    assert view["orderByKey"] == "metrics.`objective/alignment`" and not view["orderByAsc"]
