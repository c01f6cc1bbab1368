"""What the command modules share: the consoles, common options and Ctrl-C handling."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from extune.defaults import DEFAULT_TRACKING_URI, SEARCH
from extune.errors import ConfigError
from extune.signals import interrupt_exit_code, stop_words

__all__ = ["console", "err_console", "echo", "help_width", "LOG_WIDTH", "option_values",
           "settings_kwargs", "refuse_with_resume", "interruptible", "exit_stopped",
           "warn_job_paths", "StorageOpt", "TrackingUriOpt", "ExperimentOpt"]

LOG_WIDTH = 120
"""The width of what extune prints where the output is not a terminal (a log, a file, a pipe)
and ``COLUMNS`` is not set: rich would cut tables and help at 80 columns."""


def _width(stream: Any) -> int | None:
    """``None`` (the terminal's own width) on a terminal or with ``COLUMNS``, else
    :data:`LOG_WIDTH`."""
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    return None if terminal or os.environ.get("COLUMNS") else LOG_WIDTH


console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))

T = TypeVar("T")


def echo(*parts: str | tuple[str, str], err: bool = False) -> None:
    """Print one message made of plain strings and ``(text, style)`` pairs.

    No markup is read from any part: paths and values may hold ``[...]`` (``a[/b]`` would
    crash rich's markup parser, ``[x]`` would vanish), so user text is always printed as is.
    Long lines are not wrapped (a one-line error stays one line).
    """
    (err_console if err else console).print(Text.assemble(*parts), highlight=False,
                                            soft_wrap=True)

def help_width() -> None:
    """``--help`` as wide as :data:`LOG_WIDTH` where it goes to a file or pipe (typer reads
    ``TERMINAL_WIDTH`` when it is imported, else rich's 80 columns)."""
    import typer.rich_utils

    if (_width(sys.stdout) is not None and not os.environ.get("TERMINAL_WIDTH")
            and hasattr(typer.rich_utils, "MAX_WIDTH")):
        typer.rich_utils.MAX_WIDTH = LOG_WIDTH


StorageOpt = Annotated[str | None, typer.Option(
    help="Shared path or bucket URI for trial results and checkpoints (clusters).")]
TrackingUriOpt = Annotated[str | None, typer.Option(
    help=f"MLflow tracking URI. (default: {DEFAULT_TRACKING_URI})")]
ExperimentOpt = Annotated[str | None, typer.Option(
    help=f"MLflow experiment. (default: {SEARCH.experiment})")]


def option_values(options: dict[str, Any], command: Callable[..., Any],
                  exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The options of ``command`` (its parameters, less ``exclude``) that were given: not
    ``None`` in ``options`` (the command's ``locals()``)."""
    import inspect

    names = [n for n in inspect.signature(command).parameters if n not in set(exclude)]
    return {k: options[k] for k in names if options.get(k) is not None}


def settings_kwargs(given: dict[str, Any], rename: dict[str, str] | None = None
                    ) -> dict[str, Any]:
    """The given options as settings fields: ``--set`` -> ``overrides``, ``--fix`` ->
    ``fixed`` (both parsed ``KEY=VALUE`` lists), paths as strings, ``--resume`` left out,
    other options under their name or their ``rename``."""
    from extune.train.config import parse_assignments

    rename = rename or {}
    kwargs = {rename.get(k, k): (str(v) if isinstance(v, Path) else v)
              for k, v in given.items() if k not in ("set_", "fix", "resume")}
    kwargs["overrides"] = parse_assignments(given.get("set_") or [])
    kwargs["fixed"] = parse_assignments(given.get("fix") or [], option="--fix")
    return kwargs


def refuse_with_resume(given: Iterable[str], allowed: set[str], what: str) -> None:
    """``--resume`` continues with the saved settings: any other option given is an error.

    Raises:
        ConfigError: naming the options to drop.
    """
    extra = sorted(set(given) - allowed)
    if extra:
        flags = ", ".join("--" + e.rstrip("_").replace("_", "-") for e in extra)
        raise ConfigError(f"--resume continues a {what} with its saved settings; drop {flags}")


def interruptible(call: Callable[[], T], command: str, resume: Path | None,
                  out: str | Path | None = None) -> T:
    """Run ``call`` (a search or study); on Ctrl-C, SIGTERM or SIGHUP say in one line how to
    continue and exit with 130, 143 or 129 (:mod:`extune.signals`).

    The folder to continue is ``resume``, else the one ``call`` made in ``out`` (a new search
    or study); stopped before it made one, there is nothing to continue, and the line says so.
    """
    before = _folders(out)
    try:
        return call()
    except KeyboardInterrupt:
        folder = resume or _made_folder(out, before, command)
        if folder is None:
            echo((stop_words(), "bold red"), f" before the {command} had a folder: nothing to "
                 "continue; run the command again")
        else:
            echo((stop_words(), "bold red"), f"; continue with: extune {command} --resume "
                 f"{folder}")
        raise typer.Exit(interrupt_exit_code()) from None


def exit_stopped(what: str) -> NoReturn:
    """End a command that Ctrl-C, SIGTERM or SIGHUP stopped: ``<how>; <what>`` in one line,
    exit 130, 143 or 129."""
    echo((stop_words(), "bold red"), f"; {what}", err=True)
    raise typer.Exit(interrupt_exit_code())


def _folders(out: str | Path | None) -> set[Path]:
    if out is None or not Path(out).is_dir():
        return set()
    return {p for p in Path(out).iterdir() if p.is_dir()}


def _made_folder(out: str | Path | None, before: set[Path], command: str) -> Path | None:
    """The folder of a new search or study in ``out``: made since it started, holding its
    ``<command>.json``, not locked by another process (two started at once); ``None`` when
    there is not exactly one."""
    from extune.locks import LOCK_NAME

    def ours(folder: Path) -> bool:
        try:
            holder = (folder / LOCK_NAME).read_text().split()
        except OSError:
            return True  # not locked
        return not holder or holder[0] == str(os.getpid())

    made = [p for p in _folders(out) - before if (p / f"{command}.json").is_file() and ours(p)]
    return made[0].resolve() if len(made) == 1 else None


RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray for the driver of a job (``ray job submit``)."""


def warn_job_paths(out: Path | str, tracking_uri: str | None, *, tracked: bool = True) -> None:
    """Inside a Ray job, warn in one line about relative output paths: the job's working folder
    is a temporary copy of ``--working-dir``, so what is written there is lost when it ends
    (docs/cluster.md, "Ray jobs")."""
    if RAY_JOB_ENV not in os.environ:
        return
    lost = [] if Path(out).is_absolute() else [f"--out {out}"]
    uri = tracking_uri or DEFAULT_TRACKING_URI
    if tracked and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        lost.append(f"--tracking-uri {uri}")
    if lost:
        echo(("warning:", "bold yellow"), f" this runs as a Ray job, whose working folder is a "
             f"temporary copy: {' and '.join(lost)} would be lost when the job ends; pass "
             "absolute paths on shared storage, or an MLflow server")

