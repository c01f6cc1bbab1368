"""A search's pictures from its Optuna study: parameter importances, parallel coordinates,
contours, learning curves, the optimisation history or the Pareto front.

Each is written as a PNG (``optuna.visualization.matplotlib``) for MLflow's artifact view, and
all of them together as one interactive HTML page (``optuna.visualization``, plotly; plotly.js
embedded once, so the page works without internet).

Only what varied is drawn: a parameter that took one value across the compared trials (held
with ``--fix``/``--set`` in an older study, a YAML ``fixed`` key) says nothing about the
objective, so importances, parallel coordinates and contours leave it out.

Too few trials: an importance is a fitted model (fANOVA, a random forest) and a contour an
interpolated surface over the two most important parameters; fitted to a handful of trials
either shows noise with the authority of a figure. Both are drawn only from at least
:func:`fit_minimum` trials: :data:`FIT_PER_PARAMETER` per parameter that varies (the fewest
that separate each parameter's effect from the others') and never fewer than :data:`MIN_FIT`
(a forest's trees need a few points per split). Parallel coordinates fit nothing (a line per
trial) and need :data:`MIN_TRIALS`. A plot left out is listed with the reason at the top of
``plots.html`` and in :attr:`SearchPlots.left_out`.

Comparing pruned trials: with ASHA most trials stop early, and Optuna's plots use complete
trials only. When too few trials completed for a plot, it compares every trial at the latest
epoch that enough trials reached (its reported value there, from the study's intermediate
values): the same budget for each, as ASHA itself compares them. The plot titles say which was
used.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extune.errors import one_line
from extune.evaluate.objectives import Objective
from extune.tracking.trials import trial_label

__all__ = ["MIN_TRIALS", "MIN_FIT", "FIT_PER_PARAMETER", "PLOTS_DIR", "Comparable", "Drawn",
           "SearchPlots", "comparable_study", "draw_plots", "fit_minimum", "search_plots"]

MIN_TRIALS = 3
"""Fewest trials parallel coordinates are drawn from."""
MIN_FIT = 8
"""Fewest trials an importance or contour plot is fitted to."""
FIT_PER_PARAMETER = 2
"""Trials an importance or contour plot needs per parameter that varies."""
PLOTS_DIR = "plots"
log = logging.getLogger(__name__)


def fit_minimum(varying: int) -> int:
    """Trials an importance or contour plot needs when ``varying`` parameters vary."""
    return max(MIN_FIT, FIT_PER_PARAMETER * varying)


class _LeftOut(Exception):
    """A plot the study cannot support; the message says why."""


@dataclass
class Comparable:
    """Trials a comparison plot is drawn from.

    Attributes:
        trials: the compared trials (the study's complete trials, or in-memory trials whose
            value is their reported value at one epoch).
        basis: how the trials were compared, for plot titles.
    """

    trials: list[Any]
    basis: str
    _study: Any = None
    _direction: Any = None

    @property
    def study(self) -> Any:
        """The study, or an in-memory one holding :attr:`trials`."""
        if self._study is None:
            import optuna

            self._study = optuna.create_study(direction=self._direction)
            self._study.add_trials(self.trials)
        return self._study

    def drawn(self, directions: Sequence[Any], *, best: int | None = None) -> tuple[Any, str]:
        """The study a plot of these trials draws: :attr:`study`, or an in-memory one of at
        most :data:`MAX_DRAWN` of them (:func:`_drawn`; ``best``: how many of the best, half
        by default); and the note for its title (``""`` when all are drawn)."""
        kept = MAX_DRAWN // 2 if best is None else best
        trials, note = _drawn(self.trials, directions[0], lambda t: t.values[0], best=kept)
        return (self.study, "") if not note else (_study_of(trials, directions), note)

    def varying(self, *, common: bool = False) -> list[str]:
        """Parameters that took two values or more across the trials (a held one never does);
        ``common``: only those every trial has (what an importance fit uses)."""
        values: dict[str, set[Any]] = {}
        for t in self.trials:
            for key, value in t.params.items():
                values.setdefault(key, set()).add(value)
        names = [k for k, v in values.items() if len(v) > 1]
        if common:
            names = [k for k in names if all(k in t.params for t in self.trials)]
        return sorted(names)


def comparable_sets(study: Any) -> Iterator[Comparable]:
    """The complete trials, then (single objective) every trial's value at each epoch it
    reported, the latest epoch first."""
    import optuna
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    yield Comparable(complete, f"{len(complete)} complete trials", _study=study)
    if len(study.directions) > 1:
        return
    reported = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                and t.intermediate_values]
    for epoch in sorted({s for t in reported for s in t.intermediate_values}, reverse=True):
        reached = [t for t in reported if epoch in t.intermediate_values]
        yield Comparable([optuna.trial.create_trial(
            params=t.params, distributions=t.distributions, value=t.intermediate_values[epoch])
            for t in reached], f"{len(reached)} trials at epoch {epoch}",
            _direction=study.direction)


def comparable_study(study: Any, enough: Callable[[Comparable], bool] | None = None
                     ) -> Comparable | None:
    """The first of :func:`comparable_sets` that is ``enough`` (default: :data:`MIN_TRIALS`
    trials); ``None`` when none is."""
    enough = enough or (lambda c: len(c.trials) >= MIN_TRIALS)
    return next((c for c in comparable_sets(study) if enough(c)), None)


def _fits(c: Comparable) -> bool:
    varying = len(c.varying(common=True))
    return varying >= 2 and len(c.trials) >= fit_minimum(varying)


def _shortfall(study: Any, fitted: bool) -> str:
    """Why no comparable set was enough for a plot (``fitted``: importance or contour)."""
    sets = list(comparable_sets(study))
    largest = max(sets, key=lambda c: len(c.trials))
    varying = len(largest.varying(common=fitted))
    have = sets[0].basis + (f", at most {len(largest.trials)} at one epoch"
                            if len(sets) > 1 else "")
    if fitted and varying < 2 and len(largest.trials) >= MIN_FIT:
        return f"fewer than two parameters vary ({have})"
    if not fitted:
        if len(largest.trials) >= MIN_TRIALS:
            return f"no parameter varies ({have})"
        return f"too few trials: {have}; it needs {MIN_TRIALS}"
    return (f"too few trials to fit: {have}; it needs {fit_minimum(varying)} (at least "
            f"{MIN_FIT}, and {FIT_PER_PARAMETER} for each of the {varying} parameters that vary)")


@dataclass
class Drawn:
    """One plot: its name (``<name>.png``), heading, matplotlib axes and plotly figure."""

    name: str
    heading: str
    png: Any
    html: Any


@dataclass(frozen=True)
class SearchPlots(Mapping[str, Path]):
    """The files :func:`search_plots` wrote (a mapping name -> file) and the plots it left
    out.

    Attributes:
        files: name -> file (``param_importances``, ``parallel_coordinate``, ``contour``,
            ``intermediate_values``, ``optimization_history`` or ``pareto_front``, and
            ``html``).
        left_out: name -> why it was not drawn (``too few trials to fit: ...``).
    """

    files: dict[str, Path] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Path:
        return self.files[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def left_out_text(self) -> str:
        """``contour: too few trials to fit ... | ...``, or ``""``: one line for a log."""
        return " | ".join(f"{name}: {why}" for name, why in self.left_out.items())


def search_plots(study: Any, objectives: Sequence[Objective], out_dir: str | Path,
                 *, title: str = "") -> SearchPlots:
    """Write the search's plots under ``out_dir`` (``<name>.png`` and ``plots.html``).

    A plot that the study cannot support (too few trials, nothing varies) is left out;
    ``plots.html`` and the result's ``left_out`` say which and why.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures, left_out = draw_plots(study, objectives)
    files: dict[str, Path] = {}
    for drawn in figures:
        files[drawn.name] = _save_png(drawn.png, out / f"{drawn.name}.png", drawn.heading)
    files["html"] = _write_html(out / "plots.html", title, figures, left_out)
    return SearchPlots(files, left_out)


