"""Each trial's params.json and result.json, written in place (not through Ray's staging folder,
which Ray copies whole at each save of a search's state: a cost that grew with the trials)."""

from __future__ import annotations

import errno
import json
import logging
import os
from types import SimpleNamespace

import numpy as np

from extune.search.engine import result_files
from extune.search.engine.result_files import (
    PARAMS_FILE,
    RESULT_FILE,
    RayLoggersOff,
    TrialResultFiles,
    append_whole_line,
    result_file_callbacks,
)


def test_a_trial_writes_its_params_once_and_a_line_per_report(tmp_path):
    trial = SimpleNamespace(path=str(tmp_path / "trial_0"), config={"optim.lr": 0.1, "b": [1]})
    files = TrialResultFiles()
    files.on_trial_start(0, [], trial)
    trial.config = {"changed": True}  # a restarted trial keeps the params it began with
    files.on_trial_start(0, [], trial)
    for epoch in (1, 2):
        files.on_trial_result(0, [], trial, {"epoch": epoch, "val/accuracy": np.float32(0.5),
                                             "loss": float("nan"), "config": {"x": np.int64(3)}})
    folder = tmp_path / "trial_0"
    assert json.loads((folder / PARAMS_FILE).read_text()) == {"b": [1], "optim.lr": 0.1}
    lines = [json.loads(line) for line in (folder / RESULT_FILE).read_text().splitlines()]
    assert lines == [{"epoch": e, "val/accuracy": 0.5, "loss": None, "config": {"x": 3}}
                     for e in (1, 2)]  # standard JSON: NaN as null, NumPy as numbers


def test_a_report_the_disk_cuts_short_leaves_the_last_whole_line(tmp_path, monkeypatch, caplog):
    path = tmp_path / RESULT_FILE
    append_whole_line(path, '{"epoch": 1}\n')
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(result_files.os, "write", half_then_full)
    trial = SimpleNamespace(path=str(tmp_path), config={})
    files = TrialResultFiles()
    with caplog.at_level(logging.WARNING, logger=result_files.__name__):
        for epoch in (2, 3):  # the search goes on (its disk guard stops it), one warning
            files.on_trial_result(0, [], trial, {"epoch": epoch})
    assert path.read_text() == '{"epoch": 1}\n'
    assert len(caplog.records) == 1 and "No space left" in caplog.records[0].getMessage()


def test_ray_loggers_are_off_while_a_local_search_fits_and_left_to_ray_for_a_bucket(
        tmp_path, monkeypatch):
    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", raising=False)
    assert result_file_callbacks("s3://bucket/searches/demo") == []
    [callback] = result_file_callbacks(str(tmp_path / "trials"))
    assert isinstance(callback, TrialResultFiles)
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ  # not before the fit

    class Tuner:
        def fit(self):
            self.seen = os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
            return "results"

    tuner = Tuner()
    assert RayLoggersOff(tuner).fit() == "results" and tuner.seen == "1"  # while it fits
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ  # a user's own run after
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")
    RayLoggersOff(tuner).fit()
    assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "0"  # as it was


def test_an_ended_trials_empty_staging_folder_goes_and_one_with_files_stays(tmp_path):
    empty, full = tmp_path / "staging_a", tmp_path / "staging_b"
    empty.mkdir()
    full.mkdir()
    (full / "error.txt").write_text("kept")
    files = TrialResultFiles()
    for folder in (empty, full, tmp_path / "gone"):
        files.on_trial_complete(0, [], SimpleNamespace(local_path=str(folder)))
    assert not empty.exists() and (full / "error.txt").exists()
