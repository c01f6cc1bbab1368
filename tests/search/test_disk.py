"""A full disk told apart from other failures, in one line where Ray would print a traceback;
Ray's files written whole or not at all; a state or error file it cut short caught before a
resume (fast; a real full disk is in test_full_disk.py)."""

from __future__ import annotations

import errno
import logging
import pickle
import sqlite3

import pytest

from extune.errors import ExtuneError
from extune.files import is_disk_full
from extune.search.connections import DiskFullOneLine, quiet_ray_env
from extune.search.engine.disk import (
    WholeFilesSystem,
    check_experiment_state,
    ray_storage,
    repair_error_files,
)


def test_full_disks_are_told_apart_from_other_errors():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    try:  # a library that wraps the OSError
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("saving the study failed") from e
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("bad value"))


def _logged(logger: logging.Logger, error: BaseException) -> str:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(logging.Formatter().format(record))

    handler = Keep()
    logger.addHandler(handler)
    try:
        try:
            raise error
        except BaseException:
            logger.error("Saving experiment state to storage at '%s' failed with exception: ",
                         "/s/trials", exc_info=True)
    finally:
        logger.removeHandler(handler)
    return records[0]


def test_ray_logs_a_full_disk_in_one_line_and_other_failures_with_their_traceback():
    quiet_ray_env()
    quiet_ray_env()  # twice: one filter
    logger = logging.getLogger("ray.tune.execution.experiment_state")
    assert sum(isinstance(f, DiskFullOneLine) for f in logger.filters) == 1

    full = _logged(logger, OSError(errno.ENOSPC, "No space left on device"))
    assert full == ("Saving experiment state to storage at '/s/trials' failed with exception: "
                    "[Errno 28] No space left on device")
    other = _logged(logger, PermissionError(errno.EACCES, "Permission denied"))
    assert "Traceback (most recent call last)" in other and "Permission denied" in other


def test_error_files_a_full_disk_cut_short_are_removed_before_a_resume(tmp_path):
    whole = tmp_path / "trial_a" / "error.pkl"
    cut = tmp_path / "trial_b" / "error.pkl"
    for path in (whole, cut):
        path.parent.mkdir()
    data = pickle.dumps(RuntimeError("the trial failed"))
    whole.write_bytes(data)
    cut.write_bytes(data[: len(data) // 2])
    (cut.parent / "error.txt").write_text("the trial failed")

    assert repair_error_files(str(tmp_path)) == [cut]
    assert whole.exists() and not cut.exists() and (cut.parent / "error.txt").exists()
    assert repair_error_files("s3://bucket/search") == []


def test_ray_storage_writes_whole_files_or_leaves_the_last_whole_one(tmp_path):
    import pyarrow.fs

    experiment = tmp_path / "search" / "trials"
    storage = ray_storage(str(experiment))
    assert storage["storage_path"] == str(experiment.parent) and storage["name"] == "trials"
    fs = storage["storage_filesystem"]
    state = experiment / "experiment_state-1.json"
    with fs.open_output_stream(str(state)) as out:  # the parent folder is made
        out.write(b'{"trials": [1, 2]}')
    assert state.read_bytes() == b'{"trials": [1, 2]}'

    source = tmp_path / "staging"
    source.mkdir()
    (source / "experiment_state-1.json").write_bytes(b'{"trials": [1, 2, 3]}' * 1000)
    pyarrow.fs.copy_files(str(source), str(experiment), destination_filesystem=fs)
    assert state.read_bytes() == b'{"trials": [1, 2, 3]}' * 1000  # replaced whole

    class FullDisk:  # a file whose disk fills after the first write
        def __init__(self, file):
            self.file, self.writes = file, 0

        def write(self, data):
            self.writes += 1
            if self.writes > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def __getattr__(self, name):  # close, flush, closed: the file's
            return getattr(self.file, name)

    stream = WholeFilesSystem().open(str(state), "wb")
    stream._file = FullDisk(stream._file)
    stream.write(b'{"trials": [')
    with pytest.raises(OSError, match="No space"):
        stream.write(b"1, 2, 3, 4]}")
    stream.close()
    assert state.read_bytes() == b'{"trials": [1, 2, 3]}' * 1000  # the last whole version
    assert [p.name for p in experiment.iterdir()] == [state.name]  # no partial file left


def test_bucket_storage_is_left_to_ray():
    assert ray_storage("s3://bucket/searches/s/trials") == {
        "storage_path": "s3://bucket/searches/s", "name": "trials"}


def test_a_cut_short_experiment_state_stops_a_resume_in_one_line(tmp_path):
    check_experiment_state(str(tmp_path))  # nothing to resume: nothing to say
    (tmp_path / "experiment_state-2026-12-04_10-00-00.json").write_text(
        '{"trial_data": [], "runner_data": {}}')
    check_experiment_state(str(tmp_path))
    (tmp_path / "experiment_state-2026-12-04_11-00-00.json").write_text('{"trials": [{"id')
    with pytest.raises(ExtuneError, match=r"experiment_state-2026-12-04_11-00-00.json, cannot "
                                          r"be read \(JSONDecodeError.*start a new search"):
        check_experiment_state(str(tmp_path))


def test_a_file_the_full_disk_does_not_let_open_leaves_nothing(tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open

    def full(path, mode="r", *args, **kwargs):
        if str(path).endswith(".partial"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full)
    with pytest.raises(OSError, match="No space"):
        WholeFilesSystem().open(str(tmp_path / "state.json"), "wb")
    assert list(tmp_path.iterdir()) == []


def test_a_search_saved_before_the_tracking_package_moved_still_unpickles():
    """Ray pickled an earlier search's callbacks under their old module names."""
    import importlib
    import pickle

    from extune.search.engine.disk import MOVED_MODULES, alias_moved_modules

    alias_moved_modules()
    for old, new in MOVED_MODULES.items():
        assert importlib.import_module(old) is importlib.import_module(new)
    # a pickle that names the old module of MlflowCallback's module-level class
    blob = pickle.dumps(importlib.import_module("extune.tracking.client").MlflowTracker,
                        protocol=0)  # names the class as text
    old = blob.replace(b"extune.tracking.client", b"extune.search.tracking.client")
    assert pickle.loads(old) is importlib.import_module("extune.tracking.client").MlflowTracker
