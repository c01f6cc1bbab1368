"""The MLflow journals of a study folder, for ``extune sync``
(:mod:`extune.tracking.sync`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from extune.errors import ConfigError
from extune.search import is_search_folder, search_journals
from extune.study.folder import STUDY_META
from extune.tracking.sync import Job

__all__ = ["study_journals", "is_study_folder"]


def is_study_folder(path: str | Path) -> bool:
    return (Path(path) / STUDY_META).is_file()


def study_journals(folder: str | Path) -> list[Job]:
    """Every search's journal, then the final runs' (with the study's tracker).

    Raises:
        ConfigError: not a study folder.
    """
    from extune.tracking.journal import TRACKING_DIR

    root = Path(folder).resolve()
    if not is_study_folder(root):
        raise ConfigError(f"{root} is not a study folder (no {STUDY_META})")
    jobs: list[Job] = []
    for folder in sorted(p for p in (root / "searches").glob("*") if is_search_folder(p)):
        jobs += search_journals(folder)
    jobs.append((root / "final" / TRACKING_DIR, lambda: _study_tracker(root)))
    return jobs


def _study_tracker(folder: Path) -> Any:
    from extune.study.folder import StudyDir
    from extune.study.run import study_tracker
    from extune.tracking.store import resolve_tracking_uri

    sdir = StudyDir.load(folder)
    uri = sdir.meta.get("tracking_uri") or resolve_tracking_uri(sdir.settings.tracking_uri)
    return study_tracker(sdir, uri, reopen=False)  # extune sync: no run turned RUNNING
