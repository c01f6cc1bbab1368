"""``extune search``: Optuna samples, Ray Tune runs the trials, MLflow records them.

Heavy imports (ray, optuna, mlflow) happen inside the commands, so ``extune --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from extune.cli._common import (
    ExperimentOpt,
    StorageOpt,
    TrackingUriOpt,
    console,
    echo,
    interruptible,
    option_values,
    refuse_with_resume,
    settings_kwargs,
    warn_job_paths,
)
from extune.defaults import SEARCH
from extune.signals import interrupt_exit_code, stop_words

__all__ = ["search"]

_RESUME_OK = {"resume", "address"}


def search(
    space: Annotated[str | None, typer.Option(
        help="Built-in space (excon, edda, random_occlusion, supcon, ce) or a YAML space file. "
             f"(default: {SEARCH.space})")]
    = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Base config YAML (default: a quick synthetic-data base).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="Override a base config key, e.g. --set optim.epochs=20.")] = None,
    trials: Annotated[int | None, typer.Option(
        help=f"Number of trials. (default: {SEARCH.trials})")] = None,
    max_concurrent: Annotated[int | None, typer.Option(
        help="Trials running at once. (default: as many as the CPUs/GPUs hold)")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option(
        help="CPUs per trial (also its torch threads). "
             f"(default: {SEARCH.cpus_per_trial:g})")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(
        help="GPUs per trial, fractional to share one (0.25); 0: CPU only. (default: 1 "
             "where the cluster has GPUs, else 0)")] = None,
    time_budget: Annotated[float | None, typer.Option(
        help="Stop the search after this many seconds.")] = None,
    sampler: Annotated[str | None, typer.Option(
        help=f"tpe, random, cmaes, nsga2 or qmc (seeded). (default: {SEARCH.sampler})")] = None,
    seed: Annotated[int | None, typer.Option(
        help=f"Sampler seed. (default: {SEARCH.seed})")] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="asha (stop weak trials early), none, or auto: asha for one objective, none "
             f"for several (no bias of the Pareto front). (default: {SEARCH.scheduler})")] = None,
    objective: Annotated[str | None, typer.Option(
        help="accuracy, alignment, ece, ... or several: accuracy,alignment (Pareto front). "
             f"(default: {SEARCH.objective})")] = None,
    max_failures: Annotated[int | None, typer.Option(
        help="Retries of a failing trial from its last checkpoint. "
             f"(default: {SEARCH.max_failures})")] = None,
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
        "--out", "-o", help=f"Folder that holds search folders. (default: {SEARCH.out})")] = None,
    fix: Annotated[list[str] | None, typer.Option(
        help="Hold a searched setting at a value, e.g. --fix explain.explainer=gradcam "
             "(repeatable).")] = None,
    full_eval: Annotated[str | None, typer.Option(
        help="When a trial runs the full evaluation suite (its objectives run every epoch): "
             f"end, milestones (also at ASHA's) or every (as eval.every says). (default: "
             f"{SEARCH.full_eval})")]
    = None,
    live: Annotated[bool, typer.Option(help="Live table of trials on a terminal.")] = True,
    log_checkpoints: Annotated[bool, typer.Option(
        help="Also log each trial's final checkpoint to MLflow (large).")] = False,
) -> None:
    """Search hyperparameters: Optuna samples, Ray Tune runs trials, MLflow records them.

    With no options: a quick ExCon search (8 trials) on the synthetic data set.
    """
    from extune.files import check_output_folder
    from extune.search import SearchSettings, run_search

    given = option_values(locals(), search, exclude=("live", "log_checkpoints"))
    if resume is not None:
        refuse_with_resume(given, _RESUME_OK, "search")
        result = interruptible(lambda: run_search(resume=resume, address=address), "search",
                               resume)
    else:
        settings = SearchSettings(**settings_kwargs(given, {"time_budget": "time_budget_s"}),
                                  live=live, log_checkpoints=log_checkpoints)
        check_output_folder(settings.out, "search folders in --out", "choose another --out")
        _print_plan(settings)
        result = interruptible(lambda: run_search(settings), "search", None, settings.out)
    _print_result(result)
    if result.interrupted:
        raise typer.Exit(interrupt_exit_code())
    _exit_if_all_failed(result)


def _print_plan(settings: Any) -> None:
    from extune.search import ray_address

    echo("extune search: space ", (settings.space, "bold"),
         f", {settings.trials} trial{'s' if settings.trials != 1 else ''} "
         f"({settings.max_concurrent or 'as many as fit'} at once, each "
         f"{settings.cpus_per_trial:g} CPU{_gpu_text(settings.gpus_per_trial, settings.address)}"
         f"), sampler {settings.sampler}, {settings.scheduler_text()}, objective "
         f"{','.join(settings.objective)}; Ray {ray_address(settings.address) or 'local'}")
    warn_job_paths(settings.out, settings.tracking_uri)


def _gpu_text(gpus_per_trial: float | None, address: str | None) -> str:
    """A trial's GPUs in words: as asked, or by default one where there are GPUs (this
    machine's NVIDIA devices; a cluster's are known once Ray runs, and the next line says)."""
    from extune.search import ray_address

    if gpus_per_trial is not None:
        return f" + {gpus_per_trial:g} GPU" if gpus_per_trial else " and no GPU"
    if ray_address(address) is None:
        return " + 1 GPU" if _local_gpus() else " and no GPU (this machine has none)"
    return " + 1 GPU if the cluster has GPUs (--gpus-per-trial to change)"


def _local_gpus() -> bool:
    """Whether this machine has an NVIDIA GPU (a device file; no CUDA library is loaded)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def _print_result(result: Any) -> None:
    from extune.search import ranked_table

    console.print(ranked_table(result.records, result.objectives, best=result.best,
                               title=f"{result.name}: trials, best first"))
    echo(f"{result.count('complete')} complete, {result.count('pruned')} pruned, "
         f"{result.count('failed')} failed in {result.wall_s:.0f} s")
    if result.interrupted:
        echo((stop_words(), "bold yellow"), f": continue with: extune search --resume "
             f"{result.path}")
    if result.best is not None:
        kind = "knee of the Pareto front" if len(result.objectives) > 1 else "best"
        kind += " so far" if result.interrupted else ""
        echo(f"{kind}: ", (result.best.name, "bold"), f" -> {result.best_config}")
        echo(f"train it: extune train --config {result.best_config}")
    if result.plots_left_out:
        echo(f"plots left out: {', '.join(result.plots_left_out)} (too little to draw them "
             f"from; why: {result.path / 'plots' / 'plots.html'})")
    echo(f"search folder: {result.path}")
    from extune.tracking.mlflow_app import running_ui

    address = running_ui(result.tracking_uri)
    if result.mlflow_view and address:
        browse = f"{address}/{result.mlflow_view}"
    else:
        browse = f"extune ui --search {result.name} (it prints the link of its trials' table)"
    echo(f"MLflow: {result.tracking_uri} (parent run {result.parent_run_id}); browse: {browse}")
    if result.tracking_pending:
        echo(("warning:", "bold yellow"), f" {result.tracking_pending} MLflow write(s) could not "
             f"be sent; they are kept in {result.path / 'tracking'}: send them with "
             f"extune sync {result.path}")


def _exit_if_all_failed(result: Any) -> None:
    """A search whose every trial failed found nothing and exported nothing: exit 1."""
    failed = result.count("failed")
    if not result.records or failed < len(result.records):
        return
    first = next((r.error for r in result.records if r.error), None)
    echo(("error:", "bold red"), f" all {failed} trial{'s' if failed != 1 else ''} failed, so "
         "no config was exported" + (f"; the first error: {first}" if first else "")
         + f"; see {result.path / 'summary.md'}", err=True)
    raise typer.Exit(1)
