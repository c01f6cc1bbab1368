"""``extune study``: a fair, seeded comparison of methods."""

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
)

__all__ = ["study"]

_RESUME_OK = {"resume"}


def study(
    methods: Annotated[str | None, typer.Option(
        help="Methods to compare, comma-separated. (default: ce,supcon,excon,edda,"
             "random_occlusion)")] = None,
    seeds: Annotated[int | None, typer.Option(
        help="Final runs per method (seeds). (default: 3; --quick: 2)")] = None,
    final_epochs: Annotated[int | None, typer.Option(
        help="Epochs of a final run. (default: the search epochs; --quick: 2)")] = None,
    trials: Annotated[int | None, typer.Option(
        help="Trials of each method's search. (default: 8; --quick: 2)")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Epochs of a search trial (sets optim.epochs of the base).")] = None,
    quick: Annotated[bool, typer.Option(
        help="Tiny preset: tiny_cnn on 16 px synthetic images, 2 trials, 2 seeds.")] = False,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Base config YAML (default: the quick search base).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="Override a base config key, e.g. --set data.name=imagefolder.")]
    = None,
    fix: Annotated[list[str] | None, typer.Option(
        help="Hold a searched setting in every search, e.g. --fix explain.explainer=gradcam.")]
    = None,
    eval_explainer: Annotated[str | None, typer.Option(
        help="Explainer of every final run's explanation metrics. (default: the base's "
             "explain.explainer)")] = None,
    sampler: Annotated[str | None, typer.Option(help="Sampler of every search. (default: tpe)")]
    = None,
    seed: Annotated[int | None, typer.Option(help="Sampler seed. (default: 0)")] = None,
    scheduler: Annotated[str | None, typer.Option(
        help="asha, none or auto (asha for one objective). (default: auto)")] = None,
    objective: Annotated[str | None, typer.Option(
        help="Validation objective that selects each method's config. (default: accuracy)")]
    = None,
    cpus_per_trial: Annotated[float | None, typer.Option(help="CPUs per trial. (default: 1)")]
    = None,
    gpus_per_trial: Annotated[float | None, typer.Option(
        help="GPUs per trial. (default: 1 where the cluster has GPUs)")] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="Trials running at once.")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster to join.")] = None,
    storage: StorageOpt = None,
    tracking_uri: TrackingUriOpt = None,
    experiment: ExperimentOpt = None,
    name: Annotated[str | None, typer.Option(help="Study name. (default: study-<date>-<time>)")]
    = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Folder that holds study folders. (default: runs)")] = None,
    resume: Annotated[Path | None, typer.Option(
        help="Finish the interrupted study in this folder (nothing is trained twice).")] = None,
    live: Annotated[bool, typer.Option(help="Live tables of trials on a terminal.")] = True,
) -> None:
    """Compare methods fairly: the same search budget for each, the chosen configs retrained
    with several seeds, test metrics with 95% intervals and the papers' claims with verdicts."""
    from extune.search.study import StudySettings, run_study

    given = option_values(locals(), _OPTION_NAMES)
    if resume is not None:
        refuse_with_resume([*given, *(["quick"] if quick else [])], _RESUME_OK, "study")
        result = interruptible(lambda: run_study(resume=resume), "study", resume)
    else:
        settings = StudySettings.preset(quick, **settings_kwargs(given), live=live)
        _print_plan(settings)
        result = interruptible(lambda: run_study(settings), "study", None)
    _print_result(result)
    _exit_on_failed_runs(result)


def _exit_on_failed_runs(result: Any) -> None:
    """Exit 1 (after the report) when a final run did not finish: its method has fewer seeds."""
    bad = [r for m in result.results["methods"].values() for r in m["runs"]
           if r["state"] != "complete"]
    missing = [m for m, v in result.results["methods"].items() if not v["search"].get("config")]
    if not bad and not missing:
        return
    parts = [f"{r['label']} {r['state']}" + (f" ({r['error']})" if r.get("error") else "")
             for r in bad]
    parts += [f"{m}: its search had no complete trial, so no final runs" for m in missing]
    echo(f"warning: {len(parts)} problem(s); the report uses the runs that finished: "
         + "; ".join(parts))
    raise typer.Exit(1)


_OPTION_NAMES = ("methods", "seeds", "final_epochs", "trials", "epochs", "config", "set_", "fix",
                 "eval_explainer", "sampler", "seed", "scheduler", "objective",
                 "cpus_per_trial", "gpus_per_trial", "max_concurrent", "address", "storage",
                 "tracking_uri", "experiment", "name", "out", "resume")


def _print_plan(s: Any) -> None:
    base = s.base_config()
    stopping = s.search_settings(s.methods[0], out=".", parent_run=None,
                                 study_id="").scheduler_text()
    echo(f"extune study: {', '.join(s.methods)} on {base.data.name} ({base.model.backbone}); "
         f"per method {s.trials} trials x {base.optim.epochs} epochs ({s.sampler} seed {s.seed}, "
         f"{stopping}), then {s.seeds} seeds x {s.final_epochs or base.optim.epochs} epochs "
         "evaluated on the test split")


def _print_result(result: Any) -> None:
    from rich.table import Table

    table = Table(title=f"{result.name}: claims (paired differences over seeds)",
                  title_justify="left", header_style="bold")
    for column in ("claim", "metric", "A - B", "95% CI", "verdict"):
        table.add_column(column)
    style = {"holds": "green", "reversed": "red"}
    for c in result.results["comparisons"]:
        d = c["difference"]
        ci = (f"[{d['low']:+.3f}, {d['high']:+.3f}]" if d.get("low") is not None
              else f"n={c['n']}")
        mean = "-" if d.get("mean") is None else f"{d['mean']:+.3f}"
        table.add_row(f"{c['a']} vs {c['b']}", c["metric"], mean, ci,
                      f"[{style.get(c['verdict'], 'yellow')}]{c['verdict']}[/]")
    console.print(table)
    echo(f"report: {result.files['report']}\nresults: {result.files['results']}\n"
         f"MLflow: {result.tracking_uri} (study run {result.parent_run_id}); browse "
         f"with: extune ui\nstudy folder: {result.path} ({result.wall_s / 60:.1f} min)")