def draw_plots(study: Any, objectives: Sequence[Objective]
               ) -> tuple[list[Drawn], dict[str, str]]:
    """The search's plots in memory, and name -> why for those left out.

    The caller closes the matplotlib figures (``plt.close(d.png.figure)``).
    """
    import optuna

    figures: list[Drawn] = []
    left_out: dict[str, str] = {}
    verbosity = optuna.logging.get_verbosity()
    # Optuna logs a warning for each plot a study cannot support ("There are no complete
    # trials."); the page lists those plots with the reason, so the console stays quiet.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        for name, make in _plan(study, objectives):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning on every call
                    heading, png, html = make()
            except (_LeftOut, ValueError, RuntimeError, ZeroDivisionError) as e:
                left_out[name] = one_line(e, 300)
                continue
            figures.append(Drawn(name, heading, png, html))
    finally:
        optuna.logging.set_verbosity(verbosity)
    return figures, left_out


_Make = Callable[[], tuple[str, Any, Any]]


def _plan(study: Any, objectives: Sequence[Objective]) -> list[tuple[str, _Make]]:
    """(name, make) per plot; ``make`` returns (heading, matplotlib axes, plotly figure)."""
    import optuna.visualization as pv
    import optuna.visualization.matplotlib as pm

    names = [o.metric for o in objectives]
    multi = len(objectives) > 1
    target: dict[str, Any] = {"target_name": names[0]}
    if multi:  # one objective at a time: the first
        target["target"] = lambda t: t.values[0]

    def both(fn: str, target_study: Any, **kwargs: Any) -> tuple[Any, Any]:
        import matplotlib

        # Optuna switches matplotlib to its ggplot style for some plots and never back: kept
        # inside the call, so that each plot looks the same whatever was drawn before
        with matplotlib.rc_context():
            png = getattr(pm, fn)(target_study, **kwargs)
        return png, getattr(pv, fn)(target_study, **kwargs)

    fanova = functools.cache(_fanova_once)  # the importance plots and the contour's pair: one fit

    def importances() -> tuple[str, Any, Any]:
        c = _chosen(study, fitted=True)
        params = c.varying(common=True)
        return (f"Parameter importances for {names[0]} (fANOVA over {c.basis}, "
                f"{len(params)} parameters that vary)",
                *both("plot_param_importances", c.study, params=params, evaluator=fanova(),
                      **target))

    def parallel() -> tuple[str, Any, Any]:
        c = _chosen(study, fitted=False)
        shown, note = c.drawn(study.directions)
        png, html = both("plot_parallel_coordinate", shown, params=c.varying(), **target)
        _legible_axes(png, [names[0], *c.varying()])
        return f"Parallel coordinates, {names[0]} ({c.basis}{note})", png, html

    def contour() -> tuple[str, Any, Any]:
        import optuna

        c = _chosen(study, fitted=True)
        ranked = optuna.importance.get_param_importances(
            c.study, evaluator=fanova(), params=c.varying(common=True),
            target=target.get("target"))
        # Optuna interpolates over a grid of every trial's values (n x n: 14 MB of plots.html
        # at 1,100 trials): an even sample is enough to show the surface
        shown, note = c.drawn(study.directions, best=0)
        return (f"Contours of {names[0]} over the two most important parameters "
                f"({c.basis}{note})", *both("plot_contour", shown, params=list(ranked)[:2],
                                            **target))

    plan: list[tuple[str, _Make]] = [("param_importances", importances),
                                     ("parallel_coordinate", parallel), ("contour", contour)]
    if multi:
        plan.append(("pareto_front", lambda: (
            f"Pareto front of {names[0]} and {names[1]}",
            *both("plot_pareto_front", study, target_names=names))))
    else:
        plan += [("optimization_history", lambda: _history(study, names[0], both)),
                 ("intermediate_values", lambda: _curves(study, names[0], both))]
    return plan


