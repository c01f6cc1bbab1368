"""The search folder: what a search writes so that it can be resumed, exported and summarised.

.. code-block:: text

    <out>/<name>/
      search.json          settings, search id, tracking URI, status; the data paths and
                           runtime.progress as the user gave them, and the folder it started in
      base_config.yaml     the config every trial overrides
      space.yaml | space.py   the space (a copy of a YAML space, or the preset's source)
      optuna.db            the Optuna study (SQLite): parameters, states, values
      trials/              Ray Tune's experiment (results, checkpoints) unless --storage
      summary.csv, summary.md, best_config.yaml, pareto_front.png | optimization_history.png
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from extune.errors import ConfigError, one_line
from extune.evaluate.objectives import Objective
from extune.files import atomic_write_text
from extune.folders import MetaFolder
from extune.locks import lock_folder, unlock_folder
from extune.search.records import TrialRecord, records_from_study
from extune.search.settings import GIVEN_KEYS, SearchSettings
from extune.spaces import get_space, space_name
from extune.train.config import Config

__all__ = ["SearchDir", "META_NAME", "storage_root", "is_search_folder"]

META_NAME = "search.json"


@dataclass
class SearchDir(MetaFolder):
    """A search folder and its ``search.json``."""

    META_NAME: ClassVar[str] = META_NAME
    KIND: ClassVar[str] = "search"

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, settings: SearchSettings, base: Config, space: Any,
               searched: Iterable[str] = (), constants: dict[str, Any] | None = None
               ) -> SearchDir:
        """Make ``<out>/<name>`` and write the settings, base config and space.

        ``searched``: the keys the space varies (from its validation draws); ``constants``:
        the keys it sets to one value. The base config's other keys and the constants are the
        search's constants (the MLflow parent run's params). ``search.json`` also keeps the
        :data:`~extune.search.settings.GIVEN_KEYS` as the user gave them and the folder the
        search started in (:meth:`given_values`).

        The new folder's lock (:mod:`extune.locks`) is taken when it is claimed, before
        anything is written in it, and held by this process: the caller lets go of it
        (:func:`~extune.locks.unlock_folder`) when the search ends.

        Raises:
            ConfigError: the folder already holds a search (use ``--resume``).
        """
        name, path = _claim(settings)
        try:
            return cls._fill(path, name, settings, base, space, searched, constants)
        except BaseException:
            unlock_folder(path)
            raise

    @classmethod
    def _fill(cls, path: Path, name: str, settings: SearchSettings, base: Config, space: Any,
              searched: Iterable[str], constants: dict[str, Any] | None) -> SearchDir:
        """Write a claimed folder's settings, base config and space (:meth:`create`)."""
        base.save(path / "base_config.yaml")
        space_file = _write_space(path, space)
        if settings.storage:
            experiment_path = f"{storage_root(settings.storage)}/{name}"
        else:
            experiment_path = str(path / "trials")
        meta = {
            "name": name,
            "search_id": uuid.uuid4().hex,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "status": "created",
            "settings": settings.to_dict(),
            "space_name": space_name(space),
            "space_file": space_file,
            "tracking_uri": settings.resolved_tracking_uri(),
            "optuna_storage": f"sqlite:///{path / 'optuna.db'}",
            "experiment_path": experiment_path,
            "searched_keys": sorted(searched),
            "space_constants": dict(constants or {}),
            "given": _given_values(settings),
            "started_in": os.getcwd(),
        }
        found = cls(path, meta)
        found.save()
        return found

    @classmethod
    def load(cls, path: str | Path) -> SearchDir:
        """Open an existing search folder.

        Raises:
            ConfigError: no ``search.json`` there.
        """
        path, meta = cls.read_meta(path)
        _check_meta(path, meta)
        return cls(path, meta)

    def set_status(self, status: str, **extra: Any) -> None:
        self.update(status=status, **extra)

    def refuse_failed(self, then: str) -> None:
        """Refuse a search that failed before any trial ran (status ``failed``).

        Raises:
            ConfigError: naming the folder, the saved error and ``then`` (what to do).
        """
        if self.meta.get("status") == "failed":
            raise ConfigError(f"{self.path} is a search that failed before any trial ran "
                              f"({self.meta.get('error', 'unknown error')}); {then}")

    # ------------------------------------------------------------------ accessors
    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def search_id(self) -> str:
        return self.meta["search_id"]

    @property
    def settings(self) -> SearchSettings:
        try:
            return SearchSettings.from_dict(self.meta["settings"])
        except ConfigError as e:
            raise ConfigError(f"{self.path / META_NAME}: its settings are not valid ({e}); "
                              f"{_NOT_A_SEARCH_FIX}") from None
        except (TypeError, ValueError, AttributeError) as e:  # a value of the wrong type
            raise ConfigError(f"{self.path / META_NAME}: its settings are not what extune "
                              f"writes ({type(e).__name__}: {one_line(e, 200)}); "
                              f"{_NOT_A_SEARCH_FIX}") from None

    @property
    def objectives(self) -> list[Objective]:
        return self.settings.objectives

    @property
    def experiment_path(self) -> str:
        return self.meta["experiment_path"]

    def base_config(self) -> Config:
        return Config.load(self.path / "base_config.yaml")

    def given_values(self) -> dict[str, Any]:
        """The :data:`~extune.search.settings.GIVEN_KEYS` of the base config as the user gave
        them (a relative path is relative to :attr:`started_in`); ``{}`` for a folder written
        before they were kept."""
        return dict(self.meta.get("given", {}))

    @property
    def started_in(self) -> str | None:
        """The folder the search was started in (``None`` for a folder written before)."""
        return self.meta.get("started_in")

    def space(self) -> Any:
        """The search space as it was when the search started."""
        saved = self.meta.get("space_file")
        if saved and saved.endswith(".yaml"):
            return get_space(str(self.path / saved))
        return get_space(self.meta["space_name"])

    def study(self) -> Any:
        """The Optuna study (read from ``optuna.db``).

        Raises:
            ConfigError: the search never started a trial, or its study is missing or damaged
                (:meth:`study_problem`; the message says what can still be done).
        """
        import optuna

        problem = self.study_problem()
        if problem is not None:
            raise self.damaged(problem)
        never = ConfigError(f"{self.path} has no Optuna study yet (the search never started a "
                            "trial)")
        if self._study_file_missing():
            raise never  # Optuna would create the file
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            return optuna.load_study(study_name=self.name, storage=self.meta["optuna_storage"])
        except KeyError:
            raise never from None

    def study_has_trials(self) -> bool:
        """Whether the search's Optuna study exists and holds a trial (in any state): a search
        that ran, not one that never started (its base point enqueued is a trial too)."""
        import optuna

        if self._study_file_missing():
            return False
        storage = optuna.storages.RDBStorage(self.meta["optuna_storage"])
        try:
            study_id = storage.get_study_id_from_name(self.name)
        except KeyError:
            return False
        return storage.get_n_trials(study_id) > 0

    def _study_file_missing(self) -> bool:
        """Whether the study is a SQLite file that does not exist (opening it would create it)."""
        url = self.meta["optuna_storage"]
        return url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file()

    def records(self) -> list[TrialRecord]:
        return records_from_study(self.study(), self.objectives)

    # ------------------------------------------------------------------ damage
    def ray_started(self) -> bool:
        """Whether Ray saved anything of this search (``tuner.pkl`` or an experiment state in
        a local experiment folder; a bucket's is taken as saved)."""
        if "://" in self.experiment_path:
            return True
        folder = Path(self.experiment_path)
        return (folder / "tuner.pkl").exists() or any(folder.glob("experiment_state-*.json"))

    def study_problem(self) -> str | None:
        """Why the Optuna study file cannot be used (``None`` when it can, or when the search
        never got as far as making it): missing once Ray has saved the search, not SQLite, cut
        short, or without this search's study. Read with SQLite's read-only mode: nothing is
        created or changed, except that a transaction a killed process left half written (a
        hot journal, which read-only mode cannot roll back: "attempt to write a readonly
        database") is rolled back as any next opening does."""
        url = self.meta["optuna_storage"]
        if not url.startswith("sqlite:///"):
            return None
        path = Path(url[len("sqlite:///"):])
        if not path.is_file():
            return f"its Optuna study {path} is missing" if self.ray_started() else None
        try:
            try:
                check, found = _study_check(path, self.name, "ro")
            except sqlite3.OperationalError as e:
                if "readonly" not in str(e) or not Path(f"{path}-journal").exists():
                    raise
                check, found = _study_check(path, self.name, "rw")  # rolls the journal back
            if check != "ok":
                return f"its Optuna study {path} is damaged (SQLite: {one_line(check, 120)})"
        except sqlite3.OperationalError as e:
            if "locked" in str(e):
                raise ConfigError(f"the Optuna study {path} is locked by another process (a "
                                  "search still running?); try again when it ends") from None
            return f"its Optuna study {path} cannot be read (SQLite: {one_line(e, 120)})"
        except sqlite3.DatabaseError as e:  # not a database, malformed
            return f"its Optuna study {path} cannot be read (SQLite: {one_line(e, 120)})"
        if not found:
            return f"its Optuna study {path} holds no study named {self.name}"
        return None

    def complete_trials(self) -> int | None:
        """Complete trials in the Optuna study (``None`` when it cannot be read)."""
        if self.study_problem() is not None:
            return None
        try:
            return sum(r.state == "complete" for r in self.records())
        except ConfigError:
            return None

    def damaged(self, what: str) -> ConfigError:
        """The error of a search whose saved state is damaged: ``what``, and what can still be
        done with it (:meth:`what_remains`)."""
        return ConfigError(f"search {self.path} is damaged: {what}, so {self.what_remains()}")

    def what_remains(self) -> str:
        """What can be done with a search that cannot be resumed: export its complete trials
        from the folder, or from MLflow when the folder's study is gone; start a new search."""
        complete = self.complete_trials()
        if complete is None:
            return (f"it cannot be resumed or exported from its folder; its trials stay in "
                    f"MLflow ({self.meta['tracking_uri']}): extune ui --search {self.name} "
                    "lists them, extune export --run <run id> exports one; or start a new "
                    "search")
        if complete:
            return (f"it cannot be resumed; its {complete} complete trial(s) can still be "
                    f"exported: extune export {self.path} (the best so far); or start a new "
                    "search")
        return "it cannot be resumed and has no complete trial to export; start a new search"


