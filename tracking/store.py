"""The MLflow tracking store: its URI made absolute, and checked (reachable, writable, whole)
before any work, with one-line errors; MLflow itself would retry for minutes, printing
SQLAlchemy warnings, before it failed."""

from __future__ import annotations

import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from extune.defaults import DEFAULT_TRACKING_URI
from extune.errors import ExtuneError, ServiceError

__all__ = ["TRACKING_SCHEMES", "DEFAULT_TRACKING_URI", "check_tracking_uri",
           "resolve_tracking_uri", "existing_store", "tracking_env_note"]


TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql",
                    "databricks")
"""Stores MLflow's tracking client accepts (a ``+driver`` suffix aside)."""


def check_tracking_uri(uri: str, timeout: float = 5.0, *, write: bool = True) -> None:
    """Fail fast, in one line, when the tracking store cannot be used.

    An HTTP(S) server must answer ``/health`` within ``timeout`` seconds; a local SQLite store
    (``write=True``) must be writable, checked in well under a second (MLflow itself would
    retry for minutes, printing SQLAlchemy warnings, before it failed).

    Raises:
        ServiceError: the server does not answer, or the SQLite store cannot be written.
    """
    parsed = urlparse(uri)
    if parsed.scheme.split("+")[0] not in TRACKING_SCHEMES and not uri.startswith("databricks"):
        raise ServiceError(f"--tracking-uri {uri}: MLflow cannot keep runs in a "
                           f"'{parsed.scheme}' store; use sqlite:///path/mlflow.db, "
                           "http(s)://server or a database URI (postgresql://...)")
    if parsed.scheme == "sqlite" and write:
        _check_sqlite_writable(uri)
    if parsed.scheme not in ("http", "https"):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            if response.status >= 500:
                raise ServiceError(f"the MLflow server at {uri} answered {response.status}")
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise ServiceError(f"the MLflow server at {uri} answered {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise ServiceError(f"cannot reach the MLflow tracking server at {uri} ({reason}); "
                           "start it or pass another --tracking-uri") from None


def _check_sqlite_writable(uri: str) -> None:
    """An existing SQLite file must take a write lock; a new one needs a writable folder.

    A lock held by another writer (``database is locked``) is not an error: MLflow waits.

    Raises:
        ServiceError: read-only file or folder, or not a database.
    """
    from extune.files import check_writable

    path = Path(uri[len("sqlite:///"):]).expanduser()
    hint = "pass a writable --tracking-uri (e.g. sqlite:///mlflow.db in a writable folder)"
    if not path.exists():  # MLflow creates the file and its folders
        try:
            check_writable(path, "the MLflow store", fix=hint)
        except ExtuneError as e:
            raise ServiceError(str(e)) from None
        return
    try:
        con = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=1.0)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.rollback()
        finally:
            con.close()
    except sqlite3.Error as e:
        if "locked" in str(e) or "busy" in str(e):
            return
        raise ServiceError(f"cannot write the MLflow store {path} ({e}); {hint}") from None


LOCK_WAIT_S = 5.0
"""How long a command waits for another process's write lock on a SQLite store before it
says the store is locked; the environment variable :data:`LOCK_WAIT_VARIABLE` sets another."""
LOCK_WAIT_VARIABLE = "EXTUNE_STORE_LOCK_WAIT_S"


def _lock_wait_s() -> float:
    """:data:`LOCK_WAIT_S`, or the seconds of :data:`LOCK_WAIT_VARIABLE` (a number >= 0)."""
    from extune.defaults import seconds_from_env

    try:
        seconds = seconds_from_env(LOCK_WAIT_VARIABLE)
    except ValueError as e:
        raise ExtuneError(f"{e}; unset it to wait {LOCK_WAIT_S:g} s") from None
    return LOCK_WAIT_S if seconds is None else seconds


def _check_sqlite_readable(path: Path) -> None:
    """An existing SQLite store reads: a SQLite file, whole (not shorter than its pages say),
    not locked by a writer for :func:`_lock_wait_s` seconds. Read-only and cheap (its first
    page and schema), so MLflow does not fail later with SQLAlchemy's traceback.

    Raises:
        ServiceError: naming the store, what SQLite said, and what to do.
    """
    try:
        con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=_lock_wait_s())
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            size = con.execute("PRAGMA page_count").fetchone()[0] * \
                con.execute("PRAGMA page_size").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as e:
        if "locked" in str(e) or "busy" in str(e):
            raise ServiceError(f"the MLflow store {path} is locked by another process (SQLite: "
                               f"{e}); try again when it is done, or pass another "
                               "--tracking-uri") from None
        raise ServiceError(f"the MLflow store {path} cannot be read (SQLite: {e}): it is "
                           "damaged or not an MLflow store; restore it from a backup, or pass "
                           "another --tracking-uri") from None
    wal = path.with_name(path.name + "-wal")
    if size > path.stat().st_size and not wal.exists():
        raise ServiceError(f"the MLflow store {path} is cut short ({path.stat().st_size} of "
                           f"{size} bytes): restore it from a backup, or pass another "
                           "--tracking-uri")


def resolve_tracking_uri(uri: str | None) -> str:
    """The tracking URI (``None``: :data:`DEFAULT_TRACKING_URI`) with a relative SQLite path or
    a bare folder made absolute, so that a search resumes (and exports) from any folder."""
    from extune.files import check_path_length

    uri = uri or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        check_path_length(uri[len("sqlite:///"):], "the MLflow store of --tracking-uri",
                          "choose a store with a shorter path")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///"):]).expanduser().resolve()
        uri = f"sqlite:///{path}"
    elif "://" not in uri and not uri.startswith("databricks"):
        uri = Path(uri).expanduser().resolve().as_uri()
    return uri


def existing_store(uri: str | None) -> str:
    """:func:`resolve_tracking_uri` for reading: a SQLite store must exist (reading one that
    does not would create an empty database), a server must answer.

    Raises:
        ServiceError: no SQLite file there, or the server does not answer.
    """
    resolved = resolve_tracking_uri(uri)
    if resolved.startswith("sqlite:///"):
        path = Path(resolved[len("sqlite:///"):])
        if not path.is_file():
            given = (uri or DEFAULT_TRACKING_URI)[len("sqlite:///"):]
            raise ServiceError(f"no MLflow store at {Path(given).expanduser()}; pass "
                               "--tracking-uri (the one the search used)"
                               f"{tracking_env_note(uri, resolved)}")
        _check_sqlite_readable(path)
        return resolved
    check_tracking_uri(resolved, write=False)
    return resolved


def tracking_env_note(given: str | None, resolved: str) -> str:
    """A note when ``MLFLOW_TRACKING_URI`` names another store than the one extune looked in
    (extune reads ``--tracking-uri`` only)."""
    import os

    variable = os.environ.get("MLFLOW_TRACKING_URI")
    if given is not None or not variable or resolve_tracking_uri(variable) == resolved:
        return ""
    return (f"; MLFLOW_TRACKING_URI ({variable}) is not read: pass --tracking-uri "
            f"{variable} to use that store")
