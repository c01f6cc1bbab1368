"""``extune search``, ``extune export`` and ``extune ui``: a search, its best config, MLflow.

Heavy imports (ray, optuna, mlflow) happen inside the commands, so ``extune --help`` stays fast.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from extune.cli._common import (
    ExperimentOpt,
    StorageOpt,
    TrackingUriOpt,
    console,
    interruptible,
    option_values,
    refuse_with_resume,
    settings_kwargs,
)
from extune.errors import ConfigError
from extune.search.services import DEFAULT_TRACKING_URI

__all__ = ["search", "export", "ui"]

_RESUME_OK = {"resume", "address"}


def search(
    space: Annotated[str | None, typer.Option(
        help="Built-in space (excon, edda, supcon, ce) or a YAML space file. (default: excon)")]
    = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Base config YAML (default: a quick synthetic-data base).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="Override a base config key, e.g. --set optim.epochs=20.")] = None,
    trials: Annotated[int | None, typer.Option(help="Number of trials. (default: 8)")] = None,
    max_concurrent: Annotated[int | None, typer.Option(
        help="Trials running at once. (default: as many as the CPUs/GPUs hold)")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option(
        help="CPUs per trial (also its torch threads). (default: 1)")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(
        help="GPUs per trial, fractional to share one (0.25); 0: CPU only. (default: 1 "
             "where the cluster has GPUs, else 0)")] = None,
    time_budget: Annotated[float | None, typer.Option(
        help="Stop the search after this many seconds.")] = None,
    sampler: Annotated[str | None, typer.Option(
        help="tpe, random, cmaes, nsga2 or qmc (seeded). (default: tpe)")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampler seed. (default: 0)")] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="asha (stop weak trials early), none, or auto: asha for one objective, none "
             "for several (no bias of the Pareto front). (default: auto)")] = None,
    objective: Annotated[str | None, typer.Option(
        help="accuracy, alignment, ece, ... or several: accuracy,alignment (Pareto front). "
             "(default: accuracy)")] = None,
    max_failures: Annotated[int | None, typer.Option(
        help="Retries of a failing trial from its last checkpoint. (default: 1)")] = None,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster to join (HOST:PORT, ray://HOST:PORT, auto); default: local Ray.")]
    = None,
    storage: StorageOpt = None,
    tracking_uri: TrackingUriOpt = None,
    experiment: ExperimentOpt = None,
    name: Annotated[str | None, typer.Option(
        help="Search name. (default: <space>-<date>-<time>)")] = None,
    resume: Annotated[Path | None, typer.Option(
        help="Finish the interrupted search in this folder (its saved settings are used).")]
    = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Folder that holds search folders. (default: runs)")] = None,
    fix: Annotated[list[str] | None, typer.Option(
        help="Hold a searched setting at a value, e.g. --fix explain.explainer=gradcam "
             "(repeatable).")] = None,
    full_eval: Annotated[str | None, typer.Option(
        help="When a trial runs the full evaluation suite (its objectives run every epoch): "
             "end, milestones (also at ASHA's) or every (as eval.every says). (default: end)")]
    = None,
    live: Annotated[bool, typer.Option(help="Live table of trials on a terminal.")] = True,
) -> None:
    """Search hyperparameters: Optuna samples, Ray Tune runs trials, MLflow records them.

    With no options: a quick ExCon search (8 trials) on the synthetic data set.
    """
    from extune.search.settings import SearchSettings
    from extune.search.tuner import run_search

    given = option_values(locals(), _OPTION_NAMES)
    if resume is not None:
        refuse_with_resume(given, _RESUME_OK, "search")
        result = interruptible(lambda: run_search(resume=resume, address=address), "search",
                               resume)
    else:
        settings = SearchSettings(**settings_kwargs(given, {"time_budget": "time_budget_s"}),
                                  live=live)
        _print_plan(settings)
        result = interruptible(lambda: run_search(settings), "search", None)
    _print_result(result)
    if result.interrupted:
        raise typer.Exit(130)


_OPTION_NAMES = ("space", "config", "set_", "trials", "max_concurrent", "cpus_per_trial",
                 "gpus_per_trial", "time_budget", "sampler", "seed", "scheduler", "objective",
                 "max_failures", "address", "storage", "tracking_uri", "experiment", "name",
                 "resume", "out", "fix", "full_eval")


def _print_plan(settings: Any) -> None:
    console.print(
        f"extune search: space [bold]{settings.space}[/], {settings.trials} "
        f"trial{'s' if settings.trials != 1 else ''} "
        f"({settings.max_concurrent or 'as many as fit'} at once, "
        f"{settings.cpus_per_trial:g} CPU"
        f"{_gpu_text(settings.gpus_per_trial)} each), "
        f"sampler {settings.sampler}, {settings.scheduler_text()}, objective "
        f"{','.join(settings.objective)}; Ray {settings.address or 'local'}", highlight=False)


def _gpu_text(gpus_per_trial: float | None) -> str:
    from extune.search.resources import GPU_RULE

    if gpus_per_trial is None:
        return f" + {GPU_RULE}"
    return f" + {gpus_per_trial:g} GPU" if gpus_per_trial else ", no GPU"


def _print_result(result: Any) -> None:
    from extune.search.console import ranked_table

    console.print(ranked_table(result.records, result.objectives, best=result.best,
                               title=f"{result.name}: trials, best first"))
    console.print(f"{result.count('complete')} complete, {result.count('pruned')} pruned, "
                  f"{result.count('failed')} failed in {result.wall_s:.0f} s", highlight=False)
    if result.interrupted:
        console.print(f"[bold yellow]interrupted[/]: continue with: extune search --resume "
                      f"{result.path}", highlight=False)
    if result.best is not None:
        kind = "knee of the Pareto front" if len(result.objectives) > 1 else "best"
        kind += " so far" if result.interrupted else ""
        console.print(f"{kind}: [bold]{result.best.name}[/] -> {result.best_config}",
                      highlight=False)
        console.print(f"train it: extune train --config {result.best_config}", highlight=False)
    console.print(f"search folder: {result.path}\nMLflow: {result.tracking_uri} (parent run "
                  f"{result.parent_run_id}); browse with: extune ui", highlight=False)


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
    from extune.search.export import epoch_settings, export_run, export_search

    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if (search_dir is None) == (run is None):
        raise ConfigError("give either a SEARCH_DIR or --run RUN_ID")
    if run is not None:
        if select is not None:
            raise ConfigError("--select applies to a search folder, not to --run")
        config = export_run(run, out, tracking_uri, epochs)
        console.print(f"wrote {out} ({config.method}) from MLflow run {run}", markup=False,
                      highlight=False)
    else:
        config, record = export_search(search_dir, out, select, epochs)
        console.print(f"wrote {out} ({config.method}) from {record.name} of {search_dir}",
                      markup=False, highlight=False)
    hint = "" if epochs is not None else (
        "; a longer final run keeps these counts: pass --epochs N to scale them")
    console.print(f"note: {epoch_settings(config)}{hint}", markup=False, highlight=False)
    console.print(f"train it: extune train --config {out}", highlight=False)


def ui(
    tracking_uri: Annotated[str | None, typer.Option(
        help=f"MLflow store. (default: {DEFAULT_TRACKING_URI})")] = None,
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface; 0.0.0.0 exposes it to the network.")]
    = "127.0.0.1",
) -> None:
    """Start the MLflow UI on the search's tracking store (127.0.0.1 by default)."""
    from extune.search.services import existing_store

    uri = tracking_uri or DEFAULT_TRACKING_URI
    if uri.startswith(("http://", "https://")):
        console.print(f"{uri} is already a tracking server: open it in a browser")
        return
    uri = existing_store(uri)
    with socket.socket() as s:
        if s.connect_ex((host, port)) == 0:
            raise ConfigError(f"port {port} on {host} is in use; pass --port")
    console.print(f"MLflow UI: http://{host}:{port} (store {uri}); Ctrl-C stops it",
                  highlight=False)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
               "--host", host, "--port", str(port)]
    try:
        subprocess.run(command, check=False)
    except KeyboardInterrupt:
        pass
