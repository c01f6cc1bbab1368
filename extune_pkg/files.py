"""Writing files safely: atomic replacement, and a writability check before work starts.

Everything extune writes that another run reads back (checkpoints, ``search.json``,
``best_config.yaml``, summaries, the data cache) goes through :func:`atomic_writer`: a reader
sees the old file or the new one, never half of one, even when the writer is killed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from extune.errors import ConfigError

__all__ = ["atomic_writer", "atomic_write_text", "check_writable"]


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
