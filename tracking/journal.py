"""A search's MLflow writes, off Tune's event loop, in order, and kept on disk until sent.

Why by hand: Ray's ``MLflowLoggerCallback`` writes inside Tune's event loop with the client's
default retries (minutes per call while a server is down, every trial's bookkeeping stalled),
and nothing in MLflow's client queues writes across an outage or a driver restart.

How: :class:`~extune.tracking.callback.MlflowCallback` turns each Tune event into an
:class:`Op` (``start``, ``metrics``, ``tags``, ``artifact``, ``best``, ``end``; the run of
``extune train`` adds ``model`` and ``link``: :mod:`~extune.tracking.training_run`), appends it
to the journal ``<folder>/journal.jsonl`` and queues it. One writer thread applies the ops in
order and records the last one the store took in ``<folder>/sent``. When the store does not
answer, the writer says once that tracking is behind, keeps the ops (in memory and in the
journal) and retries with backoff; it says so again when it has caught up. Ops still unsent when
the search ends stay in the journal: the next ``--resume`` or ``extune sync DIR`` sends them.
Metrics are logged once per (run, epoch) even when an op is sent twice (a crash between the
store taking it and ``sent`` being written): the writer skips epochs the run already has.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from extune.errors import one_line

__all__ = ["TRACKING_DIR", "FLUSH_TIMEOUT_S", "Op", "Journal", "TrackingWriter", "writer_for",
           "close_writer", "apply_op", "HTTP_TIMEOUT_S", "WAIT_VARIABLE", "wait_seconds",
           "resolve_trial_links"]

log = logging.getLogger(__name__)

TRACKING_DIR = "tracking"
"""Folder of a search, study or training run folder that holds the MLflow writes not yet sent
(the journal and its files)."""
FLUSH_TIMEOUT_S = 60.0
"""How long a command that ends waits for an unreachable tracking store before it leaves the
unsent writes in its journal (``extune sync`` sends them); the environment variable
:data:`WAIT_VARIABLE` sets another (0: do not wait, e.g. a CI job whose store is gone)."""
WAIT_VARIABLE = "EXTUNE_TRACKING_WAIT_S"

HTTP_TIMEOUT_S = 15
"""Timeout of one MLflow HTTP request from the writer; the writer retries, not the client."""
_PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
              "INVALID_STATE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED"}
_MAX_BACKOFFS = 30.0


@dataclass(frozen=True)
class Op:
    """One MLflow write of a search: what, for which run, with what.

    Attributes:
        kind: ``start`` (a trial's run: ``name``, ``params``, ``tags``, ``config_yaml``),
            ``metrics`` (``metrics`` at ``step``; ``once_per_step``: skip a step the run has),
            ``tags``, ``artifact`` (``path`` under ``dir``; ``spooled``: delete it once sent),
            ``best`` (tag the parent with ``best_trial``'s run), ``end`` (``status``; ``name``:
            rename first), ``model`` (the checkpoint ``path`` as the MLflow model ``dir`` of
            the run, at ``step``; ``register``: add it to the Model Registry under that name),
            ``link`` (tell the run ``link_run`` of a search, its parent or a trial, that the
            run ``name`` was trained from it).
        trial: the Tune trial id of the run; ``None``: the search's parent run (or the run of
            ``extune train``).
        if_run: apply only where the run exists (a trial a stop caught before it started).
        seq: the journal's number (set when journaled).
    """

    kind: str
    trial: str | None = None
    name: str | None = None
    params: dict[str, Any] | None = None
    tags: dict[str, Any] | None = None
    config_yaml: str | None = None
    metrics: dict[str, float] | None = None
    step: int = 0
    once_per_step: bool = True
    path: str | None = None
    dir: str | None = None
    spooled: bool = False
    best_trial: str | None = None
    status: str | None = None
    register: str | None = None
    link_run: str | None = None
    if_run: bool = False
    seq: int = 0

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise ValueError(f"unknown tracking op {self.kind!r}")

    def to_json(self) -> dict[str, Any]:
        """The journal line: ``{"op": kind, "trial": ..., <the fields that are set>}``."""
        defaults = {f.name: f.default for f in fields(self)}
        data = {k: v for k, v in asdict(self).items() if k == "trial" or v != defaults[k]}
        return {"op": data.pop("kind"), **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Op:
        known = {f.name for f in fields(cls)}
        return cls(kind=data["op"], **{k: v for k, v in data.items() if k in known})


OP_KINDS = ("start", "metrics", "tags", "artifact", "best", "end", "model", "link")


def bounded_http_client() -> None:
    """One try per MLflow HTTP request, :data:`HTTP_TIMEOUT_S` each (unless the user set the
    variables): the writer's own retries replace the client's minutes of backoff. Also keeps
    MLflow from printing a link line for every run it ends."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_S))
    # no "🏃 View run ... at: http://..." line per ended run (extune prints its own links),
    # and one request less per run
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


