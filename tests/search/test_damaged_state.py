"""A search whose saved state is damaged is named before Ray starts, with what can still be
done (export its complete trials, from the folder or from MLflow; start a new search): never a
hang, a silent start-over or a false "interrupted" (issue 28).

The fast tests build a search folder by hand (an Optuna study with one complete trial and
stand-ins of Ray's files); the slow one interrupts a real search and damages each piece of a
copy in turn, then resumes and exports it through ``extune``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import pytest
from stores import sqlite_store
from tune_callbacks import InterruptOnce

from extune.cli import main
from extune.errors import ConfigError, ExtuneError
from extune.search.engine.disk import (
    RestoreFailed,
    check_resumable,
    check_storage,
    pickle_problem,
    ray_state_problem,
)
from extune.search.folder import SearchDir
from extune.search.settings import SearchSettings

STAMP = "2026-12-06_10-00-00"


def _ray_files(trials: Path) -> None:
    """Stand-ins of what Ray saves of a search (whole pickles, a readable state)."""
    trials.mkdir(parents=True)
    (trials / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    (trials / f"experiment_state-{STAMP}.json").write_text(
        json.dumps({"trial_data": [], "runner_data": {}, "stats": {}}))
    (trials / f"search_gen_state-{STAMP}.json").write_bytes(pickle.dumps({"counter": 1}))
    (trials / f"searcher-state-{STAMP}.pkl").write_bytes(pickle.dumps({"_ot_trials": {}}))


def _search(tmp: Path, complete: int = 1) -> SearchDir:
    """A search folder ``tmp/s``, interrupted, with ``complete`` complete trials in Optuna."""
    import optuna

    path = tmp / "s"
    path.mkdir()
    meta = {"name": "s", "search_id": "abc", "status": "interrupted",
            "settings": SearchSettings(trials=4).to_dict(),
            "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
            "optuna_storage": f"sqlite:///{path / 'optuna.db'}",
            "experiment_path": str(path / "trials"), "space_name": "ce"}
    (path / "search.json").write_text(json.dumps(meta))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=meta["optuna_storage"],
                                direction="maximize")
    for i in range(complete):
        study.add_trial(optuna.trial.create_trial(
            params={"optim.lr": 0.1}, value=0.5 + i / 10,
            distributions={"optim.lr": optuna.distributions.FloatDistribution(0.01, 1.0)}))
    _ray_files(path / "trials")
    return SearchDir.load(path)


def _damaged(sdir: SearchDir) -> str:
    with pytest.raises(ConfigError) as caught:
        check_resumable(sdir)
    return str(caught.value)


def test_a_whole_state_passes_and_each_damaged_piece_is_named(tmp_path):
    sdir = _search(tmp_path)
    check_resumable(sdir)
    trials = Path(sdir.experiment_path)
    searcher = trials / f"searcher-state-{STAMP}.pkl"
    whole = searcher.read_bytes()

    searcher.write_bytes(whole[: len(whole) // 2])  # cut short by a full disk or a kill
    message = _damaged(sdir)
    assert f"searcher-state-{STAMP}.pkl is cut short" in message
    assert "it cannot be resumed; its 1 complete trial(s) can still be exported: extune " \
           f"export {sdir.path}" in message and "or start a new search" in message
    searcher.write_bytes(whole)

    state = trials / f"experiment_state-{STAMP}.json"
    state.write_text("{}")  # Ray read it as a restart, and the search said "interrupted"
    assert "is not Ray's record of the trials" in _damaged(sdir)
    state.write_text('{"trial_data": [')
    assert "cannot be read (JSONDecodeError" in _damaged(sdir)
    state.write_text(json.dumps({"trial_data": [], "runner_data": {}}))

    (trials / "tuner.pkl").unlink()  # Ray silently started over: 6 trials for --trials 4
    assert "tuner.pkl is missing (Ray would start the search over)" in _damaged(sdir)


def test_a_study_a_killed_driver_left_half_written_is_rolled_back_not_called_damaged(
        tmp_path):
    """A driver killed inside a write of optuna.db leaves a hot journal, which SQLite's
    read-only mode cannot roll back ("attempt to write a readonly database"): the resume
    called the study damaged (seen in CI)."""
    import subprocess
    import sys

    sdir = _search(tmp_path, complete=2)
    db = sdir.path / "optuna.db"
    subprocess.run([sys.executable, "-c", f"""
