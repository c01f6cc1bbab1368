"""``extune study``: a fair, seeded comparison of methods."""

from __future__ import annotations

import math
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
from extune.defaults import SEARCH, STUDY
from extune.errors import ConfigError
from extune.train.config import as_float, parse_assignments

__all__ = ["study"]

_RESUME_OK = {"resume", "final_epochs", "seeds", "plan", "protocols"}
"""What ``--resume`` may change: more seeds reuse the finished runs, other final epochs train
new ones, another plan file tests other claims on the same runs, other sensitivity protocols
re-score the saved checkpoints; each change is recorded as a deviation in the study's
report."""


def study(
    methods: Annotated[str | None, typer.Option(
        help="Methods to compare, comma-separated. (default: the --plan file's methods, else "
             "ce,supcon,excon,edda,random_occlusion)")] = None,
    plan: Annotated[Path | None, typer.Option(
        "--plan", help="YAML file of the claims to test (method pairs, each metric's family "
                       "and source), margins, min_driven_share, controls; see docs/study.md. "
                       "(default: the papers' claims)")] = None,
    seeds: Annotated[int | None, typer.Option(
        help="Final runs per method (seeds); with --resume, more seeds reuse the finished "
             f"ones. (default: {STUDY.seeds}; --quick: {STUDY.quick_seeds})")] = None,
    final_epochs: Annotated[int | None, typer.Option(
        help="Epochs of a final run; allowed with --resume (recorded as a deviation). "
             f"(default: the search epochs; --quick: {STUDY.quick_final_epochs})")] = None,
    trials: Annotated[int | None, typer.Option(
        help="Trials of each method's search (a cap with --budget-epochs). "
             f"(default: {STUDY.trials}; "
             "--quick: 2)")] = None,
    budget_epochs: Annotated[int | None, typer.Option(
        help="Each search stops once its trials trained this many epochs in all, so every "
             "method consumes the same.")] = None,
    budget_seconds: Annotated[float | None, typer.Option(
        help="Each search stops once its trials ran this many seconds in all (compute-matched "
             "budgets).")] = None,
    startup_trials: Annotated[int | None, typer.Option(
        help="TPE's random start-up trials. (default: max(2, min(10, trials // 4)))")] = None,
    search_seeds: Annotated[int | None, typer.Option(
        help="Searches per method with sampler seeds seed..seed+S-1; the final runs share "
             "their configs, so the intervals include the search's variance. "
             f"(default: {STUDY.search_seeds})")]
    = None,
    searches_at_once: Annotated[int | None, typer.Option(
        help="Method searches running at the same time, each a driver of its own on the "
             "study's Ray; 1: one after another. (default: as many as the Ray cluster holds "
             "with each search's trials at once)")] = None,
    epochs: Annotated[int | None, typer.Option(
        help="Epochs of a search trial (sets optim.epochs of the base).")] = None,
    quick: Annotated[bool, typer.Option(
        help="Smoke test: tiny_cnn on 16 px synthetic images, 2 trials, 2 seeds.")] = False,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Base config YAML (default: the study base).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="Override a base config key, e.g. --set data.name=imagefolder.")]
    = None,
    fix: Annotated[list[str] | None, typer.Option(
        help="Hold a searched setting in every search, e.g. --fix explain.explainer=gradcam.")]
    = None,
    eval_explainer: Annotated[str | None, typer.Option(
        help="Explainer that scores every method's explanations. "
             f"(default: {STUDY.eval_explainer})")] = None,
    eval_layer: Annotated[str | None, typer.Option(
        help="Layer of --eval-explainer (Grad-CAM). (default: the backbone's last stage)")]
    = None,
    protocols: Annotated[str | None, typer.Option(
        help="Sensitivity protocols, comma-separated explainer[:layer] ('previous': the stage "
             f"before the last); '' for none. (default: {','.join(STUDY.protocols)})")] = None,
    test: Annotated[str | None, typer.Option(
        "--test", help=f"welch, permutation or paired. (default: {STUDY.test})")] = None,
    correction: Annotated[str | None, typer.Option(
        help=f"Within each family of claims: holm, bh or none. (default: {STUDY.correction})")]
    = None,
    margin: Annotated[list[str] | None, typer.Option(
        help="Equivalence margin of a metric, e.g. --margin accuracy=0.01 (repeatable).")]
    = None,
    min_driven_share: Annotated[float | None, typer.Option(
        help="Below this share of training images driven through its own view a method is "
             f"'weakly tested'. (default: the plan's, else {STUDY.min_driven_share:g})")] = None,
    controls: Annotated[bool | None, typer.Option(
        "--controls/--no-controls", help="Train each explanation-driven method's "
        "switched-off arms with its chosen config and seeds. (default: yes)")] = None,
    sampler: Annotated[str | None, typer.Option(
        help=f"Sampler of every search. (default: {SEARCH.sampler})")]
    = None,
    seed: Annotated[int | None, typer.Option(
        help=f"Sampler seed. (default: {SEARCH.seed})")] = None,
    scheduler: Annotated[str | None, typer.Option(
        help=f"asha, none or auto (asha for one objective). (default: {SEARCH.scheduler})")]
    = None,
    objective: Annotated[str | None, typer.Option(
        help="Validation objective that selects each method's config. "
             f"(default: {SEARCH.objective})")]
    = None,
    cpus_per_trial: Annotated[float | None, typer.Option(
        help=f"CPUs per trial. (default: {SEARCH.cpus_per_trial:g})")]
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
        "--out", "-o", help=f"Folder that holds study folders. (default: {SEARCH.out})")]
    = None,
    resume: Annotated[Path | None, typer.Option(
        help="Finish the interrupted study in this folder (nothing is trained twice).")] = None,
    live: Annotated[bool, typer.Option(help="Live tables of trials on a terminal.")] = True,
) -> None:
    """Compare methods fairly: equal budgets, seeds, one evaluation protocol, sound verdicts."""
    from extune.files import check_output_folder
    from extune.study.plan import load_plan_file
    from extune.study.run import run_study
    from extune.study.settings import StudySettings

    given = option_values(locals(), study, exclude=("quick", "live"))
    _check_numbers(seed, search_seeds, final_epochs)
    planned = load_plan_file(plan) if plan is not None else None
    if resume is not None:
        refuse_with_resume([*given, *(["quick"] if quick else [])], _RESUME_OK, "study")
        result = interruptible(lambda: run_study(resume=resume, final_epochs=final_epochs,
                                                 seeds=seeds, plan=planned,
                                                 protocols=protocols), "study", resume)
    else:
        kwargs = settings_kwargs(given)
        kwargs["plan"] = planned
        margins = parse_assignments(kwargs.pop("margin", None) or [], "--margin")
        kwargs["margins"] = {k: _margin(k, v) for k, v in margins.items()}
        settings = StudySettings.preset(quick, **kwargs, live=live)
        check_output_folder(settings.out, "study folders in --out", "choose another --out")
        _print_plan(settings)
        result = interruptible(lambda: run_study(settings), "study", None, settings.out)
    _print_result(result)
    _exit_on_failed_runs(result)


