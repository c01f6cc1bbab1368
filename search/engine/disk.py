"""A search on a disk that fills: stopped in time, resumable, said in one line.

:class:`DiskGuard` is a Tune callback on the driver. After every step of Tune's loop (and when a
trial fails) it looks at the free space of the disks the search writes to: the search folder
(Ray's results and checkpoints, the Optuna study, the MLflow journal) and the temporary folder
where trials train. Below :data:`~extune.files.MIN_FREE_BYTES` it stops the experiment as Ctrl-C
does (Ray Tune saves its state and keeps the running trials resumable), before writes fail half
way; the search then raises :class:`~extune.errors.DiskFullError` with the way on. A disk that
fills faster than that (a failure Tune or Optuna raises) is recognised by
:func:`~extune.files.is_disk_full` and ends the same way.
"""

from __future__ import annotations

import logging
import signal
import tempfile
from pathlib import Path
from typing import Any

from ray.tune import Callback

from extune.errors import DiskFullError
from extune.files import MIN_FREE_BYTES, free_bytes
from extune.search.folder import SearchDir
from extune.search.tracking.parent import mark_interrupted

__all__ = ["DiskGuard", "full_disk", "reset", "repair_error_files", "watched_folders",
           "raise_if_disk_full"]

log = logging.getLogger(__name__)

_FULL: dict[str, int] = {}
"""Disks a guard found full in this process (folder -> free bytes): read by the search after
Tune returns (a guard restored from Ray's saved state is another object)."""


def full_disk() -> tuple[str, int] | None:
    """The folder (and its free bytes) a guard of this process stopped a search for."""
    return next(iter(_FULL.items()), None)


def reset() -> None:
    """Forget what the guards found (a new search in the same process)."""
    _FULL.clear()


class DiskGuard(Callback):
    """Stop the search, resumable, when a disk it writes to runs low (module docstring).

    Args:
        folders: local folders whose disks are watched (URIs are skipped).
        min_free: bytes below which the search stops.
    """

    def __init__(self, folders: list[str], min_free: int = MIN_FREE_BYTES) -> None:
        self.folders = [f for f in folders if "://" not in f]
        self.min_free = min_free
        self._stopping = False

    def _check(self) -> None:
        if self._stopping:
            return
        for folder in self.folders:
            free = free_bytes(folder)
            if free is not None and free < self.min_free:
                self._stopping = True
                _FULL[folder] = free
                log.warning("the disk of %s is (nearly) full: stopping the search", folder)
                signal.raise_signal(signal.SIGINT)  # Tune stops as on Ctrl-C: resumable
                return

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._check()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check()

    def __getstate__(self) -> dict[str, Any]:  # Ray saves callbacks with the experiment
        return {**self.__dict__, "_stopping": False}


def watched_folders(search_folder: str | Path, experiment_path: str) -> list[str]:
    """The search folder, Ray's storage of its trials and the temporary folder trials train in."""
    return sorted({str(search_folder), experiment_path, tempfile.gettempdir()})


def repair_error_files(experiment_path: str) -> list[Path]:
    """Remove the trials' ``error.pkl`` files that a full disk cut short, before Ray restores
    the experiment (Ray unpickles them when it lists its results and fails on a truncated one;
    the readable ``error.txt`` stays). Checked by walking the pickle's opcodes
    (``pickletools``), which runs none of its code.

    Returns:
        The files removed.
    """
    import pickletools

    if "://" in experiment_path:
        return []
    removed = []
    for path in Path(experiment_path).glob("*/error.pkl"):
        try:
            ops = list(pickletools.genops(path.read_bytes()))
            whole = bool(ops) and ops[-1][0].name == "STOP"
        except (ValueError, EOFError, OSError):  # cut short, or unreadable
            whole = False
        if not whole:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def raise_if_disk_full(sdir: SearchDir, tracker: Any, error: BaseException | None) -> None:
    """Stop a search that a full disk stopped (the guard, or ``error``): resumable, said in
    one line.

    Raises:
        DiskFullError: when a disk is full.
    """
    found = full_disk()
    if found is None and error is None:
        return
    folder, free = found if found is not None else (str(sdir.path), free_bytes(sdir.path))
    mark_interrupted(sdir, tracker)
    left = f"{free / 2**20:.1f} MiB free" if free is not None else "full"
    raise DiskFullError(f"the disk of {folder} is full ({left}): the search stopped, its "
                        f"trials kept; free some space, then: extune search --resume {sdir.path}"
                        ) from None
