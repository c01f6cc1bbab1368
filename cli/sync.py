"""``extune sync``: send the MLflow writes a search, study or training run kept while the
tracking store was down."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from extune.cli._common import echo

__all__ = ["sync"]


def sync(
    folder: Annotated[Path, typer.Argument(
        help="Search or study folder, or the output folder of `extune train`.")],
    timeout: Annotated[float, typer.Option(
        help="Seconds to keep trying a tracking store that does not answer.")] = 60.0,
) -> None:
    """Send the MLflow writes a search, study or training run kept while the store was down,
    and end the runs a killed process left RUNNING."""
    from extune.locks import lock_folder
    from extune.search import search_journals
    from extune.study.tracking import is_study_folder, study_journals
    from extune.tracking.sync import sync_journals
    from extune.tracking.training_run import is_train_folder, train_journals

    if is_study_folder(folder):
        jobs = study_journals(folder)
    elif is_train_folder(folder):
        jobs = train_journals(folder)
    else:
        jobs = search_journals(folder)
    lock_folder(folder, "command", fix="let it end: it sends its own writes once the store "
                "answers; then run extune sync again if it could not")
    result = sync_journals(jobs, timeout, abandoned=True)
    for journal, ended in result.abandoned.items():
        echo(f"{journal}: ended {ended} MLflow run(s) left RUNNING by a process that is gone "
             "(KILLED; --resume continues them)")
    for journal, lines in result.unreadable.items():
        echo(("warning:", "bold yellow"), f" {journal}: {len(lines)} line(s) could not be read "
             f"(line {', '.join(map(str, lines[:5]))}{', ...' if len(lines) > 5 else ''}: cut "
             "short when the process writing it was killed), so their write(s) cannot be "
             "sent; the other writes are")
    if not result.folders:
        if result.abandoned:
            return
        readable = " readable" if result.unreadable else ""
        echo(f"nothing to send: MLflow has every{readable} write of {folder}")
        return
    for journal, (sent, pending) in result.folders.items():
        echo(f"{journal}: sent {sent} write(s)" + (f", {pending} still unsent" if pending
                                                   else ""))
    if result.pending:
        echo(("error:", "bold red"), f" {result.pending} write(s) still unsent: the tracking "
             "store did not answer; run extune sync again when it does", err=True)
        raise typer.Exit(1)
