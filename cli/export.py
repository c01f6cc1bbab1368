"""``extune export``: the full config of a search's chosen trial, or of an MLflow trial run.

Heavy imports (ray, optuna, mlflow) happen inside the command, so ``extune --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from extune.cli._common import echo
from extune.defaults import DEFAULT_TRACKING_URI
from extune.errors import ConfigError

__all__ = ["export"]


def export(
    search_dir: Annotated[Path | None, typer.Argument(
        help="Search folder written by `extune search`.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="YAML file to write.")]
    = Path("best.yaml"),
    select: Annotated[str | None, typer.Option(
        help="accuracy, alignment, ... (best complete trial by it) or knee (Pareto trial "
             "closest to the ideal point). (default: the objective; knee for several)")] = None,
    run: Annotated[str | None, typer.Option(
        help="Export the config of this MLflow trial run instead.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        help=f"MLflow store of --run. (default: {DEFAULT_TRACKING_URI})")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Train the export this many epochs, with warm-ups scaled to keep their share "
             "of training.")] = None,
) -> None:
    """Write the full config of a search's chosen trial (or of an MLflow run) as YAML."""
    from extune.cli.train import warn_inactive
    from extune.files import refuse_full_disk
    from extune.search import SearchDir, epoch_settings, export_run, export_search, search_caveat
    from extune.train.config import EPOCHS_MAX

    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if epochs is not None and epochs > EPOCHS_MAX:
        raise ConfigError(f"--epochs must be <= {EPOCHS_MAX}, got {epochs}")
    if (search_dir is None) == (run is None):
        raise ConfigError("give either a SEARCH_DIR or --run RUN_ID")
    if run is not None:
        if select is not None:
            raise ConfigError("--select applies to a search folder, not to --run")
        with refuse_full_disk(out, "the exported config"):
            config, note = export_run(run, out, tracking_uri, epochs)
        echo(f"wrote {out} ({config.method}) from MLflow run {run}")
        if note:
            echo(("warning:", "bold yellow"), f" {note}")
    else:
        with refuse_full_disk(out, "the exported config"):
            config, record = export_search(search_dir, out, select, epochs)
        echo(f"wrote {out} ({config.method}) from {record.name} of {search_dir}")
        note = search_caveat(SearchDir.load(search_dir))
        if note:
            echo(("warning:", "bold yellow"), f" {note}")
    hint = "" if epochs is not None or not config.optim.warmup_epochs else (
        "; a longer final run keeps the learning-rate warm-up's epochs: pass --epochs N to "
        "scale it")
    echo(f"note: {epoch_settings(config)}{hint}")
    warn_inactive(config)
    echo(f"train it: extune train --config {out}")
