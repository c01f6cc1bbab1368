"""Pareto front, knee rule, selection and ranking on hand-made points; summary files."""

from __future__ import annotations

import pytest

from extune.errors import ConfigError
from extune.evaluate.objectives import Objective
from extune.search.reporting.results import (
    TrialRecord,
    dominates,
    knee_point,
    pareto_front,
    pareto_layers,
    plot_summary,
    rank_records,
    select_trial,
    summary_csv,
    summary_markdown,
)

ACC = Objective("accuracy", "val/accuracy", "max")
ALIGN = Objective("alignment", "val/alignment", "max")
ECE = Objective("ece", "val/ece", "min")


def rec(number, acc, align=None, state="complete", **params):
    metrics = {"epoch": 3.0, "val/accuracy": acc}
    values = [acc]
    if align is not None:
        metrics["val/alignment"] = align
        values.append(align)
    return TrialRecord(number, trial_id=f"t{number}", state=state,
                       values=values if state == "complete" else None, metrics=metrics,
                       params={"optim.lr": 0.1 * (number + 1), **params}, planned_epochs=3)


@pytest.mark.parametrize("objectives", [[ACC], [ACC, ECE], [ACC, ALIGN, ECE]])
def test_pareto_layers_match_the_definition_on_random_points_with_ties(objectives):
    import random

    rng = random.Random(len(objectives))
    records = [TrialRecord(i, trial_id=f"t{i}", state="complete",
                           values=[rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in objectives],
                           metrics={}, params={}) for i in range(300)]
    remaining, expected = list(records), []
    while remaining:  # the definition, pair by pair: what the fast sort must give
        layer = [r for r in remaining
                 if not any(dominates(o.values, r.values, objectives) for o in remaining)]
        expected.append({r.number for r in layer})
        remaining = [r for r in remaining if r.number not in expected[-1]]
    layers = pareto_layers(records, objectives)
    assert [{r.number for r in layer} for layer in layers] == expected
    assert pareto_front(records, objectives) == layers[0]
    first = [r.values[0] * (1 if objectives[0].mode == "max" else -1) for r in layers[0]]
    assert first == sorted(first, reverse=True)  # best first


def test_dominates_respects_directions():
    assert dominates([0.9, 0.5], [0.8, 0.5], [ACC, ALIGN])
    assert not dominates([0.9, 0.4], [0.8, 0.5], [ACC, ALIGN])
    assert dominates([0.9, 0.1], [0.9, 0.2], [ACC, ECE])  # lower ECE is better
    assert not dominates([0.9, 0.5], [0.9, 0.5], [ACC, ALIGN])  # equal: no domination


def test_pareto_front_and_knee_on_hand_made_points():
    # (accuracy, alignment): 0..3 are on the front, 4 is dominated by 1, 5 was pruned
    records = [rec(0, 0.90, 0.10), rec(1, 0.80, 0.60), rec(2, 0.60, 0.80), rec(3, 0.20, 0.90),
               rec(4, 0.70, 0.50), rec(5, 0.99, 0.99, state="pruned")]
    front = pareto_front(records, [ACC, ALIGN])
    assert [r.number for r in front] == [0, 1, 2, 3]
    # normalised over the front: acc (0.2..0.9), align (0.1..0.9); distances to (1, 1):
    # 0: (1, 0) -> 1.0; 1: (0.857, 0.625) -> 0.401; 2: (0.571, 0.875) -> 0.446; 3: (0, 1) -> 1
    assert knee_point(front, [ACC, ALIGN]).number == 1
    assert select_trial(records, [ACC, ALIGN]).number == 1  # default rule: knee
    assert select_trial(records, [ACC, ALIGN], "accuracy").number == 0
    assert select_trial(records, [ACC, ALIGN], "alignment").number == 3


def test_knee_with_a_minimised_objective_and_a_single_point():
    records = [rec(0, 0.9), rec(1, 0.5)]
    records[0].metrics["val/ece"], records[1].metrics["val/ece"] = 0.05, 0.30
    records[0].values, records[1].values = [0.9, 0.05], [0.5, 0.30]
    assert [r.number for r in pareto_front(records, [ACC, ECE])] == [0]
    assert knee_point(pareto_front(records, [ACC, ECE]), [ACC, ECE]).number == 0
    with pytest.raises(ValueError):
        knee_point([], [ACC])


def test_select_never_takes_pruned_or_failed_trials():
    records = [rec(0, 0.5), rec(1, 0.9, state="pruned"), rec(2, 0.95, state="failed")]
    assert select_trial(records, [ACC]).number == 0
    with pytest.raises(ConfigError, match="no complete trial"):
        select_trial(records[1:], [ACC])
    with pytest.raises(ConfigError, match="unknown selection 'speed'"):
        select_trial(records, [ACC], "speed")
    # a metric that is not an objective: best complete trial by its last value
    records[0].metrics["val/top5"] = 0.7
    assert select_trial(records, [ACC], "top5").number == 0


def test_ranking_puts_complete_first_then_pruned_failed():
    records = [rec(0, 0.5), rec(1, 0.9, state="pruned"), rec(2, 0.7), rec(3, 0.1, state="failed")]
    assert [r.number for r in rank_records(records, [ACC])] == [2, 0, 1, 3]
    multi = [rec(0, 0.9, 0.1), rec(1, 0.5, 0.5), rec(2, 0.4, 0.4)]
    # layer 1: trials 0 and 1 (by accuracy), layer 2: trial 2
    assert [r.number for r in rank_records(multi, [ACC, ALIGN])] == [0, 1, 2]


def test_summary_files(tmp_path):
    records = [rec(0, 0.9, 0.1), rec(1, 0.8, 0.6), rec(2, 0.3, 0.2, state="pruned")]
    csv_text = summary_csv(records, [ACC, ALIGN])
    header, first = csv_text.splitlines()[:2]
    assert header.startswith("rank,trial,trial_id,state,epochs,val/accuracy,val/alignment,pareto")
    assert "optim.lr" in header and first.startswith("1,trial-000,t0,complete,3/3,0.9,0.1,yes")
    md = summary_markdown(records, [ACC, ALIGN], title="demo")
    assert md.startswith("# demo") and "| 3 | trial-002 | t2 | pruned |" in md
    assert "| pareto |" in md.splitlines()[2]
    for objectives, name in (([ACC, ALIGN], "front.png"), ([ACC], "history.png")):
        path = plot_summary(records, objectives, tmp_path / name)
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_single_objective_summary_has_no_pareto_column_but_the_csv_keeps_it():
    records = [rec(0, 0.9), rec(1, 0.8), rec(2, 0.3, state="pruned")]
    header = summary_markdown(records, [ACC]).splitlines()[2]
    assert "pareto" not in header
    assert header.startswith("| rank | trial | trial_id | state | epochs | val/accuracy | optim.lr")
    first = summary_markdown(records, [ACC]).splitlines()[4]
    assert first.startswith("| 1 | trial-000 | t0 | complete | 3/3 | 0.9 | 0.1 |")
    csv_header = summary_csv(records, [ACC]).splitlines()[0]  # stable columns for scripts
    assert csv_header.startswith("rank,trial,trial_id,state,epochs,val/accuracy,pareto,optim.lr")
