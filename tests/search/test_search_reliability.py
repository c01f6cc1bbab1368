"""What long searches on shared infrastructure meet, with real processes: the tracking server
down until the search ends (then ``extune sync``), the driver killed with SIGKILL while Ray's
processes linger (then ``--resume``), and two searches at once on one store and one ``--out``.
A search stopped with SIGTERM or SIGHUP (as Slurm, Kubernetes, ``timeout`` and ``ray job stop``
do) is tests/cli/test_signals.py's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import free_port, http_ok, mlflow_server, search_runs, start, stop, wait_for
from stores import sqlite_store

pytestmark = pytest.mark.slow

TINY = ["data.image_size=16", "data.train_size=200", "data.num_classes=4", "data.test_size=40",
        "model.backbone=tiny_cnn", "optim.batch_size=32", "eval.explain_samples=8",
        "eval.corruptions=[contrast]", "eval.grid_images=2"]


def search_args(work: Path, name: str, *extra: str, epochs: int = 3, trials: int = 3) -> list:
    """One trial at a time: each trial's worker process costs about 6 s of CPU to start (torch,
    torch._dynamo at the first optimizer, torchmetrics), and what is tested here is not how
    trials share the machine."""
    sets = [a for kv in [*TINY, f"optim.epochs={epochs}", f"data.cache_dir={work / 'cache'}"]
            for a in ("--set", kv)]
    return [sys.executable, "-m", "extune.cli", "search", "--space", "ce", "--trials",
            str(trials), "--scheduler", "none", "--max-concurrent", "1", "--sampler", "random",
            "--no-live", "--name", name, "--out", str(work / "runs"), *sets, *extra]


def check_every_epoch_once(uri: str, search_dir: Path, trials: int, epochs: int) -> None:
    """MLflow holds the parent FINISHED and each trial FINISHED with epochs 1..N once."""
    from extune.tracking.client import mlflow_client

    runs = search_runs(uri, search_dir)
    parents = [r for r in runs if r.data.tags.get("extune.role") == "search"]
    children = [r for r in runs if r.data.tags.get("extune.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == trials
    client = mlflow_client(uri)
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["extune.state"] == "complete"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/accuracy")]
        assert sorted(steps) == list(range(1, epochs + 1)), (run.info.run_name, steps)


def test_tracking_server_down_until_the_search_ends_then_sync(tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = mlflow_server(tmp_path, port)
    search = None
    try:
        wait_for(lambda: http_ok(f"{uri}/health"), "the MLflow server", timeout=120)
        # the store stays down: waiting 60 s for it at the end (the default) proves nothing more
        env = {**os.environ, "EXTUNE_TRACKING_WAIT_S": "3"}
        search = start(search_args(tmp_path, "outage", "--tracking-uri", uri),
                       tmp_path / "search.log", cwd=tmp_path, env=env)
        runs = tmp_path / "runs" / "outage"
        wait_for(lambda: any(runs.glob("trials/*/result.json"))
                 and any(p.stat().st_size for p in runs.glob("trials/*/result.json")),
                 "the first epoch", timeout=240)
        stop(server)  # down from the first epoch until after the search ended
        started = time.time()
        assert search.wait(timeout=600) == 0, (tmp_path / "search.log").read_text()[-3000:]
        elapsed = time.time() - started
        log = (tmp_path / "search.log").read_text()
        assert log.count("MLflow tracking is behind") == 1, log[-3000:]
        assert "waiting up to 3 s for the MLflow store" in log  # not silent while it waits
        assert "extune sync" in log and (runs / "tracking" / "journal.jsonl").is_file()
        summary = (runs / "summary.csv").read_text()
        assert summary.count("complete") == 3  # the trials did not wait for the store
        assert elapsed < 120

        server = mlflow_server(tmp_path, port)
        wait_for(lambda: http_ok(f"{uri}/health"), "the MLflow server again", timeout=120)
        done = subprocess.run([sys.executable, "-m", "extune.cli", "sync", str(runs)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "sent" in done.stdout
        check_every_epoch_once(uri, runs, trials=3, epochs=3)
        assert not (runs / "tracking" / "journal.jsonl").exists()
        again = subprocess.run([sys.executable, "-m", "extune.cli", "sync", str(runs)],
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and "nothing to send" in again.stdout
    finally:
        for proc in (search, server):
            if proc is not None:
                stop(proc)


def test_killed_driver_resumes_with_every_trial_once_and_no_orphan_run(tmp_path):
    import optuna

    uri = sqlite_store(tmp_path / "mlflow.db")
    args = search_args(tmp_path, "crash", "--tracking-uri", uri, epochs=4, trials=4)
    first = start(args, tmp_path / "first.log", cwd=tmp_path)
    runs = tmp_path / "runs" / "crash"
    try:
        wait_for(lambda: sum(p.stat().st_size > 0 for p in runs.glob("trials/*/result.json"))
                 >= 2, "two trials reporting", timeout=300)
        os.kill(first.pid, signal.SIGKILL)  # the driver only: its Ray processes linger
        first.wait(timeout=30)
        resumed = subprocess.run([*args[:4], "--resume", str(runs)], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    finally:
        stop(first)  # the dead driver's lingering Ray processes (its session)

    study = optuna.load_study(study_name="crash", storage=f"sqlite:///{runs / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    # a trial caught by the crash ends FAIL (Ray restarts it and it fails, or it started after
    # Ray's last saved state and is failed on restore); it counts toward --trials
    assert "RUNNING" not in states and states.count("COMPLETE") >= 3
    assert states.count("COMPLETE") + states.count("FAIL") >= 4
    mlflow = [r for r in search_runs(uri, runs) if r.data.tags.get("extune.role") == "trial"]
    assert all(r.info.status != "RUNNING" for r in mlflow), [
        (r.info.run_name, r.info.status) for r in mlflow]
    numbers = [r.data.tags["extune.optuna_trial"] for r in mlflow]
    assert len(numbers) == len(set(numbers))  # no trial recorded twice
    complete = {str(t.number) for t in study.trials if t.state.name == "COMPLETE"}
    assert complete <= set(numbers)
    for run in mlflow:
        if run.data.tags["extune.optuna_trial"] not in complete:  # caught by the crash
            assert run.info.status == "FAILED", run.info.run_name
            assert run.data.tags["extune.state"] == "failed" and run.data.tags["extune.error"]


def test_two_searches_at_once_on_one_store_and_one_out(tmp_path):
    uri = sqlite_store(tmp_path / "mlflow.db")
    procs = {name: start(search_args(tmp_path, name, "--tracking-uri", uri, epochs=2),
                         tmp_path / f"{name}.log", cwd=tmp_path) for name in ("left", "right")}
    same = start(search_args(tmp_path, "left", "--tracking-uri", uri, epochs=2),
                 tmp_path / "same.log", cwd=tmp_path)
    try:
        codes = {name: p.wait(timeout=900) for name, p in procs.items()}
        same_code = same.wait(timeout=900)
    finally:
        for p in (*procs.values(), same):
            stop(p)
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("left", "right", "same")}
    # the second "left" started at once: one of the two got the folder, the other refused
    refused = [n for n, c in [("left", codes["left"]), ("same", same_code)] if c != 0]
    assert len(refused) == 1, logs
    assert "already holds a search" in logs[refused[0]]
    assert codes["right"] == 0, logs["right"][-3000:]
    for name in ("left", "right"):
        check_every_epoch_once(uri, tmp_path / "runs" / name, trials=3, epochs=2)