def _fanova_once(seed: int = 0) -> Any:
    """Optuna's fANOVA importance evaluator, seeded and fitted once per set of trials and
    parameters: the PNG and the HTML importance plots and the contour's choice of the two most
    important parameters then show one fit (unseeded, three fits could rank them three ways).
    Named, not Optuna's default: that is PED-ANOVA in Optuna 5 (checked with 5.1; fANOVA in
    Optuna 4), which the titles would misname.

    Made on first use: ``optuna.importance`` imports scikit-learn (1.2 s at the end of every
    search, measured on 2 cores), which a search too small to fit an importance never needs.
    """
    from optuna.importance import BaseImportanceEvaluator, FanovaImportanceEvaluator

    class FanovaOnce(BaseImportanceEvaluator):
        def __init__(self) -> None:
            self._evaluator = FanovaImportanceEvaluator(seed=seed)
            self._fitted: dict[Any, dict[str, float]] = {}

        def evaluate(self, study: Any, params: list[str] | None = None, *,
                     target: Callable[[Any], float] | None = None) -> dict[str, float]:
            trials = tuple((tuple(sorted(t.params.items())), tuple(t.values or ()))
                           for t in study.get_trials(deepcopy=False))
            key = (trials, tuple(params or ()))
            if key not in self._fitted:
                self._fitted[key] = self._evaluator.evaluate(study, params=params,
                                                             target=target)
            return dict(self._fitted[key])

    return FanovaOnce()


