"""The ``extune`` command line: ``train``, ``evaluate``, ``explain``, ``config``, ``search``,
``study``, ``export``, ``sync``, ``ui``.

One module per family of commands: :mod:`~extune.cli.train` (``train``, ``evaluate``,
``explain``, ``config``), :mod:`~extune.cli.search` (``search``), :mod:`~extune.cli.export`
(``export``), :mod:`~extune.cli.sync` (``sync``), :mod:`~extune.cli.study` (``study``) and
:mod:`~extune.cli.ui` (``ui``). Heavy imports (torch, ray, optuna, mlflow) happen inside the
commands, so ``extune --help`` stays fast.

Every user error (bad key or value, unknown name, missing files, unreachable services) is printed
as one line ``error: ...`` with exit status 2, never as a traceback.
"""

from __future__ import annotations

import functools
import gc
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer

from extune.cli import export, search, study, sync, train, ui
from extune.cli._common import echo, help_width
from extune.errors import ExtuneError
from extune.signals import (
    exit_at_once_on_signals,
    handle_signals,
    interrupt_exit_code,
    stop_words,
)

__all__ = ["app", "main", "run"]

T = TypeVar("T")

app = typer.Typer(
    name="extune",
    help="Hyperparameter search for explanation-driven training (ExCon, EDDA) of image "
    "classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _stoppable(command: Callable[..., T]) -> Callable[..., T]:
    """``command`` ended by Ctrl-C, SIGTERM or SIGHUP (``KeyboardInterrupt``) with one line and
    exit 130, 143 or 129 (:mod:`extune.signals`). typer would swallow it first: 0.29 and newer
    exit 130 without a word (after SIGTERM too), older ones abort with 1."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> T:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            echo((stop_words(), "bold red"), err=True)  # a command that can go on says how itself
            raise typer.Exit(interrupt_exit_code()) from None

    return run


app.command()(_stoppable(train.train))
app.command()(_stoppable(train.evaluate))
app.command()(_stoppable(train.explain))
app.command("config")(_stoppable(train.show_config))
app.command("search")(_stoppable(search.search))
app.command("study")(_stoppable(study.study))
app.command("export")(_stoppable(export.export))
app.command("sync")(_stoppable(sync.sync))
app.command("ui")(_stoppable(ui.ui))


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: runs the app, turning user errors into one-line messages."""
    handle_signals()
    help_width()
    try:
        code = app(args=argv, standalone_mode=False)
    except ExtuneError as e:
        echo(("error:", "bold red"), f" {e}", err=True)
        return 2
    except KeyboardInterrupt:
        echo((stop_words(), "bold red"), err=True)  # a command that can go on says how itself
        return interrupt_exit_code()
    except Exception as e:  # usage errors: click's, or typer's own copy of click (>= 0.29)
        if isinstance(e, typer.Abort):
            return 1
        if not isinstance(e, _usage_error_types()):
            raise
        if str(e).strip():  # no-args help has been printed already, with no message
            echo(("error:", "bold red"), f" {_usage_message(e)}", err=True)
        return int(getattr(e, "exit_code", 2))
    return code if isinstance(code, int) else 0


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes of a usage error (bad option, value or command) for every typer
    the pyproject allows: up to 0.28 typer raises the ``click`` package's ``ClickException``;
    from 0.29 it carries click inside and raises its own (a ``typer.TyperException``)."""
    types: list[type[BaseException]] = []
    typer_base = getattr(typer, "TyperException", None)
    if isinstance(typer_base, type):
        types.append(typer_base)
    try:
        import click

        types.append(click.exceptions.ClickException)
    except ImportError:  # typer >= 0.29 needs no click package
        pass
    return tuple(types)


def _usage_message(error: BaseException) -> str:
    """One line: what was wrong (click's message) and where the help is."""
    format_message = getattr(error, "format_message", None)
    message = format_message() if callable(format_message) else str(error)
    context = getattr(error, "ctx", None)
    command = getattr(context, "command_path", None) or "extune"
    message = " ".join(message.split()).rstrip(".")
    return f"{message}; see '{command} --help'"


def run() -> NoReturn:
    """The ``extune`` executable: :func:`main`, then exit without the interpreter's final
    garbage collection.

    After a command has imported torch, Ray, MLflow and Optuna, that collection walks millions
    of objects for about 2 s on a CPU, only to free memory the exit frees anyway; frozen
    objects are skipped (atexit handlers, such as Ray's shutdown, still run). Only here, never
    in :func:`main`, which tests call in-process.
    """
    code = main()
    exit_at_once_on_signals(code)  # no traceback from a clean-up a second Ctrl-C interrupts
    gc.freeze()
    sys.exit(code)
