"""Optuna's plots of a search on small in-memory studies: left out below the thresholds (with a
reason), drawn above, held parameters never shown, trials named as in MLflow, whole epochs."""

from __future__ import annotations

import random

import matplotlib
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from extune.evaluate.objectives import Objective
from extune.search.reporting.plots import (
    AXIS_WIDTH_IN,
    MAX_DRAWN,
    MIN_FIT,
    draw_plots,
    fit_minimum,
    search_plots,
)

matplotlib.use("Agg")

ACC = Objective("accuracy", "val/accuracy", "max")
ALIGN = Objective("alignment", "val/alignment", "max")
DISTRIBUTIONS = {
    "optim.lr": FloatDistribution(1e-4, 1e-1, log=True),
    "optim.batch_size": IntDistribution(16, 128),
    "excon.temperature": FloatDistribution(0.05, 1.0),
    "model.width": CategoricalDistribution([32, 64]),  # held at 32: one value in every trial
}
VARYING = 3


def make_study(complete: int, pruned: int = 0, epochs: int = 5, objectives: int = 1
               ) -> optuna.Study:
    """``complete`` trials that trained ``epochs`` epochs, then ``pruned`` stopped at 2."""
    rng = random.Random(0)
    study = optuna.create_study(directions=["maximize"] * objectives)
    trials = []
    for i in range(complete + pruned):
        params = {"optim.lr": 10 ** rng.uniform(-4, -1), "optim.batch_size": rng.randint(16, 128),
                  "excon.temperature": rng.uniform(0.05, 1.0), "model.width": 32}
        last = epochs if i < complete else 2
        curve = {e: 0.3 + 0.1 * e * params["excon.temperature"] + rng.gauss(0, 0.01)
                 for e in range(1, last + 1)}
        done = i < complete
        values = [curve[last]] + [rng.random() for _ in range(objectives - 1)] if done else None
        trials.append(create_trial(
            params=params, distributions=DISTRIBUTIONS, intermediate_values=curve,
            state=TrialState.COMPLETE if done else TrialState.PRUNED, values=values))
    study.add_trials(trials)
    return study


@pytest.fixture
def drawn():
    """draw_plots, closing the matplotlib figures afterwards."""
    import matplotlib.pyplot as plt

    figures = []

    def draw(study, objectives=(ACC,)):
        found, left_out = draw_plots(study, list(objectives))
        figures.extend(found)
        return {d.name: d for d in found}, left_out

    yield draw
    for d in figures:
        plt.close(d.png.figure)


@pytest.fixture(autouse=True)
def quiet_optuna():
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(verbosity)


def test_thresholds_grow_with_the_varying_parameters():
    assert fit_minimum(1) == fit_minimum(3) == MIN_FIT == 8
    assert fit_minimum(9) == 18


def test_too_few_trials_leave_out_importance_and_contour_with_a_reason(drawn, tmp_path):
    figures, left_out = drawn(make_study(3))
    assert set(left_out) == {"param_importances", "contour"}
    for why in left_out.values():
        assert "too few trials to fit: 3 complete trials" in why and "needs 8" in why
    assert {"parallel_coordinate", "optimization_history", "intermediate_values"} <= set(figures)
    plots = search_plots(make_study(3), [ACC], tmp_path, title="demo")
    assert "param_importances" not in plots and plots["html"].is_file()
    assert plots.left_out == left_out and "contour: too few" in plots.left_out_text()
    page = plots["html"].read_text()
    assert "Left out" in page and "too few trials to fit" in page


def test_pruned_trials_at_a_common_epoch_do_not_count_as_enough_for_a_fit(drawn):
    _, left_out = drawn(make_study(3, pruned=4))  # 7 trials reached epoch 2: still too few
    assert "at most 7 at one epoch" in left_out["param_importances"]
    figures, left_out = drawn(make_study(3, pruned=6))  # 9 at epoch 2: compared there
    assert "param_importances" in figures and "trials at epoch 2" in figures[
        "param_importances"].heading


def test_enough_trials_draw_every_plot_without_the_held_parameter(drawn):
    figures, left_out = drawn(make_study(fit_minimum(VARYING) + 2))
    assert not left_out
    assert set(figures) == {"param_importances", "parallel_coordinate", "contour",
                            "optimization_history", "intermediate_values"}
    importances = figures["param_importances"]
    assert set(importances.html.data[0].y) == {"optim.lr", "optim.batch_size",
                                               "excon.temperature"}
    assert "model.width" not in [t.get_text() for t in importances.png.get_yticklabels()]
    parallel = figures["parallel_coordinate"]
    axes = [t.get_text().replace("\n", "") for t in parallel.png.get_xticklabels()]
    assert list(parallel.html.layout.xaxis.ticktext) == axes  # in full, on two lines each
    assert "model.width" not in axes and "optim.lr" in axes
    assert all(t.get_rotation() == 0 for t in parallel.png.get_xticklabels())
    width = parallel.png.figure.get_size_inches()[0]  # room for each axis's tick labels
    assert width >= AXIS_WIDTH_IN * len(axes)
    contour = figures["contour"].html.layout
    assert "model.width" not in (contour.xaxis.title.text, contour.yaxis.title.text)