def _chosen(study: Any, *, fitted: bool) -> Comparable:
    def enough(c: Comparable) -> bool:
        return _fits(c) if fitted else len(c.trials) >= MIN_TRIALS and bool(c.varying())

    chosen = comparable_study(study, enough)
    if chosen is None:
        raise _LeftOut(_shortfall(study, fitted))
    return chosen


def _history(study: Any, name: str, both: Callable[..., tuple[Any, Any]]
             ) -> tuple[str, Any, Any]:
    from optuna.trial import TrialState

    numbers = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not numbers:
        raise _LeftOut("no complete trial")
    png, html = both("plot_optimization_history", study, target_name=name)
    label = "trial number (as in trial-000, trial-001, ...)"
    _integer_x(png, html, max(numbers), label)
    return f"Optimisation history of {name} (complete trials)", png, html


def _curves(study: Any, name: str, both: Callable[..., tuple[Any, Any]]
            ) -> tuple[str, Any, Any]:

    reported = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not reported:
        raise _LeftOut("no trial reported an epoch")
    epochs = [s for t in reported for s in t.intermediate_values]
    ended = [t for t in reported if t.state.is_finished()]
    drawn, note = _drawn(ended, study.direction,
                         lambda t: t.intermediate_values[max(t.intermediate_values)])
    numbers = {}  # Optuna's TrialN of the drawn trials' study -> the search's trial number
    if note:
        study = _study_of(drawn, study.directions)
        numbers = {i: t.number for i, t in enumerate(drawn)}
    png, html = both("plot_intermediate_values", study)
    for line in png.get_lines():
        line.set_label(_mlflow_name(line.get_label(), numbers))
    if png.get_legend() is not None:
        if len(png.get_lines()) <= MAX_LEGEND:
            png.legend(bbox_to_anchor=(1.02, 1), loc="upper left", borderaxespad=0.0,
                       fontsize=8)
        else:  # a column taller than the figure, in 10 colours: plots.html names each line
            png.get_legend().remove()
    html.for_each_trace(lambda trace: trace.update(name=_mlflow_name(trace.name, numbers)))
    png.set_ylabel(name)
    html.update_yaxes(title=name)
    _integer_x(png, html, max(epochs), "epoch")
    which = note.lstrip(", ") if note else "every trial"
    return f"{name} per epoch of {which} (pruned ones stop)", png, html


MAX_DRAWN = 200
"""Most trials a plot of one line per trial draws (learning curves, parallel coordinates:
the best half and an even sample of the rest by trial number) and a contour interpolates
over (an even sample), so that the plots of a 2,000-trial search stay legible and small: the
contour's grid is trials x trials (14 MB of plots.html at 1,100 trials), the curves one line
each; the titles say how many of how many."""


