"""A search on a disk that fills: stopped in time, resumable, said in one line.

:class:`DiskGuard` is a Tune callback on the driver. After every step of Tune's loop (and when a
trial fails) it looks at the free space of the disks the search writes to: the search folder
(Ray's results and checkpoints, the Optuna study, the MLflow journal) and the temporary folder
where trials train. Below :data:`~extune.files.MIN_FREE_BYTES` it stops the experiment as Ctrl-C
does (Ray Tune saves its state and keeps the running trials resumable), before writes fail half
way; the search then raises :class:`~extune.errors.DiskFullError` with the way on. A disk that
fills faster than that (a failure Tune or Optuna raises) is recognised by
:func:`~extune.files.is_disk_full` and ends the same way.

What Ray writes into a local search folder (its experiment state, the trials' results and
checkpoints) goes through :func:`ray_storage`: each file is written beside its place and renamed
in once whole, so a disk that fills half way through leaves the last whole version for
``--resume``, never a cut-short one (Ray's own local filesystem writes in place).
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import tempfile
import uuid
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from ray.tune import Callback

from extune.errors import DiskFullError, ExtuneError
from extune.files import MIN_FREE_BYTES, free_bytes
from extune.search.folder import SearchDir
from extune.search.tracking.parent import mark_interrupted

__all__ = ["DiskGuard", "full_disk", "reset", "repair_error_files", "watched_folders",
           "raise_if_disk_full", "ray_storage", "WholeFilesSystem", "restore_tuner",
           "check_experiment_state"]

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


class _WholeFile(io.RawIOBase):
    """A file written as ``.<name>.<random>.partial`` beside ``path`` and renamed to ``path``
    when it closes whole; a write or flush that fails (a full disk) removes it instead."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        folder, name = os.path.split(path)
        self.partial = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.partial")
        self._file: Any = None
        self._failed = True  # until it opens
        self._file = open(self.partial, "xb")  # noqa: SIM115 (closed by close())
        self._failed = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except BaseException:
            self._failed = True
            raise

    def flush(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.flush()

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._file is not None:
                self._file.close()  # flushes: a full disk may fail here
            if not self._failed:
                os.replace(self.partial, self.path)
        except BaseException:
            self._failed = True
            raise
        finally:
            if self._failed:
                Path(self.partial).unlink(missing_ok=True)
            super().close()


class WholeFilesSystem(LocalFileSystem):
    """fsspec's local filesystem whose files opened for writing appear whole or not at all
    (:class:`_WholeFile`). Ray takes it as a pyarrow filesystem (:func:`ray_storage`); no
    library offers atomic local writes through pyarrow's filesystem interface."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(auto_mkdir=True, **kwargs)

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, **kwargs: Any) -> Any:
        if mode == "wb":
            path = self._strip_protocol(path)
            self.makedirs(self._parent(path), exist_ok=True)
            return _WholeFile(path)
        return super()._open(path, mode, block_size, **kwargs)


def ray_storage(experiment_path: str) -> dict[str, Any]:
    """Ray's ``storage_path``, ``storage_filesystem`` and experiment ``name`` for
    ``experiment_path``: a local folder is written through :class:`WholeFilesSystem`, a bucket
    URI (whose objects appear whole anyway) by Ray's own filesystem."""
    storage, _, name = experiment_path.rpartition("/")
    if "://" in experiment_path:
        return {"storage_path": storage, "name": name}
    import pyarrow.fs

    filesystem = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(WholeFilesSystem()))
    return {"storage_path": storage, "storage_filesystem": filesystem, "name": name}


def check_experiment_state(experiment_path: str) -> None:
    """Fail in one line when Ray's newest experiment state in ``experiment_path`` cannot be
    read (Ray would log it and silently start the experiment over, its trials forgotten).

    Raises:
        ExtuneError: when the state file is cut short or not JSON.
    """
    if "://" in experiment_path:
        return
    from ray.tune.execution.tune_controller import TuneController

    states = sorted(Path(experiment_path).glob(TuneController.CKPT_FILE_TMPL.format("*")))
    if not states:
        return
    try:
        json.loads(states[-1].read_text())
    except (ValueError, OSError) as e:
        raise ExtuneError(
            f"Ray's state of this search, {states[-1]}, cannot be read ({type(e).__name__}: "
            f"{e}), so its trials cannot be resumed; the finished ones stay in MLflow and in "
            f"{experiment_path}: start a new search") from None


def restore_tuner(experiment_path: str, trainable: Any) -> Any:
    """``Tuner.restore`` of the experiment in ``experiment_path`` after a check that it can be
    read, with the trials' error files a full disk cut short removed, and the partial files
    of writes it stopped."""
    from ray import tune

    check_experiment_state(experiment_path)
    repair_error_files(experiment_path)
    if "://" not in experiment_path:
        for partial in Path(experiment_path).rglob(".*.partial"):
            partial.unlink(missing_ok=True)
    storage = ray_storage(experiment_path)
    return tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                              resume_errored=False,
                              storage_filesystem=storage.get("storage_filesystem"))