def _check_numbers(seed: int | None, search_seeds: int | None, final_epochs: int | None
                   ) -> None:
    """The numbers the study's settings check only when a search or a final run starts:
    every search's sampler seed (``seed .. seed + search_seeds - 1``) fits Optuna's 32 bits,
    and the final runs' epochs are bounded as ``optim.epochs`` is.

    Raises:
        ConfigError: naming the option and its bounds.
    """
    from extune.search import SAMPLER_SEED_MAX
    from extune.train.config import EPOCHS_MAX

    last = (seed or 0) + max(1, search_seeds or 1) - 1
    if seed is not None and not 0 <= seed <= last <= SAMPLER_SEED_MAX:
        raise ConfigError(f"--seed {seed}: the searches' sampler seeds {seed}..{last} must be "
                          f"in [0, {SAMPLER_SEED_MAX}] (Optuna's samplers take 32-bit seeds)")
    if final_epochs is not None and final_epochs > EPOCHS_MAX:
        raise ConfigError(f"--final-epochs must be <= {EPOCHS_MAX}, got {final_epochs}")


def _margin(metric: str, value: Any) -> Any:
    """A ``--margin`` value as a finite number (validated with the other settings)."""
    try:
        number = as_float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ConfigError(f"--margin {metric}={value}: the margin must be a finite number, "
                          f"e.g. --margin {metric}=0.02")
    return number