class Journal:
    """Ops on disk: ``journal.jsonl`` (one op per line, numbered by ``seq``) and ``sent`` (the
    last ``seq`` the store took). ``folder=None``: in memory only."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._lock = threading.Lock()
        self._seq = max((op.seq for op in self._read()), default=0)
        self._cut_end = self._ends_cut()

    @property
    def _ops_file(self) -> Path | None:
        return self.folder / "journal.jsonl" if self.folder else None

    def _read(self) -> list[Op]:
        return self._lines()[0]

    def _lines(self) -> tuple[list[Op], list[int]]:
        """The ops of the journal, and the numbers (from 1) of the lines that are not one: a
        line cut short by a process killed while it wrote (its write is lost; the lines after
        it, written by the next process, still count)."""
        if self._ops_file is None or not self._ops_file.is_file():
            return [], []
        ops, unreadable = [], []
        for number, line in enumerate(self._ops_file.read_text(errors="replace").splitlines(),
                                      start=1):
            try:
                ops.append(Op.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError, AttributeError):
                unreadable.append(number)
        return ops, unreadable

    def unreadable_lines(self) -> list[int]:
        """The journal's lines that hold no readable write (numbered from 1)."""
        return self._lines()[1]

    def _ends_cut(self) -> bool:
        """Whether the journal's last line lacks its end (the next write starts a new line)."""
        try:
            with self._ops_file.open("rb") as f:  # type: ignore[union-attr]
                f.seek(-1, os.SEEK_END)
                return f.read(1) != b"\n"
        except (OSError, AttributeError):  # no file, an empty one, memory only
            return False

    def sent(self) -> int:
        if self.folder is None:
            return 0
        try:
            return int((self.folder / "sent").read_text())
        except (OSError, ValueError):
            return 0

    def unsent(self) -> list[Op]:
        last = self.sent()
        return [op for op in self._read() if op.seq > last]

    def append(self, op: Op) -> Op:
        """Number ``op`` and write it to the journal. A journal that cannot be written (a full
        disk) keeps the op in memory only: :attr:`write_error` says why."""
        with self._lock:
            self._seq += 1
            op = replace(op, seq=self._seq)
            if self._ops_file is not None:
                try:
                    self.folder.mkdir(parents=True, exist_ok=True)
                    with self._ops_file.open("a") as f:
                        start = "\n" if self._cut_end else ""  # not onto a cut line
                        f.write(start + json.dumps(op.to_json(), default=str) + "\n")
                    self._cut_end = False
                except OSError as e:
                    self.write_error = e
        return op

    write_error: OSError | None = None
    """Why the journal could not be written last (the ops are then in memory only)."""

    def mark_sent(self, seq: int) -> None:
        if self.folder is None:
            return
        tmp = self.folder / "sent.tmp"
        try:
            tmp.write_text(str(seq))
            os.replace(tmp, self.folder / "sent")
        except OSError as e:  # a full disk: an op may be sent twice later, which is harmless
            self.write_error = e

    def clear_if_sent(self) -> None:
        """Drop the files once everything was sent (a finished search keeps no journal)."""
        if self.folder is None or self.unsent():
            return
        with self._lock:
            for name in ("journal.jsonl", "sent"):
                (self.folder / name).unlink(missing_ok=True)
            self._seq = 0


