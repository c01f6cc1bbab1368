"""``extune sync DIR``: send the MLflow writes that a search or a study left unsent (the store
was down when it ended; see :mod:`extune.search.writer`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extune.errors import ConfigError
from extune.search.writer import Journal, TrackingWriter, bounded_http_client

__all__ = ["SyncResult", "sync_tracking"]


@dataclass
class SyncResult:
    """What a sync did: ``sent`` writes the store took, ``pending`` writes still unsent, per
    journal folder."""

    folders: dict[str, tuple[int, int]]

    @property
    def sent(self) -> int:
        return sum(s for s, _ in self.folders.values())

    @property
    def pending(self) -> int:
        return sum(p for _, p in self.folders.values())


def sync_tracking(path: str | Path, timeout: float = 60.0) -> SyncResult:
    """Send the unsent writes of a search folder, or of every search and the final runs of a
    study folder, in their order.

    Args:
        path: a folder written by ``extune search`` or ``extune study``.
        timeout: seconds to keep trying a store that does not answer.

    Raises:
        ConfigError: not a search or study folder.
        ServiceError: the tracking store cannot be reached at all.
    """
    from extune.search.study import STUDY_META
    from extune.search.tuner import TRACKING_DIR

    bounded_http_client()
    root = Path(path).resolve()
    jobs: list[tuple[Path, Any]] = []
    searches = [root] if (root / "search.json").is_file() else []
    if (root / STUDY_META).is_file():  # the study's searches, then its final runs
        searches = sorted(m.parent for m in root.glob("*/*/search.json"))
    for folder in searches:
        jobs.append((folder / TRACKING_DIR, lambda folder=folder: _search_tracker(folder)))
    if (root / STUDY_META).is_file():
        jobs.append((root / "final" / TRACKING_DIR, lambda: _study_tracker(root)))
    if not jobs:
        raise ConfigError(f"{root} is not a search or study folder (no search.json or "
                          f"{STUDY_META}); pass the folder `extune search` printed")
    result = SyncResult({})
    for journal, make_tracker in jobs:
        unsent = len(Journal(journal).unsent())
        if unsent == 0:
            continue
        writer = TrackingWriter(make_tracker(), journal)
        pending = writer.close(timeout)
        result.folders[str(journal)] = (unsent - pending, pending)
    return result


def _search_tracker(folder: Path) -> Any:
    from extune.search.store import SearchDir
    from extune.search.tuner import _tracker

    return _tracker(SearchDir.load(folder))


def _study_tracker(folder: Path) -> Any:
    from extune.search.services import resolve_tracking_uri
    from extune.search.study import StudyDir, _study_tracker

    sdir = StudyDir.load(folder)
    uri = sdir.meta.get("tracking_uri") or resolve_tracking_uri(sdir.settings.tracking_uri)
    return _study_tracker(sdir, uri)
