"""The MLflow writer: order kept, an outage ridden out (said once, caught up), unsent writes
kept on disk and sent by the next process, each epoch logged once. A fake tracker stands in for
MLflow so that the outage is exact, and the writers back off from 0.1 s (not 1 s) so that
the tests are fast; the backoff's shape is the same."""

from __future__ import annotations

import threading
import time

from extune.tracking.journal import WAIT_VARIABLE, Journal, Op, TrackingWriter, apply_op

FAST = 0.1
"""The writers' first backoff in these tests (seconds)."""


class FlakyTracker:
    """Records what reaches the "store"; raises ConnectionError while ``down`` is set."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.calls: list[tuple] = []
        self.children: dict[str, str] = {}
        self.steps: dict[str, list[int]] = {}

    def _store(self, *call) -> None:
        if self.down.is_set():
            raise ConnectionError("Connection refused")
        self.calls.append(call)

    def child_run(self, trial, *, name, params, tags):
        self._store("start", trial)
        created = trial not in self.children
        self.children.setdefault(trial, f"run-{trial}")
        return self.children[trial], created

    def parent_run(self):
        return "parent"

    def find_child(self, trial):
        return self.children.get(trial)

    def last_step(self, run):
        return max(self.steps.get(run, [0]))

    def log_metrics(self, run, metrics, step):
        self._store("metrics", run, step)
        self.steps.setdefault(run, []).append(step)

    def set_tags(self, run, tags):
        self._store("tags", run)

    def log_text(self, run, text, name):
        self._store("text", run, name)

    def log_artifact(self, run, path, folder=None):
        self._store("artifact", run)

    def rename(self, run, name):
        self._store("rename", run, name)

    def end(self, run, status):
        self._store("end", run, status)


def trial_ops(trial: str, epochs: int) -> list[Op]:
    ops = [Op("start", trial, name=trial, params={}, tags={})]
    ops += [Op("metrics", trial, metrics={"val/accuracy": 0.1 * e}, step=e)
            for e in range(1, epochs + 1)]
    return ops + [Op("end", trial, status="FINISHED")]


def test_writes_keep_their_order_and_nothing_is_left(tmp_path):
    tracker = FlakyTracker()
    writer = TrackingWriter(tracker, tmp_path)
    for op in trial_ops("a", 3) + trial_ops("b", 2):
        writer.submit(op)
    assert writer.close(timeout=10) == 0
    kinds = [c[0] for c in tracker.calls if c[0] != "tags"]
    assert kinds == ["start", "metrics", "metrics", "metrics", "end",
                     "start", "metrics", "metrics", "end"]
    assert tracker.steps == {"run-a": [1, 2, 3], "run-b": [1, 2]}
    assert not (tmp_path / "journal.jsonl").exists()


def test_an_outage_is_said_once_and_ridden_out(tmp_path):
    tracker, said = FlakyTracker(), []
    writer = TrackingWriter(tracker, tmp_path, warn=said.append, backoff_s=FAST)
    writer.submit(trial_ops("a", 1)[0])
    assert writer.flush(10)
    tracker.down.set()
    started = time.time()
    for op in trial_ops("a", 4)[1:]:
        writer.submit(op)  # returns at once: the search is never held up
    assert time.time() - started < 0.5
    time.sleep(3 * FAST)
    assert writer.pending == 5 and len(said) == 1 and "behind" in said[0]
    assert len(Journal(tmp_path).unsent()) == 5  # on disk while the store is away
    tracker.down.clear()
    assert writer.flush(60)
    assert writer.close(timeout=10) == 0
    assert tracker.steps == {"run-a": [1, 2, 3, 4]}
    assert len(said) == 2 and "caught up" in said[1]


def test_unsent_writes_wait_on_disk_for_the_next_process(tmp_path):
    tracker = FlakyTracker()
    said = []
    first = TrackingWriter(tracker, tmp_path, warn=said.append, backoff_s=FAST)
    for op in trial_ops("a", 2):
        first.submit(op)
    assert first.flush(10)
    tracker.down.set()
    for op in trial_ops("b", 3):
        first.submit(op)
    time.sleep(FAST)  # the writer finds the store down
    assert first.close(timeout=1) == 5  # the search ends while the store is down
    assert "waiting up to 1 s for the MLflow store to take 5 write(s)" in said[-1]
    assert [op.kind for op in Journal(tmp_path).unsent()] == [
        "start", "metrics", "metrics", "metrics", "end"]

    # a crash after the store took epoch 1 but before `sent` moved: sent twice, logged once
    tracker.down.clear()
    tracker.children["b"] = "run-b"
    tracker.steps["run-b"] = [1]
    second = TrackingWriter(tracker, tmp_path)  # `extune sync` or --resume
    assert second.close(timeout=10) == 0
    assert tracker.steps == {"run-a": [1, 2], "run-b": [1, 2, 3]}
    assert tracker.calls[-1] == ("end", "run-b", "FINISHED")
    assert not (tmp_path / "journal.jsonl").exists()


def test_a_line_cut_by_a_crash_is_ignored(tmp_path):
    journal = Journal(tmp_path)
    journal.append(Op("tags", None, tags={}))
    with (tmp_path / "journal.jsonl").open("a") as f:
        f.write('{"op": "tags", "tri')
    assert [op.seq for op in Journal(tmp_path).unsent()] == [1]


def test_a_write_for_a_trial_without_a_run_is_dropped_and_said_unless_marked(caplog):
    tracker = FlakyTracker()
    apply_op(tracker, Op("tags", "never-started", tags={"a": "1"}), {})
    assert "no MLflow run for trial never-started" in caplog.text
    caplog.clear()
    apply_op(tracker, Op("tags", "never-started", tags={"a": "1"}, if_run=True),
             {})  # e.g. a stop caught the trial before its start
    assert caplog.text == "" and tracker.calls == []


def test_a_journal_on_a_full_disk_keeps_the_writes_in_memory_and_says_so(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    tracker = FlakyTracker()
    said = []
    writer = TrackingWriter(tracker, tmp_path / "journal", warn=said.append)
    real_open = Path.open

    def full(self, *args, **kwargs):  # the journal's appends and the "sent" file fail
        if self.parent == tmp_path / "journal" and "r" not in (args[0] if args else "r"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full)
    monkeypatch.setattr(Path, "write_text", lambda self, text: full(self, "w"))
    for epoch in (1, 2, 3):
        writer.submit(Op("metrics", None, metrics={"m": 1.0}, step=epoch))
    assert writer.close(timeout=5) == 0  # the store took every write; the thread lived on
    assert [c[2] for c in tracker.calls if c[0] == "metrics"] == [1, 2, 3]
    assert sum("kept in memory" in s for s in said) == 1  # said once, naming the reason
    assert "No space left on device" in said[0]


def test_closing_retries_a_store_back_within_the_backoff_at_once():
    tracker = FlakyTracker()
    backoff = 0.25
    writer = TrackingWriter(tracker, None, warn=lambda text: None, backoff_s=backoff)
    tracker.down.set()
    writer.submit(Op("tags", None, tags={"a": "b"}))
    time.sleep(8 * backoff)  # the writer backs off: 1, 2, 4 ... its next try 8 to 16 away
    tracker.down.clear()
    started = time.time()
    assert writer.close(timeout=30) == 0
    assert time.time() - started < 6 * backoff  # not the rest of that backoff


def test_the_wait_for_a_store_that_is_gone_is_the_users_to_set(monkeypatch):
    tracker = FlakyTracker()
    tracker.down.set()
    said = []
    writer = TrackingWriter(tracker, None, warn=said.append, backoff_s=FAST)
    writer.submit(Op("tags", None, tags={"a": "b"}))
    time.sleep(FAST)
    monkeypatch.setenv(WAIT_VARIABLE, "0")
    started = time.time()
    assert writer.close(timeout=60) == 1  # left for extune sync at once, not after 60 s
    assert time.time() - started < 1 and "waiting up to 0 s" in said[-1]
    monkeypatch.setenv(WAIT_VARIABLE, "soon")  # not a number: the default, never a failure
    from extune.tracking.journal import wait_seconds

    assert wait_seconds(60.0) == 60.0


def test_an_op_is_one_journal_line_and_back():
    op = Op("metrics", "t1", metrics={"m": 0.5}, step=3, seq=7)
    line = op.to_json()
    assert line == {"op": "metrics", "trial": "t1", "metrics": {"m": 0.5}, "step": 3, "seq": 7}
    assert Op.from_json(line) == op
    import pytest

    with pytest.raises(ValueError, match="unknown tracking op 'delete'"):
        Op("delete")
