"""Writing files safely: atomic replacement, and a writability check before work starts.

Everything extune writes that another run reads back (checkpoints, ``search.json``,
``best_config.yaml``, summaries, the data cache) goes through :func:`atomic_writer`: a reader
sees the old file or the new one, never half of one, even when the writer is killed.

An output path the user gives (``-o``, ``--out``) is checked before any work
(:func:`check_output_file`, :func:`check_output_folder`): extune replaces only a regular file,
never a device, FIFO, socket or symbolic link, never a database or checkpoint, and never
anything a search, study, Ray Tune experiment or training run keeps in its folder
(:data:`OWN_NAMES`).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from extune.errors import ConfigError, DiskFullError

__all__ = ["atomic_writer", "atomic_write_text", "check_writable", "check_output_file",
           "check_output_folder", "folder_kind", "OWN_NAMES", "read_text_file", "is_disk_full",
           "free_bytes", "check_free_space", "MIN_FREE_BYTES", "check_path_length",
           "refuse_full_disk"]

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


def _path_limits() -> tuple[int, int]:
    """The longest path and file name this system takes (Linux: 4096 and 255 bytes)."""
    try:
        return os.pathconf("/", "PC_PATH_MAX"), os.pathconf("/", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not POSIX
        return 4096, 255


def check_path_length(path: str | Path, what: str, fix: str = "choose a shorter path") -> None:
    """``path`` (made absolute) is no longer than the system takes, nor any of its names: the
    system refuses it in every call (``File name too long``), first where extune looks at it.

    Raises:
        ConfigError: naming ``what``, the lengths and ``fix``.
    """
    longest, longest_name = _path_limits()
    full = os.fsencode(os.path.abspath(os.path.expanduser(str(path))))
    name = max(full.split(b"/"), key=len)
    if len(full) >= longest or len(name) > longest_name:
        too = (f"is {len(full)} bytes long (at most {longest - 1})" if len(full) >= longest
               else f"has a name of {len(name)} bytes (at most {longest_name})")
        raise ConfigError(f"{what} {str(path)[:60]}... {too}; {fix}")


def check_writable(path: str | Path, what: str = "folder",
                   fix: str = "choose a writable location") -> None:
    """Check, without creating anything, that files can be written in the folder ``path``.

    The nearest existing folder on the way to ``path`` must accept a new file (a temporary file
    is created there and removed at once; permission bits alone do not tell, e.g. for root or
    on a read-only mount).

    Raises:
        ConfigError: naming ``what``, the folder, the reason and ``fix`` (what to do).
    """
    check_path_length(path, what, fix)
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


OWN_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "search folder": (
        ("search.json", ".extune_search"),
        ("search.json", ".extune_search", ".extune.lock", "base_config.yaml", "space.yaml",
         "space.py", "optuna.db*", "trials", "tracking", "plots", "summary.csv", "summary.md",
         "best_config.yaml", "pareto_front.png", "optimization_history.png")),
    "study folder": (
        ("study.json",),
        ("study.json", ".extune.lock", "plan.json", "plan-current.json", "base_config.yaml",
         "searches", "final", "plots", "report.md", "results.json")),
    "Ray Tune experiment": (("tuner.pkl", "experiment_state-*.json"), ("*",)),
    "training run": (
        ("checkpoint.pt", "metrics.json", "tracking/run.json", ".extune.lock"),
        ("checkpoint.pt", "config.yaml", "metrics.json", "saliency_grid.png", "grids",
         "test_outputs.npz", "summary.txt", "tracking", ".extune.lock")),
}
"""What each kind of folder keeps: ``kind -> (markers, own names)``. A folder holding one of
the markers is of that kind (the first that matches, in this order); the own names (patterns)
are the files and folders it writes and reads back (``search.folder``, ``study.folder``,
``train.loop``, the trackers; ``tests/cli/test_outputs.py`` checks them against the code). No
output path may be one of them or lie inside one."""

_DATABASE_MAGIC = {b"SQLite format 3\x00": "a SQLite database (an MLflow or Optuna store?)",
                   b"PK\x03\x04": "a zip file (a torch checkpoint?)"}
"""The first bytes of files extune never writes over (stores and checkpoints hold results)."""


def folder_kind(folder: str | Path) -> str | None:
    """The kind of ``folder`` in :data:`OWN_NAMES` (``search folder``, ...), or ``None``."""
    folder = Path(folder)
    try:
        if not folder.is_dir():
            return None
        for kind, (markers, _) in OWN_NAMES.items():
            if any(any(folder.glob(m)) if "*" in m else (folder / m).exists()
                   for m in markers):
                return kind
    except OSError:
        return None
    return None


def _owner(path: Path) -> tuple[str, Path, str] | None:
    """``(kind, folder, name)`` when ``path`` is (or lies in) something the innermost folder
    of a kind around it keeps (:data:`OWN_NAMES`), else ``None``."""
    path = Path(os.path.abspath(path))
    for folder in path.parents:
        kind = folder_kind(folder)
        if kind is None:
            continue
        name = path.relative_to(folder).parts[0]
        if any(fnmatch.fnmatchcase(name, p) for p in OWN_NAMES[kind][1]):
            return kind, folder, name
        return None
    return None


def _refuse_owned(out: Path, what: str, fix: str) -> None:
    owner = _owner(out)
    if owner is not None:
        kind, folder, name = owner
        raise ConfigError(f"{what} {out} is part of the {kind} {folder} ({name} is its own); "
                          f"{fix}")


def _not_regular(path: Path) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a folder (symbolic
    links are not followed), else ``None``."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        return f"a symbolic link (to {os.readlink(path)})"
    kinds = {stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISSOCK: "a socket"}
    return next((name for test, name in kinds.items() if test(mode)), None)


def _holds_data(path: Path) -> str | None:
    """What a regular file at ``path`` holds when it is a store or a checkpoint."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    return next((name for magic, name in _DATABASE_MAGIC.items() if head.startswith(magic)),
                None)


