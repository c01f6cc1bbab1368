"""``extune sync DIR``: send the MLflow writes that a search, a study or an ``extune train``
left unsent (the store was down when it ended; see :mod:`extune.tracking.journal`).

:func:`sync_journals` sends any list of journals, each with the tracker its writes go to; a
search folder's are listed by :func:`extune.search.search_journals`, a study's by
:func:`extune.study.study_journals`, a training run's output folder's by
:func:`extune.tracking.training_run.train_journals`, so that this module knows nothing of
searches, studies or training runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extune.tracking.journal import Journal, TrackingWriter, bounded_http_client

__all__ = ["SyncResult", "Job", "sync_journals"]

Job = tuple[Path, Callable[[], Any]]
"""A journal folder and a function that returns the tracker its writes go to (called only when
the journal holds unsent writes)."""


@dataclass
class SyncResult:
    """What a sync did: ``sent`` writes the store took, ``pending`` writes still unsent, per
    journal folder; ``unreadable``: the lines of a journal that hold no readable write (cut
    short by a killed process), which could not be sent."""

    folders: dict[str, tuple[int, int]]
    unreadable: dict[str, list[int]] = field(default_factory=dict)
    abandoned: dict[str, int] = field(default_factory=dict)
    """Journal folder -> runs MLflow still had as RUNNING, ended KILLED (``abandoned=True``)."""

    @property
    def sent(self) -> int:
        return sum(s for s, _ in self.folders.values())

    @property
    def pending(self) -> int:
        return sum(p for _, p in self.folders.values())


def sync_journals(jobs: Sequence[Job], timeout: float = 60.0, *,
                  abandoned: bool = False) -> SyncResult:
    """Send the unsent writes of each journal, in order.

    Args:
        jobs: journals and their trackers (:func:`extune.search.search_journals`,
            :func:`extune.study.study_journals`).
        timeout: seconds to keep trying a store that does not answer.
        abandoned: then end the runs each tracker's search still has as RUNNING
            (:meth:`~extune.tracking.client.MlflowTracker.end_abandoned`): only when no process
            writes the folder (the caller holds its lock).

    Raises:
        ServiceError: the tracking store cannot be reached at all.
    """
    bounded_http_client()
    result = SyncResult({})
    for journal, make_tracker in jobs:
        lost = Journal(journal).unreadable_lines()
        if lost:
            result.unreadable[str(journal / "journal.jsonl")] = lost
        unsent = len(Journal(journal).unsent())
        tracker = make_tracker() if unsent or abandoned else None
        if unsent:
            writer = TrackingWriter(tracker, journal)
            pending = writer.close(timeout)
            result.folders[str(journal)] = (unsent - pending, pending)
            if pending:
                continue  # the store is down: nothing can be ended either
        if abandoned:
            ended = _end_abandoned(tracker)
            if ended:
                result.abandoned[str(journal)] = ended
    return result


def _end_abandoned(tracker: Any) -> int:
    """:meth:`~extune.tracking.client.MlflowTracker.end_abandoned`, 0 when the store does not
    answer (the sent writes are what matters; a later sync ends them)."""
    try:
        return tracker.end_abandoned()
    except Exception:  # MLflow, requests and SQLAlchemy raise many types
        return 0
