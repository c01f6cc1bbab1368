"""One writer per folder: an advisory lock a command holds while it writes a folder.

A search (new or ``--resume``), a study and ``extune train`` each take the lock of their folder
before they change anything in it; a second command that wants the same folder is refused in one
line that names the folder and the process holding it. The lock is ``fcntl.flock`` on
:data:`LOCK_NAME` inside the folder: the kernel drops it when the holder's process ends, however
it ends (SIGKILL, a lost node), so no stale lock is ever left to clean up. The file stays (it
holds the last holder's PID and host, for the message); removing it would let two processes lock
two different files of the same name.

Within one process the lock is re-entrant (a study resumes its searches, tests run commands
in-process): :func:`lock_folder` counts its holders and :func:`unlock_folder` releases it when
the last lets go.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from extune.errors import ConfigError

__all__ = ["LOCK_NAME", "FolderInUse", "lock_folder", "unlock_folder", "folder_lock",
           "hold_folder"]

LOCK_NAME = ".extune.lock"
"""The lock file inside a folder a command writes (a search, a study, a training's ``--out``)."""

log = logging.getLogger(__name__)

_held: dict[str, tuple[int, int]] = {}
"""Folders this process holds: resolved path -> (file descriptor, holders)."""


class FolderInUse(ConfigError):
    """Another process holds the lock of the folder."""


def lock_folder(folder: str | Path, what: str, fix: str = "wait for it to end (or stop it), "
                "then try again") -> Path:
    """Take the lock of the existing folder ``folder`` for this process (re-entrant).

    Args:
        folder: the folder to write.
        what: what writes it, for the message (``search``, ``study``, ``training``).
        fix: what to do when another process holds it.

    Returns:
        The folder, resolved.

    Raises:
        FolderInUse: another process holds the lock (its PID and host named where known).
        ConfigError: the lock file cannot be created (the folder is not writable).
    """
    path = Path(folder).resolve()
    key = str(path)
    if key in _held:
        fd, count = _held[key]
        _held[key] = (fd, count + 1)
        return path
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ConfigError(f"cannot lock {path} ({e.strerror or e}); it must be a folder you "
                          "can write") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            log.warning("cannot lock %s (%s): another extune command could write it at the "
                        "same time", path, e.strerror or e)  # a filesystem without locks
            os.close(fd)
            return path
        holder = _holder(fd)
        os.close(fd)
        by = f" ({holder})" if holder else ""
        raise FolderInUse(f"{path} is in use: another extune {what}{by} is writing it; {fix}"
                          ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    _held[key] = (fd, 1)
    return path


def unlock_folder(folder: str | Path) -> None:
    """Let go of a lock taken by :func:`lock_folder`; released when the last holder lets go."""
    key = str(Path(folder).resolve())
    if key not in _held:
        return
    fd, count = _held.pop(key)
    if count > 1:
        _held[key] = (fd, count - 1)
    else:
        os.close(fd)  # closing the file drops the flock


@contextmanager
def folder_lock(folder: str | Path, what: str, fix: str = "wait for it to end (or stop it), "
                "then try again") -> Iterator[Path]:
    """:func:`lock_folder` for the block, then :func:`unlock_folder`."""
    path = lock_folder(folder, what, fix)
    try:
        yield path
    finally:
        unlock_folder(path)


def hold_folder(folder: str | Path, what: str) -> Path:
    """:func:`lock_folder` for the rest of this process's life (the kernel releases it)."""
    return lock_folder(folder, what)


def _holder(fd: int) -> str:
    """``process 1234 on host`` from the lock file, or ``""`` (the holder may not have written
    it yet)."""
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace").split()
    except OSError:
        text = []
    if len(text) >= 2 and text[0].isdigit():
        return f"process {text[0]} on {text[1]}"
    return ""
