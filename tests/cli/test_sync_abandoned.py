"""``extune sync`` ends the runs a killed process left RUNNING, and never touches a folder a
live process writes (its lock)."""

from __future__ import annotations

import os
import signal

import pytest
from processes import BIN, start, stop, wait_for
from stores import sqlite_store

from extune.cli import main

pytestmark = pytest.mark.slow


def _run(uri: str):
    from extune.tracking.client import mlflow_client

    runs = mlflow_client(uri).search_runs(
        [e.experiment_id for e in mlflow_client(uri).search_experiments()],
        filter_string="tags.`extune.role` = 'final'")
    return runs[0] if runs else None


def test_sync_refuses_a_live_training_and_ends_the_run_of_a_killed_one(tiny_args, tmp_path,
                                                                       capsys):
    uri = sqlite_store(tmp_path / "mlflow.db")
    out = tmp_path / "run"
    args = [str(BIN / "extune"), "train", *tiny_args, "--set", "method=ce", "--set",
            "optim.epochs=200", "--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--tracking-uri", uri, "--out", str(out)]
    process = start(args, tmp_path / "train.log", cwd=tmp_path)
    try:
        wait_for(lambda: (out / "checkpoint.pt").is_file() and _run(uri) is not None,
                 "the training's first checkpoint and its MLflow run", timeout=240)
        assert main(["sync", str(out)]) == 2  # the training holds its folder
        assert "is in use" in capsys.readouterr().err
        os.kill(process.pid, signal.SIGKILL)  # no handler runs: the run stays RUNNING
        process.wait(timeout=30)
    finally:
        stop(process)
    assert _run(uri).info.status == "RUNNING"
    assert main(["sync", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ended 1 MLflow run(s) left RUNNING by a process that is gone" in printed, printed
    run = _run(uri)
    assert (run.info.status, run.data.tags["extune.state"]) == ("KILLED", "interrupted")
    assert main(["sync", str(out)]) == 0  # nothing more to do
    assert "nothing to send" in capsys.readouterr().out