def test_importances_and_contour_show_one_seeded_fanova_fit(drawn, monkeypatch):
    from optuna.importance import FanovaImportanceEvaluator

    fits = []
    fit = FanovaImportanceEvaluator.evaluate
    monkeypatch.setattr(FanovaImportanceEvaluator, "evaluate",
                        lambda self, *a, **k: fits.append(1) or fit(self, *a, **k))
    study = make_study(fit_minimum(VARYING) + 2)
    figures, _ = drawn(study)
    assert len(fits) == 1  # PNG, HTML and the contour's pair: one fit
    bars = figures["param_importances"].html.data[0]
    ranked = [name for _, name in sorted(zip(bars.x, bars.y, strict=True), reverse=True)]
    png = [t.get_text() for t in figures["param_importances"].png.get_yticklabels()]
    assert sorted(png) == sorted(ranked)
    contour = figures["contour"].html.layout
    assert {contour.xaxis.title.text, contour.yaxis.title.text} == set(ranked[:2])
    assert drawn(study)[0]["param_importances"].html.data[0].x == bars.x  # seeded: the same


def test_one_varying_parameter_draws_no_importance(drawn):
    study = optuna.create_study(direction="maximize")
    study.add_trials([create_trial(params={"optim.lr": 0.01 * (i + 1), "model.width": 32},
                                   distributions={k: DISTRIBUTIONS[k]
                                                  for k in ("optim.lr", "model.width")},
                                   value=float(i))
                      for i in range(10)])
    figures, left_out = drawn(study)
    assert "fewer than two parameters vary" in left_out["param_importances"]
    assert "parallel_coordinate" in figures


def test_learning_curves_name_trials_as_mlflow_with_whole_epochs(drawn):
    figures, _ = drawn(make_study(3, pruned=1))
    curves = figures["intermediate_values"]
    names = {t.name for t in curves.html.data}
    assert names == {"trial-000", "trial-001", "trial-002", "trial-003"}
    labels = {line.get_label() for line in curves.png.get_lines()}
    assert labels == names
    legend = [t.get_text() for t in curves.png.get_legend().get_texts()]
    assert legend[0] == "trial-000"
    curves.png.figure.canvas.draw()
    ticks = [t for t in curves.png.get_xticks() if 1 <= t <= 5]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert curves.png.get_xlabel() == "epoch" and curves.html.layout.xaxis.dtick == 1
    history = figures["optimization_history"]
    history.png.figure.canvas.draw()
    assert all(float(t).is_integer() for t in history.png.get_xticks())


def test_a_large_search_draws_its_best_trials_and_an_even_sample_of_the_rest(drawn):
    study = make_study(MAX_DRAWN + 60, pruned=40)
    figures, _ = drawn(study)
    curves = figures["intermediate_values"]
    total = MAX_DRAWN + 100
    assert f"{MAX_DRAWN} of {total} drawn: the {MAX_DRAWN // 2} best" in curves.heading
    names = {t.name for t in curves.html.data}
    assert len(names) == MAX_DRAWN == len(curves.png.get_lines())
    last = {t.number: t.intermediate_values[max(t.intermediate_values)] for t in study.trials}
    best = sorted(last, key=lambda n: -last[n])[:MAX_DRAWN // 2]
    assert {f"trial-{n:03d}" for n in best} <= names  # named as the search's trials
    assert "trial-000" in names and any(t.name >= "trial-290" for t in curves.html.data)
    parallel = figures["parallel_coordinate"]
    assert f"{MAX_DRAWN} of {MAX_DRAWN + 60} drawn" in parallel.heading  # complete ones
    assert len(parallel.png.collections[0].get_segments()) == MAX_DRAWN  # a line per trial
    contour = figures["contour"]  # interpolated over a grid of every drawn trial's values
    assert f"{MAX_DRAWN} of {MAX_DRAWN + 60} drawn: evenly spaced" in contour.heading
    [surface] = [t for t in contour.html.data if t.type == "contour"]
    assert len(surface.x) <= MAX_DRAWN + 2


def test_multi_objective_leaves_out_below_the_threshold_and_draws_the_front(drawn):
    figures, left_out = drawn(make_study(4, objectives=2), objectives=(ACC, ALIGN))
    assert "pareto_front" in figures and "param_importances" in left_out
