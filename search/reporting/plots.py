"""A search's pictures from its Optuna study: parameter importances, parallel coordinates,
contours, learning curves, the optimisation history or the Pareto front.

Each is written as a PNG (``optuna.visualization.matplotlib``) for MLflow's artifact view, and
all of them together as one interactive HTML page (``optuna.visualization``, plotly; plotly.js
embedded once, so the page works without internet).

Comparing pruned trials: with ASHA most trials stop early, and Optuna's plots use complete
trials only. When fewer than :data:`MIN_TRIALS` trials completed, the importance, parallel and
contour plots compare every trial at the latest epoch that at least :data:`MIN_TRIALS` trials
reached (its reported value there, from the study's intermediate values): the same budget for
each, as ASHA itself compares them. The plot titles say which was used.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extune.errors import one_line
from extune.search.settings import Objective

__all__ = ["MIN_TRIALS", "PLOTS_DIR", "search_plots", "comparable_study"]

MIN_TRIALS = 3
"""Fewest trials a comparison plot is drawn from."""
PLOTS_DIR = "plots"
log = logging.getLogger(__name__)


@dataclass
class Comparable:
    """The trials a comparison plot is drawn from.

    Attributes:
        study: the study, or an in-memory copy whose trials carry their value at ``epoch``.
        basis: how the trials were compared, for plot titles.
    """

    study: Any
    basis: str


def comparable_study(study: Any) -> Comparable | None:
    """The complete trials, or (single objective, too few complete) every trial's value at the
    latest epoch that :data:`MIN_TRIALS` trials reached; ``None`` when neither has enough."""
    import optuna
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(complete) >= MIN_TRIALS:
        return Comparable(study, f"{len(complete)} complete trials")
    if len(study.directions) > 1:
        return None
    reported = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                and t.intermediate_values]
    epochs = sorted({step for t in reported for step in t.intermediate_values}, reverse=True)
    for epoch in epochs:
        reached = [t for t in reported if epoch in t.intermediate_values]
        if len(reached) >= MIN_TRIALS:
            copy = optuna.create_study(direction=study.direction)
            copy.add_trials([optuna.trial.create_trial(
                params=t.params, distributions=t.distributions,
                value=t.intermediate_values[epoch]) for t in reached])
            return Comparable(copy, f"{len(reached)} trials at epoch {epoch}")
    return None


def search_plots(study: Any, objectives: Sequence[Objective], out_dir: str | Path,
                 *, title: str = "") -> dict[str, Path]:
    """Write the search's plots under ``out_dir`` (``<name>.png`` and ``plots.html``).

    A plot that the study cannot support (no complete trial, one parameter for a contour)
    is left out; the HTML page lists what is missing and why.

    Returns:
        Name -> file (``param_importances``, ``parallel_coordinate``, ``contour``,
        ``intermediate_values``, ``optimization_history`` or ``pareto_front``, and ``html``).
    """
    import optuna

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str, Any]] = []
    missing: list[str] = []
    verbosity = optuna.logging.get_verbosity()
    # Optuna logs a warning for each plot a study cannot support ("There are no complete
    # trials."); the page lists those plots with the reason, so the console stays quiet.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        for name, heading, make in _plan(study, objectives):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning on every call
                    result = make()
            except (ValueError, RuntimeError, ZeroDivisionError) as e:
                missing.append(f"{name}: {one_line(e, 200)}")
                continue
            if result is None:
                missing.append(f"{name}: fewer than {MIN_TRIALS} comparable trials")
                continue
            figures.append((name, heading, result))
    finally:
        optuna.logging.set_verbosity(verbosity)
    files: dict[str, Path] = {}
    for name, heading, (png, _) in figures:
        files[name] = _save_png(png, out / f"{name}.png", heading)
    files["html"] = _write_html(out / "plots.html", title, figures, missing)
    return files


def _plan(study: Any, objectives: Sequence[Objective]
          ) -> list[tuple[str, str, Callable[[], tuple[Any, Any] | None]]]:
    """(name, heading, make) per plot; ``make`` returns (matplotlib axes, plotly figure)."""
    import optuna.visualization as pv
    import optuna.visualization.matplotlib as pm

    names = [o.metric for o in objectives]
    multi = len(objectives) > 1
    comparable = comparable_study(study)
    basis = f" ({comparable.basis})" if comparable else ""

    def both(fn: str, target_study: Any, **kwargs: Any) -> tuple[Any, Any]:
        return getattr(pm, fn)(target_study, **kwargs), getattr(pv, fn)(target_study, **kwargs)

    def compared(fn: str, **kwargs: Any) -> Callable[[], tuple[Any, Any] | None]:
        def make() -> tuple[Any, Any] | None:
            if comparable is None:
                return None
            if multi:  # one objective at a time: the first
                kwargs.update(target=lambda t: t.values[0], target_name=names[0])
            else:
                kwargs.update(target_name=names[0])
            return both(fn, comparable.study, **kwargs)
        return make

    plan: list[tuple[str, str, Callable[[], tuple[Any, Any] | None]]] = [
        ("param_importances", f"Parameter importances for {names[0]}{basis}",
         compared("plot_param_importances")),
        ("parallel_coordinate", f"Parallel coordinates, {names[0]}{basis}",
         compared("plot_parallel_coordinate")),
        ("contour", f"Contours of {names[0]} over the two most important parameters{basis}",
         _contour(comparable, names[0], multi, both)),
    ]
    if multi:
        plan.append(("pareto_front", f"Pareto front of {names[0]} and {names[1]}",
                     lambda: both("plot_pareto_front", study, target_names=names)))
    else:
        plan += [
            ("optimization_history", f"Optimisation history of {names[0]} (complete trials)",
             lambda: both("plot_optimization_history", study, target_name=names[0])),
            ("intermediate_values", f"{names[0]} per epoch of every trial (pruned ones stop)",
             lambda: both("plot_intermediate_values", study)),
        ]
    return plan


def _contour(comparable: Comparable | None, name: str, multi: bool,
             both: Callable[..., tuple[Any, Any]]) -> Callable[[], tuple[Any, Any] | None]:
    def make() -> tuple[Any, Any] | None:
        import optuna

        if comparable is None:
            return None
        target = (lambda t: t.values[0]) if multi else None
        importances = optuna.importance.get_param_importances(comparable.study, target=target)
        params = list(importances)[:2]
        if len(params) < 2:
            raise ValueError("the search varies fewer than two parameters")
        kwargs: dict[str, Any] = {"params": params, "target_name": name}
        if multi:
            kwargs["target"] = target
        return both("plot_contour", comparable.study, **kwargs)
    return make


def _save_png(axes: Any, path: Path, heading: str) -> Path:
    import matplotlib.pyplot as plt

    first = axes.flat[0] if hasattr(axes, "flat") else axes
    fig = first.figure
    try:
        fig.suptitle(heading, fontsize=10)
        fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def _write_html(path: Path, title: str, figures: list[tuple[str, str, Any]],
                missing: list[str]) -> Path:
    """One page with every interactive figure; plotly.js embedded once (works offline)."""
    import html

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title></head><body style='font-family:sans-serif'><h1>{html.escape(title)}</h1>"]
    for i, (name, heading, (_, figure)) in enumerate(figures):
        figure.update_layout(title=heading)
        parts.append(f"<h2 id='{name}'>{html.escape(heading)}</h2>")
        parts.append(figure.to_html(full_html=False, include_plotlyjs=(i == 0)))
    if missing:
        parts.append("<h2>Not drawn</h2><ul>" + "".join(
            f"<li>{html.escape(m)}</li>" for m in missing) + "</ul>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path