import os, sqlite3
c = sqlite3.connect({str(db)!r}, isolation_level=None)
c.execute("PRAGMA cache_size=1")
c.execute("BEGIN")
c.execute("CREATE TABLE scratch (x)")
c.executemany("INSERT INTO scratch VALUES (?)", [(i,) for i in range(200000)])
os._exit(9)  # killed inside the transaction
"""], check=False)
    assert (sdir.path / "optuna.db-journal").exists()
    assert sdir.study_problem() is None
    check_resumable(sdir)
    assert sdir.complete_trials() == 2  # the committed trials, the half write rolled back


def test_a_study_with_trials_and_no_ray_state_is_not_started_over(tmp_path):
    sdir = _search(tmp_path)
    shutil.rmtree(sdir.experiment_path)
    message = _damaged(sdir)
    assert "Ray's state of it is missing" in message and "complete trial(s)" in message


def test_a_search_that_never_started_a_trial_resumes_as_new(tmp_path):
    sdir = _search(tmp_path, complete=0)
    shutil.rmtree(sdir.experiment_path)
    (sdir.path / "optuna.db").unlink()
    check_resumable(sdir)  # nothing saved, nothing lost: Ray starts it
    with pytest.raises(ConfigError, match="has no Optuna study yet"):
        sdir.study()
    assert not (sdir.path / "optuna.db").exists()  # reading it did not create it


def test_a_search_stopped_before_ray_saved_its_state(tmp_path):
    """``tuner.pkl`` but no experiment state: Ray was stopped in its first step. Nothing is
    lost when no trial exists (Ray starts it again); with trials, it would start over beside
    them."""
    sdir = _search(tmp_path, complete=0)
    trials = Path(sdir.experiment_path)
    for name in ("experiment_state", "search_gen_state", "searcher-state"):
        for path in trials.glob(f"{name}-*"):
            path.unlink()
    check_resumable(sdir)
    assert ray_state_problem(str(trials)) is None  # what a study's final runs restore too
    (tmp_path / "other").mkdir()
    other = _search(tmp_path / "other", complete=1)
    for name in ("experiment_state", "search_gen_state", "searcher-state"):
        for path in Path(other.experiment_path).glob(f"{name}-*"):
            path.unlink()
    assert "experiment state (experiment_state-*.json) is missing" in _damaged(other)


@pytest.mark.parametrize("damage, words", [
    ("delete", "its Optuna study {db} is missing"),
    ("truncate", "its Optuna study {db} cannot be read (SQLite:"),
    ("random", "its Optuna study {db} cannot be read (SQLite: file is not a database)"),
])
def test_a_damaged_optuna_study_points_to_mlflow(tmp_path, damage, words):
    sdir = _search(tmp_path)
    db = sdir.path / "optuna.db"
    if damage == "delete":
        db.unlink()
    elif damage == "truncate":
        db.write_bytes(db.read_bytes()[:20000])
    else:
        db.write_bytes(os.urandom(8192))
    message = _damaged(sdir)
    assert words.format(db=db) in message
    assert "it cannot be resumed or exported from its folder; its trials stay in MLflow" \
           in message and "extune export --run <run id>" in message
    with pytest.raises(ConfigError, match="is damaged"):  # export reads the same study
        sdir.records()
    if damage == "delete":
        assert not db.exists()


def test_search_json_of_the_wrong_shape_is_one_line(tmp_path):
    sdir = _search(tmp_path)
    meta = json.loads((sdir.path / "search.json").read_text())
    cases = [([], "holds a list, not the mapping extune writes"),
             ({**meta, "experiment_path": None}, "its entry 'experiment_path' is a NoneType"),
             ({k: v for k, v in meta.items() if k != "settings"}, "'settings' is missing"),
             ({**meta, "experiment_path": "trials"}, "is not an absolute path")]
    for bad, words in cases:
        (sdir.path / "search.json").write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=words):
            SearchDir.load(sdir.path)
    (sdir.path / "search.json").write_text(json.dumps(
        {**meta, "settings": {**meta["settings"], "trials": "four"}}))
    with pytest.raises(ConfigError, match="its settings are not what extune writes"):
        SearchDir.load(sdir.path).settings  # noqa: B018
    failed = {"name": "s", "status": "failed", "error": "the store"}  # a failed start's marker
    (sdir.path / "search.json").write_text(json.dumps(failed))
    with pytest.raises(ConfigError, match="failed before any trial ran"):
        SearchDir.load(sdir.path).refuse_failed("start a new one")


def test_pickles_are_checked_without_running_them(tmp_path):
    path = tmp_path / "state.pkl"
    path.write_bytes(b"")
    assert "is empty" in pickle_problem(path)
    path.write_bytes(os.urandom(64))
    assert "cut short or not a pickle" in pickle_problem(path)
    path.write_bytes(pickle.dumps(RuntimeError("x"))[:-1])  # no STOP
    assert pickle_problem(path) is not None
    path.write_bytes(pickle.dumps({"a": [1, 2]}))
    assert pickle_problem(path) is None
    two = pickle.dumps({"head": 1}) + pickle.dumps({"a": list(range(100))})  # the searcher's
    path.write_bytes(two)
    assert pickle_problem(path) is None
    path.write_bytes(two[: len(two) - 20])  # the first whole, the second cut
    assert "cut short" in pickle_problem(path)
    assert ray_state_problem("s3://bucket/s/trials") is None  # left to Ray
    assert ray_state_problem(str(tmp_path / "none")) is None


def test_a_restore_ray_fails_stops_in_one_line_instead_of_starting_over():
    logger = logging.getLogger("test.restore")
    logger.addFilter(RestoreFailed("start a new search"))
    try:
        raise TypeError("cannot unpack non-iterable int object")
    except TypeError:
        with pytest.raises(ExtuneError, match=r"could not restore this search's state "
                                              r"\(TypeError: cannot unpack.*start a new search"):
            logger.exception("Failed to restore the run state.")
    logger.error("another message")  # passes


def test_storage_that_cannot_take_results_is_refused(tmp_path):
    check_storage(None)
    check_storage(str(tmp_path / "new" / "folder"))
    check_storage(f"file://{tmp_path}")
    for bad in ("/proc/x", "file:///proc/x"):
        with pytest.raises(ConfigError, match=r"cannot write the trial storage \(--storage\) "
                                              r"/proc/x"):
            check_storage(bad)
    with pytest.raises(ConfigError, match="--storage nosuchscheme://b/x cannot be reached"):
        check_storage("nosuchscheme://b/x")


# --------------------------------------------------------------------------- a real search

TINY = {"data.image_size": 16, "data.train_size": 200, "data.num_classes": 4,
        "data.test_size": 40, "model.backbone": "tiny_cnn", "optim.epochs": 3,
        "optim.batch_size": 32, "eval.explain_samples": 8, "eval.deletion_steps": 4,
        "eval.grid_images": 2, "eval.corruptions": ["contrast"]}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A search of 4 one-at-a-time trials, interrupted after its first."""
    import ray

    from extune.search.engine.run import run_search

    work = tmp_path_factory.mktemp("damaged")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        settings = SearchSettings(
            out=str(work / "runs"), name="s", space="ce", trials=4, max_concurrent=1,
            scheduler="none", sampler="random", live=False,
            tracking_uri=sqlite_store(work / "mlflow.db"),
            overrides={**TINY, "data.cache_dir": str(work / "cache")})
        result = run_search(settings, callbacks=[InterruptOnce(str(work / "flag"))])
    finally:
        ray.shutdown()  # the checks run before Ray: the tests see whether it started
    assert result.interrupted and result.count("complete") == 1
    return result.path