def _drawn(trials: Sequence[Any], direction: Any, value: Callable[[Any], float],
           best: int = MAX_DRAWN // 2) -> tuple[list[Any], str]:
    """``trials`` when there are at most :data:`MAX_DRAWN`, else the ``best`` by ``value``
    (``direction``: the study's) and evenly spaced others, by trial number; with a note for
    the title (``""`` when all are drawn)."""
    from optuna.study import StudyDirection

    if len(trials) <= MAX_DRAWN:
        return list(trials), ""
    sign = 1.0 if direction == StudyDirection.MAXIMIZE else -1.0
    ranked = sorted(trials, key=lambda t: -sign * value(t))
    top = ranked[:best]
    rest = sorted(ranked[best:], key=lambda t: t.number)
    wanted = MAX_DRAWN - len(top)
    others = [rest[i * len(rest) // wanted] for i in range(wanted)]
    which = f"the {len(top)} best and {wanted} evenly spaced" if top else "evenly spaced"
    return (sorted(top + others, key=lambda t: t.number),
            f", {MAX_DRAWN} of {len(trials)} drawn: {which}")


def _study_of(trials: Sequence[Any], directions: Sequence[Any]) -> Any:
    """An in-memory study of ``trials`` (numbered 0, 1, ... in their order)."""
    import optuna

    study = optuna.create_study(directions=list(directions))
    study.add_trials(trials)
    return study


MAX_LEGEND = 20
"""Most trials the learning-curves PNG names in a legend (more would not fit; ``plots.html``
names each curve when pointed at)."""
AXIS_WIDTH_IN = 1.7
"""Inches between two axes of the parallel coordinates PNG: room for the tick labels of one
(``layer3``, ``0.0001``) before the next."""


def _legible_axes(ax: Any, names: list[str]) -> None:
    """The parallel coordinates PNG made legible: each axis named in full (Optuna cuts long
    names to ``edda.occlusion_pr...``) on two lines at its dot (``edda.`` over
    ``keep_fraction``), level, and the figure wide enough that no axis's tick labels run into
    the next axis (Optuna's 6.4 inches put ``layer3`` against ``256``), tick labels on white
    over the lines."""
    shown = [t.get_text() for t in ax.get_xticklabels()]
    full = [next((n for n in names if n == label or (label.endswith("...")
                  and n.startswith(label[:-3]))), label) for label in shown]
    ax.set_xticks(ax.get_xticks())
    ax.set_xticklabels([n.replace(".", ".\n", 1) for n in full], rotation=0, ha="center",
                       fontsize=9)
    ax.figure.set_size_inches(max(8.0, AXIS_WIDTH_IN * len(full) + 2.0), 5.5)
    for axis in ax.figure.axes:  # tick labels over the lines stay readable
        for label in axis.get_yticklabels():
            label.set_bbox({"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})


def _mlflow_name(label: str | None, numbers: Mapping[int, int] | None = None) -> str:
    """Optuna's ``Trial12`` -> ``trial-012``, the trial's MLflow run name (``numbers``: the
    search's number of each trial of a drawn subset's study)."""
    match = re.fullmatch(r"Trial(\d+)", label or "")
    if not match:
        return label or ""
    number = int(match.group(1))
    return trial_label((numbers or {}).get(number, number))


def _integer_x(png: Any, html: Any, largest: int, label: str) -> None:
    """Whole-number ticks on the x axis (epochs, trial numbers), about ten at most."""
    from matplotlib.ticker import MaxNLocator

    png.xaxis.set_major_locator(MaxNLocator(integer=True))
    png.set_xlabel(label)
    html.update_xaxes(title=label, tick0=0, dtick=max(1, math.ceil(largest / 10)))


def _save_png(axes: Any, path: Path, heading: str) -> Path:
    import matplotlib.pyplot as plt

    first = axes.flat[0] if hasattr(axes, "flat") else axes
    fig = first.figure
    try:
        for ax in fig.axes:  # Optuna's generic "Contour Plot": the heading says more
            for loc in ("left", "center", "right"):
                ax.set_title("", loc=loc)
        fig.suptitle(heading, fontsize=10)
        fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
        fig.tight_layout()
        fig.savefig(path, dpi=110, bbox_inches="tight")  # a legend beside the axes included
    finally:
        plt.close(fig)
    return path


def _write_html(path: Path, title: str, figures: list[Drawn], left_out: dict[str, str]
                ) -> Path:
    """One page with every interactive figure; plotly.js embedded once (works offline). The
    plots left out are listed first, so that a missing plot is explained where it would be."""
    import html

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title></head><body style='font-family:sans-serif'><h1>{html.escape(title)}</h1>"]
    if left_out:
        parts.append("<h2>Left out</h2><ul>" + "".join(
            f"<li><b>{html.escape(name)}</b>: {html.escape(why)}</li>"
            for name, why in left_out.items()) + "</ul>")
    for i, drawn in enumerate(figures):
        drawn.html.update_layout(title=drawn.heading)
        parts.append(f"<h2 id='{drawn.name}'>{html.escape(drawn.heading)}</h2>")
        parts.append(drawn.html.to_html(full_html=False, include_plotlyjs=(i == 0)))
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path
