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

from extune.errors import ConfigError, DiskFullError, ExtuneError, one_line
from extune.files import MIN_FREE_BYTES, check_writable, free_bytes
from extune.search.folder import SearchDir
from extune.search.reporting.parent_run import mark_interrupted

__all__ = ["DiskGuard", "full_disk", "reset", "repair_error_files", "watched_folders",
           "raise_if_disk_full", "ray_storage", "WholeFilesSystem", "restore_tuner",
           "check_experiment_state", "check_resumable", "alias_moved_modules", "MOVED_MODULES",
           "check_storage", "ray_state_problem", "pickle_problem", "RestoreFailed"]

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
        ExtuneError: when the state file is cut short, not JSON or not Ray's mapping.
    """
    problem = experiment_state_problem(experiment_path)
    if problem is not None:
        raise ExtuneError(f"{problem}, so its trials cannot be resumed; the finished ones stay "
                          f"in MLflow and in {experiment_path}: start a new search")


def experiment_state_problem(experiment_path: str) -> str | None:
    """Why Ray's newest experiment state in a local ``experiment_path`` cannot be restored
    (``None``: it reads, or there is none): not JSON, or not the mapping of trials and runner
    data Ray writes (Ray fails on it and starts the experiment over)."""
    if "://" in experiment_path:
        return None
    from ray.tune.execution.tune_controller import TuneController

    states = sorted(Path(experiment_path).glob(TuneController.CKPT_FILE_TMPL.format("*")))
    if not states:
        return None
    try:
        state = json.loads(states[-1].read_text())
    except (ValueError, OSError) as e:
        return (f"Ray's state of this search, {states[-1]}, cannot be read "
                f"({type(e).__name__}: {one_line(e, 200)})")
    if not (isinstance(state, dict) and isinstance(state.get("trial_data"), list)
            and isinstance(state.get("runner_data"), dict)):
        return (f"Ray's state of this search, {states[-1]}, is not Ray's record of the trials "
                "(no trial_data and runner_data)")
    return None


RAY_PICKLES = ("tuner.pkl", "searcher-state-*.pkl", "search_gen_state-*.json",
               "basic-variant-state-*.json")
"""Ray's pickled state of an experiment (the ``.json`` ones are pickles too); the newest of
each pattern is what a restore reads."""


def pickle_problem(path: Path) -> str | None:
    """Why the pickle ``path`` is not whole (``None``: it is): empty, cut short, or not a
    pickle. Checked by walking its opcodes (``pickletools``), which runs none of its code,
    through every pickle the file holds one after another (extune's searcher state is two:
    :meth:`~extune.search.engine.optuna_search.PruneAwareOptunaSearch.save`)."""
    import io
    import pickletools

    try:
        data = path.read_bytes()
    except OSError as e:
        return f"{path} cannot be read ({e.strerror or e})"
    if not data:
        return f"{path} is empty"
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        try:
            ops = list(pickletools.genops(stream))
        except ValueError as e:
            return f"{path} is cut short or not a pickle ({one_line(e, 120)})"
        if not ops or ops[-1][0].name != "STOP":
            return f"{path} is cut short ({len(data)} bytes, no end)"
    return None


def ray_state_problem(experiment_path: str) -> str | None:
    """Why Ray cannot restore the experiment saved in a local ``experiment_path`` (``None``:
    its files read, or there is no local folder to look at): the newest of each of
    :data:`RAY_PICKLES` whole, the newest experiment state readable
    (:func:`experiment_state_problem`), and no experiment state without ``tuner.pkl``. (A
    ``tuner.pkl`` without an experiment state is an experiment stopped before it saved
    anything: Ray starts it again, and loses nothing.)"""
    if "://" in experiment_path or not Path(experiment_path).is_dir():
        return None
    folder = Path(experiment_path)
    if any(folder.glob("experiment_state-*.json")) and not (folder / "tuner.pkl").exists():
        return f"Ray's {folder / 'tuner.pkl'} is missing (Ray would start the search over)"
    if any(folder.glob("search_gen_state-*.json")) and \
            not any(folder.glob("searcher-state-*.pkl")):
        return f"Ray's Optuna searcher state (searcher-state-*.pkl) is missing from {folder}"
    for pattern in RAY_PICKLES:
        found = sorted(folder.glob(pattern))
        problem = pickle_problem(found[-1]) if found else None
        if problem is not None:
            return f"Ray's {problem}"
    return experiment_state_problem(experiment_path)


def check_storage(storage: str | None, fix: str = "pass another --storage") -> None:
    """Before Ray starts: ``--storage`` can take the trials' results. A local path (or a
    ``file://`` URI) must be writable (:func:`~extune.files.check_writable`); a bucket URI
    must answer through pyarrow, as Ray reaches it (Ray would fail with a traceback once the
    search folder exists).

    Raises:
        ConfigError: naming ``--storage``, why, and ``fix``.
    """
    if not storage:
        return
    if "://" not in storage or storage.startswith("file://"):
        local = storage[len("file://"):] if storage.startswith("file://") else storage
        check_writable(local, "the trial storage (--storage)", fix)
        return
    import pyarrow
    import pyarrow.fs

    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(storage)
        filesystem.get_file_info(path)  # reaches the bucket: a missing one fails here
    except (OSError, ValueError, pyarrow.ArrowException) as e:
        raise ConfigError(f"--storage {storage} cannot be reached ({one_line(e, 200)}); check "
                          f"the bucket's name, the credentials and the network, or {fix}"
                          ) from None


def check_resumable(sdir: SearchDir) -> None:
    """Before Ray starts on ``--resume``: the search's saved state can be restored. Its
    Optuna study reads (:meth:`~extune.search.folder.SearchDir.study_problem`) and Ray's files
    are whole (:func:`ray_state_problem`); a study that holds trials without Ray's state
    (``tuner.pkl`` deleted) is refused too, since Ray would start over and run ``--trials``
    more beside them. Never a hang, a silent start-over or a false "interrupted".

    Raises:
        ConfigError: naming the damaged piece and what can still be done
            (:meth:`~extune.search.folder.SearchDir.damaged`).
    """
    check_storage(sdir.settings.storage, "make it reachable again: the search's trials are "
                  "there (or start a new search)")
    problem = sdir.study_problem() or ray_state_problem(sdir.experiment_path)
    folder = Path(sdir.experiment_path)
    local = "://" not in sdir.experiment_path
    if problem is None and local and (folder / "tuner.pkl").exists() and \
            not any(folder.glob("experiment_state-*.json")) and sdir.study_has_trials():
        problem = (f"Ray's experiment state (experiment_state-*.json) is missing from {folder} "
                   "(Ray would start the search over beside the trials its Optuna study holds)")
    if problem is None and local and any(folder.glob("experiment_state-*.json")) and \
            not any(folder.glob("search_gen_state-*.json")):
        problem = (f"Ray's searcher state (search_gen_state-*.json) is missing from {folder} "
                   "(Ray would sample trials again from the start)")
    if problem is None and not sdir.ray_started() and sdir.study_has_trials():
        problem = (f"Ray's state of it is missing from {folder} (Ray would start the search "
                   "over beside the trials its Optuna study holds)")
    if problem is not None:
        raise sdir.damaged(problem)


class RestoreFailed(logging.Filter):
    """Ray's restore logs "Failed to restore the run state" and starts the experiment over
    (its trials forgotten; with a searcher left half restored it hangs, deaf to SIGTERM): this
    filter on Ray's controller logger raises instead, so the search stops in one line.
    A logging filter is the one place Ray lets a caller act between the failure and the
    start-over (``TuneController.__init__`` catches the error and goes on)."""

    def __init__(self, then: str) -> None:
        super().__init__()
        self.then = then

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Failed to restore the run state"):
            error = record.exc_info[1] if record.exc_info else None
            why = f" ({type(error).__name__}: {one_line(error, 200)})" if error else ""
            raise ExtuneError(f"Ray could not restore this search's state{why}; "
                              f"{self.then}") from None
        return True


_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"


MOVED_MODULES = {
    "extune.search.tracking": "extune.tracking",
    "extune.search.tracking.callback": "extune.tracking.callback",
    "extune.search.tracking.client": "extune.tracking.client",
    "extune.search.tracking.journal": "extune.tracking.journal",
    "extune.search.tracking.notes": "extune.tracking.notes",
    "extune.search.tracking.parent": "extune.search.reporting.parent_run",
    "extune.search.engine.trials": "extune.tracking.trials",
}
"""Modules that moved (extune 0.1, issue 29) under the names a search saved by an earlier
extune pickled its callbacks with (Ray keeps them in ``tuner.pkl``)."""


def alias_moved_modules() -> None:
    """Make :data:`MOVED_MODULES` importable under their old names, so that ``Tuner.restore``
    unpickles the callbacks of a search started before they moved."""
    import importlib
    import sys

    for old, new in MOVED_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))


def restore_tuner(experiment_path: str, trainable: Any,
                  then: str = "what finished stays in MLflow; start it again") -> Any:
    """``Tuner.restore`` of the experiment in ``experiment_path`` after a check that its files
    can be read (:func:`ray_state_problem`), with the trials' error files a full disk cut
    short removed, and the partial files of writes it stopped. A restore Ray cannot do stops
    the search in one line (:class:`RestoreFailed`) that ends with ``then`` (what can still
    be done), never a start-over.

    Raises:
        ExtuneError: the state cannot be read or restored.
    """
    import pickle

    from ray import tune

    problem = ray_state_problem(experiment_path)
    if problem is not None:
        raise ExtuneError(f"{problem}, so its trials cannot be resumed; {then}")
    repair_error_files(experiment_path)
    if "://" not in experiment_path:
        for partial in Path(experiment_path).rglob(".*.partial"):
            partial.unlink(missing_ok=True)
    logger = logging.getLogger(_CONTROLLER_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, RestoreFailed)]:
        logger.removeFilter(old)
    if "://" in experiment_path or any(Path(experiment_path).glob("experiment_state-*.json")):
        logger.addFilter(RestoreFailed(then))  # else Ray starts over what saved nothing
    storage = ray_storage(experiment_path)
    alias_moved_modules()
    try:
        return tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=False,
                                  storage_filesystem=storage.get("storage_filesystem"))
    except (pickle.UnpicklingError, ImportError, AttributeError, EOFError) as e:
        raise ExtuneError(f"Ray's {experiment_path}/tuner.pkl cannot be loaded "
                          f"({type(e).__name__}: {one_line(e, 200)}); {then}") from None