def _copy(search: Path, to: Path) -> Path:
    """A copy of a search folder that points at itself (its study and Ray's files)."""
    shutil.copytree(search, to)
    meta = json.loads((to / "search.json").read_text())
    meta.update(experiment_path=str(to / "trials"), optuna_storage=f"sqlite:///{to}/optuna.db")
    (to / "search.json").write_text(json.dumps(meta))
    return to


def _newest(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(pattern))[-1]


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "searcher-state-cut": (lambda s: _cut(_newest(s / "trials", "searcher-state-*.pkl")),
                           "searcher-state-", "is cut short", True),
    "optuna-db-deleted": (lambda s: (s / "optuna.db").unlink(),
                          "optuna.db is missing", "stay in MLflow", False),
    "experiment-state-empty": (
        lambda s: _newest(s / "trials", "experiment_state-*.json").write_text("{}"),
        "is not Ray's record of the trials", "", True),
    "tuner-pkl-deleted": (lambda s: (s / "trials" / "tuner.pkl").unlink(),
                          "tuner.pkl is missing", "", True),
    "search-gen-state-empty": (
        lambda s: _newest(s / "trials", "search_gen_state-*.json").write_bytes(b""),
        "search_gen_state-", "is empty", True),
    "search-json-list": (lambda s: (s / "search.json").write_text("[]"),
                         "search.json holds a list", "", False),
}


@pytest.mark.slow
def test_each_damaged_piece_of_a_real_search_is_named_before_ray(interrupted, tmp_path,
                                                                 capsys, monkeypatch):
    import ray

    monkeypatch.chdir(tmp_path)
    for name, (damage, first, second, exportable) in DAMAGES.items():
        copy = _copy(interrupted, tmp_path / name)
        damage(copy)
        assert main(["search", "--resume", str(copy)]) == 2, name
        out, err = capsys.readouterr()
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in out + err, (name, err)
        assert first in errors[0] and second in errors[0], (name, errors[0])
        assert not ray.is_initialized(), name  # found before Ray started
        status = json.loads((copy / "search.json").read_text())
        if isinstance(status, dict):
            assert status["status"] == "interrupted", name  # left as it was
        if exportable:  # what the message promises works
            assert "1 complete trial(s) can still be exported" in errors[0], name
            assert main(["export", str(copy), "-o", str(tmp_path / f"{name}.yaml")]) == 0
            assert (tmp_path / f"{name}.yaml").is_file()
        else:
            assert main(["export", str(copy), "-o", str(tmp_path / f"{name}.yaml")]) == 2
            assert not (tmp_path / f"{name}.yaml").exists()
        capsys.readouterr()


@pytest.mark.slow
def test_a_state_ray_cannot_restore_stops_in_one_line(interrupted, tmp_path, capsys):
    """A searcher state that is a whole pickle of the wrong thing passes the checks; Ray's
    restore fails on it, and the search stops in one line instead of starting over (it hung,
    deaf to SIGTERM)."""
    copy = _copy(interrupted, tmp_path / "wrong")
    _newest(copy / "trials", "searcher-state-*.pkl").write_bytes(pickle.dumps(42))
    assert main(["search", "--resume", str(copy)]) == 2
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out + err, err
    assert "Ray could not restore this search's state (TypeError" in errors[0]
    assert "1 complete trial(s) can still be exported" in errors[0]
