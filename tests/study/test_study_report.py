"""Study settings, the claims table and the report on hand-made runs (no Ray, no MLflow)."""

from __future__ import annotations

import pytest

from extune.errors import ConfigError
from extune.search.study import StudySettings
from extune.search.study_report import (
    compare,
    plot_metric,
    present_metrics,
    report_markdown,
    summarise,
)


def _run(method: str, index: int, **metrics: float) -> dict:
    return {"method": method, "seed": index + 1, "seed_index": index, "label": f"{method}-{index}",
            "state": "complete", "metrics": {"epoch": 2.0, **metrics}, "error": None}


def _runs() -> list[dict]:
    """excon clearly beats supcon on accuracy, ties on alignment, loses on ECE under shift;
    no mask metrics (an imagefolder set)."""
    runs = []
    for i, (acc_ex, acc_sup) in enumerate([(0.80, 0.70), (0.82, 0.71), (0.81, 0.69)]):
        runs.append(_run("excon", i, **{"test/accuracy": acc_ex, "test/alignment": 0.30 + i / 100,
                                        "test/shift/ece": 0.20 + i / 1000}))
        runs.append(_run("supcon", i, **{"test/accuracy": acc_sup,
                                         "test/alignment": 0.31 - i / 200,
                                         "test/shift/ece": 0.10 + i / 1000}))
    return runs


def test_claims_get_holds_not_shown_and_reversed():
    rows = {r["metric"]: r for r in compare(_runs(), ["excon", "supcon"])}
    assert set(rows) == {"accuracy", "alignment", "shift_ece"}  # only what the runs report
    assert rows["accuracy"]["verdict"] == "holds"
    assert rows["accuracy"]["difference"]["mean"] == pytest.approx(0.11)
    assert rows["alignment"]["verdict"] == "not shown"
    assert rows["shift_ece"]["verdict"] == "reversed"  # higher ECE is worse
    assert all(r["n"] == 3 for r in rows.values())


def test_claims_need_both_methods():
    assert compare(_runs(), ["excon"]) == []


def test_failed_runs_do_not_count():
    runs = _runs()
    runs[0]["state"] = "failed"  # excon seed 0
    summary = summarise(runs, ["excon", "supcon"])
    assert summary["excon"]["accuracy"]["n"] == 2
    rows = {r["metric"]: r for r in compare(runs, ["excon", "supcon"])}
    assert rows["accuracy"]["n"] == 2  # the pair of seed 0 is gone


def test_mask_metrics_only_where_reported():
    names = [m.name for m in present_metrics(_runs())]
    assert "pointing_game" not in names and names[0] == "accuracy"


def test_report_markdown_has_the_tables():
    runs = _runs()
    summary = summarise(runs, ["excon", "supcon"])
    settings = StudySettings(methods=["excon", "supcon"], quick=True).to_dict()
    results = {
        "study": "s", "data": "synthetic", "settings": settings, "search_epochs": 1,
        "final_epochs": 2, "final_seeds": "1, 2, 3", "eval_explainer": "gradcam", "fixed": "",
        "wall_s": {"final": 60.0}, "metrics": [m.name for m in present_metrics(runs)],
        "methods": {m: {"search": {"trial": "trial-001", "value": 0.5, "counts": {"complete": 2},
                                   "params": {"optim.lr": 0.1}},
                        "final": summary[m], "runs": [r for r in runs if r["method"] == m]}
                    for m in ("excon", "supcon")},
        "comparisons": compare(runs, ["excon", "supcon"]),
    }
    text = report_markdown(results)
    assert "| excon | 3/3 | 0.810 ± 0.025 |" in text
    assert "| excon vs supcon | accuracy ↑ | +0.110 [" in text and "**holds**" in text
    assert "**reversed**" in text and "not shown" in text
    assert "| supcon | 2 / 0 / 0 | trial-001 | 0.500 | lr=0.1 |" in text
    assert "## Diagnostics" not in text  # the hand-made runs report no training statistics
    for run in runs:
        run["metrics"]["train/accuracy"] = 0.5 if run["method"] == "excon" else 0.7
    text = report_markdown(results)
    assert "| train/accuracy | 0.500 | 0.700 |" in text


def test_plot_draws_bars_and_seed_points():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _runs()
    fig, ax = plt.subplots()
    plot_metric(ax, present_metrics(runs)[0], ["excon", "supcon"],
                summarise(runs, ["excon", "supcon"]), runs)
    assert len(ax.patches) == 2  # one bar per method
    from matplotlib.collections import PathCollection

    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in points) == 6  # one point per seed
    plt.close(fig)


def test_settings_are_checked_up_front():
    with pytest.raises(ConfigError, match="unknown method"):
        StudySettings(methods="ce,excn")
    with pytest.raises(ConfigError, match="--seeds"):
        StudySettings(seeds=0)
    with pytest.raises(ConfigError, match="one objective"):
        StudySettings(objective="accuracy,alignment")
    with pytest.raises(ConfigError, match="unknown sampler"):
        StudySettings(sampler="grid-ish")
    with pytest.raises(ConfigError, match="--fix names unknown"):
        StudySettings(fixed={"explain.explainr": "gradcam"})


def test_quick_preset_and_final_config():
    s = StudySettings.preset(True, methods=["ce", "excon"])
    assert (s.trials, s.seeds, s.final_epochs) == (2, 2, 2)
    assert s.base_config().model.backbone == "tiny_cnn"
    assert s.final_seeds() == [1, 2]  # the searches use seed 0
    final = s.final_config(s.base_config().with_overrides({"method": "excon"}), seed=2)
    assert final.optim.epochs == 2 and final.runtime.seed == 2
    assert final.eval.test and final.eval.explainer == "gradcam"
    search = s.search_settings("excon", out="x", parent_run="abc", study_id="id")
    assert search.space == "excon" and search.trials == 2
    assert search.run_tags["mlflow.parentRunId"] == "abc"
    assert search.run_tags["extune.stage"] == "search"