CLAIM_NAME = ".extune_search"
"""Created exclusively (``O_EXCL``) in a new search folder: of two searches started at once
with the same ``--out`` and ``--name``, exactly one gets the folder."""

_NOT_A_SEARCH_FIX = ("extune writes that file itself: pass the folder `extune search` printed, "
                     "or start a new search")

_META_TYPES = {"name": str, "search_id": str, "status": str, "settings": dict,
               "tracking_uri": str, "optuna_storage": str, "experiment_path": str}
"""The entries of ``search.json`` that resume and export read, and their types."""


def _check_meta(path: Path, meta: Any) -> None:
    """``search.json`` has the shape extune writes (a failed search's marker needs only its
    status and error: :meth:`SearchDir.refuse_failed` reads it).

    Raises:
        ConfigError: naming the first entry missing or of the wrong type.
    """
    where = path / META_NAME
    if not isinstance(meta, dict):
        raise ConfigError(f"{where} holds a {type(meta).__name__}, not the mapping extune "
                          f"writes; {_NOT_A_SEARCH_FIX}")
    if meta.get("status") == "failed":
        return
    for key, kind in _META_TYPES.items():
        if not isinstance(meta.get(key), kind):
            found = "is missing" if key not in meta else f"is a {type(meta[key]).__name__}"
            raise ConfigError(f"{where}: its entry '{key}' {found} (a {kind.__name__} is "
                              f"expected); {_NOT_A_SEARCH_FIX}")
    experiment = meta["experiment_path"]
    if "://" not in experiment and not Path(experiment).is_absolute():
        raise ConfigError(f"{where}: its entry 'experiment_path' ({experiment}) is not an "
                          f"absolute path or a bucket URI; {_NOT_A_SEARCH_FIX}")


