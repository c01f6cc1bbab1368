"""``extune sync DIR``: send the MLflow writes that a search, a study or an ``extune train``
left unsent (the store was down when it ended; see :mod:`extune.search.tracking.journal`).

:func:`sync_journals` sends any list of journals, each with the tracker its writes go to;
:func:`search_journals` lists a search folder's (a study lists its own with
:func:`extune.study.study_journals`, a training run's output folder with
:func:`extune.search.tracking.final.train_journals`), so that this module knows nothing of
studies or training runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extune.errors import ConfigError
from extune.search.tracking.journal import Journal, TrackingWriter, bounded_http_client

__all__ = ["SyncResult", "Job", "sync_journals", "search_journals", "is_search_folder"]

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

    @property
    def sent(self) -> int:
        return sum(s for s, _ in self.folders.values())

    @property
    def pending(self) -> int:
        return sum(p for _, p in self.folders.values())


def is_search_folder(path: str | Path) -> bool:
    from extune.search.folder import META_NAME

    return (Path(path) / META_NAME).is_file()


def search_journals(folder: str | Path) -> list[Job]:
    """The journal of a search folder with its search's tracker.

    Raises:
        ConfigError: not a search folder.
    """
    from extune.search.tracking.parent import TRACKING_DIR

    root = Path(folder).resolve()
    if not is_search_folder(root):
        raise ConfigError(f"{root} is not a search or study folder (no search.json or "
                          "study.json), nor an output folder of a tracked `extune train` (no "
                          "tracking/run.json); pass the folder `extune search` printed")
    return [(root / TRACKING_DIR, lambda: _search_tracker(root))]


def sync_journals(jobs: Sequence[Job], timeout: float = 60.0) -> SyncResult:
    """Send the unsent writes of each journal, in order.

    Args:
        jobs: journals and their trackers (:func:`search_journals`,
            :func:`extune.study.study_journals`).
        timeout: seconds to keep trying a store that does not answer.

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
        if unsent == 0:
            continue
        writer = TrackingWriter(make_tracker(), journal)
        pending = writer.close(timeout)
        result.folders[str(journal)] = (unsent - pending, pending)
    return result


def _search_tracker(folder: Path) -> Any:
    from extune.search.folder import SearchDir
    from extune.search.tracking.parent import search_tracker

    return search_tracker(SearchDir.load(folder))