class TrackingWriter:
    """One thread that applies a tracker's ops in order (see the module docstring).

    Args:
        tracker: the :class:`~extune.tracking.client.MlflowTracker` of the search.
        folder: the journal's folder (``None``: memory only).
        warn: how the writer tells the user that tracking is behind or caught up.
        backoff_s: the first wait before retrying a store that does not answer; it doubles up
            to 30 of them (1 s: 1, 2, 4 ... 30 s), and a closing writer retries every 2 of them.
    """

    def __init__(self, tracker: Any, folder: str | Path | None,
                 warn: Callable[[str], None] | None = None, backoff_s: float = 1.0) -> None:
        self.tracker = tracker
        self.backoff_s = backoff_s
        self.journal = Journal(folder)
        self.warn = warn or (lambda text: log.warning("%s", text))
        self._queue: queue.Queue[Op | None] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._pending = 0
        self._count_lock = threading.Lock()
        self._behind_since: float | None = None
        self._give_up_at: float | None = None
        self._steps: dict[str, int] = {}
        self._said_memory_only = False
        self._wake = threading.Event()  # set by close(): retry a silent store at once
        for op in self.journal.unsent():  # left by a previous process: sent first
            self._enqueue(op)
        self._thread = threading.Thread(target=self._loop, name="extune-mlflow-writer",
                                        daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Ops not yet taken by the store."""
        return self._pending

    def submit(self, op: Op) -> None:
        """Journal and queue one op (returns at once)."""
        journaled = self.journal.append(op)
        if self.journal.write_error is not None and not self._said_memory_only:
            self._said_memory_only = True
            self.warn(f"cannot write the MLflow journal in {self.journal.folder} "
                      f"({self.journal.write_error.strerror or self.journal.write_error}): "
                      "tracking writes are kept in memory until the store takes them")
        self._enqueue(journaled)

    def _enqueue(self, op: Op) -> None:
        with self._count_lock:
            self._pending += 1
            self._idle.clear()
        self._queue.put(op)

    def flush(self, timeout: float) -> bool:
        """Wait until every op was sent; ``False`` if some are still pending after
        ``timeout`` seconds."""
        return self._idle.wait(timeout)

    def close(self, timeout: float) -> int:
        """Send what is queued (trying for at most ``timeout`` seconds while the store does not
        answer, or :data:`WAIT_VARIABLE`'s seconds where set), stop the thread; returns the ops
        left unsent (kept in the journal). Behind at that moment, it says how long it waits."""
        timeout = wait_seconds(timeout)
        if self._behind_since is not None and self._pending:
            self.warn(f"waiting up to {timeout:.0f} s for the MLflow store to take "
                      f"{self._pending} write(s) ({WAIT_VARIABLE} sets the wait); what it "
                      "has not taken by then waits for `extune sync`")
        self._give_up_at = time.time() + timeout
        self._wake.set()  # a writer waiting out its backoff tries again now
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout=HTTP_TIMEOUT_S + 5)
        if self._pending == 0:
            self.journal.clear_if_sent()
        return self._pending

    # ----------------------------------------------------------------- the thread
    def _loop(self) -> None:
        while True:
            op = self._queue.get()
            if op is None:
                return
            if not self._send(op):
                return  # giving up: this op and the rest stay in the journal
            self.journal.mark_sent(op.seq)  # never raises: the thread must not die
            with self._count_lock:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.set()

    def _send(self, op: Op) -> bool:
        """Apply ``op``, retrying while the store does not answer; ``False``: gave up."""
        delay = self.backoff_s
        while True:
            try:
                apply_op(self.tracker, op, self._steps)
                if self._behind_since is not None:
                    self.warn(f"MLflow tracking caught up after "
                              f"{time.time() - self._behind_since:.0f} s")
                    self._behind_since = None
                return True
            except Exception as e:  # MLflow, requests and SQLAlchemy raise many types
                if permanent_error(e):
                    log.warning("MLflow rejected a write (%s): %s", op.kind, one_line(e, 300))
                    return True
                if self._behind_since is None:
                    self._behind_since = time.time()
                    self.warn(f"MLflow tracking is behind ({one_line(e, 160)}); the search goes "
                              f"on, and {self._pending} write(s) are kept in "
                              f"{self.journal.folder or 'memory'} until the store answers "
                              "(or `extune sync` sends them)")
                if self._give_up_at is not None and time.time() >= self._give_up_at:
                    return False
                # closing: retry every second or two, so that a store back shortly before the
                # search ends gets the writes (a 30 s backoff would sleep past it)
                if self._wake.wait(delay) or self._give_up_at is not None:
                    self._wake.clear()
                    delay = min(delay, 2 * self.backoff_s)
                else:
                    delay = min(delay * 2, _MAX_BACKOFFS * self.backoff_s)


def wait_seconds(default: float) -> float:
    """How long an ending command waits for an unreachable store: :data:`WAIT_VARIABLE`, else
    ``default`` (also when the variable is not a number of seconds >= 0: said, but the work is
    done by then and must not fail over it)."""
    from extune.defaults import seconds_from_env

    try:
        seconds = seconds_from_env(WAIT_VARIABLE)
    except ValueError as e:
        log.warning("%s; waiting %.0f s", e, default)
        return default
    return default if seconds is None else seconds


def permanent_error(e: BaseException) -> bool:
    """Whether retrying ``e`` cannot help (the store answered and refused the write)."""
    return getattr(e, "error_code", None) in _PERMANENT


# ------------------------------------------------------------------ applying ops
def apply_op(tracker: Any, op: Op, steps: dict[str, int]) -> None:
    """Perform one op on the store.

    Args:
        tracker: the search's tracker (finds runs by tag, so any process can apply any op).
        op: the write.
        steps: run id -> last logged epoch, filled on first use from the run's history.
    """
    if op.kind == "start":
        run_id, created = tracker.child_run(op.trial, name=op.name, params=op.params or {},
                                            tags=op.tags or {})
        if created:
            steps[run_id] = 0
            if op.config_yaml:
                tracker.log_text(run_id, op.config_yaml, "config.yaml")
        tracker.set_tags(run_id, {"extune.state": "running"})
        return
    run_id = tracker.parent_run() if op.trial is None else tracker.find_child(op.trial)
    if run_id is None:
        if not op.if_run:  # a write for a trial that may never have started
            log.warning("no MLflow run for trial %s; dropped a %s write", op.trial, op.kind)
        return
    _APPLY[op.kind](tracker, run_id, op, steps)


def _metrics(tracker: Any, run_id: str, op: Op, steps: dict[str, int]) -> None:
    if op.once_per_step:
        if run_id not in steps:
            steps[run_id] = tracker.last_step(run_id)
        if op.step <= steps[run_id]:
            return  # sent before (a resumed search replays its last epoch)
    tracker.log_metrics(run_id, op.metrics or {}, op.step)
    if op.once_per_step:
        steps[run_id] = op.step


def _artifact(tracker: Any, run_id: str, op: Op, steps: dict[str, int]) -> None:
    path = Path(op.path or "")
    if path.is_file():
        tracker.log_artifact(run_id, path, op.dir)
        if op.spooled:
            path.unlink(missing_ok=True)


def _best(tracker: Any, run_id: str, op: Op, steps: dict[str, int]) -> None:
    child = tracker.find_child(op.best_trial)
    if child:
        tracker.set_tags(run_id, {"extune.best_run_id": child})


def _end(tracker: Any, run_id: str, op: Op, steps: dict[str, int]) -> None:
    if op.name:
        tracker.rename(run_id, op.name)
    tracker.end(run_id, op.status)


def _model(tracker: Any, run_id: str, op: Op, steps: dict[str, int]) -> None:
    from extune.errors import ExtuneError
    from extune.tracking.logged_model import log_checkpoint_model

    try:
        log_checkpoint_model(tracker, run_id, Path(op.path or ""), name=op.dir or "model",
                             register=op.register, step=op.step)
    except ExtuneError as e:  # the checkpoint is gone or unreadable: no retry can help
        log.warning("no MLflow model logged for %s: %s", op.path, one_line(e, 300))


def _link(tracker: Any, run_id: str, op: Op, steps: dict[str, int]) -> None:
    if op.link_run:
        tracker.add_final_run(op.link_run, run_id, op.name or run_id)


def _tags(tracker: Any, run_id: str, op: Op, steps: dict[str, int]) -> None:
    tags = {k: resolve_trial_links(tracker, v) if isinstance(v, str) and _TRIAL_LINK.search(v)
            else v for k, v in (op.tags or {}).items()}
    tracker.set_tags(run_id, tags)


_TRIAL_LINK = re.compile(r"\[([^\]]*)\]\(trial:([^)]*)\)")


def resolve_trial_links(tracker: Any, text: str) -> str:
    """``[trial-003](trial:<Tune trial id>)`` in a description made a link to the trial's run
    (:func:`~extune.tracking.client.run_page`), or plain text where the trial has no run: a
    search's description names its trials before it knows their runs' ids."""
    from extune.tracking.client import run_page

    def link(found: re.Match) -> str:
        run_id = tracker.find_child(found.group(2)) if found.group(2) else None
        if run_id is None:
            return found.group(1)
        return f"[{found.group(1)}]({run_page(tracker.experiment_id, run_id)})"

    return _TRIAL_LINK.sub(link, text)


_APPLY: dict[str, Callable[[Any, str, Op, dict[str, int]], None]] = {
    "metrics": _metrics, "artifact": _artifact, "best": _best, "end": _end,
    "model": _model, "link": _link, "tags": _tags}


# ------------------------------------------------------------------ one per folder
_WRITERS: dict[str, TrackingWriter] = {}
_WRITERS_LOCK = threading.Lock()


def writer_for(tracker: Any, folder: str | Path | None,
               warn: Callable[[str], None] | None = None) -> TrackingWriter:
    """The process's writer of a journal folder (a Tune callback restored from Ray's saved
    state and the search driver share it)."""
    key = str(Path(folder).resolve()) if folder is not None else f"memory:{id(tracker)}"
    with _WRITERS_LOCK:
        if key not in _WRITERS:
            _WRITERS[key] = TrackingWriter(tracker, folder, warn)
        return _WRITERS[key]


def close_writer(folder: str | Path, timeout: float) -> int:
    """Close the folder's writer if this process has one; returns the ops left unsent."""
    key = str(Path(folder).resolve())
    with _WRITERS_LOCK:
        writer = _WRITERS.pop(key, None)
    return writer.close(timeout) if writer is not None else 0