def check_output_file(out: str | Path, what: str, example: str,
                      suffixes: tuple[str, ...] = ()) -> None:
    """``out`` can be written as a file, before any work: not a folder; no symbolic link,
    device, FIFO or socket; no database or checkpoint; nothing a search, study or run keeps
    (:data:`OWN_NAMES`); with one of ``suffixes`` (when given); in a writable folder.

    Raises:
        ConfigError: naming ``what`` and an ``example`` file name.
    """
    fix = f"give another file to write, e.g. {example}"
    check_path_length(out, what, fix)
    out = Path(out)
    special = _not_regular(out)
    if special is not None:
        raise ConfigError(f"{what} {out} is {special}; extune replaces only regular files: "
                          f"{fix}")
    if out.is_dir():
        raise ConfigError(f"{what} {out} is a folder; give the file to write, e.g. "
                          f"{out / example}")
    held = _holds_data(out) if out.is_file() else None
    if held is not None:
        raise ConfigError(f"{what} {out} is {held}; extune never writes over one: {fix}")
    _refuse_owned(out, what, fix)
    if suffixes and out.suffix.lower() not in suffixes:
        raise ConfigError(f"{what} {out}: extune writes {', '.join(suffixes)} files; give a "
                          f"name that ends so, e.g. {out.with_suffix(suffixes[0]).name}")
    check_writable(out.parent, what)


def check_output_folder(out: str | Path, what: str, fix: str = "choose another folder") -> None:
    """``out`` can be a folder extune writes in, before any work: a folder (or a symbolic link
    to one) or nothing yet; not a search, study or Ray Tune experiment, nor anything one of
    them (or a training run) keeps (:data:`OWN_NAMES`); writable.

    Raises:
        ConfigError: naming ``what``, the path and ``fix``.
    """
    check_path_length(out, what, fix)
    out = Path(out)
    if not out.is_dir():
        special = _not_regular(out)
        if special is not None:
            raise ConfigError(f"{what} {out} is {special}, not a folder; {fix}")
        if out.exists():
            raise ConfigError(f"{what} {out} is a file, not a folder; {fix}")
    kind = folder_kind(out)
    if kind is not None and kind != "training run":
        raise ConfigError(f"{what} {out} is a {kind}; {fix}")
    _refuse_owned(out, what, fix)
    check_writable(out, what, fix)


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


@contextmanager
def refuse_full_disk(out: str | Path, what: str) -> Iterator[None]:
    """Turn a write of ``out`` that a full disk stops (:func:`is_disk_full`) into one line:
    what was not written and what to do (the atomic writes leave no part of it behind).

    Raises:
        DiskFullError: naming ``what``, the file and its folder's free space.
    """
    try:
        yield
    except Exception as e:
        if not is_disk_full(e):
            raise
        folder = Path(out).expanduser().absolute().parent
        free = free_bytes(folder)
        left = f" ({_size(free)} free)" if free is not None else ""
        raise DiskFullError(f"the disk of {folder} is full{left}: {what} {out} was not "
                            "written; free some space and run the command again") from None


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