def refuse_taken_name(settings: SearchSettings) -> None:
    """Fail early (before data or Ray) when ``--name`` names an existing search; the claim in
    :meth:`SearchDir.create` still decides between two searches started at once.

    Raises:
        ConfigError: the folder holds a search.
    """
    if settings.name is not None:
        path = (Path(settings.out) / settings.name).resolve()
        if (path / META_NAME).exists() or (path / CLAIM_NAME).exists():
            raise ConfigError(f"{path} already holds a search; pass --resume {path} to "
                              "continue it or choose another --name")


def _claim(settings: SearchSettings) -> tuple[str, Path]:
    """Create and claim ``<out>/<name>``; an automatic name gets ``-2``, ``-3``, ... when two
    searches start in the same second.

    Raises:
        ConfigError: ``--name`` names a folder that holds (or is becoming) another search.
    """
    stem = settings.resolved_name()
    for attempt in range(1, 100):
        name = stem if attempt == 1 else f"{stem}-{attempt}"
        path = (Path(settings.out) / name).resolve()
        taken = (path / META_NAME).exists()
        if not taken:
            path.mkdir(parents=True, exist_ok=True)
            try:
                os.close(os.open(path / CLAIM_NAME, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                lock_folder(path, "search")  # before search.json: no --resume gets in first
                return name, path
            except FileExistsError:
                taken = True
        if settings.name is not None:
            refuse_taken_name(settings)
    raise ConfigError(f"could not find a free search folder name under {settings.out}")


def is_search_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a search (its ``search.json``)."""
    return (Path(path) / META_NAME).is_file()


def storage_root(storage: str) -> str:
    """``--storage`` as Ray wants it: a bucket URI as given, a local or shared path absolute;
    no trailing slash."""
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    return storage.rstrip("/")


def _given_values(settings: SearchSettings) -> dict[str, Any]:
    """The :data:`~extune.search.settings.GIVEN_KEYS` of the user's base config (``--fix``
    included), before the search made them fit its trials."""
    given = settings.given_config().flatten()
    fixed = settings.resolved_fixed
    return {k: fixed.get(k, given[k]) for k in GIVEN_KEYS}


def _write_space(path: Path, space: Any) -> str | None:
    """Keep the space with the search: the YAML text, or the preset's source code."""
    text = getattr(space, "text", None)
    if text:
        atomic_write_text(path / "space.yaml", text)
        return "space.yaml"
    try:  # the whole module: a preset's helpers (optimiser, explainer) are part of it
        module = inspect.getmodule(space)
        source = inspect.getsource(module if module is not None else space)
    except (OSError, TypeError):
        return None
    atomic_write_text(path / "space.py", source)
    return "space.py"


def _study_check(path: Path, name: str, mode: str) -> tuple[str, int]:
    """SQLite's ``quick_check`` of ``path`` and how many studies named ``name`` it holds,
    opened in ``mode`` (``ro``, or ``rw``: never created)."""
    with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode={mode}", uri=True)) as db:
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            return check, 0
        found = db.execute("SELECT COUNT(*) FROM studies WHERE study_name = ?",
                           (name,)).fetchone()[0]
        return check, found
