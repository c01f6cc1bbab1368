"""Writing files safely: atomic replacement, and a writability check before work starts.

Everything extune writes that another run reads back (checkpoints, ``search.json``,
``best_config.yaml``, summaries, the data cache) goes through :func:`atomic_writer`: a reader
sees the old file or the new one, never half of one, even when the writer is killed.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from extune.errors import ConfigError, DiskFullError

__all__ = ["atomic_writer", "atomic_write_text", "check_writable", "check_output_file",
           "read_text_file", "is_disk_full", "free_bytes", "check_free_space", "MIN_FREE_BYTES"]

MIN_FREE_BYTES = 64 * 2**20
"""Free space a search or a training wants on the disks it writes to: below it a search stops
(resumable) before checkpoints and results fail half-written, and a new one does not start."""


def read_text_file(path: str | Path, what: str) -> str:
    """The UTF-8 text of a file the user gave (a config or space file).

    Raises:
        ConfigError: naming ``what`` and the file: it cannot be read, or it is not UTF-8 text
            (with the first bad byte's position).
    """
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        bad = e.object[e.start:e.start + 1].hex()
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte 0x{bad} at position "
                          f"{e.start}); save it as UTF-8") from None


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file object whose contents replace ``path`` when the block ends without error.

    The data go to a temporary file in the same folder (mode 0644, created with the folder if
    needed) that is renamed over ``path``; on an error it is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are shared like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(text.encode())
    return Path(path)


def check_writable(path: str | Path, what: str = "folder",
                   fix: str = "choose a writable location") -> None:
    """Check, without creating anything, that files can be written in the folder ``path``.

    The nearest existing folder on the way to ``path`` must accept a new file (a temporary file
    is created there and removed at once; permission bits alone do not tell, e.g. for root or
    on a read-only mount).

    Raises:
        ConfigError: naming ``what``, the folder, the reason and ``fix`` (what to do).
    """
    target = Path(path).expanduser().absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(0, "not a folder")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write {what} {target}: {existing} is "
                          f"{'not a folder' if not existing.is_dir() else 'not writable'} "
                          f"({e.strerror or e}); {fix}") from None


def check_output_file(out: str | Path, what: str, example: str,
                      suffixes: tuple[str, ...] = ()) -> None:
    """``out`` can be written as a file, before any work: not a folder, in a writable folder,
    with one of ``suffixes`` (when given).

    Raises:
        ConfigError: naming ``what`` and an ``example`` file name.
    """
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{what} {out} is a folder; give the file to write, e.g. "
                          f"{out / example}")
    if suffixes and out.suffix.lower() not in suffixes:
        raise ConfigError(f"{what} {out}: extune writes {', '.join(suffixes)} files; give a "
                          f"name that ends so, e.g. {out.with_suffix(suffixes[0]).name}")
    check_writable(out.parent, what)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) says a disk is full: ``ENOSPC`` or
    ``EDQUOT``, or SQLite's "database or disk is full" (Optuna's and MLflow's stores)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(current)
        if "No space left on device" in text or "database or disk is full" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the disk of ``path`` (its nearest existing folder); ``None`` for a URI
    (``s3://...``) or where it cannot be told."""
    if "://" in str(path):
        return None
    target = Path(path).expanduser().absolute()
    while not target.exists() and target != target.parent:
        target = target.parent
    try:
        return shutil.disk_usage(target).free
    except OSError:
        return None


def check_free_space(path: str | Path, what: str, need: int = MIN_FREE_BYTES) -> None:
    """Refuse to start work whose results would not fit: less than ``need`` bytes free.

    Raises:
        DiskFullError: naming ``what``, the folder, the free and the needed space.
    """
    free = free_bytes(path)
    if free is not None and free < need:
        raise DiskFullError(f"only {_size(free)} free on the disk of {what} "
                            f"{Path(path).expanduser().absolute()}; extune wants at least "
                            f"{_size(need)} there: free some space or choose another folder")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"