def _exit_on_failed_runs(result: Any) -> None:
    """Exit 1 (after the report) when a final run did not finish: its arm has fewer seeds."""
    bad = [r for m in result.results["methods"].values() for r in m["runs"]
           if r["state"] != "complete"]
    missing = [m for m, v in result.results["methods"].items()
               if not v.get("control_of") and not any(c.get("config") for c in v["searches"])]
    if not bad and not missing:
        return
    parts = [f"{r['label']} {r['state']}" + (f" ({r['error']})" if r.get("error") else "")
             for r in bad]
    parts += [f"{m}: its search had no complete trial, so no final runs" for m in missing]
    echo(f"warning: {len(parts)} problem(s); the report uses the runs that finished: "
         + "; ".join(parts))
    raise typer.Exit(1)


def _print_plan(s: Any) -> None:
    base = s.base_config()
    stopping = s.search_settings(s.methods[0], 0, out=".", parent_run=None,
                                 study_id="").scheduler_text()
    budget = (f"{s.budget_epochs} trial-epochs (at most {s.trials} trials)" if s.budget_epochs
              else f"{s.trials} trials")
    if s.budget_seconds:
        budget += f", at most {s.budget_seconds:g} trial-seconds"
    searches = f"{s.search_seeds} searches" if s.search_seeds > 1 else "a search"
    echo(f"extune study: {', '.join(s.methods)} on {base.data.name} ({base.model.backbone}); "
         f"per method {searches} of {budget} x {base.optim.epochs} epochs ({s.sampler} seed "
         f"{s.seed}, {stopping}), then {s.seeds} seeds x {s.resolved_final_epochs()} epochs "
         f"evaluated on the test split, explanations scored by {s.eval_explainer}"
         f"{' at ' + s.eval_layer if s.eval_layer else ' (last stage)'}")
    from extune.study.plan import control_arms, plan_claims

    claims = plan_claims(s)
    arms = [a["arm"] for listed in control_arms(s, claims).values() for a in listed]
    echo(f"claims: {len(claims)} from {'the plan file' if s.plan else 'the papers'}"
         + (f"; controls: {', '.join(arms)}" if arms else "; no controls"))
    if s.quick:
        echo("--quick is a smoke test: its numbers show the tool works, not the methods")


def _signed(value: float) -> str:
    """``+0.012``, ``-0.034``; ``0.000`` for what rounds to zero (never ``-0.000``)."""
    text = f"{value:+.3f}"
    return "0.000" if float(text) == 0 else text


def _print_result(result: Any) -> None:
    """The primary rows of the claims and controls (the report has every row)."""
    from rich.table import Table

    st = result.results["statistics"]
    rows = [c for c in result.results["comparisons"] if c.get("family") == "primary"]
    table = Table(title=f"{result.name}: primary claims and controls ({st['test']}, "
                        f"{st['correction']} within each family)",
                  title_justify="left", header_style="bold")
    for column in ("A", "B", "metric", "A - B", "CI (adjusted)", "p adj.", "verdict"):
        table.add_column(column, no_wrap=column != "verdict")  # names whole, never "…"
    style = {"holds": "green", "reversed": "red", "equivalent": "cyan"}
    for c in rows:
        d = c["difference"]
        low, high = c.get("interval") or (None, None)
        ci = (f"[{_signed(low)}, {_signed(high)}]" if low is not None
              else f"n={c['n_a']}+{c['n_b']}")
        mean = "-" if d.get("estimate") is None else _signed(d["estimate"])
        p = "-" if c.get("p_adjusted") is None else f"{c['p_adjusted']:.3f}"
        weak = c.get("weak") and c["verdict"] != "not tested"
        verdict = c["verdict"] + (" (weakly tested)" if weak else "")
        table.add_row(c["a"], c["b"], c["metric"], mean, ci, p,
                      f"[{style.get(c['verdict'], 'yellow')}]{verdict}[/]")
    console.print(table)
    secondary = len(result.results["comparisons"]) - len(rows)
    echo(f"{secondary} secondary row(s) in the report\n"
         f"report: {result.files['report']}\nresults: {result.files['results']}\n"
         f"MLflow: {result.tracking_uri} (study run {result.parent_run_id}); browse "
         f"with: extune ui --search {result.name}\n"
         f"study folder: {result.path} ({result.wall_s / 60:.1f} min)")
